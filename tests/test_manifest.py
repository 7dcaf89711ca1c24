"""The manifest: reading, every validation rule with its exact words, and selection."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from immsync import manifest as manifest_mod
from immsync.errors import ExitCode, ManifestError
from immsync.manifest import load_manifest, load_schema, selects, study_roots
from immsync.model import Manifest, StudySelection

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "manifests"

HEAD = "version: 1\ndestination: data\nstudies:\n"
"""Lines 1-3 of most inline manifests; the first study starts on line 4."""


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in a fresh folder so manifests are named just ``m.yaml`` in messages."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(text: str | bytes, name: str = "m.yaml") -> Path:
    path = Path(name)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def problems(text: str | bytes) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(write(text))
    return list(caught.value.problems)


# --------------------------------------------------------------------------- valid


class TestValid:
    def test_minimal_manifest(self) -> None:
        """A manifest with one whole study loads; destination is next to the manifest."""
        loaded = load_manifest(DATA / "valid-minimal.yaml")
        assert loaded == Manifest(
            source=DATA / "valid-minimal.yaml",
            destination=DATA / "data",
            studies=(StudySelection("SDY269"),),
        )

    def test_full_manifest_with_merge_key(self) -> None:
        """Paths lose a trailing slash, filters become tuples, and a YAML merge key works."""
        loaded = load_manifest(DATA / "valid-full.yaml")
        paths = (
            "ResultFiles/Flow_cytometry_result",
            "ResultFiles/Flow_cytometry_result/02054141.001.52628.fcs",
            "StudyFiles",
        )
        assert loaded.destination == DATA.parent / "downloads" / "immport"
        assert loaded.studies == (
            StudySelection("SDY1", paths, ("*.fcs", "*.txt"), ("*.zip",)),
            StudySelection("SDY2", paths, ("*.fcs", "*.txt"), ("*.zip", "*_Tab.txt")),
            StudySelection("SDY269"),
        )

    def test_relative_destination_is_resolved_from_the_manifest_folder(self, in_tmp: Path) -> None:
        """A relative destination is taken from the manifest's folder, not the current one."""
        (in_tmp / "conf").mkdir()
        loaded = load_manifest(write(HEAD + "  - accession: SDY1\n", "conf/m.yaml"))
        assert loaded.destination == in_tmp / "conf" / "data"
        assert loaded.destination.is_absolute()
        assert loaded.source == Path("conf/m.yaml")

    def test_dotdot_in_destination_is_normalised(self, in_tmp: Path) -> None:
        """'..' in the destination is resolved lexically into a clean absolute path."""
        text = "version: 1\ndestination: ../out/./x\nstudies: [{accession: SDY1}]\n"
        (in_tmp / "conf").mkdir()
        loaded = load_manifest(write(text, "conf/m.yaml"))
        assert loaded.destination == in_tmp / "out" / "x"

    def test_absolute_destination_is_kept(self, in_tmp: Path) -> None:
        """An absolute destination is used as written."""
        target = in_tmp / "elsewhere" / "data"
        text = f"version: 1\ndestination: {target}\nstudies: [{{accession: SDY1}}]\n"
        assert load_manifest(write(text)).destination == target

    def test_example_manifest_is_valid(self) -> None:
        """examples/manifest.yaml, which the README points to, is a valid manifest."""
        loaded = load_manifest(REPO / "examples" / "manifest.yaml")
        assert [s.accession for s in loaded.studies] == ["SDY1", "SDY269"]
        assert loaded.studies[0].paths == ("ResultFiles/Flow_cytometry_result", "StudyFiles")
        assert loaded.studies[1] == StudySelection("SDY269")

    def test_version_written_as_float_one_is_accepted(self, in_tmp: Path) -> None:
        """'version: 1.0' is the number one, so it is accepted like 1."""
        text = "version: 1.0\ndestination: data\nstudies: [{accession: SDY1}]\n"
        assert load_manifest(write(text)).studies == (StudySelection("SDY1"),)

    def test_byte_order_mark_is_ignored(self, in_tmp: Path) -> None:
        """A UTF-8 byte order mark (some Windows editors write one) is skipped."""
        text = "\ufeff" + HEAD + "  - accession: SDY1\n"
        assert load_manifest(write(text.encode("utf-8"))).studies == (StudySelection("SDY1"),)


# --------------------------------------------------------------------------- every rule

