"""CI signals: `apply --json` events (checked against schemas/events.schema.json), exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import World
from jsonschema import Draft202012Validator

from immsync.errors import ExitCode
from immsync.events import EVENT_TYPES, SCHEMA, EventReporter, EventStream, load_schema
from immsync.model import Action, FileOutcome, Plan, RemoteFile, TransferBatch

ROOT = Path(__file__).resolve().parents[1]
FLOW = "SDY1/ResultFiles/Flow_cytometry_result"
FCS = f"{FLOW}/02054141.001.52628.fcs"
SDY1_FLOW_AND_STUDY = """\
  - accession: SDY1
    paths:
      - ResultFiles/Flow_cytometry_result
      - StudyFiles/Study_design.txt
"""
VALIDATOR = Draft202012Validator(json.loads((ROOT / "schemas" / "events.schema.json").read_text()))


def events_of(stdout: str) -> list[dict]:
    """Every line parsed, each checked against the shipped schema and the envelope rules."""
    lines = stdout.splitlines()
    assert lines, "expected events on stdout"
    events = [json.loads(line) for line in lines]
    for n, event in enumerate(events, 1):
        problems = [e.message for e in VALIDATOR.iter_errors(event)]
        assert not problems, (event, problems)
        assert event["schema"] == SCHEMA
        assert event["seq"] == n
        assert event["type"] in EVENT_TYPES
    return events


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


class TestStream:
    def test_a_first_sync_streams_plan_transfers_files_and_summary(self, world: World):
        """Plan first, a start and ok finish per session, a file_verified per file, summary last."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        result = world.apply("--json", "--jobs", "2", "--batch-files", "2")
        assert result.exit_code == 0, result.output
        events = events_of(result.stdout)
        listing = [e for e in events if e["type"] == "listing"]
        assert [e["type"] for e in events[: len(listing)]] == ["listing"] * len(listing)
        events = events[len(listing) :]  # the listing, path by path, comes first
        assert events[0]["type"] == "plan"
        assert events[-1]["type"] == "summary"
        expected = sorted(
            [p.relative_to(world.remote).as_posix() for p in (world.remote / FLOW).iterdir()]
            + ["SDY1/StudyFiles/Study_design.txt"]
        )
        assert sorted(e["path"] for e in of_type(events, "file_verified")) == expected
        assert {e["action"] for e in of_type(events, "file_verified")} == {"download"}
        started = of_type(events, "transfer_started")
        finished = of_type(events, "transfer_finished")
        assert len(started) == len(world.sessions()) >= 2
        assert sorted(e["label"] for e in started) == sorted(e["label"] for e in finished)
        assert {e["status"] for e in finished} == {"ok"}
        assert sum(e["files"] for e in started) == len(expected)
        summary = events[-1]
        assert summary["plan"]["summary"]["download"] == len(expected)
        assert summary["result"]["counts"]["download"] == len(expected)
        assert [e["plan"] for e in of_type(events, "plan")] == [summary["plan"]]

    def test_the_human_log_stays_on_stderr(self, world: World):
        """With --json, stdout holds only events while stderr keeps the readable progress lines."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        result = world.apply("--json")
        assert result.exit_code == 0, result.output
        events_of(result.stdout)
        assert "Plan: 4 to download" in result.stderr
        assert "starting transfer of" in result.stderr

    def test_a_retried_session_is_finished_failed_then_retried(self, world: World):
        """A session losing a file reports failed, then a retry with its delay, then attempt 2."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.configure_aspera(faults=[{"kind": "partial", "path": "/" + FCS, "times": 1}])
        result = world.apply("--json", "--jobs", "1")
        assert result.exit_code == 0, result.output
        events = events_of(result.stdout)
        kinds = [e["type"] for e in events if e["type"].startswith("transfer")]
        assert kinds == [
            "transfer_started", "transfer_finished", "transfer_retried",
            "transfer_started", "transfer_finished",
        ]
        first, retry, second = (
            of_type(events, "transfer_finished")[0],
            of_type(events, "transfer_retried")[0],
            of_type(events, "transfer_finished")[1],
        )
        assert first["status"] == "failed"
        assert (first["files_verified"], first["files_incomplete"]) == (3, 1)
        assert first["error"]
        assert (retry["attempt"], retry["files"]) == (2, 1)
        assert retry["delay_seconds"] >= 0
        assert (second["status"], second["attempt"], second["files_verified"]) == ("ok", 2, 1)
        assert of_type(events, "file_verified")[-1]["path"] == FCS

    def test_a_failed_file_ends_with_a_summary_naming_it(self, world: World):
        """A file that never arrives gives file_failed; the last line is still the summary."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.configure_aspera(faults=[{"kind": "partial", "path": "/" + FCS, "times": 99}])
        result = world.apply("--json", "--retries", "1")
        assert result.exit_code == ExitCode.TRANSFER
        events = events_of(result.stdout)
        assert [e["path"] for e in of_type(events, "file_failed")] == [FCS]
        assert events[-1]["type"] == "summary"
        assert [f["path"] for f in events[-1]["result"]["failures"]] == [FCS]
        assert of_type(events, "transfer_finished")[-1]["status"] == "failed"

    def test_an_error_before_the_summary_ends_the_stream(self, world: World):
        """Refused credentials: the stream's last line is an error event with exit code 3."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.env["IMMPORT_PASSWORD"] = "wrong"
        result = world.apply("--json")
        assert result.exit_code == ExitCode.AUTH
        events = events_of(result.stdout)
        assert [e["type"] for e in events] == ["error"]
        assert events[0]["exit_code"] == ExitCode.AUTH
        assert "refused" in events[0]["message"]

    def test_dry_run_streams_the_plan_and_a_dry_summary(self, world: World):
        """--dry-run --json: a plan event and a summary marked dry_run, nothing transferred."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        result = world.apply("--json", "--dry-run")
        assert result.exit_code == 0, result.output
        events = events_of(result.stdout)
        assert [e["type"] for e in events] == ["listing", "listing", "plan", "summary"]
        assert events[-1]["result"]["dry_run"] is True
        assert world.sessions() == []

    def test_the_shipped_schema_is_the_packaged_one(self):
        """load_schema() gives schemas/events.schema.json, a valid draft 2020-12 schema."""
        schema = load_schema()
        Draft202012Validator.check_schema(schema)
        assert schema == json.loads((ROOT / "schemas" / "events.schema.json").read_text())


class TestSummaryFile:
    def test_summary_file_holds_the_summary_document(self, world: World, tmp_path: Path):
        """--summary-file writes the same plan and result as the summary event, as one document."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        target = tmp_path / "artifacts" / "immsync-summary.json"
        result = world.apply("--json", "--summary-file", str(target))
        assert result.exit_code == 0, result.output
        summary = events_of(result.stdout)[-1]
        doc = json.loads(target.read_text())
        assert doc == {"plan": summary["plan"], "result": summary["result"]}
        assert not list(target.parent.glob(".*.tmp"))

    def test_summary_file_without_json_keeps_the_text_output(self, world: World, tmp_path: Path):
        """Without --json the summary file is still written and stdout stays human text."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        target = tmp_path / "summary.json"
        result = world.apply("--summary-file", str(target))
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("Done in")
        assert json.loads(target.read_text())["result"]["counts"]["download"] == 4

    def test_summary_file_records_an_early_error(self, world: World, tmp_path: Path):
        """A run that fails before planning writes {"error": {...}} with its exit code."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.env["IMMPORT_PASSWORD"] = "wrong"
        target = tmp_path / "summary.json"
        result = world.apply("--summary-file", str(target))
        assert result.exit_code == ExitCode.AUTH
        assert json.loads(target.read_text())["error"]["exit_code"] == ExitCode.AUTH


