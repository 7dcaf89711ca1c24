"""Plain messages for common mistakes, through the command line, by their exact words.

``validate`` names a tab, an indentation error or a pattern that can never match with
its line and column; ``plan`` and ``apply`` name a study entry, path or pattern that
selects nothing, and a path ImmPort does not have, with its manifest line and, where
ImmPort has the same path in another case, that spelling. Ctrl-C says only what the
interrupted command can leave behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CliResult, World

from immsync.errors import ExitCode

HEAD = "version: 1\ndestination: data\nstudies:\n"


def write(world: World, text: str) -> Path:
    world.manifest_path.write_text(text)
    return world.manifest_path


def validate(world: World, text: str) -> CliResult:
    return world.run("validate", str(write(world, text)))


def plan(world: World, text: str, *extra: str) -> CliResult:
    return world.run("plan", str(write(world, text)), *extra)


def problems(result: CliResult) -> list[str]:
    """The indented problem lines of an error, without their indentation."""
    return [line[2:] for line in result.stderr.splitlines() if line.startswith("  ")]


def notes(output: str) -> list[str]:
    lines = output.splitlines()
    return [line.removeprefix("note: ") for line in lines if line.startswith("note: ")]


# -- validate: mistakes in the YAML itself ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            HEAD + "\t- accession: SDY1\n",
            "4:1: (document): a tab indents this line: YAML indents with spaces only",
        ),
        (
            HEAD + "  - accession: SDY1\n  \tpaths: [StudyFiles]\n",
            "5:3: (document): a tab indents this line: YAML indents with spaces only",
        ),
        (
            "version: 1\ndestination:\tdata\nstudies:\n  - accession: SDY1\n",
            "2:13: (document): a tab here: use spaces (YAML does not accept a tab in this place)",
        ),
    ],
    ids=["tab-indents-an-item", "tab-indents-a-key", "tab-after-a-colon"],
)
def test_a_tab_is_called_a_tab_with_line_and_column(today: World, text: str, expected: str):
    """A tab in the YAML is named as a tab, at its line and column, not in PyYAML's words."""
    result = validate(today, text)
    assert result.exit_code == ExitCode.USAGE
    assert problems(result) == [f"{today.manifest_path}:{expected}"]
    assert "cannot start any token" not in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            HEAD + "  - accession: SDY1\n      paths: [StudyFiles]\n",
            "5:7: (document): indentation error: this line is indented deeper than "
            "'accession' on line 4, so YAML reads it as more of that key's value 'SDY1'; to "
            "start a new key, line it up with 'accession' (column 5)",
        ),
        (
            HEAD + "  - accession: SDY1\n   paths: [StudyFiles]\n",
            "5:4: (document): indentation error: this line starts at column 4, but line 4 "
            "has its entries at columns 3 and 5; indent with spaces, each key in line with "
            "the other keys of its mapping and each '-' in line with the other items of its "
            "list",
        ),
        (
            HEAD + "  - accession: SDY1\n    - accession: SDY269\n",
            "5:5: (document): indentation error: a list item ('-') at column 5, among the "
            "keys of a mapping (line 4 has its entries at columns 3 and 5); line each '-' up "
            "with the other items of its list, below a key ending in ':'",
        ),
        (
            "version: 1\ndestination: data\nstudies: SDY1\n  - accession: SDY1\n",
            "4:3: (document): indentation error: this line is indented deeper than 'studies' "
            "on line 3, so YAML reads it as more of that key's value 'SDY1'; to list items "
            "under 'studies', leave its value empty",
        ),
    ],
    ids=["key-too-deep", "key-between-levels", "item-among-keys", "list-after-a-value"],
)
def test_an_indentation_error_says_indentation(today: World, text: str, expected: str):
    """Indentation mistakes say "indentation error" with line and column and what to align."""
    result = validate(today, text)
    assert result.exit_code == ExitCode.USAGE
    assert problems(result) == [f"{today.manifest_path}:{expected}"]
    assert "YAML syntax error" not in result.output


def test_a_key_without_a_colon_is_named(today: World):
    """``paths`` with no ``:`` after it is named at its own line, not at the end of the file."""
    result = validate(today, HEAD + "  - accession: SDY1\n    paths\n      - StudyFiles\n")
    assert problems(result) == [
        f"{today.manifest_path}:5:5: (document): 'paths' has no ':' after it: write a key "
        "as 'paths: value', or 'paths:' with its list or mapping on the lines below"
    ]


def test_a_colon_inside_a_value_asks_for_quotes(today: World):
    """``destination: data: x`` says to quote the value."""
    result = validate(today, "version: 1\ndestination: data: x\nstudies: [{accession: SDY1}]\n")
    assert problems(result) == [
        f"{today.manifest_path}:2:18: (document): a value cannot contain ': ' unless it is "
        "quoted: put the value in quotes"
    ]


