"""In-process doubles for testing code that drives a sync: no server, no subprocess.

``FakeCatalog`` stands in for ImmPort's listing (``immsync.ports.RemoteCatalog``),
``FakeTransfer`` for a transport (``immsync.ports.Transfer``) and ``FakeClock`` for
time. Together they let a test build ``immsync.sync.Applier`` directly and pin what it
does, batch by batch and wait by wait, in milliseconds::

    from immsync.errors import Failure, TransferError
    from immsync.sync import Applier, SyncOptions, survey
    from immsync.testing.fakes import FakeCatalog, FakeClock, FakeTransfer

    catalog = FakeCatalog.of({"SDY1/StudyFiles/a.txt": b"hello"})
    transfer = FakeTransfer(catalog.content)
    transfer.fail_on_call(1, TransferError("stalled", kind=Failure.TRANSIENT))
    clock = FakeClock()
    found = survey(manifest, catalog, store)   # a Manifest and a StateStore of your own
    options = SyncOptions(session_stagger=0)   # see FakeClock
    Applier(manifest, store, transfer, options=options, sleep=clock.sleep,
            clock=clock).run(found)
    assert transfer.calls == [("SDY1/StudyFiles/a.txt",), ("SDY1/StudyFiles/a.txt",)]
    assert clock.sleeps == [...]   # the back-off the run waited

They only use immsync's public names, so they keep working for users' tests as the
product's internals change. For the real HTTP and ``ascp`` code paths, use
``immsync.testing.emulator`` and ``immsync.testing.fake_ascp`` instead.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from immsync.errors import Failure, ImmsyncError, RemoteNotFound, TransferError
from immsync.model import (
    Caveats,
    ProgressCallback,
    ProgressEvent,
    RemoteFile,
    TransferBatch,
)
from immsync.staging import staged_name

if TYPE_CHECKING:
    from immsync.ports import RemoteCatalog, Transfer

DEFAULT_MTIME = "2017-06-15T13:06:07Z"
"""The modification time ``FakeCatalog.of`` gives files unless told otherwise."""

Content = Mapping[str, bytes] | Callable[[RemoteFile], bytes]
"""What a ``FakeTransfer`` delivers: bytes by destination-relative path, or a function
of the file asked for."""


def content_of(path: str, size: int) -> bytes:
    """Deterministic bytes for a made-up file: the same path and size give the same bytes."""
    seed = hashlib.sha256(f"{path}\0{size}".encode()).digest()
    return random.Random(seed).randbytes(size)


def remote_file(
    path: str, data: bytes, *, mtime: str = DEFAULT_MTIME, md5: bool = True
) -> RemoteFile:
    """The ``RemoteFile`` ImmPort would list for *data* at *path* (with its MD5 if *md5*)."""
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest() if md5 else None
    return RemoteFile(path, len(data), mtime, digest)


# -- the catalog ------------------------------------------------------------------------


class FakeCatalog:
    """A ``RemoteCatalog`` over a fixed set of files.

    ``walk(root)`` returns the files at or below *root* (``/SDY1/StudyFiles``), sorted
    by path, or raises ``RemoteNotFound`` when there are none. ``study_checksums``
    returns each study's ``(md5, size)`` for the files that have an MD5, or None where
    none has one; ``caveats`` names the files without one, and those in
    ``unavailable`` (path -> why) as listed but not downloadable. To make a listing
    fail, put its root (or its accession) in ``failing`` with the error to raise:
    ``catalog.failing["SDY2"] = ApiError(...)``.

    ``walks`` and ``checksum_requests`` record every call, in order.
    """

    def __init__(
        self,
        files: Iterable[RemoteFile],
        *,
        content: Mapping[str, bytes] | None = None,
    ) -> None:
        self.files: dict[str, RemoteFile] = {f.path: f for f in files}
        self.content: dict[str, bytes] = dict(content or {})
        """The bytes of each file, when known (``FakeCatalog.of`` fills it in):
        pass it to ``FakeTransfer`` so that what arrives matches what is listed."""
        self.failing: dict[str, ImmsyncError] = {}
        self.unavailable: dict[str, str] = {}
        self.walks: list[str] = []
        self.checksum_requests: list[str] = []
        self._lock = threading.Lock()

    @classmethod
    def of(
        cls, content: Mapping[str, bytes], *, mtime: str = DEFAULT_MTIME, md5: bool = True
    ) -> FakeCatalog:
        """A catalog listing *content* (path -> bytes), each with its MD5 unless not *md5*."""
        files = [remote_file(p, data, mtime=mtime, md5=md5) for p, data in content.items()]
        return cls(files, content=content)

    def put(self, path: str, data: bytes, *, mtime: str = DEFAULT_MTIME, md5: bool = True) -> None:
        """Add or replace a file upstream (a new version, for instance)."""
        with self._lock:
            self.files[path] = remote_file(path, data, mtime=mtime, md5=md5)
            self.content[path] = data

    def remove(self, path: str) -> None:
        """The file is gone upstream."""
        with self._lock:
            self.files.pop(path, None)
            self.content.pop(path, None)

    def walk(
        self,
        root: str,
        *,
        workers: int = 8,
        on_unsafe: Callable[[str, str], None] | None = None,
    ) -> list[RemoteFile]:
        start = root.strip("/")
        with self._lock:
            self.walks.append(root)
            error = self.failing.get(start) or self.failing.get(start.partition("/")[0])
            found = [
                f for p, f in self.files.items() if p == start or p.startswith(start + "/")
            ]
        if error is not None:
            raise error
        if not found:
            raise RemoteNotFound(f"nothing at {root}")
        return sorted(found, key=lambda f: f.path)

    def study_checksums(self, accession: str) -> dict[str, tuple[str, int]] | None:
        with self._lock:
            self.checksum_requests.append(accession)
            if accession in self.failing:
                return None
            prefix = accession + "/"
            found = {
                p: (f.md5, f.size)
                for p, f in self.files.items()
                if p.startswith(prefix) and f.md5 is not None
            }
        return found or None

    def caveats(self, accession: str) -> Caveats:
        prefix = accession + "/"
        with self._lock:
            unavailable = {p: why for p, why in self.unavailable.items() if p.startswith(prefix)}
            without_md5 = frozenset(
                p for p, f in self.files.items() if p.startswith(prefix) and f.md5 is None
            )
        return Caveats(unavailable, without_md5)

    def paths_near(self, root: str) -> list[str]:
        """Every path of *root*'s study: what ImmPort's manifest would offer as suggestions."""
        prefix = root.strip("/").partition("/")[0] + "/"
        with self._lock:
            return sorted(p for p in self.files if p.startswith(prefix))


# -- the transport ----------------------------------------------------------------------


@dataclass(slots=True)
class _Cue:
    """One planned misbehaviour: which calls it hits, and what it does to them."""

    action: str
    """``"raise"``, ``"fail_path"``, ``"short"``, ``"corrupt"`` or ``"lose"``."""
    call: int | None = None
    paths: frozenset[str] = frozenset()
    error: TransferError | None = None
    times: int = 1
    arrived: frozenset[str] | None = None
    """For ``"raise"``: the files written before the error (None: all of them)."""


@dataclass(slots=True)
class _Call:
    batch: TransferBatch
    raised: TransferError | None = None
    written: list[str] = field(default_factory=list)


class FakeTransfer:
    """A ``Transfer`` that writes the right bytes into staging and fails on cue.

    Each ``fetch(batch, on_progress)`` is recorded (``batches``; ``calls`` gives each
    call's paths), then every file of the batch is written to
    ``batch.staging / staged_name(file.path)`` through a ``.partial`` file, as the real
    transports do, with a progress event at 0 % and at 100 % (named by the file's base name).

    The bytes come from *content*: a mapping from path to bytes (``FakeCatalog.content``)
    or a function of the ``RemoteFile``. Without one, each file gets ``content_of(path,
    size)``, which matches a ``RemoteFile`` whose MD5 is None.

    Cues, each returning the transfer so they chain:

    - ``fail_on_call(n, error, arrived=...)``: the n-th call (1-based) writes the
      files in *arrived* (default: none; None: all), then raises *error*;
    - ``fail_for(path, error, times=k)``: the next *k* calls that include *path* write
      the other files, leave half of *path* as ``<path>.partial``, then raise *error*;
    - ``leave_short(path, times=k)``: *path* is written half long and the call
      succeeds, as a transport that claims success too early;
    - ``corrupt(path, times=k)``: *path* is written at its size with one byte flipped;
    - ``lose(path, times=k)``: *path* is not written at all, yet the call succeeds.

    With ``progress=False`` no progress event is sent, as a transport that reports none.

    ``terminate()`` makes every later call raise ``TransferError(kind=Failure.INTERRUPTED)``
    without writing anything, as the real transports do; ``on_fetch``, called with each
    batch before anything is written, lets a test act in the middle of a run (cancel
    it, change upstream). Thread-safe: the Applier calls ``fetch`` from several threads.
    """

    name = "fake"

    def __init__(
        self,
        content: Content | None = None,
        *,
        on_fetch: Callable[[TransferBatch], None] | None = None,
        progress: bool = True,
    ) -> None:
        self._content = content
        self.on_fetch = on_fetch
        self.progress = progress
        self.batches: list[TransferBatch] = []
        self.terminated = 0
        """How many times ``terminate`` was called."""
        self.closed = False
        self._records: list[_Call] = []
        self._cues: list[_Cue] = []
        self._lock = threading.Lock()

    # -- cues -----------------------------------------------------------------------

    def fail_on_call(
        self, n: int, error: TransferError, *, arrived: Collection[str] | None = ()
    ) -> FakeTransfer:
        arrived_set = None if arrived is None else frozenset(arrived)
        self._cues.append(_Cue("raise", call=n, error=error, arrived=arrived_set))
        return self

    def fail_for(self, path: str, error: TransferError, *, times: int = 1) -> FakeTransfer:
        self._cues.append(_Cue("fail_path", paths=frozenset({path}), error=error, times=times))
        return self

    def leave_short(self, path: str, *, times: int = 1) -> FakeTransfer:
        self._cues.append(_Cue("short", paths=frozenset({path}), times=times))
        return self

    def corrupt(self, path: str, *, times: int = 1) -> FakeTransfer:
        self._cues.append(_Cue("corrupt", paths=frozenset({path}), times=times))
        return self

    def lose(self, path: str, *, times: int = 1) -> FakeTransfer:
        self._cues.append(_Cue("lose", paths=frozenset({path}), times=times))
        return self

    # -- what happened --------------------------------------------------------------

    @property
    def calls(self) -> list[tuple[str, ...]]:
        """The paths of each call's batch, in the order the calls came."""
        with self._lock:
            return [tuple(f.path for f in r.batch.files) for r in self._records]

    @property
    def errors(self) -> list[TransferError | None]:
        """What each call raised (None: it succeeded), in the order the calls came."""
        with self._lock:
            return [r.raised for r in self._records]

    def times_fetched(self, path: str) -> int:
        """How many calls asked for *path*."""
        return sum(path in call for call in self.calls)

    # -- the Transfer protocol ------------------------------------------------------

    def fetch(self, batch: TransferBatch, on_progress: ProgressCallback) -> None:
        record = _Call(batch)
        with self._lock:
            self.batches.append(batch)
            self._records.append(record)
            number = len(self._records)
            stopped = self.terminated > 0
            raising = self._take_call_cue(number)
            arriving = [
                f
                for f in batch.files
                if raising is None or raising.arrived is None or f.path in raising.arrived
            ]
            per_path = {f.path: self._take_path_cue(f.path) for f in arriving}
        if stopped:
            record.raised = TransferError(
                f"{batch.label or 'fake transfer'} was stopped", kind=Failure.INTERRUPTED
            )
            raise record.raised
        if self.on_fetch is not None:
            self.on_fetch(batch)
        if not self.progress:
            on_progress = _ignore
        failed: TransferError | None = None
        for file in arriving:
            cue = per_path[file.path]
            if cue is not None and cue.action == "fail_path":
                half = self._bytes(file)[: file.size // 2]
                self._write(batch, file, half, done=False, on_progress=on_progress)
                failed = failed or cue.error
                continue
            if cue is not None and cue.action == "lose":
                continue
            data = self._bytes(file)
            if cue is not None and cue.action == "short":
                data = data[: len(data) // 2]
            elif cue is not None and cue.action == "corrupt" and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            self._write(batch, file, data, done=True, on_progress=on_progress)
            record.written.append(file.path)
        error = raising.error if raising is not None else failed
        if error is not None:
            record.raised = error
            raise error

    def terminate(self) -> None:
        """Stop: every later ``fetch`` raises ``Failure.INTERRUPTED``. Safe from any thread."""
        with self._lock:
            self.terminated += 1

    def close(self) -> None:
        self.closed = True

    # -- inside ---------------------------------------------------------------------

    def _take_call_cue(self, number: int) -> _Cue | None:
        for cue in self._cues:
            if cue.action == "raise" and cue.call == number:
                self._cues.remove(cue)
                return cue
        return None

    def _take_path_cue(self, path: str) -> _Cue | None:
        for cue in self._cues:
            if cue.call is None and path in cue.paths and cue.times > 0:
                cue.times -= 1
                return cue
        return None

    def _bytes(self, file: RemoteFile) -> bytes:
        if self._content is None:
            return content_of(file.path, file.size)
        if callable(self._content):
            return self._content(file)
        return self._content[file.path]

    def _write(
        self,
        batch: TransferBatch,
        file: RemoteFile,
        data: bytes,
        *,
        done: bool,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        target = _inside(batch.staging, file.path)
        name = PurePosixPath(file.path).name
        session = batch.label or "fake"
        if on_progress is not None:
            on_progress(ProgressEvent(session=session, name=name, percent=0, bytes_done=0))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        if not done:
            return
        os.replace(partial, target)
        if on_progress is not None:
            on_progress(
                ProgressEvent(session=session, name=name, percent=100, bytes_done=len(data))
            )


def _ignore(event: ProgressEvent) -> None:
    pass


def _inside(staging: Path, path: str) -> Path:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise TransferError(f"refusing to stage {path!r}: not a plain relative path")
    return staging.joinpath(*staged_name(path).split("/"))


# -- time -------------------------------------------------------------------------------


class FakeClock:
    """Monotonic time that moves only when told to.

    Call it for the time (it is a ``clock`` as ``Applier`` and ``SessionGate`` take
    one); ``sleep(s)`` records *s* in ``sleeps`` and moves time on by it, so a
    back-off is observed without being waited; ``advance(s)`` moves time on silently.

    The Applier spaces session starts by its clock (``SyncOptions.session_stagger``)
    unless the previous session reported progress: with a FakeClock, set the stagger
    to 0, or a session that fails before any progress keeps the next one waiting.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.monotonic()

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock never goes back")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(0.0, seconds)


if TYPE_CHECKING:
    # mypy keeps the fakes in step with the protocols they stand in for.
    def _conforms(catalog: FakeCatalog, transfer: FakeTransfer) -> tuple[RemoteCatalog, Transfer]:
        return catalog, transfer


__all__ = [
    "DEFAULT_MTIME",
    "Content",
    "FakeCatalog",
    "FakeClock",
    "FakeTransfer",
    "content_of",
    "remote_file",
]
