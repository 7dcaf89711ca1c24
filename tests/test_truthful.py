"""Output that tells the truth: a check of nothing is not a success."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import World

from immsync.errors import ExitCode

SDY1 = "  - accession: SDY1\n    paths: [StudyFiles]\n"
WIDER = "  - accession: SDY1\n    paths: [StudyFiles, ResultFiles/HAI_result]\n"


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


class TestPendingDeletions:
    """plan counts what apply with the same flags would do, and says why for each file."""

    def narrowed(self, world: World) -> None:
        world.write_manifest(WIDER)
        assert world.apply().exit_code == 0
        world.write_manifest(SDY1)

    def test_without_prune_a_plan_settles(self, world: World) -> None:
        self.narrowed(world)
        result = world.run("plan", str(world.manifest_path), "--detailed-exitcode")
        assert result.exit_code == 0, result.output  # apply would change nothing
        assert "1 file no longer selected is kept; `--prune` removes them." in result.stdout
        assert "keep" in result.stdout and "kept without --prune" in result.stdout
        applied = world.apply()
        assert "Up to date" in applied.stdout
        assert "1 file no longer selected is kept; `--prune` removes them." in applied.stdout
        again = world.run("plan", str(world.manifest_path), "--detailed-exitcode")
        assert again.exit_code == 0

    def test_with_prune_the_same_plan_is_pending(self, world: World) -> None:
        self.narrowed(world)
        result = world.run(
            "plan", str(world.manifest_path), "--prune", "--max-delete", "5", "--detailed-exitcode"
        )
        assert result.exit_code == ExitCode.CHANGES_PENDING, result.output
        assert "1 to delete" in result.stdout
        assert world.apply("--prune", "--max-delete", "5").exit_code == 0
        settled = world.run("plan", str(world.manifest_path), "--prune", "--detailed-exitcode")
        assert settled.exit_code == 0

    def test_removed_upstream_is_told_apart_from_deselected(self, world: World) -> None:
        world.write_manifest(WIDER)
        assert world.apply().exit_code == 0
        (world.remote / "SDY1/StudyFiles/Study_design.txt").unlink()
        world.write_manifest(SDY1)  # HAI is no longer selected; the design file is gone
        doc = world.run("plan", str(world.manifest_path), "--json").json()
        reasons = {k["path"]: k["reason"] for k in doc["kept"]}
        assert reasons == {
            "SDY1/StudyFiles/Study_design.txt": "removed upstream",
            "SDY1/ResultFiles/HAI_result/hai_results.txt": "no longer selected by the manifest",
        }


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestUnreachable:
    def test_a_plan_that_cannot_reach_immport_does_not_read_as_success(
        self, today: World
    ) -> None:
        today.env["IMMSYNC_QUERY_API_BASE_URL"] = f"http://127.0.0.1:{closed_port()}/data/query"
        today.write_manifest(SDY1)
        result = today.run("plan", str(today.manifest_path))
        assert result.exit_code == ExitCode.REMOTE, result.output
        assert "Plan, incomplete (1 selected path could not be listed" in result.stdout
        assert "127.0.0.1 refused the connection" in result.stderr
        assert result.stderr.count("retrying in") == 1  # one warning, not one per attempt
        # The hint is about the connection, not about the manifest's paths.
        assert "check the URL and its port" in result.stderr
        assert "check the paths in the manifest" not in result.stderr

    def test_an_apply_that_cannot_reach_immport_hints_at_the_connection(
        self, today: World
    ) -> None:
        today.env["IMMSYNC_QUERY_API_BASE_URL"] = f"http://127.0.0.1:{closed_port()}/data/query"
        today.write_manifest(SDY1)
        result = today.apply()
        assert result.exit_code == ExitCode.REMOTE, result.output
        assert "Up to date" not in result.output
        assert "check the URL and its port" in result.stderr
        assert "check the paths in the manifest" not in result.stderr

    def test_an_apply_that_could_not_list_does_not_say_up_to_date(self, today: World) -> None:
        today.write_manifest("  - accession: SDY1\n    paths: [NoSuchFolder]\n")
        result = today.apply()
        assert result.exit_code == ExitCode.REMOTE, result.output
        assert "Up to date" not in result.output
        assert "Incomplete: 1 selected path could not be listed" in result.stdout
        assert "check the paths in the manifest against ImmPort" in result.stderr

    def test_each_kind_of_connection_failure_has_its_own_words(self) -> None:
        import socket

        import requests

        from immsync.net import connection_failure

        url = "https://www.example.invalid/data"
        dns = requests.ConnectionError(socket.gaierror(-2, "Name or service not known"))
        what, hint, transient = connection_failure(dns, url)
        assert what.startswith("cannot resolve the host name www.example.invalid")
        assert "DNS" in hint and not transient
        flaky_dns = requests.ConnectionError(
            socket.gaierror(-3, "Temporary failure in name resolution")
        )
        assert connection_failure(flaky_dns, url)[2] is True
        refused = requests.ConnectionError(ConnectionRefusedError(111, "Connection refused"))
        assert connection_failure(refused, url)[0].startswith(
            "www.example.invalid refused the connection"
        )
        reset = requests.ConnectionError(ConnectionResetError(104, "Connection reset by peer"))
        assert connection_failure(reset, url)[0].startswith(
            "the connection to www.example.invalid was lost"
        )