# (id, manifest text, the exact problems). Inline manifests are named m.yaml.
RULES = [
    (
        "unknown-root-key",
        HEAD + "  - accession: SDY1\nextra: 1\n",
        [
            "m.yaml:5:1: extra: unknown key 'extra'; "
            "allowed keys: version, destination, studies, transport"
        ],
    ),
    (
        "unknown-key-written-as-boolean",
        HEAD + "  - accession: SDY1\n    on: x\n",
        [
            "m.yaml:5:5: studies[0].on: unknown key on; "
            "allowed keys: accession, paths, include, exclude, file_types"
        ],
    ),
    (
        "unknown-study-key-with-suggestion",
        HEAD + "  - accession: SDY1\n    path: [StudyFiles]\n",
        [
            "m.yaml:5:5: studies[0].path: unknown key 'path' (did you mean 'paths'?); "
            "allowed keys: accession, paths, include, exclude, file_types"
        ],
    ),
    (
        "missing-all-required-keys",
        "# nothing useful\n{}\n",
        [
            "m.yaml:2:1: (document): missing required key 'version'",
            "m.yaml:2:1: (document): missing required key 'destination'",
            "m.yaml:2:1: (document): missing required key 'studies'",
        ],
    ),
    (
        "missing-accession",
        HEAD + "  - paths: [StudyFiles]\n",
        ["m.yaml:4:5: studies[0]: missing required key 'accession'"],
    ),
    (
        "version-2",
        "version: 2\ndestination: data\nstudies: [{accession: SDY1}]\n",
        ["m.yaml:1:10: version: unsupported version 2: this immsync reads version 1"],
    ),
    (
        "version-as-string",
        "version: '1'\ndestination: data\nstudies: [{accession: SDY1}]\n",
        ["m.yaml:1:10: version: expected an integer, found a string '1'"],
    ),
    (
        "version-boolean",
        "version: yes\ndestination: data\nstudies: [{accession: SDY1}]\n",
        ["m.yaml:1:10: version: expected an integer, found a boolean (yes)"],
    ),
    (
        "destination-empty",
        "version: 1\ndestination: ''\nstudies: [{accession: SDY1}]\n",
        ["m.yaml:2:14: destination: must not be empty"],
    ),
    (
        "destination-null",
        "version: 1\ndestination:\nstudies: [{accession: SDY1}]\n",
        ["m.yaml:2:13: destination: expected a string, found no value"],
    ),
    (
        "destination-number",
        "version: 1\ndestination: 2024\nstudies: [{accession: SDY1}]\n",
        [
            "m.yaml:2:14: destination: expected a string, found an integer (2024); "
            "put it in quotes if it is text"
        ],
    ),
    (
        "destination-line-break",
        'version: 1\ndestination: "data\\nmore"\nstudies: [{accession: SDY1}]\n',
        ["m.yaml:2:14: destination: 'data\\nmore' contains a line break"],
    ),
    (
        "destination-nul",
        'version: 1\ndestination: "da\\0ta"\nstudies: [{accession: SDY1}]\n',
        ["m.yaml:2:14: destination: 'da\\x00ta' contains a NUL character"],
    ),
    (
        "destination-carriage-return",
        'version: 1\ndestination: "data\\r"\nstudies: [{accession: SDY1}]\n',
        ["m.yaml:2:14: destination: 'data\\r' contains a carriage return"],
    ),
    (
        "destination-tilde",
        "version: 1\ndestination: ~/immport\nstudies: [{accession: SDY1}]\n",
        [
            "m.yaml:2:14: destination: '~/immport' starts with '~', which immsync does not "
            "expand: write the full path"
        ],
    ),
    (
        "studies-empty",
        "version: 1\ndestination: data\nstudies: []\n",
        ["m.yaml:3:10: studies: must list at least one study"],
    ),
    (
        "studies-not-a-list",
        "version: 1\ndestination: data\nstudies: SDY1\n",
        [
            "m.yaml:3:10: studies: expected a list, found a string 'SDY1'; "
            "write it as a list: ['SDY1']"
        ],
    ),
    (
        "study-not-a-mapping",
        HEAD + "  - SDY1\n",
        [
            "m.yaml:4:5: studies[0]: expected a mapping, found a string 'SDY1'; "
            "write each study as a mapping, e.g. '- accession: SDY1'"
        ],
    ),
    (
        "accession-pattern",
        HEAD + "  - accession: SDX1\n",
        [
            "m.yaml:4:16: studies[0].accession: 'SDX1' is not a study accession: "
            "expected SDY followed by digits, e.g. SDY269"
        ],
    ),
    (
        "accession-lower-case",
        HEAD + "  - accession: sdy1\n",
        [
            "m.yaml:4:16: studies[0].accession: 'sdy1' is not a study accession: "
            "did you mean 'SDY1'? (SDY in capitals, then digits)"
        ],
    ),
    (
        "accession-empty",
        HEAD + "  - accession: ''\n",
        ["m.yaml:4:16: studies[0].accession: must not be empty"],
    ),
    (
        "accession-number",
        HEAD + "  - accession: 269\n",
        [
            "m.yaml:4:16: studies[0].accession: expected a string, found an integer (269); "
            "put it in quotes if it is text"
        ],
    ),
    (
        "accession-trailing-line-break",
        HEAD + '  - accession: "SDY1\\n"\n',
        ["m.yaml:4:16: studies[0].accession: 'SDY1\\n' contains a line break"],
    ),
    (
        "duplicate-accession",
        HEAD + "  - accession: SDY1\n  - accession: SDY269\n  - accession: SDY1\n",
        [
            "m.yaml:6:16: studies[2].accession: 'SDY1' is already listed at line 4: "
            "merge the two entries"
        ],
    ),
    (
        "paths-empty-list",
        HEAD + "  - accession: SDY1\n    paths: []\n",
        [
            "m.yaml:5:12: studies[0].paths: must list at least one path; "
            "leave out 'paths' to take the whole study"
        ],
    ),
    (
        "paths-a-string",
        HEAD + "  - accession: SDY1\n    paths: StudyFiles\n",
        [
            "m.yaml:5:12: studies[0].paths: expected a list, found a string 'StudyFiles'; "
            "write it as a list: ['StudyFiles']"
        ],
    ),
    (
        "path-absolute",
        HEAD + "  - accession: SDY1\n    paths: [/SDY1/StudyFiles/a.txt]\n",
        [
            "m.yaml:5:13: studies[0].paths[0]: '/SDY1/StudyFiles/a.txt' is an absolute path: "
            "paths are relative to the study root, e.g. 'StudyFiles/a.txt'"
        ],
    ),
    (
        "path-absolute-study-root",
        HEAD + "  - accession: SDY1\n    paths: [/SDY1/]\n",
        [
            "m.yaml:5:13: studies[0].paths[0]: '/SDY1/' is an absolute path: paths are "
            "relative to the study root; leave out 'paths' to take the whole study"
        ],
    ),
    (
        "path-slash-alone",
        HEAD + "  - accession: SDY1\n    paths: [/]\n",
        [
            "m.yaml:5:13: studies[0].paths[0]: '/' is an absolute path: paths are "
            "relative to the study root; leave out 'paths' to take the whole study"
        ],
    ),
    (
        "path-dotdot",
        HEAD + "  - accession: SDY1\n    paths: [StudyFiles/../../SDY2]\n",
        [
            "m.yaml:5:13: studies[0].paths[0]: 'StudyFiles/../../SDY2' has a '..' segment: "
            "paths must stay inside the study"
        ],
    ),
    (
        "path-dot",
        HEAD + "  - accession: SDY1\n    paths: [.]\n",
        [
            "m.yaml:5:13: studies[0].paths[0]: '.' is the study root: "
            "leave out 'paths' to take the whole study"
        ],
    ),
    (
        "path-dot-segment",
        HEAD + "  - accession: SDY1\n    paths: [./StudyFiles]\n",
        ["m.yaml:5:13: studies[0].paths[0]: './StudyFiles' has a '.' segment: remove it"],
    ),
    (
        "path-empty-segment",
        HEAD + "  - accession: SDY1\n    paths: [ResultFiles//x.fcs]\n",
        ["m.yaml:5:13: studies[0].paths[0]: 'ResultFiles//x.fcs' has an empty segment ('//')"],
    ),
    (
        "path-backslash",
        HEAD + "  - accession: SDY1\n    paths: ['ResultFiles\\x.fcs']\n",
        [
            "m.yaml:5:13: studies[0].paths[0]: 'ResultFiles\\\\x.fcs' contains a backslash: "
            "separate folders with '/'"
        ],
    ),
    (
        "path-empty",
        HEAD + "  - accession: SDY1\n    paths: ['']\n",
        ["m.yaml:5:13: studies[0].paths[0]: must not be empty"],
    ),
    (
        "path-line-break",
        HEAD + '  - accession: SDY1\n    paths: ["a\\nb"]\n',
        ["m.yaml:5:13: studies[0].paths[0]: 'a\\nb' contains a line break"],
    ),
    (
        "path-carriage-return",
        HEAD + '  - accession: SDY1\n    paths: ["a\\rb"]\n',
        ["m.yaml:5:13: studies[0].paths[0]: 'a\\rb' contains a carriage return"],
    ),
    (
        "path-nul",
        HEAD + '  - accession: SDY1\n    paths: ["a\\0b"]\n',
        ["m.yaml:5:13: studies[0].paths[0]: 'a\\x00b' contains a NUL character"],
    ),
    (
        "path-not-a-string",
        HEAD + "  - accession: SDY1\n    paths: [2017]\n",
        [
            "m.yaml:5:13: studies[0].paths[0]: expected a string, found an integer (2017); "
            "put it in quotes if it is text"
        ],
    ),
    (
        "path-duplicate",
        HEAD + "  - accession: SDY1\n    paths:\n      - StudyFiles\n      - a.txt\n"
        "      - StudyFiles\n",
        ["m.yaml:8:9: studies[0].paths[2]: 'StudyFiles' is already listed at line 6"],
    ),
    (
        "path-duplicate-after-trailing-slash",
        HEAD + "  - accession: SDY1\n    paths: [StudyFiles, StudyFiles/]\n",
        [
            "m.yaml:5:25: studies[0].paths[1]: 'StudyFiles/' is the same path as "
            "'StudyFiles' at line 5"
        ],
    ),
    (
        "include-empty-list",
        HEAD + "  - accession: SDY1\n    include: []\n",
        [
            "m.yaml:5:14: studies[0].include: must list at least one pattern; "
            "leave out 'include' to take every file"
        ],
    ),
    (
        "exclude-empty-list",
        HEAD + "  - accession: SDY1\n    exclude: []\n",
        [
            "m.yaml:5:14: studies[0].exclude: must list at least one pattern; "
            "leave out 'exclude' to exclude nothing"
        ],
    ),
    (
        "exclude-a-string",
        HEAD + "  - accession: SDY1\n    exclude: '*.zip'\n",
        [
            "m.yaml:5:14: studies[0].exclude: expected a list, found a string '*.zip'; "
            "write it as a list: ['*.zip']"
        ],
    ),
    (
        "include-empty-pattern",
        HEAD + "  - accession: SDY1\n    include: ['*.fcs', '']\n",
        ["m.yaml:5:24: studies[0].include[1]: must not be empty"],
    ),
    (
        "include-boolean-pattern",
        HEAD + "  - accession: SDY1\n    include: [on]\n",
        [
            "m.yaml:5:15: studies[0].include[0]: expected a string, found a boolean (on); "
            "put it in quotes if it is text"
        ],
    ),
    (
        "exclude-null-pattern",
        HEAD + "  - accession: SDY1\n    exclude: [~]\n",
        ["m.yaml:5:15: studies[0].exclude[0]: expected a string, found null (~)"],
    ),
    (
        "include-absolute-pattern",
        HEAD + "  - accession: SDY1\n    include: ['/SDY1/*.fcs']\n",
        [
            "m.yaml:5:15: studies[0].include[0]: '/SDY1/*.fcs' starts with '/': patterns "
            "match the path below the study, which has no leading '/'"
        ],
    ),
    (
        "exclude-pattern-line-break",
        HEAD + '  - accession: SDY1\n    exclude: ["*.zip\\n"]\n',
        ["m.yaml:5:15: studies[0].exclude[0]: '*.zip\\n' contains a line break"],
    ),
    (
        "duplicate-root-key",
        "version: 1\ndestination: data\ndestination: other\nstudies: [{accession: SDY1}]\n",
        ["m.yaml:3:1: destination: duplicate key 'destination' (first at line 2)"],
    ),
    (
        "duplicate-study-key",
        HEAD + "  - accession: SDY1\n    paths: [a]\n    paths: [b]\n",
        ["m.yaml:6:5: studies[0].paths: duplicate key 'paths' (first at line 5)"],
    ),
    (
        "duplicate-key-in-flow-mapping",
        HEAD + "  - {accession: SDY1, accession: SDY2}\n",
        ["m.yaml:4:23: studies[0].accession: duplicate key 'accession' (first at line 4)"],
    ),
    (
        "document-is-a-list",
        "- accession: SDY1\n",
        [
            "m.yaml:1:1: (document): expected a mapping with version, destination and studies, "
            "found a list"
        ],
    ),
    (
        "document-is-a-string",
        "just some words\n",
        [
            "m.yaml:1:1: (document): expected a mapping with version, destination and studies, "
            "found a string 'just some words'"
        ],
    ),
    (
        "document-is-null",
        "~\n",
        [
            "m.yaml:1:1: (document): expected a mapping with version, destination and studies, "
            "found null (~)"
        ],
    ),
    (
        "empty-file",
        "",
        [
            "m.yaml:1:1: (document): the manifest is empty: expected a mapping with version, "
            "destination and studies"
        ],
    ),
    (
        "only-comments",
        "# nothing here yet\n",
        [
            "m.yaml:1:1: (document): the manifest is empty: expected a mapping with version, "
            "destination and studies"
        ],
    ),
    (
        "yaml-syntax-error",
        HEAD + "  - accession: SDY1\n     paths: [a]\n",
        [
            "m.yaml:5:6: (document): indentation error: this line is indented deeper than "
            "'accession' on line 4, so YAML reads it as more of that key's value 'SDY1'; to "
            "start a new key, line it up with 'accession' (column 5)"
        ],
    ),
    (
        "yaml-unclosed-flow-list",
        "version: 1\nstudies: [a, b\n",
        [
            "m.yaml:3:1: (document): YAML syntax error: expected ',' or ']', but got "
            "'<stream end>' (while parsing a flow sequence at line 2)"
        ],
    ),
    (
        "yaml-undefined-alias",
        HEAD + "  - *nowhere\n",
        ["m.yaml:4:5: (document): YAML syntax error: found undefined alias 'nowhere'"],
    ),
    (
        "yaml-two-documents",
        "a: 1\n---\nb: 2\n",
        [
            "m.yaml:2:1: (document): YAML syntax error: but found another document "
            "(expected a single document in the stream at line 1)"
        ],
    ),
    (
        "yaml-invalid-date",
        "version: 1\ndestination: 2024-13-01\nstudies: [{accession: SDY1}]\n",
        [
            "m.yaml:2:14: destination: cannot read '2024-13-01': month must be in 1..12; "
            "put it in quotes if it is text"
        ],
    ),
    (
        "yaml-date-value",
        "version: 1\ndestination: 2024-01-31\nstudies: [{accession: SDY1}]\n",
        [
            "m.yaml:2:14: destination: expected a string, found a date (2024-01-31); "
            "put it in quotes if it is text"
        ],
    ),
    (
        "yaml-unknown-tag",
        "version: 1\ndestination: !env DATA\nstudies: [{accession: SDY1}]\n",
        [
            "m.yaml:2:14: destination: cannot read 'DATA': could not determine a constructor "
            "for the tag '!env'; put it in quotes if it is text"
        ],
    ),
    (
        "yaml-set-tag",
        "version: 1\ndestination: data\nstudies: !!set {SDY1}\n",
        [
            "m.yaml:3:10: studies: unsupported YAML tag !!set: use plain mappings and lists",
            "m.yaml:3:10: studies: expected a list, found a mapping",
        ],
    ),
    (
        "yaml-complex-key",
        "version: 1\ndestination: data\nstudies: [{accession: SDY1}]\n? [a, b]\n: c\n",
        ["m.yaml:4:3: (document): a key must be a plain value, not a list"],
    ),
    (
        "yaml-bad-merge",
        HEAD + "  - <<: [1]\n    accession: SDY1\n",
        [
            "m.yaml:4:10: studies[0]: YAML merge error: expected a mapping for merging, "
            "but found scalar"
        ],
    ),
    (
        "yaml-recursive-alias",
        HEAD + "  - &s {accession: SDY1, paths: [*s]}\n",
        ["m.yaml:4:5: studies[0].paths[0]: a YAML alias refers to a value that contains it"],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in RULES], ids=[i for i, _, _ in RULES]
)
def test_rule(in_tmp: Path, text: str, expected: list[str]) -> None:
    """Each invalid manifest yields exactly these problems, with file:line:col and place."""
    assert problems(text) == expected


