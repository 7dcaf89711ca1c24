"""Carrying out a plan: sessions, verifying, placing, recording, deleting."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..decide import Step, decide
from ..errors import (
    DISK_UNUSABLE,
    ChecksumMismatch,
    Failure,
    ImmsyncError,
    LocalIOError,
    StateError,
    TransferError,
    UnsafePath,
)
from ..hashing import Digests, file_digests
from ..model import (
    Action,
    FileOutcome,
    Manifest,
    Plan,
    PlanItem,
    ProgressEvent,
    RemoteFile,
    Report,
    StateEntry,
    TransferBatch,
)
from ..paths import resolve_inside
from ..ports import Reporter, Transfer
from ..retry import RetryPolicy, delays
from ..staging import IN_TRANSIT_SUFFIXES, STAGING_SUFFIXES, staged_name
from ..state import STATE_DIRNAME, StateStore
from ..statedir import prepare_parents, private_folder, remove_files_below
from ..units import count
from .batches import SessionGate, make_batches
from .survey import Survey, check_prune, is_regular_mode

log = logging.getLogger(__name__)

STAGING_DIRNAME = "staging"
# What a transport may leave of one file in staging: the file and its suffixed forms.
_STAGED_SUFFIXES = ("", *STAGING_SUFFIXES)


class NullReporter:
    """A ``Reporter`` that shows nothing (``-q`` without ``--json``)."""

    def plan_ready(self, plan: Plan) -> None:
        pass

    def batch_started(self, batch: TransferBatch) -> None:
        pass

    def progress(self, event: ProgressEvent) -> None:
        pass

    def file_done(self, outcome: FileOutcome) -> None:
        pass

    def retrying(self, batch: TransferBatch, error: ImmsyncError, delay: float) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class SyncOptions:
    jobs: int = 2
    """Transfer sessions run at once."""
    prune: bool = False
    dry_run: bool = False
    batch_max_files: int = 500
    batch_max_bytes: int = 20 * 1024**3
    list_workers: int = 8
    max_delete: int | None = None
    """Refuse a prune that would delete more files than this (None: no limit)."""
    max_delete_share: float | None = None
    """Refuse a prune that would delete more than this share of the recorded files."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    session_stagger: float = 1.0
    """Seconds between the starts of two transfer sessions at most: a session starts
    sooner once the one before it has connected (see ``SessionGate``)."""
    split_min_bytes: int = 64 * 1024**2
    """Split work across parallel sessions only in shares of at least this many bytes:
    below it, one more session start costs more than it saves."""