class TestReporter:
    """The reporter on its own, fed the callbacks sync.Applier makes."""

    @staticmethod
    def reporter() -> tuple[EventReporter, list[str]]:
        lines: list[str] = []
        stream = EventStream(
            lines.append, clock=lambda: datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
        )
        reporter = EventReporter(stream, plan_document=lambda plan: {"items": len(plan.items)})
        return reporter, lines

    def test_an_interrupted_session_is_closed_as_interrupted(self, tmp_path: Path):
        """close() finishes a session whose files never settled, with status interrupted."""
        reporter, lines = self.reporter()
        files = (RemoteFile("SDY1/a", 5, "t"), RemoteFile("SDY1/b", 7, "t"))
        reporter.batch_started(TransferBatch(files, tmp_path, "batch 1/1"))
        reporter.file_done(FileOutcome("SDY1/a", Action.DOWNLOAD, ok=True, size=5))
        reporter.close()
        events = events_of("\n".join(lines))
        assert events[-1]["type"] == "transfer_finished"
        assert events[-1]["status"] == "interrupted"
        assert (events[-1]["files_verified"], events[-1]["files_incomplete"]) == (1, 1)
        assert events[0]["time"] == "2026-01-02T03:04:05.678Z"

    def test_deletions_are_file_deleted_events(self):
        """A deletion outcome is a file_deleted event outside any session."""
        reporter, lines = self.reporter()
        reporter.plan_ready(Plan(items=()))
        reporter.file_done(FileOutcome("SDY1/old", Action.DELETE, ok=True, size=3))
        assert [(e["type"], e.get("path")) for e in map(json.loads, lines)] == [
            ("plan", None), ("file_deleted", "SDY1/old")
        ]

    def test_unknown_event_types_are_refused(self):
        """The stream writes only documented event types."""
        with pytest.raises(ValueError, match="unknown event type"):
            EventStream(lambda line: None).emit("surprise")


class TestDetailedExitCode:
    """`plan --detailed-exitcode`, the other CI signal: 0 nothing to do, 10 changes pending."""

    def test_changes_pending_then_none(self, world: World):
        """10 before the first apply, 0 after it; without the flag plan exits 0 either way."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        plan = ["plan", str(world.manifest_path)]
        assert world.run(*plan).exit_code == 0
        assert world.run(*plan, "--detailed-exitcode").exit_code == ExitCode.CHANGES_PENDING == 10
        assert world.run(*plan, "--json", "--detailed-exitcode").exit_code == 10
        assert world.apply().exit_code == 0
        assert world.run(*plan, "--detailed-exitcode").exit_code == 0

    def test_errors_keep_their_own_codes(self, world: World):
        """A selected path missing upstream is exit 4 even though other changes are pending."""
        world.write_manifest(SDY1_FLOW_AND_STUDY + "      - ResultFiles/No_such_result\n")
        result = world.run("plan", str(world.manifest_path), "--detailed-exitcode")
        assert result.exit_code == ExitCode.REMOTE

    def test_the_code_differs_from_every_other(self):
        """No two exit codes share a value: CHANGES_PENDING is no alias of an error code."""
        # Iterating an Enum skips aliases; __members__ lists every name.
        values = [code.value for code in ExitCode.__members__.values()]
        assert len(values) == len(set(values)), sorted(values)
        assert ExitCode(10) is ExitCode.CHANGES_PENDING
