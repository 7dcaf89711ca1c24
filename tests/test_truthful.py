"""Output that tells the truth: a check of nothing is not a success."""

from __future__ import annotations

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