class Applier:
    """Carries out a plan. One instance per run; ``run`` may be called once."""

    def __init__(
        self,
        manifest: Manifest,
        store: StateStore,
        transfer: Transfer,
        *,
        options: SyncOptions,
        reporter: Reporter | None = None,
        cancel: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        staging: Path | None = None,
    ) -> None:
        """*sleep* defaults to a wait that a cancel or fatal error cuts short.

        *staging* defaults to ``<destination>/.immsync/staging``; each shard has its own.
        """
        self.manifest = manifest
        self.destination = manifest.destination
        self.store = store
        self.transfer = transfer
        self.options = options
        self.reporter: Reporter = reporter or NullReporter()
        self.cancel = cancel or threading.Event()
        # A retry delay can last a minute: an interrupted run must not sit it out.
        self._sleep = sleep or self._wait_unless_stopped
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        # One event ends the run early, whether the user cancelled or an error is fatal.
        self._stop = self.cancel
        self._fatal: ImmsyncError | None = None
        self.staging = staging or self.destination / STATE_DIRNAME / STAGING_DIRNAME
        self._staging_had_files = private_folder(self.staging, create=False) and any(
            self.staging.iterdir()
        )

    def run(self, found: Survey) -> Report:
        started = self._clock()
        plan = found.plan
        report = Report(plan=plan, dry_run=self.options.dry_run)
        self.reporter.plan_ready(plan)
        if self.options.dry_run:
            return report
        deletions = plan.to_delete
        self._check_delete_guard(deletions, len(found.state))
        if found.selection is not None:
            # Before any transfer: a file fetched is then never left unclaimed, for
            # another manifest on this destination to prune, even if the run stops.
            self.store.replace_selection(found.selection)
        self._refresh_fingerprints(plan, found)
        fetches = plan.to_fetch
        if fetches:
            self._fetch_all(fetches, report)
        if deletions and not self.cancel.is_set():
            self._delete(deletions, report)
        self._tidy_staging(keep={o.path for o in report.failures})
        report.elapsed = self._clock() - started
        if self._fatal is not None:
            done = sum(1 for o in report.outcomes if o.ok)
            stopped = (
                f"stopped: {self._fatal.message}; {count(done, 'file')} completed and recorded "
                "before it"
            )
            fatal = self._fatal
            if isinstance(fatal, TransferError) and not fatal.kind.stops_run:
                raise TransferError(
                    stopped, reason=fatal.reason, kind=fatal.kind, hint=fatal.hint
                )
            raise LocalIOError(
                stopped,
                hint="free some space on the destination (partial downloads are kept in "
                f"{self.staging} and resume), then run the same command again",
            )
        return report

    def _check_delete_guard(self, deletions: Sequence[PlanItem], recorded: int) -> None:
        check_prune(
            len(deletions),
            recorded,
            max_count=self.options.max_delete,
            max_share=self.options.max_delete_share,
        )

    def _refresh_fingerprints(self, plan: Plan, found: Survey) -> None:
        """Re-record files whose timestamp moved but whose content hashed the same."""
        # Only a file whose fingerprint moved was hashed (has a checksum) while observing.
        hashed = {p: o for p, o in found.observed.items() if o is not None and o.checksum}
        if not hashed:
            return
        refreshed = []
        for item in plan.items:
            local = hashed.get(item.path)
            if local is None or item.action is not Action.UNCHANGED:
                continue
            entry = found.state.get(item.path)
            if entry and (local.size, local.mtime_ns) != (entry.size, entry.mtime_ns):
                refreshed.append(
                    StateEntry(
                        entry.path,
                        local.size,
                        local.mtime_ns,
                        entry.checksum,
                        entry.remote_size,
                        entry.remote_mtime,
                        entry.remote_md5,
                    )
                )
        with self._lock:
            self.store.record(refreshed)

    # -- transfers --------------------------------------------------------------------

    def _fetch_all(self, items: Sequence[PlanItem], report: Report) -> None:
        batches = make_batches(
            items,
            max_files=self.options.batch_max_files,
            max_bytes=self.options.batch_max_bytes,
            min_batches=min(
                self.options.jobs,
                max(1, sum(i.size for i in items) // max(1, self.options.split_min_bytes)),
            ),
        )
        total = len(batches)
        jobs = max(1, min(self.options.jobs, total))
        gate = SessionGate(
            jobs,
            stagger=self.options.session_stagger,
            cancel=self._stop,
            clock=self._clock,
        )
        with (
            ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="immsync-transfer") as pool,
            ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="immsync-hash") as hasher,
        ):
            futures = [
                pool.submit(self._run_batch, batch, f"batch {n}/{total}", report, gate, hasher)
                for n, batch in enumerate(batches, 1)
            ]
            for future in futures:
                future.result()

    def _run_batch(
        self,
        items: list[PlanItem],
        label: str,
        report: Report,
        gate: SessionGate,
        hasher: ThreadPoolExecutor,
    ) -> None:
        try:
            self._run_batch_attempts(items, label, report, gate, hasher)
        except BaseException:
            # Anything unexpected (say the state became unwritable) stops every other
            # batch too: carrying on would only pile up unrecorded transfers.
            self._abort()
            raise

    def _run_batch_attempts(
        self,
        items: list[PlanItem],
        label: str,
        report: Report,
        gate: SessionGate,
        hasher: ThreadPoolExecutor,
    ) -> None:
        pending = {item.path: item for item in items}
        # Transfers write only into folders checked to be ours, never through a link.
        prepare_parents(self.staging, map(staged_name, pending))
        stuck = self._discard_stale_staging(
            [item.remote for item in items if item.remote is not None]
        )
        for path, problem in stuck.items():
            self._fail(pending.pop(path), report, problem)
        backoff = delays(self.options.retry, self._rng)
        checksum_retries: set[str] = set()
        attempt = 0
        while pending and not self._stop.is_set():
            attempt += 1
            files = tuple(item.remote for item in pending.values() if item.remote is not None)
            batch = TransferBatch(files=files, staging=self.staging, label=label)
            session = self._session(batch, report, gate, hasher)
            if session is None:
                return  # the run was stopped before this session could start
            error, concurrent, hashed = session
            # Whatever arrived complete is verified and kept, even if the session failed.
            for path in list(pending):
                collected = self._collect(
                    pending[path],
                    report,
                    checksum_retries,
                    finished=error is None,
                    hashed=hashed.get(path),
                )
                if collected is not None:
                    del pending[path]
            if not pending or self._stop.is_set():
                return
            failure = error or TransferError(
                f"the transfer reported success but {count(len(pending), 'file')} did not arrive "
                "complete",
                kind=Failure.TRANSIENT,
            )
            step = decide(failure.kind, concurrent=concurrent, session_limit=gate.limit)
            if step is Step.STOP_RUN:
                # Every other session would fail alike (no space left; a key the server
                # refuses even to a lone session): stop now, keep what is done.
                self._fatal = failure
                self._abort()
                for item in pending.values():
                    self._fail(item, report, failure.message)
                return
            if step is Step.RETRY_WITH_FEWER_SESSIONS:
                limit = gate.reduce()
                log.warning(
                    "%s: the Aspera server refused a session while %d ran; "
                    "lowering parallel sessions to %d",
                    label,
                    concurrent,
                    limit,
                )
            delay = next(backoff, None) if step is not Step.GIVE_UP else None
            if delay is None:
                for item in pending.values():
                    self._fail(item, report, failure.message)
                return
            retry_error = failure
            remaining = tuple(i.remote for i in pending.values() if i.remote is not None)
            self.reporter.retrying(
                TransferBatch(files=remaining, staging=batch.staging, label=label),
                retry_error,
                delay,
            )
            # INFO, not WARNING: the reporter already shows the retry to the user; the
            # log line carries the attempt count for -v and for log files.
            log.info(
                "%s: retrying %d file(s) in %.1f s (attempt %d of %d) after: %s",
                label,
                len(pending),
                delay,
                attempt + 1,
                self.options.retry.attempts,
                retry_error.message,
            )
            self._sleep(delay)

    def _session(
        self,
        batch: TransferBatch,
        report: Report,
        gate: SessionGate,
        hasher: ThreadPoolExecutor,
    ) -> tuple[TransferError | None, int, dict[str, _Hashed]] | None:
        """One transfer session: ``(its failure or None, sessions beside it, early hashes)``.

        None when the gate is closed (the run was stopped) before it could start.
        """
        error: TransferError | None = None
        early = _EarlyHashes(self.staging, batch.files, hasher)
        with gate.session() as slot:
            if slot is None:
                return None
            concurrent = gate.concurrent
            self.reporter.batch_started(batch)
            with self._lock:
                report.sessions += 1

            def on_progress(event: ProgressEvent) -> None:
                slot.connected()
                self.reporter.progress(event)
                if event.percent == 100:
                    early.file_done(event.name)

            try:
                self.transfer.fetch(batch, on_progress)
            except TransferError as exc:
                error = exc
                # Sessions started after this one ran beside it too: a refusal is
                # "alone" only if none ran when it started nor when it failed.
                concurrent = max(concurrent, gate.concurrent)
        return error, concurrent, early.results()

    def _discard_stale_staging(self, files: Sequence[RemoteFile]) -> dict[str, str]:
        """Never resume a partial download of another upstream version of a file.

        Returns:
            The paths whose leftovers could not be removed, with why: they are not
            fetched, since a transport would resume the other version's bytes.
        """
        stale = self.store.claim_staging([(f.path, f.size, f.mtime, f.md5) for f in files])
        stuck: dict[str, str] = {}
        if not self._staging_had_files:
            return stuck
        for path in stale:
            base = self.staging / staged_name(path)
            for suffix in _STAGED_SUFFIXES:
                leftover = base.with_name(base.name + suffix)
                try:
                    leftover.unlink(missing_ok=True)
                except OSError as exc:
                    stuck[path] = (
                        f"cannot remove the download of another version, {leftover}: "
                        f"{exc.strerror or exc}"
                    )
        return stuck

    def _wait_unless_stopped(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _abort(self) -> None:
        self._stop.set()
        self.transfer.terminate()

    def _collect(
        self,
        item: PlanItem,
        report: Report,
        checksum_retries: set[str],
        *,
        finished: bool,
        hashed: _Hashed | None = None,
    ) -> FileOutcome | None:
        """Verify, place and record one staged file; None if it has not arrived complete.

        *finished*: the session reported success, so a short file is not a partial
        still arriving but a truncated one: a size mismatch. *hashed*: its digests,
        taken while the session still ran, used if the staged file is still that one.
        """
        remote = item.remote
        assert remote is not None
        staged = self.staging / staged_name(remote.path)
        try:
            st = staged.lstat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            return self._fail(item, report, f"cannot examine {staged}: {exc.strerror or exc}")
        if not is_regular_mode(st.st_mode):
            return self._fail(item, report, f"the transfer left a non-file at {staged}")
        if st.st_size < remote.size and not finished:
            return None  # partial: kept in staging so the next attempt resumes it
        try:
            outcome = self._verify_and_place(
                item, remote, staged, hashed if hashed and hashed.describes(st) else None
            )
        except ChecksumMismatch as exc:
            with contextlib.suppress(OSError):  # else overwritten, or fails once more
                staged.unlink(missing_ok=True)
            if remote.path not in checksum_retries:
                checksum_retries.add(remote.path)
                log.warning("%s; fetching it once more", exc.message)
                return None
            return self._fail(item, report, _without_path(exc.message, remote.path))
        except (LocalIOError, UnsafePath) as exc:
            return self._fail(item, report, _without_path(exc.message, remote.path))
        except OSError as exc:
            # Unexpected, and about this file alone (no run-wide cause is known): the
            # file fails, the run goes on.
            return self._fail(item, report, f"cannot place it: {exc.strerror or exc}")
        with self._lock:
            report.outcomes.append(outcome)
        self.reporter.file_done(outcome)
        return outcome

    def _verify_and_place(
        self, item: PlanItem, remote: RemoteFile, staged: Path, hashed: _Hashed | None
    ) -> FileOutcome:
        if hashed is not None:
            digests = hashed.digests
        else:
            try:
                digests = file_digests(staged, md5=remote.md5 is not None)
            except OSError as exc:
                raise LocalIOError(
                    f"{remote.path}: cannot read the download {staged}: {exc.strerror or exc}"
                ) from exc
        if digests.size != remote.size:
            raise ChecksumMismatch(
                f"{remote.path}: size mismatch: expected {remote.size} bytes, "
                f"received {digests.size}; the download was deleted"
            )
        if remote.md5 is not None and digests.md5 != remote.md5:
            raise ChecksumMismatch(
                f"{remote.path}: MD5 mismatch: expected {remote.md5}, got {digests.md5}; "
                "the download was deleted"
            )
        final = resolve_inside(self.destination, remote.path)
        try:
            if hashed is None:  # hashed early: flushed to disk then too
                _fsync_file(staged)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
            st = final.stat()
        except OSError as exc:
            error = LocalIOError(
                f"{remote.path}: cannot place the verified file at {final}: "
                f"{exc.strerror or exc}"
            )
            if exc.errno in DISK_UNUSABLE:
                # Every other file would fail the same way: stop now, keep what is done.
                self._fatal = error
                self._abort()
            raise error from exc
        entry = StateEntry(
            path=remote.path,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            checksum=digests.checksum,
            remote_size=remote.size,
            remote_mtime=remote.mtime,
            remote_md5=remote.md5,
        )
        with self._lock:
            try:
                self.store.record([entry])
            except StateError:
                # On a full disk the partial download that filled it leaves no room for
                # the record of a file already verified and placed. Recording what is
                # done matters more than resuming a partial: free them and try once more.
                if not self._drop_partials():
                    raise
                log.warning("the destination is full: partial downloads were deleted")
                self.store.record([entry])
        return FileOutcome(remote.path, item.action, ok=True, size=remote.size)

    def _drop_partials(self) -> bool:
        """Delete the incomplete downloads in staging; True if there were any."""
        dropped = False
        for partial in [*self.staging.rglob("*.partial"), *self.staging.rglob("*.aspx")]:
            with contextlib.suppress(OSError):
                partial.unlink()
                dropped = True
        return dropped

    def _fail(self, item: PlanItem, report: Report, error: str) -> FileOutcome:
        outcome = FileOutcome(item.path, item.action, ok=False, size=item.size, error=error)
        with self._lock:
            report.outcomes.append(outcome)
        self.reporter.file_done(outcome)
        return outcome

    # -- deletions and tidying --------------------------------------------------------

    def _delete(self, items: Sequence[PlanItem], report: Report) -> None:
        for item in items:
            linked = _linked_folder(self.destination, item.path)
            if linked is not None:
                # The files behind a link are not the ones immsync recorded there,
                # wherever the link leads: nothing is deleted through it.
                self._fail(
                    item,
                    report,
                    f"not deleted: {linked} is a symbolic link, and nothing is deleted "
                    "through one; the record stays",
                )
                continue
            target = self.destination.joinpath(*item.path.split("/"))
            try:
                target.unlink(missing_ok=True)
            except OSError as exc:
                self._fail(item, report, f"cannot delete {target}: {exc.strerror or exc}")
                continue
            with self._lock:
                self.store.forget([item.path])
            _remove_empty_parents(target.parent, stop=self.destination)
            outcome = FileOutcome(item.path, Action.DELETE, ok=True, size=item.size)
            with self._lock:
                report.outcomes.append(outcome)
            self.reporter.file_done(outcome)

    def _tidy_staging(self, keep: set[str]) -> None:
        """Drop staged leftovers nobody will resume; keep partials of failed files."""
        if self.cancel.is_set():
            return  # an interrupted run keeps everything for the next one to resume
        self.store.release_staging(keep)
        # Exactly the failed files' staged names and their sidecars: a prefix would also
        # keep SDY1/ab.txt for a failed SDY1/a.
        kept = {staged_name(path) + suffix for path in keep for suffix in _STAGED_SUFFIXES}
        remove_files_below(self.staging, keep=kept.__contains__)


@dataclass(frozen=True, slots=True)
class _Hashed:
    """A staged file's digests, taken (and the file fsynced) while its session ran."""

    inode: int
    size: int
    digests: Digests

    def describes(self, st: os.stat_result) -> bool:
        # ascp writes <name>.partial and renames it when done, so a file re-sent after
        # the hash is a new inode; only its time may change (ascp -p), not its bytes.
        return (st.st_ino, st.st_size) == (self.inode, self.size)


class _EarlyHashes:
    """Hashes each file of a session as soon as the transport reports it complete.

    Hashing (xxh3_128, and MD5 where ImmPort has one) and the fsync are most of the
    work after a transfer. Done while the session still moves the next files, only the
    last file's remain when it ends. The file is only read here: placing and recording
    it wait for the end of the session, so a transport still finishing it (setting its
    time, removing its checkpoint) is never disturbed.
    """

    def __init__(
        self, staging: Path, files: Sequence[RemoteFile], pool: ThreadPoolExecutor
    ) -> None:
        self._staging = staging
        self._pool = pool
        self._by_name: dict[str, list[RemoteFile]] = {}
        for file in files:
            self._by_name.setdefault(staged_name(file.path).rpartition("/")[2], []).append(file)
        self._futures: dict[str, Future[_Hashed | None]] = {}

    def file_done(self, name: str) -> None:
        """The transport reports *name* (a base name, as ``ascp`` prints it) complete."""
        for file in self._by_name.get(name, ()):
            if file.path not in self._futures:
                self._futures[file.path] = self._pool.submit(self._hash, file)

    def results(self) -> dict[str, _Hashed]:
        """What could be hashed (waits for hashes still running)."""
        done = {path: future.result() for path, future in self._futures.items()}
        return {path: hashed for path, hashed in done.items() if hashed is not None}

    def _hash(self, file: RemoteFile) -> _Hashed | None:
        staged = self._staging / staged_name(file.path)
        try:
            st = staged.lstat()
            if not stat.S_ISREG(st.st_mode) or st.st_size != file.size:
                return None
            for suffix in IN_TRANSIT_SUFFIXES:
                if os.path.lexists(f"{staged}{suffix}"):
                    return None  # the transport is not done with it after all
            digests = file_digests(staged, md5=file.md5 is not None)
            _fsync_file(staged)
        except OSError:
            return None  # judged again, with errors reported, when the session ends
        return _Hashed(st.st_ino, st.st_size, digests)


def _without_path(message: str, path: str) -> str:
    # A failure is shown as "<path>: <error>": an error naming the path itself would
    # print it twice.
    return message.removeprefix(f"{path}: ")


def _fsync_file(path: Path) -> None:
    # The rename must never publish a file whose bytes are still only in the page
    # cache: after a power cut the name could survive and the content not.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _linked_folder(root: Path, relative: str) -> Path | None:
    """The first folder on the way from *root* to *relative* that is a symbolic link."""
    probe = root
    for part in relative.split("/")[:-1]:
        probe = probe / part
        if probe.is_symlink():
            return probe
    return None


def _remove_empty_parents(folder: Path, *, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
