"""Output that tells the truth: a check of nothing is not a success."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import World

from immsync.errors import ExitCode

SDY1 = "  - accession: SDY1\n    paths: [StudyFiles]\n"


class TestNothingRecorded:
    @pytest.mark.parametrize("command", ["status", "verify"])
    def test_a_manifest_never_applied_is_not_ok(self, world: World, command: str) -> None:
        world.write_manifest(SDY1)
        result = world.run(command, str(world.manifest_path))
        assert result.exit_code == ExitCode.INTEGRITY, result.output
        assert "nothing is recorded for" in result.stderr
        assert f"run `immsync apply {world.manifest_path}` first" in result.stderr
        assert "0 ok" not in result.stdout

    @pytest.mark.parametrize("command", ["status", "verify"])
    def test_records_of_another_manifest_do_not_count(self, world: World, command: str) -> None:
        world.write_manifest("  - accession: SDY269\n")
        assert world.apply().exit_code == 0
        world.write_manifest(SDY1)
        result = world.run(command, str(world.manifest_path))
        assert result.exit_code == ExitCode.INTEGRITY, result.output
        assert "nothing is recorded for" in result.stderr

    @pytest.mark.parametrize("command", ["status", "verify"])
    def test_only_this_manifest_s_files_are_checked(self, world: World, command: str) -> None:
        world.write_manifest("  - accession: SDY269\n" + SDY1)
        assert world.apply().exit_code == 0
        world.write_manifest(SDY1)
        result = world.run(command, str(world.manifest_path), "--json")
        assert result.exit_code == 0, result.output
        assert {f["path"].split("/")[0] for f in result.json()["files"]} == {"SDY1"}

    @pytest.mark.parametrize("command", ["status", "verify", "plan", "apply"])
    def test_a_destination_that_is_a_file(self, world: World, command: str) -> None:
        world.write_manifest(SDY1)
        world.dest.write_text("not a folder")
        result = world.run(command, str(world.manifest_path))
        assert result.exit_code == ExitCode.LOCAL, result.output
        assert f"the destination {world.dest} is not a folder" in result.stderr


class TestHintsNameTheRealManifest:
    def test_a_corrupt_state_hint_names_the_manifest_and_no_manual_step(
        self, world: World
    ) -> None:
        world.write_manifest(SDY1)
        assert world.apply().exit_code == 0
        (world.dest / ".immsync" / "state.sqlite").write_bytes(b"not a database" * 100)
        for extra in ((), ("--json",)):
            result = world.apply(*extra)
            assert result.exit_code == ExitCode.LOCAL, result.output
            expected = f"run `immsync apply --rebuild-state {world.manifest_path}`"
            assert expected in result.output
            assert "MANIFEST" not in result.output and "move " not in result.output
        rebuilt = world.apply("--rebuild-state")
        assert rebuilt.exit_code == 0, rebuilt.output


class TestJsonTellsTheWholeTruth:
    BAD = "version: 1\ndestination: data\nstudies:\n  - accession: sdy1\n    paths: [/abs]\n"

    @pytest.mark.parametrize("command", ["plan", "apply", "status", "verify"])
    def test_an_invalid_manifest_gives_a_json_error_listing_every_problem(
        self, world: World, command: str
    ) -> None:
        world.manifest_path.write_text(self.BAD)
        result = world.run(command, str(world.manifest_path), "--json")
        assert result.exit_code == ExitCode.USAGE, result.output
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        doc = json.loads(result.stdout) if command != "apply" else json.loads(lines[-1])
        error = doc["error"] if command != "apply" else doc
        assert error["exit_code"] == ExitCode.USAGE
        problems = "\n".join(error["problems"])
        assert ":4:" in problems and ":5:" in problems, problems  # each with its line

    def test_a_plan_that_cannot_list_prints_its_answer_once(self, world: World) -> None:
        world.write_manifest("  - accession: SDY1\n    paths: [NoSuchFolder]\n")
        result = world.run("plan", str(world.manifest_path), "--json")
        assert result.exit_code == ExitCode.REMOTE
        doc = json.loads(result.stdout)  # one document: the plan, naming the problem
        assert doc["problems"] and "error" not in doc

    def test_the_summary_carries_the_exit_code(self, world: World, tmp_path: Path) -> None:
        world.write_manifest("  - accession: SDY1\n    paths: [StudyFiles, NoSuchFolder]\n")
        summary = tmp_path / "summary.json"
        result = world.apply("--json", "--summary-file", str(summary))
        assert result.exit_code == ExitCode.REMOTE
        last = json.loads(result.stdout.splitlines()[-1])
        assert last["type"] == "summary"
        for doc in (last, json.loads(summary.read_text())):
            assert doc["result"]["exit_code"] == ExitCode.REMOTE
            assert doc["result"]["interrupted"] is False
