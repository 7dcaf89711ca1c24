"""Turning plans, reports and checks into text and JSON, and showing progress.

Pure formatting functions plus the progress reporters the CLI hands to ``sync``. No
library module imports this one; only ``cli`` does.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from .check import FileCheck, FileState
from .errors import ImmsyncError
from .model import Action, FileOutcome, Plan, ProgressEvent, Report, TransferBatch
from .staging import staged_name
from .units import count
from .units import format_size as format_size

JSON_ACTIONS = (Action.DOWNLOAD, Action.UPDATE, Action.REPAIR, Action.DELETE)

# What a terminal or a log viewer would act on instead of showing: C0 and C1 control
# characters (an ESC starts the CSI and OSC sequences that recolour, clear or retitle a
# terminal) except the tab and line feed that lay out immsync's own messages; DEL; the
# Unicode controls that reorder how a line reads; and lone surrogates, which cannot be
# encoded for output at all. File names come from the server and may hold any of them.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff]"
)


def visible(text: str) -> str:
    """*text* with every control character shown as an escape: ESC becomes ``\\x1b``.

    Every human-readable line goes through this (JSON output keeps the true names:
    JSON escapes them itself).
    """
    if _INVISIBLE.search(text) is None:
        return text
    return _INVISIBLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class VisibleFormatter(logging.Formatter):
    """A log formatter whose lines never carry a raw control character (see ``visible``)."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record))


# -- plan ------------------------------------------------------------------------------


def plan_to_json(plan: Plan, *, problems: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "actions": [
            {"action": i.action.value, "path": i.path, "size": i.size, "reason": i.reason}
            for i in plan.pending
        ],
        "kept": _kept_json(plan),
        "summary": _summary(plan),
        "notes": list(plan.notes),
        "problems": list(problems),
    }


def _kept_json(plan: Plan) -> list[dict[str, Any]]:
    """Recorded files no longer selected that stay without --prune, with why."""
    return [{"path": i.path, "size": i.size, "reason": i.reason} for i in plan.kept]


def iter_plan_json(
    plan: Plan, *, problems: Sequence[str] = (), extra: Mapping[str, Any] | None = None
) -> Iterator[str]:
    """``plan_to_json`` (plus *extra* keys) as text chunks, one action per line.

    Streams, so that printing the plan of 100,000 downloads never holds all of its
    actions as dicts, nor the whole text, at once.
    """
    yield '{\n  "actions": ['
    for n, i in enumerate(plan.pending):
        action = {"action": i.action.value, "path": i.path, "size": i.size, "reason": i.reason}
        yield ("\n    " if n == 0 else ",\n    ") + json.dumps(action)
    yield "\n  ]" if plan.pending else "]"
    rest = plan_to_json(Plan(items=(), notes=plan.notes), problems=problems)
    del rest["actions"]
    rest["kept"] = _kept_json(plan)
    rest["summary"] = {a: n for a, n in _summary(plan).items()}
    rest.update(extra or {})
    # json.dumps(rest, indent=2) is "{\n  ...\n}": splice its body after the actions.
    yield ",\n" + json.dumps(rest, indent=2)[2:] + "\n"


def _summary(plan: Plan) -> dict[str, int]:
    stats = plan.stats()
    summary = {a.value: stats[a.value] for a in (*JSON_ACTIONS, Action.UNCHANGED)}
    summary["kept"] = stats["kept"]
    return summary


def plan_summary(plan: Plan, *, unlisted: int = 0) -> str:
    """The plan in one line; with *unlisted* paths that could not be listed, it says so
    first, so that a plan of nothing never reads as "nothing to do"."""
    s = plan.stats()
    fetch_bytes = sum(i.size for i in plan.to_fetch)
    head = "Plan:" if not unlisted else f"Plan, incomplete ({_unlisted(unlisted)}):"
    text = (
        f"{head} {s['download']} to download, {s['update']} to update, {s['repair']} to repair, "
        f"{s['delete']} to delete, {s['unchanged']} unchanged ({format_size(fetch_bytes)} to "
        "fetch)."
    )
    return text + _kept_sentence(plan)


