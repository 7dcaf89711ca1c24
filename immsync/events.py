"""A versioned stream of newline-delimited JSON events, for pipelines (``apply --json``).

Every line is one JSON object that starts with the same envelope::

    {"schema": "immsync.events/1", "seq": 3, "time": "2026-01-02T03:04:05.678Z",
     "type": "file_verified", ...}

``type`` is one of ``listing``, ``plan``, ``transfer_started``, ``transfer_finished``,
``transfer_retried``, ``file_verified``, ``file_failed``, ``file_deleted``, ``summary``
and ``error``; the fields of each are in ``schemas/events.schema.json``. A run's last
line is its ``summary`` (the same document ``apply --json`` printed before the stream
existed: ``plan`` and ``result``), or an ``error`` when the run failed before it had
one. Versioning follows Terraform's machine-readable UI: within ``immsync.events/1``
new fields and new event types may appear (consumers ignore what they do not know);
removing or changing a field bumps the version.

The stream reports what the run *did*; the human progress lines still go to stderr,
so a CI log stays readable while a script reads stdout.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ImmsyncError
from .lockfile import write_text_atomic
from .model import Action, FileOutcome, ListingStatus, Plan, ProgressEvent, TransferBatch
from .ports import Reporter

SCHEMA = "immsync.events/1"
"""The value of every event's ``schema`` field."""

EVENT_TYPES = (
    "listing",
    "plan",
    "transfer_started",
    "transfer_finished",
    "transfer_retried",
    "file_verified",
    "file_failed",
    "file_deleted",
    "summary",
    "error",
)


def utc_now() -> datetime:
    return datetime.now(UTC)


class EventStream:
    """Writes events, one JSON object per line, in the order they happen. Thread-safe.

    Args:
        write: receives each line without its newline (the CLI echoes it to stdout
            and flushes, so a pipeline sees every event as it happens).
        clock: the time stamped on each event.
    """

    def __init__(
        self, write: Callable[[str], None], *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._write = write
        self._clock = clock
        self._lock = threading.Lock()
        self._seq = 0
        self.types_sent: set[str] = set()

    def emit(self, type_: str, fields: Mapping[str, Any] | None = None) -> None:
        """Write one event of *type_* (one of ``EVENT_TYPES``) carrying *fields*."""
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_!r}")
        with self._lock:
            self._seq += 1
            stamp = self._clock().astimezone(UTC)
            event: dict[str, Any] = {
                "schema": SCHEMA,
                "seq": self._seq,
                "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "type": type_,
            }
            event.update(fields or {})
            self._write(json.dumps(event, separators=(",", ":")))
            self.types_sent.add(type_)

    @property
    def finished(self) -> bool:
        """Whether a ``summary`` or ``error`` event has been written (the stream's end)."""
        return bool(self.types_sent & {"summary", "error"})

    def summary(self, document: Mapping[str, Any]) -> None:
        """The run's closing event: *document* is ``{"plan": ..., "result": ...}``."""
        self.emit("summary", document)

    def error(self, exc: ImmsyncError) -> None:
        """The closing event of a run that failed before it could summarise."""
        self.emit("error", error_to_json(exc))


def listing_to_json(status: ListingStatus) -> dict[str, Any]:
    """The fields of a ``listing`` event: how far the listing of ImmPort has come."""
    return {
        "study": status.study,
        "studies_started": status.studies_started,
        "studies_total": status.studies_total,
        "files_seen": status.files_seen,
    }


def error_to_json(exc: ImmsyncError) -> dict[str, Any]:
    """An error as machine-readable output: code, message, hint, and each finding."""
    doc: dict[str, Any] = {
        "exit_code": int(exc.exit_code),
        "message": exc.message,
        "hint": exc.hint,
    }
    if exc.details:
        doc["problems"] = list(exc.details)
    return doc