def test_a_lower_case_accession_gets_did_you_mean(today: World):
    """``sdy269`` (and ``SDY 1``) are not accessions, and the message spells the right one."""
    result = validate(today, HEAD + "  - accession: sdy269\n  - accession: SDY 1\n")
    assert problems(result) == [
        f"{today.manifest_path}:4:16: studies[0].accession: 'sdy269' is not a study "
        "accession: did you mean 'SDY269'? (SDY in capitals, then digits)",
        f"{today.manifest_path}:5:16: studies[1].accession: 'SDY 1' is not a study "
        "accession: did you mean 'SDY1'? (SDY in capitals, then digits)",
    ]


def test_valid_counts_studies_in_words(today: World):
    """``1 study``, ``2 studies``."""
    one = validate(today, HEAD + "  - accession: SDY1\n")
    assert one.exit_code == 0
    assert f"{today.manifest_path}: valid (1 study, destination " in one.stdout
    two = validate(today, HEAD + "  - accession: SDY1\n  - accession: SDY269\n")
    assert f"{today.manifest_path}: valid (2 studies, destination " in two.stdout


# -- validate: patterns that can never match -------------------------------------------


def test_a_pattern_ending_in_a_slash_is_refused_with_a_fix(today: World):
    """``ResultFiles/`` can match no file: refused at its line and column, with two fixes."""
    text = (
        HEAD + "  - accession: SDY1\n"
        '    include: ["ResultFiles/", "*_result/"]\n'
        '    exclude: ["Protocols/"]\n'
    )
    result = validate(today, text)
    assert result.exit_code == ExitCode.USAGE
    assert problems(result) == [
        f"{today.manifest_path}:5:15: studies[0].include[0]: 'ResultFiles/' ends with '/', "
        "so it can never match a file: write 'ResultFiles/*' to take everything below the "
        "folder, or put 'ResultFiles' in paths",
        f"{today.manifest_path}:5:31: studies[0].include[1]: '*_result/' ends with '/', so "
        "it can never match a file: write '*_result/*' to take everything below it",
        f"{today.manifest_path}:6:15: studies[0].exclude[0]: 'Protocols/' ends with '/', so "
        "it can never match a file: write 'Protocols/*' to leave out everything below it",
    ]


@pytest.mark.parametrize(
    ("pattern", "what"),
    [
        ("./*.fcs", "'./*.fcs' has a '.' segment, so it can never match a file: remove it"),
        ("a/../*.fcs", "'a/../*.fcs' has a '..' segment, so it can never match a file: remove it"),
        ("a//*.fcs", "'a//*.fcs' has an empty segment ('//'), so it can never match a file"),
        ("a\\\\*.fcs", "'a\\\\*.fcs' contains a backslash: separate folders with '/'"),
    ],
    ids=["dot", "dot-dot", "empty-segment", "backslash"],
)
def test_other_patterns_that_can_never_match_are_refused(today: World, pattern: str, what: str):
    """No ImmPort path has a '.', '..' or empty segment, or a backslash: refused."""
    result = validate(today, HEAD + f'  - accession: SDY1\n    include: ["{pattern}"]\n')
    assert problems(result) == [f"{today.manifest_path}:5:15: studies[0].include[0]: {what}"]


def test_a_path_may_still_end_with_a_slash(today: World):
    """In ``paths`` a trailing '/' stays allowed (it names the folder)."""
    result = validate(today, HEAD + "  - accession: SDY1\n    paths: [ResultFiles/]\n")
    assert result.exit_code == 0, result.output


# -- plan and apply: what selects nothing ---------------------------------------------


def test_a_case_mistaken_pattern_is_a_note_with_its_line_and_the_right_case(today: World):
    """The issue's manifest: ``*.FCS`` selects nothing; plan says so twice, exit 0 (a note)."""
    text = HEAD + "  - accession: SDY1\n    include:\n      - '*.FCS'\n"
    result = plan(today, text)
    assert result.exit_code == 0, result.output
    manifest = today.manifest_path
    assert notes(result.stdout) == [
        f"{manifest}:4: SDY1 selects nothing: include leaves out all 16 of its files",
        f"{manifest}:6: SDY1 include pattern '*.FCS' selects nothing (patterns are "
        "case-sensitive; did you mean '*.fcs'?)",
    ]
    applied = today.apply()
    assert applied.exit_code == 0, applied.output
    assert notes(applied.output) == notes(result.stdout)


