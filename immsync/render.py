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
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.text import Text

from .check import FileCheck, FileState
from .errors import ImmsyncError
from .model import (
    Action,
    FileOutcome,
    ListingStatus,
    Plan,
    PlanItem,
    ProgressEvent,
    Report,
    TransferBatch,
)
from .staging import staged_bytes, staged_name
from .units import count, format_duration, format_rate
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


PLAN_LIMIT = 100
"""How many files a human plan lists by default (``plan --limit``)."""


def plan_lines(plan: Plan, *, limit: int = 0) -> list[str]:
    """One aligned line per pending action, deletions first; kept files last.

    Deletions lead so that a prune a user did not intend is the first thing they read,
    not something lost among the downloads. With a *limit* (0: none) smaller than the
    plan, a summary by folder comes first, then the first *limit* lines and how to see
    them all.
    """
    pending = sorted(plan.pending, key=lambda i: i.action is not Action.DELETE)
    shown = [(i.action.value, i, i.reason) for i in pending]
    shown += [("keep", i, f"{i.reason}; kept without --prune") for i in plan.kept]
    if not shown:
        return []
    if not limit or len(shown) <= limit:
        return _aligned(shown)
    return [
        *_folder_lines(shown),
        f"The first {limit} of {count(len(shown), 'file')} (deletions first; "
        "`--limit 0` lists every file):",
        *_aligned(shown[:limit]),
    ]


def _aligned(shown: Sequence[tuple[str, PlanItem, str]]) -> list[str]:
    width = max(len(label) for label, _, _ in shown)
    return [
        f"  {label:<{width}}  {format_size(i.size):>10}  {visible(i.path)}  ({reason})"
        for label, i, reason in shown
    ]


def plan_folder(path: str) -> str:
    """The folder a plan groups *path* under: the study and its top folder
    (``SDY1/ResultFiles``), or the study for a file at its root."""
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


def _folder_lines(shown: Sequence[tuple[str, PlanItem, str]]) -> list[str]:
    """Per folder: how many files, how large, and what is done with them."""
    folders: dict[str, tuple[int, int, Counter[str]]] = {}
    for label, item, _ in shown:
        files, size, actions = folders.get(plan_folder(item.path), (0, 0, Counter()))
        actions[label] += 1
        folders[plan_folder(item.path)] = (files + 1, size + item.size, actions)
    width = max(len(visible(f)) for f in folders)
    total = sum(item.size for _, item, _ in shown)
    lines = [f"By folder ({count(len(shown), 'file')}, {format_size(total)}):"]
    for folder, (files, size, actions) in sorted(folders.items()):
        what = ", ".join(f"{n} {label}" for label, n in sorted(actions.items()))
        lines.append(
            f"  {visible(folder):<{width}}  {count(files, 'file'):>11}  {format_size(size):>10}"
            f"  ({what})"
        )
    return lines


# -- apply -----------------------------------------------------------------------------


def report_to_json(
    report: Report,
    *,
    problems: Sequence[str] = (),
    exit_code: int = 0,
    interrupted: bool = False,
    tally: TransferTally | None = None,
) -> dict[str, Any]:
    """The run's summary document; *tally* (what the transports reported) tells the
    bytes that moved over the network from those resumed from staging. Without one,
    every completed file counts as transferred whole."""
    transferred = report.bytes_transferred if tally is None else tally.bytes_transferred
    return {
        "plan": plan_to_json(report.plan, problems=problems),
        "result": {
            "exit_code": exit_code,
            "interrupted": interrupted,
            "dry_run": report.dry_run,
            "counts": report.counts(),
            "bytes_transferred": transferred,
            "bytes_resumed": 0 if tally is None else tally.bytes_resumed,
            "sessions": report.sessions,
            "elapsed_seconds": round(report.elapsed, 3),
            "failures": [{"path": f.path, "error": f.error} for f in report.failures],
        },
    }


def _unlisted(count: int) -> str:
    paths = "1 selected path" if count == 1 else f"{count} selected paths"
    return f"{paths} could not be listed, named below"


def report_summary(
    report: Report,
    *,
    unlisted: int = 0,
    tally: TransferTally | None = None,
    shard: str | None = None,
) -> str:
    """The run in one line; never "Up to date" when part of the selection was not seen.

    With *tally*, the bytes that moved over the network and those resumed from staging
    are told apart; *shard* (``"K/N"``) names the shard the run was.
    """
    return _title(shard) + _report_sentence(report, unlisted, tally)


