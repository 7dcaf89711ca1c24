"""A plan of many files reads as a summary by folder, with --limit, and in full on request."""

from __future__ import annotations

import re

from conftest import World
from test_resilience import add_study

MANY = "  - accession: SDY1\n  - accession: SDY999\n"
ACTION = re.compile(r"^  download +\d")


def planned(world: World, *args: str) -> list[str]:
    result = world.run("plan", str(world.manifest_path), *args)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def test_a_long_plan_is_summed_up_by_folder_and_lists_the_first_100(world: World):
    add_study(world, 250)
    world.write_manifest(MANY)
    total = len(world.run("plan", str(world.manifest_path), "--json").json()["actions"])
    assert total > 250
    lines = planned(world)
    assert lines[0] == f"By folder ({total} files, " + lines[0].split(", ", 1)[1]
    folders = [line for line in lines if re.match(r"^  SDY\d+(/\S+)? +\d+ files? ", line)]
    assert any(
        re.match(r"^  SDY999/ResultFiles +250 files +\d+\.\d [KM]iB +\(250 download\)$", line)
        for line in folders
    ), folders
    assert any(line.startswith("  SDY1/ResultFiles ") for line in folders), folders
    assert f"The first 100 of {total} files (deletions first; `--limit 0` lists every file):" in (
        lines
    )
    assert sum(bool(ACTION.match(line)) for line in lines) == 100
    assert lines[-1].startswith(f"Plan: {total} to download")


def test_limit_0_lists_every_file_and_a_short_plan_needs_no_summary(world: World):
    add_study(world, 250)
    world.write_manifest(MANY)
    lines = planned(world, "--limit", "0")
    total = sum(bool(ACTION.match(line)) for line in lines)
    assert total > 250
    assert not any(line.startswith(("By folder", "The first")) for line in lines)
    assert sum(bool(ACTION.match(line)) for line in planned(world, "--limit", "5")) == 5
    world.write_manifest("  - accession: SDY1\n    paths: [StudyFiles]\n")
    short = planned(world, "--limit", "1000")
    assert not any(line.startswith("By folder") for line in short)


def test_json_lists_every_file_whatever_the_limit(world: World):
    add_study(world, 250)
    world.write_manifest(MANY)
    full = world.run("plan", str(world.manifest_path), "--json", "--limit", "3").json()
    lines = planned(world, "--limit", "0")
    assert len(full["actions"]) == sum(bool(ACTION.match(line)) for line in lines)


def test_apply_dry_run_takes_the_same_limit(world: World):
    add_study(world, 250)
    world.write_manifest(MANY)
    result = world.run("apply", str(world.manifest_path), "--dry-run", "--limit", "7")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert sum(bool(ACTION.match(line)) for line in lines) == 7
    assert any(line.startswith("The first 7 of ") for line in lines), lines
    assert world.local_files() == []