def _kept_sentence(plan: Plan) -> str:
    """`` 2 files no longer selected are kept; ...`` when a run keeps some, else ``""``."""
    kept = len(plan.kept)
    if not kept:
        return ""
    files = "1 file no longer selected is" if kept == 1 else f"{kept} files no longer selected are"
    return f" {files} kept; `--prune` removes them."


def plan_lines(plan: Plan) -> list[str]:
    """One aligned line per pending action, deletions first.

    Deletions lead so that a prune a user did not intend is the first thing they read,
    not something lost among the downloads.
    """
    pending = sorted(plan.pending, key=lambda i: i.action is not Action.DELETE)
    shown = [(i.action.value, i, i.reason) for i in pending]
    shown += [("keep", i, f"{i.reason}; kept without --prune") for i in plan.kept]
    if not shown:
        return []
    width = max(len(label) for label, _, _ in shown)
    return [
        f"  {label:<{width}}  {format_size(i.size):>10}  {i.path}  ({reason})"
        for label, i, reason in shown
    ]


# -- apply -----------------------------------------------------------------------------


def report_to_json(
    report: Report,
    *,
    problems: Sequence[str] = (),
    exit_code: int = 0,
    interrupted: bool = False,
) -> dict[str, Any]:
    return {
        "plan": plan_to_json(report.plan, problems=problems),
        "result": {
            "exit_code": exit_code,
            "interrupted": interrupted,
            "dry_run": report.dry_run,
            "counts": report.counts(),
            "bytes_transferred": report.bytes_transferred,
            "sessions": report.sessions,
            "elapsed_seconds": round(report.elapsed, 3),
            "failures": [{"path": f.path, "error": f.error} for f in report.failures],
        },
    }


def _unlisted(count: int) -> str:
    paths = "1 selected path" if count == 1 else f"{count} selected paths"
    return f"{paths} could not be listed, named below"


def report_summary(report: Report, *, unlisted: int = 0) -> str:
    """The run in one line; never "Up to date" when part of the selection was not seen."""
    c = report.counts()
    if unlisted and not report.outcomes:
        done = (
            f"Incomplete: {_unlisted(unlisted)}; of the rest, {count(c['unchanged'], 'file')} "
            "unchanged, nothing transferred."
        )
    elif not report.outcomes:
        done = f"Up to date: {count(c['unchanged'], 'file')} unchanged, nothing transferred."
    else:
        done = (
            f"Done in {report.elapsed:.1f} s: {c['download']} downloaded, {c['update']} "
            f"updated, {c['repair']} repaired, {c['delete']} deleted, {c['unchanged']} "
            f"unchanged, {c['failed']} failed; {format_size(report.bytes_transferred)} "
            f"transferred in {count(report.sessions, 'session')}."
        )
    return done + _kept_sentence(report.plan)


# -- status / verify -------------------------------------------------------------------


def _count_states(checks: Sequence[FileCheck]) -> dict[FileState, int]:
    # list.count compares by identity in C; hashing an Enum member runs Python code,
    # which cost a fifth of a second over 100,000 checks.
    states = [c.state for c in checks]
    return {s: states.count(s) for s in FileState}


def checks_to_json(checks: Sequence[FileCheck]) -> dict[str, Any]:
    counts = {s.value: n for s, n in _count_states(checks).items()}
    return {
        "files": [
            {
                "path": c.entry.path,
                "size": c.entry.size,
                "checksum": c.entry.checksum,
                "state": c.state.value,
            }
            for c in checks
        ],
        "summary": counts,
    }


def check_lines(checks: Sequence[FileCheck], *, all_files: bool = False) -> list[str]:
    return [
        f"  {c.state.value:<8}  {c.entry.path}" + (f"  ({c.detail})" if c.detail else "")
        for c in checks
        if all_files or c.state is not FileState.OK
    ]