def test_many_problems_are_all_reported_in_order() -> None:
    """A manifest with many different mistakes reports all of them, sorted by position."""
    path = DATA / "invalid-many.yaml"
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    error = caught.value
    assert error.message == f"invalid manifest {path}: 10 problems"
    assert error.exit_code == ExitCode.USAGE
    assert list(error.problems) == [
        f"{path}:1:1: (document): missing required key 'destination'",
        f"{path}:1:10: version: unsupported version 2: this immsync reads version 1",
        f"{path}:2:1: destinaton: unknown key 'destinaton' (did you mean 'destination'?); "
        "allowed keys: version, destination, studies, transport",
        f"{path}:4:16: studies[0].accession: 'SDX1' is not a study accession: expected SDY "
        "followed by digits, e.g. SDY269",
        f"{path}:6:9: studies[0].paths[0]: '/SDY1/StudyFiles' is an absolute path: paths are "
        "relative to the study root, e.g. 'SDY1/StudyFiles'",
        f"{path}:7:9: studies[0].paths[1]: '../secrets' has a '..' segment: paths must stay "
        "inside the study",
        f"{path}:9:9: studies[0].paths[3]: 'StudyFiles/' is the same path as 'StudyFiles' "
        "at line 8",
        f"{path}:10:14: studies[0].include: must list at least one pattern; leave out "
        "'include' to take every file",
        f"{path}:12:16: studies[2].accession: 'SDY269' is already listed at line 11: merge "
        "the two entries",
        f"{path}:13:14: studies[2].exclude: expected a list, found a string '*.zip'; write it "
        "as a list: ['*.zip']",
    ]


