"""The two progress reporters, driven by a real Applier run over the in-process fakes."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console
from test_applier import Rig, blob

from immsync.errors import Failure, TransferError
from immsync.model import (
    Action,
    FileOutcome,
    Plan,
    PlanItem,
    ProgressEvent,
    RemoteFile,
    TransferBatch,
)
from immsync.render import LineReporter, RichReporter
from immsync.testing.fakes import FakeClock

A, B = "SDY1/StudyFiles/a.txt", "SDY1/StudyFiles/b.txt"


def troubled_run(tmp_path: Path, reporter: object) -> Rig:
    """Call 1 stalls after B arrived wrong; both are retried; B arrives wrong again and fails."""
    rig = Rig(tmp_path, {A: blob(A, 3000), B: blob(B, 2000)})
    rig.reporter = reporter  # type: ignore[assignment]
    rig.transfer.fail_on_call(1, TransferError("stalled", kind=Failure.TRANSIENT), arrived={B})
    rig.transfer.corrupt(B, times=9)
    rig.run()
    return rig


def test_the_terminal_reporter_prints_the_plan_retries_and_failures(tmp_path: Path):
    """Bars are drawn live and vanish; the plan, each retry and each failure stay printed."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=150, color_system=None)
    reporter = RichReporter(console)
    try:
        troubled_run(tmp_path, reporter)
    finally:
        reporter.close()
    text = out.getvalue()
    assert "Plan: 2 to download, 0 to update, 0 to repair, 0 to delete" in text
    assert "batch 1/1: retrying 2 files in 1.0 s: stalled" in text
    assert f"failed: {B}: MD5 mismatch" in text
    reporter.close()  # closing twice is harmless


def test_the_log_reporter_writes_plain_lines_at_intervals(tmp_path: Path):
    """No carriage returns: a start line per session, retries, failures, timed progress."""
    lines: list[str] = []
    clock = FakeClock()

    def ticking() -> float:
        clock.advance(1.0)  # a second between two looks at the clock
        return clock()

    reporter = LineReporter(lines.append, interval=0.0, clock=ticking)
    troubled_run(tmp_path, reporter)
    assert lines[0].startswith("Plan: 2 to download")
    assert "batch 1/1: starting transfer of 2 files, 4.9 KiB" in lines
    assert "batch 1/1: retrying 2 files in 1.0 s: stalled" in lines
    assert any(line.startswith(f"failed: {B}: MD5 mismatch") for line in lines)
    head = "progress: 1/2 files, 2.9 KiB of 4.9 KiB"
    progress = [line for line in lines if line.startswith(head)]
    assert progress, lines
    # One unit family (B, KiB, MiB with B/s, KiB/s, MiB/s), and each time says what it is.
    rate = r"\d+(?:\.\d)? (?:B|KiB|MiB)/s"
    assert re.search(rf", {rate}, elapsed \d+ s, about \d+ s remaining$", progress[0]), progress
    assert not any("\r" in line for line in lines)


def test_many_files_in_flight_add_up(tmp_path: Path):
    """20,000 files reported in flight, then done: the totals add up.

    How the cost per file stays flat as files in flight grow is a benchmark figure
    (``progress_bookkeeping`` in BENCHMARKS.md), not a timed test.
    """
    n = 20_000
    files = tuple(RemoteFile(f"SDY1/ResultFiles/f{i:05d}.txt", 10, "t") for i in range(n))
    plan = Plan(
        items=tuple(PlanItem(Action.DOWNLOAD, f.path, f.size, "new", f) for f in files)
    )
    lines: list[str] = []
    clock = FakeClock()
    reporter = LineReporter(lines.append, interval=3600.0, clock=clock)
    reporter.plan_ready(plan)
    reporter.batch_started(TransferBatch(files=files, staging=tmp_path, label="batch 1/1"))
    for f in files:
        name = f.path.rpartition("/")[2]
        reporter.progress(ProgressEvent("batch 1/1", name, percent=100, bytes_done=10))
    for f in files:
        reporter.file_done(FileOutcome(f.path, Action.DOWNLOAD, ok=True, size=10))
    clock.advance(3600.0)  # the next event writes a progress line: the totals add up
    reporter.file_done(FileOutcome("SDY1/gone.txt", Action.DELETE, ok=True))
    assert lines[-1].startswith(f"progress: {n}/{n} files, 195.3 KiB of 195.3 KiB"), lines[-1]