def _report_sentence(report: Report, unlisted: int, tally: TransferTally | None) -> str:
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
            f"unchanged, {c['failed']} failed; {_bytes_moved(report, tally)}."
        )
    return done + _kept_sentence(report.plan)


def _bytes_moved(report: Report, tally: TransferTally | None) -> str:
    """``40.0 MiB transferred in 2 sessions, 12.0 MiB resumed from staging``."""
    moved = report.bytes_transferred if tally is None else tally.bytes_transferred
    text = f"{format_size(moved)} transferred in {count(report.sessions, 'session')}"
    if tally is not None and tally.bytes_resumed:
        text += f", {format_size(tally.bytes_resumed)} resumed from staging"
    return text


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

LARGE_FILE_BYTES = 8 * 1024**2
"""A file at least this large gets a bytes bar of its own on a terminal."""


class TransferTally:
    """What moved over the network this run, told apart from what staging already held.

    A ``Reporter`` (it reads ``progress`` and ``file_done``; the rest is ignored), fed
    the transports' progress events. Each file's bytes are counted as they arrive;
    a body that starts at an offset (``ProgressEvent.resumed_from``) counts nothing
    for the bytes below it. The bytes resumed for a file are the lowest offset any of
    its bodies started at this run: a start over from 0 means none were reused.
    Thread-safe; every event costs O(1).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        """Bytes of each open file known to be in staging."""
        self._resumed: dict[str, int] = {}
        """Bytes each open file reused from an earlier run's partial file."""
        self._keys_by_name: dict[str, set[str]] = {}
        self._resumed_open = 0
        self.bytes_transferred = 0
        """Bytes received over the network this run, completed files or not."""
        self.bytes_resumed = 0
        """Bytes of the files completed this run that came from staging, not the network."""

    @property
    def resumed_so_far(self) -> int:
        """Bytes reused from staging by the files completed or still in flight."""
        with self._lock:
            return self.bytes_resumed + self._resumed_open

    def progress(self, event: ProgressEvent) -> None:
        self.add(event)

    def add(self, event: ProgressEvent) -> int | None:
        """Count *event*; the offset when it is a file's first resume this run, else None."""
        name = event.name.strip()
        key = event.path if event.path is not None else f"{event.session}\0{name}"
        first_resume = None
        with self._lock:
            if key not in self._last:
                self._keys_by_name.setdefault(name, set()).add(key)
                self._last[key] = 0
            if event.resumed_from is not None:
                self._last[key] = event.resumed_from
                before = self._resumed.get(key)
                now = event.resumed_from if before is None else min(before, event.resumed_from)
                self._resumed[key] = now
                self._resumed_open += now - (before or 0)
                if before is None and now > 0:
                    first_resume = now
            done = event.bytes_done
            # Lower than before without a new start: a coarser report (a percentage),
            # not bytes lost.
            if done is not None and done > self._last[key]:
                self.bytes_transferred += done - self._last[key]
                self._last[key] = done
        return first_resume

    def file_done(self, outcome: FileOutcome) -> None:
        if outcome.action is Action.DELETE:
            return
        name = _progress_name(outcome.path)
        with self._lock:
            keys = self._keys_by_name.get(name, set())
            if outcome.path in keys:
                mine = [outcome.path]
            else:
                mine = [k for k in keys if k.endswith("\0" + name)]
            for key in mine:
                keys.discard(key)
                self._last.pop(key, None)
                resumed = self._resumed.pop(key, 0)
                self._resumed_open -= resumed
                if outcome.ok:
                    self.bytes_resumed += resumed
            if not keys:
                self._keys_by_name.pop(name, None)

    def plan_ready(self, plan: Plan) -> None:
        pass

    def batch_started(self, batch: TransferBatch) -> None:
        pass

    def retrying(self, batch: TransferBatch, error: ImmsyncError, delay: float) -> None:
        pass

    def close(self) -> None:
        pass