def test_duplicate_keys_are_found_at_every_level() -> None:
    """Duplicate keys are reported at the root, in a study, and deeper inside a value."""
    path = DATA / "invalid-duplicate-keys.yaml"
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert list(caught.value.problems) == [
        f"{path}:3:1: version: duplicate key 'version' (first at line 1)",
        f"{path}:7:5: studies[0].accession: duplicate key 'accession' (first at line 5)",
        f"{path}:10:9: studies[1].paths[0]: expected a string, found a mapping",
        f"{path}:10:19: studies[1].paths[0].name: duplicate key 'name' (first at line 10)",
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "invalid-syntax.yaml",
            "5:6: (document): indentation error: this line is indented deeper than "
            "'accession' on line 4, so YAML reads it as more of that key's value 'SDY1'; to "
            "start a new key, line it up with 'accession' (column 5)",
        ),
        (
            "invalid-not-mapping.yaml",
            "1:1: (document): expected a mapping with version, destination and studies, "
            "found a list",
        ),
        (
            "invalid-empty.yaml",
            "1:1: (document): the manifest is empty: expected a mapping with version, "
            "destination and studies",
        ),
    ],
)
def test_invalid_fixture_has_one_problem(name: str, expected: str) -> None:
    """Broken YAML, a non-mapping document and an empty file each give one clear problem."""
    path = DATA / name
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert caught.value.message == f"invalid manifest {path}: 1 problem"
    assert caught.value.problems == (f"{path}:{expected}",)