def checks_summary(checks: Sequence[FileCheck], verb: str) -> str:
    counts = _count_states(checks)
    return (
        f"{verb} {count(len(checks), 'recorded file')}: {counts[FileState.OK]} ok, "
        f"{counts[FileState.MODIFIED]} modified, {counts[FileState.MISSING]} missing."
    )


# -- logging ---------------------------------------------------------------------------


def create_log_config(verbose: int, quiet: bool) -> dict[str, Any]:
    """A ``logging.dictConfig`` for the CLI: warnings by default, more with -v."""
    if quiet:
        level = "ERROR"
    elif verbose >= 2:
        level = "DEBUG"
    elif verbose == 1:
        level = "INFO"
    else:
        level = "WARNING"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {
                "class": f"{__name__}.VisibleFormatter",
                "format": "immsync: %(levelname)s: %(message)s",
            }
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
                "level": level,
            }
        },
        "loggers": {"immsync": {"handlers": ["stderr"], "level": level, "propagate": False}},
    }


# -- progress --------------------------------------------------------------------------


class _Totals:
    """Thread-safe running totals shared by both reporters."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files_total = 0
        self.bytes_total = 0
        self.files_done = 0
        self.bytes_done = 0
        self.failed = 0
        self.in_flight: dict[str, int] = {}
        """Estimated bytes received of files not yet finished, by session and name."""
        self.sizes: dict[str, int] = {}

    def start(self, plan: Plan) -> None:
        fetch = plan.to_fetch
        self.files_total = len(fetch)
        self.bytes_total = sum(i.size for i in fetch)

    def batch(self, batch: TransferBatch) -> None:
        with self.lock:
            for f in batch.files:
                self.sizes[f"{batch.label}\0{_progress_name(f.path)}"] = f.size

    def progress(self, event: ProgressEvent) -> None:
        key = f"{event.session}\0{event.name.strip()}"
        with self.lock:
            size = self.sizes.get(key)
            if event.bytes_done is not None:
                self.in_flight[key] = event.bytes_done
            elif size is not None and event.percent is not None:
                self.in_flight[key] = size * event.percent // 100

    def done(self, outcome: FileOutcome) -> None:
        if outcome.action is Action.DELETE:
            return
        with self.lock:
            name = _progress_name(outcome.path)
            for key in [k for k in self.in_flight if k.endswith("\0" + name)]:
                del self.in_flight[key]
            if outcome.ok:
                self.files_done += 1
                self.bytes_done += outcome.size
            else:
                self.failed += 1

    def bytes_now(self) -> int:
        with self.lock:
            return min(self.bytes_total, self.bytes_done + sum(self.in_flight.values()))


def _progress_name(path: str) -> str:
    """The name a transport's progress gives the file at *path*: its staged base name."""
    return staged_name(path).rpartition("/")[2]


class LineReporter:
    """For logs: a plain line every *interval* seconds, no carriage returns."""

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write_raw = write
        self._interval = interval
        self._clock = clock
        self._last = clock()
        self._started = self._last
        self._totals = _Totals()

    def plan_ready(self, plan: Plan) -> None:
        self._totals.start(plan)
        for note in plan.notes:
            self._write(f"note: {note}")
        if plan:
            self._write(plan_summary(plan))

    def batch_started(self, batch: TransferBatch) -> None:
        self._totals.batch(batch)
        self._write(
            f"{batch.label}: starting transfer of {count(len(batch.files), 'file')}, "
            f"{format_size(batch.total_bytes)}"
        )

    def progress(self, event: ProgressEvent) -> None:
        self._totals.progress(event)
        self._maybe_line()

    def file_done(self, outcome: FileOutcome) -> None:
        self._totals.done(outcome)
        if not outcome.ok:
            self._write(f"failed: {outcome.path}: {outcome.error}")
        self._maybe_line()

    def retrying(self, batch: TransferBatch, error: ImmsyncError, delay: float) -> None:
        self._write(
            f"{batch.label}: retrying {count(len(batch.files), 'file')} in {delay:.1f} s: "
            f"{error.message}"
        )

    def _write(self, line: str) -> None:
        self._write_raw(visible(line))

    def close(self) -> None:
        pass  # every line is already written

    def _maybe_line(self) -> None:
        now = self._clock()
        if now - self._last < self._interval:
            return
        self._last = now
        t = self._totals
        done = t.bytes_now()
        rate = done / max(now - self._started, 1e-9)
        self._write(
            f"progress: {t.files_done}/{t.files_total} files, {format_size(done)}/"
            f"{format_size(t.bytes_total)}, {format_size(rate)}/s"
        )


