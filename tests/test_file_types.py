"""A study entry's ``file_types``: ImmPort's kinds of files to take, archived releases left
out by default with a note, through the command line against the emulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import CliResult, World

from immsync.model import RemoteFile
from immsync.sync import RemoteView, with_checksums
from immsync.testing.sampledata import write_file

# build_today_tree: SDY1 has five archived releases of 80,000 bytes, SDY269 two of 50,000.
SDY1_NOTE = (
    "SDY1: 5 archived data releases (archive/, 390.6 KiB) left out; "
    "add archive_file to file_types to include them"
)
SDY269_NOTE = (
    "SDY269: 2 archived data releases (archive/, 97.7 KiB) left out; "
    "add archive_file to file_types to include them"
)
HEAD = "version: 1\ndestination: data\nstudies:\n"
ALL_TYPES = "[study_file, protocol_file, result_file, release_file, archive_file]"


def local_files(dest: Path) -> list[str]:
    return sorted(
        p.relative_to(dest).as_posix()
        for p in dest.rglob("*")
        if p.is_file() and ".immsync" not in p.relative_to(dest).parts
    )


def today_files(today: World, *, archives: bool) -> list[str]:
    files = local_files(today.remote)
    return [f for f in files if archives or "/archive/" not in f]


def events(result: CliResult) -> list[dict[str, Any]]:
    """``apply --json``: one JSON event a line, the plan first and the summary last."""
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def notes_of(output: str) -> list[str]:
    lines = output.splitlines()
    return [line.removeprefix("note: ") for line in lines if line.startswith("note: ")]


# -- the default: every type but archive_file -----------------------------------------


def test_default_leaves_archived_releases_out_and_says_how_many_and_how_large(today):
    """Without file_types, archive/ is left out: plan and apply say so, once per study."""
    today.write_manifest("  - accession: SDY1\n  - accession: SDY269\n")
    plan = today.plan()
    assert plan.exit_code == 0, plan.output
    assert notes_of(plan.stdout) == [SDY1_NOTE, SDY269_NOTE]
    assert "archive/" not in "\n".join(
        line for line in plan.stdout.splitlines() if not line.startswith("note: ")
    )
    wanted = today_files(today, archives=False)
    assert f"Plan: {len(wanted)} to download" in plan.stdout

    as_json = today.plan("--json")
    assert as_json.json()["notes"] == [SDY1_NOTE, SDY269_NOTE]
    assert not any("/archive/" in a["path"] for a in as_json.json()["actions"])

    applied = today.apply()
    assert applied.exit_code == 0, applied.output
    assert SDY1_NOTE in applied.output and SDY269_NOTE in applied.output
    assert today.local_files() == wanted
    assert len(wanted) == 17  # 24 files upstream, 7 of them archived releases

    again = [e for e in events(today.apply("--json")) if e["type"] != "listing"]
    assert again[0]["type"] == "plan"
    assert again[0]["plan"]["notes"] == [SDY1_NOTE, SDY269_NOTE]
    assert again[-1]["plan"]["notes"] == [SDY1_NOTE, SDY269_NOTE]
    assert again[-1]["result"]["counts"]["download"] == 0


def test_the_note_counts_only_archives_under_the_study_paths(today):
    """Archives outside the entry's paths are not the type filter's doing: no note."""
    today.write_manifest(
        "  - accession: SDY1\n    paths: [ResultFiles, archive/SDY1-DR55.zip]\n"
        "  - accession: SDY269\n    paths: [StudyFiles]\n"
    )
    plan = today.plan()
    assert plan.exit_code == 0, plan.output
    assert notes_of(plan.stdout) == [
        f"{today.manifest_path}:5: SDY1 path 'archive/SDY1-DR55.zip' selects nothing: "
        "file_types leaves out its only file",
        "SDY1: 1 archived data release (archive/, 78.1 KiB) left out; "
        "add archive_file to file_types to include them",
    ]


def test_listing_archive_file_takes_every_file_without_a_note(today):
    """file_types with archive_file (in any order) takes archive/ too, and says nothing."""
    today.write_manifest(
        "  - accession: SDY1\n"
        "    file_types: [archive_file, release_file, result_file, protocol_file, study_file]\n"
        f"  - accession: SDY269\n    file_types: {ALL_TYPES}\n"
    )
    applied = today.apply()
    assert applied.exit_code == 0, applied.output
    assert notes_of(applied.output) == []
    assert today.local_files() == today_files(today, archives=True)


def test_only_result_files(today):
    """file_types: [result_file] takes ResultFiles alone; archives still draw the note."""
    today.write_manifest("  - accession: SDY1\n    file_types: [result_file]\n")
    applied = today.apply()
    assert applied.exit_code == 0, applied.output
    assert today.local_files() == [
        "SDY1/ResultFiles/Flow_cytometry_result/02054141.001.52628.fcs",
        "SDY1/ResultFiles/Flow_cytometry_result/02054141.002.52629.fcs",
        "SDY1/ResultFiles/Flow_cytometry_result/02054141.003.52630.fcs",
        "SDY1/ResultFiles/HAI_result/hai_results.txt",
    ]
    assert notes_of(applied.output) == [SDY1_NOTE]


def test_types_and_paths_must_both_agree(today):
    """A path naming an archive does not override the type filter, nor a type the paths."""
    today.write_manifest(
        "  - accession: SDY1\n"
        "    paths: [archive/SDY1-DR40.zip, StudyFiles]\n"
        "    file_types: [archive_file, result_file]\n"
    )
    applied = today.apply()
    assert applied.exit_code == 0, applied.output
    assert today.local_files() == ["SDY1/archive/SDY1-DR40.zip"]


# -- recorded files the type filter now leaves out --------------------------------------


def test_files_the_type_filter_now_leaves_out_are_deleted_only_with_prune(today):
    """Archives fetched earlier and now left out are planned deletions; --prune deletes them."""
    today.write_manifest(f"  - accession: SDY1\n    file_types: {ALL_TYPES}\n")
    assert today.apply().exit_code == 0
    archives = [f for f in today.local_files() if "/archive/" in f]
    assert len(archives) == 5

    today.write_manifest("  - accession: SDY1\n")
    plan = today.plan("--json", "--prune", "--max-delete", "5")
    assert plan.exit_code == 0, plan.output
    deletions = [a for a in plan.json()["actions"] if a["action"] == "delete"]
    assert [d["path"] for d in deletions] == archives
    assert {d["reason"] for d in deletions} == {
        "filtered out by the manifest's include/exclude/file_types"
    }
    assert plan.json()["summary"]["download"] == 0
    assert plan.json()["notes"] == [SDY1_NOTE]

    kept = today.apply()
    assert kept.exit_code == 0, kept.output
    assert "5 files no longer selected are kept; `--prune` removes them" in kept.output
    assert all((today.dest / f).is_file() for f in archives)
    assert len(today.plan("--json").json()["kept"]) == 5
    assert len(today.plan("--json", "--prune", "--max-delete", "5").json()["actions"]) == 5

    pruned = today.apply("--prune", "--max-delete", "5")
    assert pruned.exit_code == 0, pruned.output
    assert today.local_files() == [
        f for f in today_files(today, archives=False) if f.startswith("SDY1/")
    ]
    assert today.plan("--json").json()["actions"] == []


def test_adding_archive_file_later_downloads_the_archives(today):
    """A study synced with the default gets its archives once the manifest asks for them."""
    today.write_manifest("  - accession: SDY1\n")
    assert today.apply().exit_code == 0
    assert not any("/archive/" in f for f in today.local_files())

    today.write_manifest(f"  - accession: SDY1\n    file_types: {ALL_TYPES}\n")
    plan = today.plan("--json")
    downloads = [a["path"] for a in plan.json()["actions"] if a["action"] == "download"]
    assert downloads == [f"SDY1/archive/SDY1-DR{n}.zip" for n in (40, 45, 47, 50, 55)]
    applied = today.apply("--json")
    assert applied.exit_code == 0, applied.output
    counts = events(applied)[-1]["result"]["counts"]
    assert (counts["download"], counts["unchanged"]) == (5, 11)
    assert [f for f in today.local_files() if f.startswith("SDY1/")] == [
        f for f in today_files(today, archives=True) if f.startswith("SDY1/")
    ]


# -- the legacy world: types from places ------------------------------------------------


@pytest.fixture(name="legacy_world")
def _legacy_world(world: World) -> World:
    """The Aspera-era world, listed folder by folder (no study manifest), with an archive/
    and a folder no type is known for."""
    write_file(world.remote, "SDY1/archive/SDY1-DR40.zip", b"r" * 70_000)
    write_file(world.remote, "SDY1/archive/SDY1-DR45.zip", b"s" * 30_000)
    write_file(world.remote, "SDY1/Supplementary/notes.txt", b"notes\n")
    world.emulator.manifest_route = False
    return world


def test_legacy_listing_types_files_by_their_place(legacy_world):
    """Without a study manifest, archive/ is an archive by its place and left out; a file
    in a folder no type is known for is taken by its place alone."""
    world = legacy_world
    world.write_manifest("  - accession: SDY1\n")
    applied = world.apply()
    assert applied.exit_code == 0, applied.output
    assert [n for n in notes_of(applied.output) if "archive" in n] == [
        "SDY1: 2 archived data releases (archive/, 97.7 KiB) left out; "
        "add archive_file to file_types to include them"
    ]
    files = world.local_files()
    assert "SDY1/SDY1-DR47_Tab.zip" in files  # the study root: the current release
    assert "SDY1/Supplementary/notes.txt" in files
    assert not any("/archive/" in f for f in files)

    world.write_manifest("  - accession: SDY1\n    file_types: [release_file]\n")
    plan = world.run("plan", str(world.manifest_path), "--json", "--prune").json()
    kept = {a["path"] for a in plan["actions"] if a["action"] != "delete"}
    deleted = {a["path"] for a in plan["actions"] if a["action"] == "delete"}
    assert kept == set()
    assert "SDY1/SDY1-DR47_Tab.zip" not in deleted
    assert "SDY1/Supplementary/notes.txt" not in deleted  # unknown type: paths decide
    assert "SDY1/StudyFiles/Study_design.txt" in deleted


# -- validation -------------------------------------------------------------------------


def validate(today: World, text: str) -> CliResult:
    today.manifest_path.write_text(text)
    return today.run("validate", str(today.manifest_path))


def test_a_wrong_file_type_is_named_with_its_line_and_a_suggestion(today):
    text = (
        "version: 1\n"
        "destination: data\n"
        "studies:\n"
        "  - accession: SDY1\n"
        "    file_types:\n"
        "      - result_file\n"
        "      - archive\n"
        "      - Protocol_File\n"
        "      - 7\n"
    )
    result = validate(today, text)
    assert result.exit_code == 2, result.output
    where = str(today.manifest_path)
    allowed = "use study_file, protocol_file, result_file, release_file or archive_file"
    assert f"{where}:7:9: studies[0].file_types[1]: unknown file type 'archive' " in result.output
    assert (
        f"{where}:7:9: studies[0].file_types[1]: unknown file type 'archive' "
        f"(did you mean 'archive_file'?); {allowed}"
    ) in result.output
    assert (
        f"{where}:8:9: studies[0].file_types[2]: unknown file type 'Protocol_File' "
        f"(did you mean 'protocol_file'?); {allowed}"
    ) in result.output
    assert f"{where}:9:9: studies[0].file_types[3]: unknown file type 7; {allowed}" in (
        result.output
    )


def test_file_types_must_be_a_non_empty_list_of_unique_types(today):
    text = (
        "version: 1\n"
        "destination: data\n"
        "studies:\n"
        "  - accession: SDY1\n"
        "    file_types: [result_file, study_file, result_file]\n"
        "  - accession: SDY2\n"
        "    file_types: []\n"
        "  - accession: SDY3\n"
        "    file_types: result_file\n"
        "  - accession: SDY4\n"
        "    file_type: [result_file]\n"
    )
    result = validate(today, text)
    assert result.exit_code == 2, result.output
    where = str(today.manifest_path)
    assert (
        f"{where}:5:43: studies[0].file_types[2]: 'result_file' is already listed at line 5"
    ) in result.output
    assert (
        f"{where}:7:17: studies[1].file_types: must list at least one file type; "
        "leave out 'file_types' to take every type but archive_file"
    ) in result.output
    assert (
        f"{where}:9:17: studies[2].file_types: expected a list, found a string "
        "'result_file'; write it as a list: ['result_file']"
    ) in result.output
    assert (
        f"{where}:11:5: studies[3].file_type: unknown key 'file_type' "
        "(did you mean 'file_types'?)"
    ) in result.output
    assert "4 problems" in result.output


def test_a_valid_file_types_line_validates(today):
    text = f"{HEAD}  - accession: SDY1\n    file_types: {ALL_TYPES}\n"
    result = validate(today, text)
    assert result.exit_code == 0, result.output


def test_the_example_manifest_names_file_types() -> None:
    """examples/manifest.yaml shows file_types, commented, with every type."""
    example = (Path(__file__).resolve().parents[1] / "examples" / "manifest.yaml").read_text()
    assert f"# file_types: {ALL_TYPES}" in example


# -- the type travels with the file -----------------------------------------------------


class _Checksums:
    """A catalog that only knows MD5s: what ``with_checksums`` asks of one."""

    def walk(self, root: str, **_: Any) -> list[RemoteFile]:
        raise AssertionError("not listed here")

    def study_checksums(self, accession: str) -> dict[str, tuple[str, int]] | None:
        return {"SDY1/archive/SDY1-DR40.zip": ("0" * 32, 10)}


def test_a_file_keeps_its_type_when_its_md5_is_attached():
    remote = RemoteFile("SDY1/archive/SDY1-DR40.zip", 10, "2025-10-30", None, "archive_file")
    view = RemoteView({remote.path: remote}, frozenset({remote.path}), (), (), ())
    with_md5 = with_checksums(view, _Checksums(), ["SDY1"]).selected[remote.path]
    assert (with_md5.md5, with_md5.file_type) == ("0" * 32, "archive_file")