def test_error_text_lists_problems_under_the_header(in_tmp: Path) -> None:
    """str(ManifestError) is the header followed by one indented line per problem."""
    with pytest.raises(ManifestError) as caught:
        load_manifest(write("version: 2\ndestination: data\nstudies: []\n"))
    assert str(caught.value) == (
        "invalid manifest m.yaml: 2 problems\n"
        "  m.yaml:1:10: version: unsupported version 2: this immsync reads version 1\n"
        "  m.yaml:3:10: studies: must list at least one study"
    )


def test_path_is_named_as_given(in_tmp: Path) -> None:
    """Problems name the manifest exactly as the caller gave it, not resolved."""
    (in_tmp / "sub").mkdir()
    write("version: 2\ndestination: data\nstudies: [{accession: SDY1}]\n", "sub/m.yaml")
    with pytest.raises(ManifestError) as caught:
        load_manifest(Path("./sub/../sub/m.yaml"))
    assert caught.value.problems[0].startswith("sub/../sub/m.yaml:1:10: version: ")


# --------------------------------------------------------------------------- hostile input


def test_nul_byte_in_file_is_a_syntax_problem(in_tmp: Path) -> None:
    """A raw NUL byte in the file is reported at its position, not raised."""
    assert problems(b"version: 1\ndestination: da\x00ta\n") == [
        "m.yaml:2:16: (document): YAML syntax error: unacceptable character #x0000: "
        "special characters are not allowed"
    ]