def test_plan_json_carries_the_same_notes(today: World):
    """``plan --json`` lists the warning in ``notes``."""
    text = HEAD + "  - accession: SDY1\n    paths: [Protocols]\n    include: ['*.txt']\n"
    result = plan(today, text, "--json")
    assert result.exit_code == 0, result.output
    assert result.json()["notes"] == [
        f"{today.manifest_path}:5: SDY1 path 'Protocols' selects nothing: include leaves "
        "out all 2 of its files",
        f"{today.manifest_path}:6: SDY1 include pattern '*.txt' selects nothing",
    ]


def test_each_path_and_pattern_that_selects_nothing_is_named(today: World):
    """Only the entries that select nothing are named, each at its own line, with why."""
    text = (
        HEAD + "  - accession: SDY1\n"  # 4
        "    paths:\n"  # 5
        "      - ResultFiles\n"  # 6
        "      - Protocols\n"  # 7
        "    include:\n"  # 8
        "      - '*.fcs'\n"  # 9
        "      - HAI_result\n"  # 10
        "      - '*.docx'\n"  # 11
        "    exclude: ['*.docx']\n"  # 12
        "  - accession: SDY269\n"  # 13
        "    paths: [StudyFiles]\n"  # 14
        "    file_types: [archive_file]\n"
    )
    result = plan(today, text)
    assert result.exit_code == 0, result.output
    manifest = today.manifest_path
    assert notes(result.stdout) == [
        f"{manifest}:7: SDY1 path 'Protocols' selects nothing: include and exclude leave "
        "out all 2 of its files",
        f"{manifest}:10: SDY1 include pattern 'HAI_result' selects nothing (it names a "
        "folder; did you mean 'ResultFiles/HAI_result/*'?)",
        f"{manifest}:11: SDY1 include pattern '*.docx' selects nothing: exclude leaves out "
        "the file it matches",
        f"{manifest}:14: SDY269 path 'StudyFiles' selects nothing: file_types leaves out "
        "its only file",
    ]


def test_a_manifest_that_selects_something_everywhere_draws_no_note(today: World):
    """No false alarm: every entry, path and pattern selects a file, so no such note."""
    text = (
        HEAD + "  - accession: SDY1\n    paths: [ResultFiles, StudyFiles]\n"
        "    include: ['*.fcs', 'StudyFiles/*']\n    exclude: ['*.002.*']\n"
        "  - accession: SDY269\n"
    )
    result = plan(today, text)
    assert result.exit_code == 0, result.output
    assert [n for n in notes(result.stdout) if "selects nothing" in n] == []
    assert notes(result.stdout)  # the archive note still comes: notes are shown


# -- plan: a path ImmPort does not have ------------------------------------------------


def test_a_path_not_found_names_its_line_and_the_right_case_today(today: World):
    """Today's catalog has every path of the study: the right case is suggested, free."""
    text = HEAD + "  - accession: SDY1\n    paths:\n      - StudyFiles\n      - resultfiles\n"
    result = plan(today, text)
    assert result.exit_code == ExitCode.REMOTE
    assert problems(result) == [
        f"{today.manifest_path}:7: SDY1/resultfiles not found on ImmPort; did you mean ResultFiles?"
    ]
    assert today.emulator.count("/data/query/api/study/manifest/") == 1


def test_a_path_not_found_suggests_from_the_parent_folder_in_the_legacy_listing(world: World):
    """The legacy listing: one listing of the parent folder gives the right case."""
    world.emulator.manifest_route = False  # a deployment with no study file manifest
    text = (
        HEAD + "  - accession: SDY1\n    paths:\n"
        "      - ResultFiles/flow_cytometry_result\n"
        "      - ResultFiles/No_such_result\n"
        "  - accession: SDY999\n"
    )
    result = plan(world, text)
    assert result.exit_code == ExitCode.REMOTE
    assert problems(result) == [
        f"{world.manifest_path}:6: SDY1/ResultFiles/flow_cytometry_result not found on "
        "ImmPort; did you mean ResultFiles/Flow_cytometry_result?",
        f"{world.manifest_path}:7: SDY1/ResultFiles/No_such_result not found on ImmPort",
        f"{world.manifest_path}:8: SDY999 not found on ImmPort",
    ]


# -- Ctrl-C ----------------------------------------------------------------------------


def test_interrupting_plan_does_not_talk_about_recorded_files(today: World):
    """plan records nothing: after Ctrl-C it says nothing was changed, exit 130."""
    write(today, HEAD + "  - accession: SDY1\n")
    today.emulator.latency = 0.5
    proc = subprocess.Popen(
        [sys.executable, "-m", "immsync", "plan", str(today.manifest_path)],
        env={**os.environ, **today.env},
        cwd=today.root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while today.emulator.count("/data/query/api/study/manifest/") < 1:
            assert time.monotonic() < deadline, "plan never listed"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert err.splitlines()[-1] == "error: interrupted; nothing was changed"
    assert "recorded" not in err