class _Totals:
    """Thread-safe running totals shared by both reporters; O(1) per event."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files_total = 0
        self.bytes_total = 0
        self.files_done = 0
        self.bytes_done = 0
        self.failed = 0
        self.in_flight: dict[str, int] = {}
        """Estimated bytes received of files not yet finished, by session and name."""
        self._in_flight_sum = 0
        self._keys_by_name: dict[str, set[str]] = {}
        self.sizes: dict[str, int] = {}

    def start(self, plan: Plan) -> None:
        fetch = plan.to_fetch
        self.files_total = len(fetch)
        self.bytes_total = sum(i.size for i in fetch)

    def batch(self, batch: TransferBatch) -> None:
        with self.lock:
            for f in batch.files:
                self.sizes[f"{batch.label}\0{_progress_name(f.path)}"] = f.size

    def size_of(self, event: ProgressEvent) -> int | None:
        return self.sizes.get(f"{event.session}\0{event.name.strip()}")

    def progress(self, event: ProgressEvent) -> None:
        name = event.name.strip()
        key = f"{event.session}\0{name}"
        with self.lock:
            size = self.sizes.get(key)
            if event.bytes_done is not None:
                now = event.bytes_done
            elif size is not None and event.percent is not None:
                now = size * event.percent // 100
            else:
                return
            self._in_flight_sum += now - self.in_flight.get(key, 0)
            self.in_flight[key] = now
            self._keys_by_name.setdefault(name, set()).add(key)

    def done(self, outcome: FileOutcome) -> None:
        if outcome.action is Action.DELETE:
            return
        with self.lock:
            for key in self._keys_by_name.pop(_progress_name(outcome.path), ()):
                self._in_flight_sum -= self.in_flight.pop(key, 0)
            if outcome.ok:
                self.files_done += 1
                self.bytes_done += outcome.size
            else:
                self.failed += 1

    def bytes_now(self) -> int:
        with self.lock:
            return min(self.bytes_total, self.bytes_done + self._in_flight_sum)


def _progress_name(path: str) -> str:
    """The name a transport's progress gives the file at *path*: its staged base name."""
    return staged_name(path).rpartition("/")[2]


class _Pace:
    """Rate, elapsed and remaining time of a run, from what moved over the network."""

    def __init__(self, totals: _Totals, tally: TransferTally, clock: Callable[[], float]):
        self._totals = totals
        self._tally = tally
        self._clock = clock
        self._started = clock()

    def restart(self) -> None:
        self._started = self._clock()

    def elapsed(self) -> float:
        return self._clock() - self._started

    def words(self) -> str:
        """``3.2 MiB/s, elapsed 12 s, about 30 s remaining``.

        No rate before a second has passed: a figure from a few milliseconds misleads.
        """
        elapsed = self.elapsed()
        moved = self._tally.bytes_transferred
        left = self._totals.bytes_total - self._totals.bytes_now()
        if elapsed < 1 or not moved:
            return f"elapsed {format_duration(elapsed)}, remaining time not known yet"
        rate = moved / elapsed
        remaining = "finishing" if left <= 0 else f"about {format_duration(left / rate)} remaining"
        return f"{format_rate(rate)}, elapsed {format_duration(elapsed)}, {remaining}"


def _title(shard: str | None) -> str:
    return f"shard {shard}: " if shard else ""


def staged_before(batch: TransferBatch) -> int:
    """Bytes of *batch*'s files in staging as its session starts (see ``staged_bytes``)."""
    return staged_bytes(batch.staging, ((f.path, f.size) for f in batch.files))


def _staged_words(staged: int) -> str:
    return f"{format_size(staged)} of it already staged by an earlier run, resumed"


def _resuming_sentence(path: str, offset: int, size: int | None) -> str:
    of = f" of {format_size(size)}" if size is not None else ""
    return f"resuming {path} at {format_size(offset)}{of}, staged by an earlier run"