def test_non_utf8_file_is_reported_at_the_bad_byte(in_tmp: Path) -> None:
    """A file that is not UTF-8 is reported at the first undecodable byte."""
    assert problems(b"version: 1\ndestination: caf\xe9\n") == [
        "m.yaml:2:17: (document): not UTF-8 text (byte 0xe9)"
    ]


def test_alias_bomb_is_refused_quickly(in_tmp: Path) -> None:
    """Aliases that would expand to millions of values are refused, not expanded."""
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    for level in range(1, 9):
        refs = ",".join([f"*a{level - 1}"] * 10)
        lines.append(f"a{level}: &a{level} [{refs}]")
    lines.append("studies: [*a8]")
    assert problems("\n".join(lines) + "\n") == [
        "m.yaml:1:1: (document): YAML aliases expand the manifest by more than 100000 values"
    ]


def test_deep_nesting_is_a_problem_not_a_crash(in_tmp: Path) -> None:
    """A document nested thousands of levels deep gives a problem, not a RecursionError."""
    assert problems("studies: " + "[" * 5000 + "]" * 5000 + "\n") == [
        "m.yaml:1:1: (document): the manifest is nested too deeply to read"
    ]


def test_missing_file_has_a_hint(in_tmp: Path) -> None:
    """A manifest that does not exist gives a ManifestError naming it, with a hint."""
    with pytest.raises(ManifestError) as caught:
        load_manifest(Path("nope.yaml"))
    assert caught.value.message == "manifest nope.yaml does not exist"
    hint = "check the file name; a relative path starts from the current folder"
    assert caught.value.hint == hint
    assert caught.value.problems == ()