class RichReporter:
    """For terminals: an overall bytes bar, a files bar, and a line per running session."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._totals = _Totals()
        # Descriptions hold file names: never read as markup.
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._files = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._bytes_task: TaskID | None = None
        self._files_task: TaskID | None = None
        self._sessions: dict[str, TaskID] = {}
        self._arrived: set[tuple[str, str]] = set()
        """(session, file name) pairs the transport reported at 100%."""
        self._lock = threading.Lock()
        self._live = False

    def plan_ready(self, plan: Plan) -> None:
        self._totals.start(plan)
        for note in plan.notes:
            self._print(Text(visible(f"note: {note}")))
        if plan:
            self._print(Text(plan_summary(plan)))
        if not plan.to_fetch:
            return
        from rich.console import Group
        from rich.live import Live

        self._bytes_task = self._progress.add_task("bytes", total=self._totals.bytes_total)
        self._files_task = self._files.add_task("files", total=self._totals.files_total)
        self._live_display = Live(
            Group(self._progress, self._files), console=self._console, transient=True
        )
        self._live_display.start()
        self._live = True

    def batch_started(self, batch: TransferBatch) -> None:
        self._totals.batch(batch)
        with self._lock:
            if batch.label not in self._sessions:
                self._sessions[batch.label] = self._files.add_task(
                    visible(batch.label), total=len(batch.files)
                )

    def progress(self, event: ProgressEvent) -> None:
        self._totals.progress(event)
        if self._bytes_task is not None:
            self._progress.update(self._bytes_task, completed=self._totals.bytes_now())
        task = self._sessions.get(event.session)
        if task is not None:
            name = event.name.strip()
            advance = 0
            if event.percent == 100:
                with self._lock:
                    if (event.session, name) not in self._arrived:
                        self._arrived.add((event.session, name))
                        advance = 1
            self._files.update(
                task, description=visible(f"{event.session}: {name}"), advance=advance
            )

    def file_done(self, outcome: FileOutcome) -> None:
        self._totals.done(outcome)
        if not outcome.ok:
            self._print(
                Text.assemble(("failed", "red"), visible(f": {outcome.path}: {outcome.error}"))
            )
        if self._files_task is not None and outcome.action is not Action.DELETE:
            self._files.update(self._files_task, completed=self._totals.files_done)
        if self._bytes_task is not None:
            self._progress.update(self._bytes_task, completed=self._totals.bytes_now())

    def retrying(self, batch: TransferBatch, error: ImmsyncError, delay: float) -> None:
        self._print(
            Text.assemble(
                (
                    visible(
                        f"{batch.label}: retrying {count(len(batch.files), 'file')} in "
                        f"{delay:.1f} s"
                    ),
                    "yellow",
                ),
                visible(f": {error.message}"),
            )
        )

    def _print(self, line: Text) -> None:
        # A Text is printed as it is: names in it are never read as markup or emoji codes.
        self._console.print(line, highlight=False)

    def close(self) -> None:
        if self._live:
            self._live_display.stop()
            self._live = False