class LineReporter:
    """For logs: a plain line every *interval* seconds, no carriage returns.

    Args:
        shard: ``"K/N"`` when the run is one shard of a job array; its lines say so.
        staged: bytes of a batch's files already in staging when its session starts
            (after partials of another upstream version were discarded).
    """

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        shard: str | None = None,
        staged: Callable[[TransferBatch], int] | None = None,
    ) -> None:
        self._write_raw = write
        self._labels_seen: set[str] = set()
        self._interval = interval
        self._clock = clock
        self._last = clock()
        self._totals = _Totals()
        self._tally = TransferTally()
        self._pace = _Pace(self._totals, self._tally, clock)
        self._shard = shard
        self._staged = staged

    def plan_ready(self, plan: Plan) -> None:
        self._totals.start(plan)
        self._pace.restart()
        for note in plan.notes:
            self._write(f"note: {note}")
        if plan:
            self._write(_title(self._shard) + plan_summary(plan))

    def batch_started(self, batch: TransferBatch) -> None:
        self._totals.batch(batch)
        staged = self._staged_by_earlier_run(batch)
        self._write(
            f"{batch.label}: starting transfer of {count(len(batch.files), 'file')}, "
            f"{format_size(batch.total_bytes)}" + (f"; {_staged_words(staged)}" if staged else "")
        )

    def _staged_by_earlier_run(self, batch: TransferBatch) -> int:
        """On a session's first attempt only: a retry finds this run's own partials."""
        if self._staged is None or batch.label in self._labels_seen:
            return 0
        self._labels_seen.add(batch.label)
        return self._staged(batch)

    def progress(self, event: ProgressEvent) -> None:
        self._totals.progress(event)
        resumed = self._tally.add(event)
        if resumed is not None:
            shown = event.path or event.name.strip()
            self._write(_resuming_sentence(shown, resumed, self._totals.size_of(event)))
        self._maybe_line()

    def file_done(self, outcome: FileOutcome) -> None:
        self._totals.done(outcome)
        self._tally.file_done(outcome)
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
        resumed = self._tally.resumed_so_far
        staged = f" ({format_size(resumed)} of it resumed from staging)" if resumed else ""
        where = f" (shard {self._shard})" if self._shard else ""
        self._write(
            f"progress{where}: {t.files_done}/{t.files_total} files, "
            f"{format_size(t.bytes_now())} of {format_size(t.bytes_total)}{staged}, "
            f"{self._pace.words()}"
        )


class _InfoColumn(ProgressColumn):
    """A task's ``info`` field: text, or a function of the task giving the text (drawn
    afresh at every refresh, so that elapsed time moves between events)."""

    def render(self, task: Task) -> Text:
        info = task.fields.get("info", "")
        return Text(info(task) if callable(info) else str(info))


class _SizeColumn(ProgressColumn):
    """``12.0 MiB of 40.0 MiB``, in the units of every other size immsync shows."""

    def render(self, task: Task) -> Text:
        total = "?" if task.total is None else format_size(task.total)
        return Text(f"{format_size(task.completed)} of {total}")