def test_folder_instead_of_file_has_a_hint(in_tmp: Path) -> None:
    """Passing a folder says so, with a hint."""
    (in_tmp / "dir.yaml").mkdir()
    with pytest.raises(ManifestError) as caught:
        load_manifest(Path("dir.yaml"))
    assert caught.value.message == "manifest dir.yaml is a folder, not a file"
    assert caught.value.hint == "pass the manifest's YAML file, e.g. manifest.yaml"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_has_a_hint(in_tmp: Path) -> None:
    """A file without read permission gives a ManifestError with a hint."""
    path = write(HEAD + "  - accession: SDY1\n")
    path.chmod(0)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert caught.value.message == "cannot read manifest m.yaml: permission denied"
    assert caught.value.hint == "make the file readable by the user running immsync"


# Pieces of manifests, good and bad, for the property below to shuffle.
FRAGMENTS = [
    "version: 1",
    "version: 2",
    "destination: data",
    "destination: ~/x",
    "studies:",
    "studies: []",
    "  - accession: SDY1",
    "  - accession: SDX",
    "    paths:",
    "      - a/b",
    "      - /abs",
    "      - ../x",
    "    include: ['*.fcs']",
    "    exclude: []",
    "  - &a {x: 1}",
    "  - *a",
    "  - <<: *a",
    "  <<: [1]",
    "? [a]",
    ": b",
    "  - !!set {a}",
    "- !foo x",
    "destination: 2024-13-40",
    "a: &b [*b]",
    "'",
    '"\\',
    "{",
    "[",
    "---",
    "...",
    "%YAML 1.1",
    "  -",
    "key: |",
    "  text",
    "\t",
    "paths: !!binary ===",
    "version: !!int x",
    "&x",
    "*y",
]
YAML_CHARS = list("abcSDY0129 :-[]{},&*!|>'\"#%@?\n\t.~/\\<=\r\x85\ufeff")


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the property's manifests (hypothesis reruns the test body)."""
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content=st.one_of(
        st.text(max_size=300),
        st.text(alphabet=st.sampled_from(YAML_CHARS), max_size=300),
        st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("\n".join),
        st.binary(max_size=100),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.text(max_size=8)
            | st.sampled_from(["SDY1", "/a", "a//b", ".", "*.fcs"]),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "version",
                            "destination",
                            "studies",
                            "accession",
                            "paths",
                            "include",
                            "exclude",
                            "x",
                        ]
                    ),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=12,
        ).map(yaml.safe_dump),
    )
)
def test_any_input_gives_a_manifest_or_a_manifest_error(
    fuzz_dir: Path, content: str | bytes
) -> None:
    """Whatever the file holds, load_manifest returns a Manifest or raises ManifestError."""
    path = fuzz_dir / "m.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    try:
        loaded = load_manifest(path)
    except ManifestError as error:
        assert error.problems, "an invalid manifest names at least one problem"
        positions = []
        for problem in error.problems:
            match = re.fullmatch(
                rf"{re.escape(str(path))}:(\d+):(\d+): (\S[^\n]*?): (.+)", problem, flags=re.DOTALL
            )
            assert match, problem
            positions.append((int(match[1]), int(match[2])))
        assert positions == sorted(positions)
    else:
        assert isinstance(loaded, Manifest)
        assert loaded.destination.is_absolute()


# --------------------------------------------------------------------------- schema


def test_schema_loads_through_package_resources() -> None:
    """The schema ships in the package and load_schema reads it from there."""
    resource = resources.files("immsync") / "schemas" / "manifest.schema.json"
    shipped = json.loads(resource.read_text(encoding="utf-8"))
    assert load_schema() == shipped
    assert shipped == json.loads((REPO / "schemas" / "manifest.schema.json").read_text())


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    """The schema passes the 2020-12 meta-schema and names itself."""
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"]