@dataclass(slots=True)
class _Session:
    """One attempt of one batch, from its start until every file of it is settled."""

    attempt: int
    pending: set[str]
    verified: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class EventReporter:
    """A ``ports.Reporter`` that turns the run's callbacks into events.

    The reporter protocol has no "session ended" callback, so ``transfer_finished`` is
    derived: a session is finished when each of its files was verified or failed, or
    when the run decides to retry it. Sessions still open when the run stops (an
    interrupt) are closed by ``close`` as ``interrupted``.

    Args:
        stream: where events go.
        plan_document: the JSON form of a plan (the CLI passes ``render.plan_to_json``
            with the listing's problems), so the ``plan`` event matches ``plan --json``.
    """

    def __init__(
        self, stream: EventStream, *, plan_document: Callable[[Plan], dict[str, Any]]
    ) -> None:
        self._stream = stream
        self._plan_document = plan_document
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._open: dict[str, _Session] = {}
        self._owner: dict[str, str] = {}
        """Path -> label of the open session that carries it."""

    def plan_ready(self, plan: Plan) -> None:
        self._stream.emit("plan", {"plan": self._plan_document(plan)})

    def batch_started(self, batch: TransferBatch) -> None:
        with self._lock:
            attempt = self._attempts.get(batch.label, 0) + 1
            self._attempts[batch.label] = attempt
            paths = {f.path for f in batch.files}
            self._open[batch.label] = _Session(attempt, paths)
            for path in paths:
                self._owner[path] = batch.label
        self._stream.emit(
            "transfer_started",
            {
                "label": batch.label,
                "attempt": attempt,
                "files": len(batch.files),
                "bytes": batch.total_bytes,
            },
        )

    def progress(self, event: ProgressEvent) -> None:
        # Per-chunk progress would flood a pipeline; the human reporter shows it.
        pass

    def file_done(self, outcome: FileOutcome) -> None:
        if outcome.action is Action.DELETE:
            if outcome.ok:
                self._stream.emit("file_deleted", {"path": outcome.path, "size": outcome.size})
            else:
                self._file_failed(outcome)
            return
        if outcome.ok:
            self._stream.emit(
                "file_verified",
                {"path": outcome.path, "action": outcome.action.value, "size": outcome.size},
            )
        else:
            self._file_failed(outcome)
        with self._lock:
            label = self._owner.pop(outcome.path, None)
            session = self._open.get(label) if label is not None else None
            if label is None or session is None:
                return
            session.pending.discard(outcome.path)
            if outcome.ok:
                session.verified += 1
            else:
                session.failed += 1
                if outcome.error and outcome.error not in session.errors:
                    session.errors.append(outcome.error)
            if session.pending:
                return
            del self._open[label]
        status = "ok" if session.failed == 0 else "failed"
        self._finished(label, session, status, session.errors[0] if session.errors else None)

    def retrying(self, batch: TransferBatch, error: ImmsyncError, delay: float) -> None:
        with self._lock:
            session = self._open.pop(batch.label, None)
            remaining = len(session.pending) if session is not None else len(batch.files)
            if session is not None:
                for path in session.pending:
                    self._owner.pop(path, None)
            attempt = self._attempts.get(batch.label, 0)
        if session is not None:
            self._finished(batch.label, session, "failed", error.message)
        self._stream.emit(
            "transfer_retried",
            {
                "label": batch.label,
                "attempt": attempt + 1,
                "files": remaining,
                "delay_seconds": round(delay, 3),
                "error": error.message,
            },
        )

    def close(self) -> None:
        """Close sessions a stopped run left open, as ``interrupted``."""
        with self._lock:
            left = sorted(self._open.items())
            self._open.clear()
            self._owner.clear()
        for label, session in left:
            self._finished(label, session, "interrupted", None)

    def _file_failed(self, outcome: FileOutcome) -> None:
        self._stream.emit(
            "file_failed",
            {"path": outcome.path, "action": outcome.action.value, "error": outcome.error},
        )

    def _finished(self, label: str, session: _Session, status: str, error: str | None) -> None:
        self._stream.emit(
            "transfer_finished",
            {
                "label": label,
                "attempt": session.attempt,
                "status": status,
                "files_verified": session.verified,
                "files_failed": session.failed,
                "files_incomplete": len(session.pending),
                "error": error,
            },
        )


class TeeReporter:
    """Passes every callback to several reporters, in order (events, then the human log)."""

    def __init__(self, reporters: Sequence[Reporter]) -> None:
        self._reporters = tuple(reporters)

    def plan_ready(self, plan: Plan) -> None:
        for r in self._reporters:
            r.plan_ready(plan)

    def batch_started(self, batch: TransferBatch) -> None:
        for r in self._reporters:
            r.batch_started(batch)

    def progress(self, event: ProgressEvent) -> None:
        for r in self._reporters:
            r.progress(event)

    def file_done(self, outcome: FileOutcome) -> None:
        for r in self._reporters:
            r.file_done(outcome)

    def retrying(self, batch: TransferBatch, error: ImmsyncError, delay: float) -> None:
        for r in self._reporters:
            r.retrying(batch, error, delay)

    def close(self) -> None:
        for r in self._reporters:
            r.close()


def write_summary_file(path: Path, document: Mapping[str, Any]) -> None:
    """Write the run's summary document to *path* atomically (``--summary-file``).

    The document is the ``summary`` event without its envelope: ``plan`` and ``result``.
    """
    write_text_atomic(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


@functools.cache
def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one event line, shipped in the package.

    Cached and shared between callers: do not modify it.
    """
    resource = resources.files("immsync") / "schemas" / "events.schema.json"
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return schema