class RichReporter:
    """For terminals: a bytes bar for the run and for each large file in flight, a files
    bar, and a line per running session.

    Args:
        shard: ``"K/N"`` when the run is one shard of a job array; its bar says so.
        staged: bytes of a batch's files already in staging when its session starts
            (after partials of another upstream version were discarded).
    """

    def __init__(
        self,
        console: Console,
        *,
        shard: str | None = None,
        staged: Callable[[TransferBatch], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._console = console
        self._labels_seen: set[str] = set()
        self._totals = _Totals()
        self._tally = TransferTally()
        self._pace = _Pace(self._totals, self._tally, clock)
        self._shard = shard
        self._staged = staged
        # Descriptions hold file names: never read as markup.
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            _SizeColumn(),
            _InfoColumn(),
            console=console,
            transient=True,
        )
        self._files = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            _InfoColumn(),
            console=console,
            transient=True,
        )
        self._bytes_task: TaskID | None = None
        self._files_task: TaskID | None = None
        self._sessions: dict[str, TaskID] = {}
        self._large: dict[str, TaskID] = {}
        """Bytes bars of large files in flight, by the name their progress gives."""
        self._arrived: set[tuple[str, str]] = set()
        """(session, file name) pairs the transport reported at 100%."""
        self._lock = threading.Lock()
        self._live = False

    def plan_ready(self, plan: Plan) -> None:
        self._totals.start(plan)
        self._pace.restart()
        for note in plan.notes:
            self._print(Text(visible(f"note: {note}")))
        if plan:
            self._print(Text(_title(self._shard) + plan_summary(plan)))
        if not plan.to_fetch:
            return
        from rich.console import Group
        from rich.live import Live

        totals = self._totals
        self._bytes_task = self._progress.add_task(
            f"shard {self._shard}" if self._shard else "all files",
            total=totals.bytes_total,
            info=self._run_info,
        )
        self._files_task = self._files.add_task(
            "files", total=totals.files_total, info=_files_info
        )
        self._live_display = Live(
            Group(self._progress, self._files), console=self._console, transient=True
        )
        self._live_display.start()
        self._live = True

    def _run_info(self, task: Task) -> str:
        resumed = self._tally.resumed_so_far
        staged = f" ({format_size(resumed)} resumed)" if resumed else ""
        return f"{staged.strip()} {self._pace.words()}".strip()

    def batch_started(self, batch: TransferBatch) -> None:
        self._totals.batch(batch)
        with self._lock:
            first = batch.label not in self._labels_seen
            self._labels_seen.add(batch.label)
        staged = self._staged(batch) if self._staged is not None and first else 0
        if staged:
            self._print(Text(visible(f"{batch.label}: {_staged_words(staged)}")))
        with self._lock:
            if batch.label not in self._sessions:
                self._sessions[batch.label] = self._files.add_task(
                    visible(batch.label), total=len(batch.files), info=_files_info
                )

    def progress(self, event: ProgressEvent) -> None:
        self._totals.progress(event)
        resumed = self._tally.add(event)
        name = event.name.strip()
        size = self._totals.size_of(event)
        if resumed is not None:
            self._print(Text(visible(_resuming_sentence(event.path or name, resumed, size))))
        if self._bytes_task is not None:
            self._progress.update(self._bytes_task, completed=self._totals.bytes_now())
        if size is not None and size >= LARGE_FILE_BYTES and event.bytes_done is not None:
            with self._lock:
                bar = self._large.get(name)
                if bar is None and event.percent != 100:
                    bar = self._progress.add_task(visible(event.path or name), total=size)
                    self._large[name] = bar
            if bar is not None:
                self._progress.update(bar, completed=event.bytes_done)
        task = self._sessions.get(event.session)
        if task is not None:
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
        self._tally.file_done(outcome)
        with self._lock:
            bar = self._large.pop(_progress_name(outcome.path), None)
        if bar is not None:
            self._progress.remove_task(bar)
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


def _files_info(task: Task) -> str:
    """``3 of 10 files``."""
    return f"{int(task.completed)} of {count(int(task.total or 0), 'file')}"


# -- listing progress ------------------------------------------------------------------


def listing_words(status: ListingStatus) -> str:
    """``listing ImmPort: study 2 of 5 (SDY269), 1234 files so far``."""
    return (
        f"listing ImmPort: study {status.studies_started} of {status.studies_total} "
        f"({status.study}), {count(status.files_seen, 'file')} so far"
    )


class ListingLines:
    """Listing progress for logs: nothing for a listing done within *first_after*
    seconds; then the latest status, and every *interval* seconds again; at the end, one
    line with the totals. Call it with each status; ``finish`` when the listing is over.
    """

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        first_after: float = 1.0,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._first_after = first_after
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._status: ListingStatus | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wrote = False

    def __call__(self, status: ListingStatus) -> None:
        with self._lock:
            self._status = status
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._tick, name="immsync-listing", daemon=True
                )
                self._thread.start()

    def _tick(self) -> None:
        wait = self._first_after
        while not self._stop.wait(wait):
            with self._lock:
                status = self._status
                if status is None or self._stop.is_set():
                    return
                self._wrote = True
                self._write(visible(listing_words(status)))
            wait = self._interval

    def finish(self) -> None:
        """The listing is over (or failed): stop, and sum up if progress was shown."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            thread, status, wrote = self._thread, self._status, self._wrote
        if thread is not None:
            thread.join()
        if wrote and status is not None:
            self._write(
                f"listed {count(status.studies_started, 'study', 'studies')}, "
                f"{count(status.files_seen, 'file')} in "
                f"{format_duration(self._clock() - self._started)}"
            )


class ListingStatusLine:
    """Listing progress for terminals: one line redrawn in place, gone when it is over."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._lock = threading.Lock()
        self._status: Any = None
        self._finished = False

    def __call__(self, status: ListingStatus) -> None:
        text = Text(visible(listing_words(status)))
        with self._lock:
            if self._finished:
                return
            if self._status is None:
                self._status = self._console.status(text)
                self._status.start()
            else:
                self._status.update(text)

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            if self._status is not None:
                self._status.stop()
                self._status = None