def _subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from _subschemas(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _subschemas(item)


def test_schema_documents_every_property_and_closes_every_object() -> None:
    """Every property has a description and every object refuses unknown keys."""
    for sub in _subschemas(load_schema()):
        for name, prop in sub.get("properties", {}).items():
            assert prop.get("description"), f"property {name} has no description"
        if sub.get("type") == "object":
            assert sub.get("additionalProperties") is False


def test_every_forbidden_pattern_has_words() -> None:
    """Every 'not pattern' rule of the schema has a human message in the code."""
    patterns = {
        str(sub["not"]["pattern"])
        for sub in _subschemas(load_schema())
        if isinstance(sub.get("not"), dict) and "pattern" in sub["not"]
    }
    assert patterns
    assert patterns <= set(manifest_mod._FORBIDDEN)


# --------------------------------------------------------------------------- selection


def study(
    include: Sequence[str] = (), exclude: Sequence[str] = (), paths: Sequence[str] = ()
) -> StudySelection:
    return StudySelection("SDY1", tuple(paths), tuple(include), tuple(exclude))


class TestSelects:
    def test_no_filters_take_everything(self) -> None:
        """Without include or exclude every file is selected."""
        assert selects(study(), "ResultFiles/x/y.fcs")

    def test_pattern_without_slash_matches_base_name_at_any_depth(self) -> None:
        """'*.fcs' matches an .fcs file however deep it is."""
        s = study(include=["*.fcs"])
        assert selects(s, "ResultFiles/Flow_cytometry_result/02054141.001.52628.fcs")
        assert selects(s, "top.fcs")
        assert not selects(s, "ResultFiles/Flow_cytometry_result/readme.txt")

    def test_pattern_with_slash_matches_the_whole_path(self) -> None:
        """'StudyFiles/*.txt' matches against the full path below the study."""
        s = study(include=["StudyFiles/*.txt"])
        assert selects(s, "StudyFiles/protocol.txt")
        assert not selects(s, "ResultFiles/protocol.txt")

    def test_star_also_crosses_slashes(self) -> None:
        """'*' matches '/' too, so 'ResultFiles/*' takes everything below ResultFiles."""
        s = study(include=["ResultFiles/*"])
        assert selects(s, "ResultFiles/a/b/c.fcs")
        assert not selects(s, "StudyFiles/a.txt")

    def test_base_name_rule_does_not_apply_to_patterns_with_slash(self) -> None:
        """'x/a.txt' does not match 'y/a.txt' through the base name."""
        assert not selects(study(include=["x/a.txt"]), "y/a.txt")

    def test_any_include_pattern_is_enough(self) -> None:
        """A file matching one of several include patterns is selected."""
        s = study(include=["*.fcs", "*.txt"])
        assert selects(s, "a/b.txt")
        assert not selects(s, "a/b.zip")

    def test_exclude_wins_over_include(self) -> None:
        """A file matching both include and exclude is left out."""
        s = study(include=["*.fcs"], exclude=["bad_*"])
        assert not selects(s, "Results/bad_1.fcs")
        assert selects(s, "Results/good_1.fcs")

    def test_exclude_alone(self) -> None:
        """With only exclude, everything but the excluded files is selected."""
        s = study(exclude=["*.zip"])
        assert selects(s, "StudyFiles/a.txt")
        assert not selects(s, "SDY1-DR20_Tab.zip")

    def test_matching_is_case_sensitive(self) -> None:
        """'*.fcs' does not match 'X.FCS': ImmPort paths are case-sensitive."""
        assert not selects(study(include=["*.fcs"]), "X.FCS")

    def test_hidden_files_excluded_by_base_name(self) -> None:
        """Exclude '.*' leaves out files whose base name starts with a dot, at any depth."""
        s = study(exclude=[".*"])
        assert selects(s, "a/visible.txt")
        assert not selects(s, "a/.hidden")
        assert not selects(s, ".top")

    def test_character_classes(self) -> None:
        """fnmatch character classes work, e.g. 'FCS_[0-9].fcs'."""
        s = study(include=["FCS_[0-9].fcs"])
        assert selects(s, "ResultFiles/FCS_7.fcs")
        assert not selects(s, "ResultFiles/FCS_a.fcs")


def test_study_roots_whole_study() -> None:
    """A study without paths is listed from its root."""
    assert study_roots(StudySelection("SDY269")) == ["/SDY269"]


def test_study_roots_with_paths() -> None:
    """Each path becomes an ImmPort path below the study."""
    selection = StudySelection("SDY1", ("ResultFiles/Flow_cytometry_result", "StudyFiles"))
    assert study_roots(selection) == [
        "/SDY1/ResultFiles/Flow_cytometry_result",
        "/SDY1/StudyFiles",
    ]
