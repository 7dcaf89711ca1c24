"""The Applier on its own: exact batch, retry, back-off and abort sequences, in milliseconds.

Each test builds an ``Applier`` directly over a real ``StateStore``, a ``FakeCatalog``
(through ``immsync.sync.survey``), a ``FakeTransfer`` and a ``FakeClock``, whose
``sleep`` records every back-off instead of waiting it out.
"""

from __future__ import annotations

import errno
import os
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from immsync.errors import Failure, ImmsyncError, LocalIOError, TransferError
from immsync.hashing import file_checksum
from immsync.model import (
    FileOutcome,
    Manifest,
    Plan,
    ProgressEvent,
    Report,
    StudySelection,
    TransferBatch,
)
from immsync.retry import RetryPolicy, delays
from immsync.state import StateStore, state_path
from immsync.sync import Applier, SyncOptions, survey
from immsync.sync import apply as placing
from immsync.testing.fakes import FakeCatalog, FakeClock, FakeTransfer, content_of

A, B, C, D, E, F, G = (f"SDY1/StudyFiles/{name}.txt" for name in "abcdefg")
EXACT = RetryPolicy(attempts=4, base_delay=1.0, max_delay=30.0, jitter=0.0)
"""No jitter: the waits are exactly 1, 2 and 4 s."""


def blob(path: str, size: int) -> bytes:
    return content_of(path, size)


@dataclass
class Recorder:
    """A Reporter that keeps what it was told, in order."""

    started: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    retries: list[tuple[str, tuple[str, ...], str, float]] = field(default_factory=list)
    done: list[FileOutcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def plan_ready(self, plan: Plan) -> None:
        pass

    def batch_started(self, batch: TransferBatch) -> None:
        with self.lock:
            self.started.append((batch.label, tuple(f.path for f in batch.files)))

    def progress(self, event: ProgressEvent) -> None:
        pass

    def file_done(self, outcome: FileOutcome) -> None:
        with self.lock:
            self.done.append(outcome)

    def retrying(self, batch: TransferBatch, error: ImmsyncError, delay: float) -> None:
        kind = error.kind if isinstance(error, TransferError) else ""
        with self.lock:
            self.retries.append((batch.label, tuple(f.path for f in batch.files), kind, delay))


class Rig:
    """One destination, its state, an upstream and the doubles, ready to run."""

    def __init__(self, root: Path, content: dict[str, bytes], *, md5: bool = True) -> None:
        self.dest = root / "dest"
        accessions = sorted({p.partition("/")[0] for p in content})
        self.manifest = Manifest(
            source=root / "manifest.yaml",
            destination=self.dest,
            studies=tuple(StudySelection(a) for a in accessions),
        )
        self.catalog = FakeCatalog.of(content, md5=md5)
        self.store = StateStore.open(state_path(self.dest))
        self.transfer = FakeTransfer(self.catalog.content)
        self.clock = FakeClock()
        self.reporter = Recorder()
        self.cancel = threading.Event()

    def applier(self, sleep: Any = None, **options: Any) -> Applier:
        options.setdefault("jobs", 1)
        options.setdefault("session_stagger", 0.0)
        options.setdefault("retry", EXACT)
        return Applier(
            self.manifest,
            self.store,
            self.transfer,
            options=SyncOptions(**options),
            reporter=self.reporter,
            cancel=self.cancel,
            sleep=sleep or self.clock.sleep,
            clock=self.clock,
            rng=random.Random(5),
        )

    def run(self, **options: Any) -> Report:
        found = survey(self.manifest, self.catalog, self.store, record_adopted=True)
        return self.applier(**options).run(found)

    def recorded(self) -> dict[str, Any]:
        return self.store.entries()

    def placed(self, path: str) -> bool:
        target = self.dest / path
        return target.is_file() and target.read_bytes() == self.catalog.content[path]


@pytest.fixture(name="make")
def _make(tmp_path: Path) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(content: dict[str, bytes], **kwargs: Any) -> Rig:
        rig = Rig(tmp_path / f"rig{len(rigs)}", content, **kwargs)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.store.close()


def seven_sizes() -> dict[str, bytes]:
    sizes = (70, 60, 50, 40, 30, 20, 10)
    return {p: blob(p, size) for p, size in zip((A, B, C, D, E, F, G), sizes, strict=True)}


# -- batches ----------------------------------------------------------------------------


class TestBatches:
    def test_count_bound_gives_greedy_byte_balanced_batches_in_path_order(self, make):
        """7 files, 3 a batch: the largest go first into the lightest batch; calls in order."""
        rig = make(seven_sizes())
        report = rig.run(batch_max_files=3)
        assert rig.transfer.calls == [(A, F, G), (B, E), (C, D)]
        assert [label for label, _ in rig.reporter.started] == [
            "batch 1/3", "batch 2/3", "batch 3/3"
        ]
        assert [b.label for b in rig.transfer.batches] == ["batch 1/3", "batch 2/3", "batch 3/3"]
        assert report.sessions == 3
        assert sorted(rig.recorded()) == sorted(seven_sizes())
        assert rig.clock.sleeps == []

    def test_byte_bound_splits_and_an_oversized_file_still_travels(self, make):
        """At most ~100 bytes a batch: 280 bytes make 3 batches; 70 > 50 still goes."""
        rig = make(seven_sizes())
        rig.run(batch_max_bytes=100)
        assert rig.transfer.calls == [(A, F, G), (B, E), (C, D)]
        rig2 = make({A: blob(A, 70), B: blob(B, 5)})
        assert rig2.run(batch_max_bytes=50).failures == []
        assert rig2.transfer.calls == [(A,), (B,)]

    def test_parallel_sessions_share_the_work(self, make):
        """--jobs 2 with enough bytes splits one batch's worth into two sessions."""
        rig = make(seven_sizes())
        rig.run(jobs=2, split_min_bytes=1)
        assert sorted(rig.transfer.calls) == [(A, D, E), (B, C, F, G)]

    def test_small_work_is_not_split_across_sessions(self, make):
        """Below split_min_bytes, --jobs 2 still makes one session."""
        rig = make(seven_sizes())
        rig.run(jobs=2)
        assert rig.transfer.calls == [(A, B, C, D, E, F, G)]

    def test_nothing_to_fetch_starts_no_session(self, make):
        """A second run over a complete mirror makes no call at all."""
        rig = make(seven_sizes())
        rig.run()
        rig.transfer = FakeTransfer(rig.catalog.content)
        report = rig.run()
        assert rig.transfer.calls == []
        assert report.sessions == 0
        assert report.counts()["unchanged"] == 7


# -- retries and back-off ----------------------------------------------------------------


class TestRetries:
    def test_transient_failure_is_retried_after_the_first_delay(self, make):
        """A stalled session is tried again after base_delay; then everything is recorded."""
        rig = make({A: blob(A, 10), B: blob(B, 20)})
        rig.transfer.fail_on_call(1, TransferError("stalled", kind=Failure.TRANSIENT))
        report = rig.run()
        assert rig.transfer.calls == [(A, B), (A, B)]
        assert rig.clock.sleeps == [1.0]
        assert rig.reporter.retries == [("batch 1/1", (A, B), "transient", 1.0)]
        assert report.failures == []
        assert sorted(rig.recorded()) == [A, B]

    def test_only_what_did_not_arrive_is_fetched_again(self, make):
        """Files that arrived before the failure are kept and recorded, not re-sent."""
        rig = make({A: blob(A, 10), B: blob(B, 20), C: blob(C, 30)})
        rig.transfer.fail_on_call(1, TransferError("stalled", kind=Failure.TRANSIENT), arrived={A})
        rig.run()
        assert rig.transfer.calls == [(A, B, C), (B, C)]
        assert rig.reporter.retries == [("batch 1/1", (B, C), "transient", 1.0)]

    def test_back_off_doubles_up_to_the_cap_then_gives_up(self, make):
        """Every attempt fails: waits 10, 15, 15 (capped); after 4 tries the files fail."""
        rig = make({A: blob(A, 10)})
        policy = RetryPolicy(attempts=4, base_delay=10.0, max_delay=15.0, jitter=0.0)
        for n in range(1, 5):
            rig.transfer.fail_on_call(n, TransferError(f"stalled {n}", kind=Failure.TRANSIENT))
        report = rig.run(retry=policy)
        assert rig.transfer.calls == [(A,)] * 4
        assert rig.clock.sleeps == [10.0, 15.0, 15.0]
        assert [(o.path, o.ok, o.error) for o in report.failures] == [(A, False, "stalled 4")]
        assert rig.recorded() == {}

    def test_jittered_waits_are_the_retry_policy_s_own(self, make):
        """With jitter, the waits are exactly retry.delays(policy, rng), nothing added."""
        rig = make({A: blob(A, 10)})
        policy = RetryPolicy(attempts=4, base_delay=2.0, max_delay=60.0, jitter=0.5)
        for n in range(1, 4):
            rig.transfer.fail_on_call(n, TransferError("stalled", kind=Failure.TRANSIENT))
        rig.run(retry=policy)
        assert rig.clock.sleeps == list(delays(policy, random.Random(5)))
        assert all(1.0 * 2**n <= s <= 2.0 * 2**n for n, s in enumerate(rig.clock.sleeps))

    def test_a_success_that_left_a_file_out_is_retried_as_transient(self, make):
        """The transport said done but a file is missing: it is asked for again."""
        rig = make({A: blob(A, 10), B: blob(B, 20)})
        rig.transfer.lose(B)
        rig.run()
        assert rig.transfer.calls == [(A, B), (B,)]
        assert rig.reporter.retries == [("batch 1/1", (B,), "transient", 1.0)]
        assert sorted(rig.recorded()) == [A, B]

    @pytest.mark.parametrize(
        ("kind", "calls", "sleeps"),
        [
            (Failure.TRANSIENT, 2, [1.0]),
            (Failure.UNREACHABLE, 2, [1.0]),
            (Failure.TOKEN, 2, [1.0]),
            (Failure.PERMANENT, 1, []),
            (Failure.NOT_FOUND, 1, []),
            (Failure.INTERRUPTED, 1, []),
        ],
    )
    def test_which_kinds_are_retried(self, make, kind, calls, sleeps):
        """Transient, unreachable and token failures are retried; the others fail at once."""
        rig = make({A: blob(A, 10)})
        rig.transfer.fail_on_call(1, TransferError(f"it broke ({kind})", kind=kind))
        report = rig.run()
        assert len(rig.transfer.calls) == calls
        assert rig.clock.sleeps == sleeps
        if calls == 1:
            assert [(o.path, o.error) for o in report.failures] == [(A, f"it broke ({kind})")]
        else:
            assert report.failures == []

    def test_every_kind_of_failure_is_pinned_here(self):
        """A new Failure member needs a row above (and, if it stops runs, a test of its own)."""
        assert set(Failure) == {
            Failure.TRANSIENT, Failure.UNREACHABLE, Failure.TOKEN, Failure.PERMANENT,
            Failure.NOT_FOUND, Failure.INTERRUPTED, Failure.AUTH, Failure.DISK,
        }

    def test_one_failed_batch_leaves_the_others_alone(self, make):
        """A permanent failure in batch 1 fails its files only; batch 2 completes."""
        rig = make({A: blob(A, 10), B: blob(B, 20)})
        rig.transfer.fail_on_call(1, TransferError("no such file", kind=Failure.NOT_FOUND))
        report = rig.run(batch_max_files=1)
        assert rig.transfer.calls == [(A,), (B,)]
        assert [o.path for o in report.failures] == [A]
        assert sorted(rig.recorded()) == [B]


# -- refusals and concurrency --------------------------------------------------------------


class Overlap:
    """Wraps a transfer and measures how many of its calls ran at once.

    The first two calls meet (each starts while the other is in flight); the one of them
    that succeeds then stays in flight until a third call starts, or *hold* seconds.
    """

    def __init__(self, inner: FakeTransfer, *, hold: float = 0.3) -> None:
        self.inner = inner
        self.name = inner.name
        self._lock = threading.Lock()
        self._active = 0
        self._started = 0
        self._hold = hold
        self._meeting = threading.Barrier(2)
        self._third = threading.Event()
        self.peaks: list[int] = []
        """How many calls were in flight as each call started."""

    def fetch(self, batch: TransferBatch, on_progress: Any) -> None:
        with self._lock:
            self._active += 1
            self._started += 1
            number = self._started
            self.peaks.append(self._active)
        if number >= 3:
            self._third.set()
        try:
            if number <= 2:
                self._meeting.wait(timeout=10)
            self.inner.fetch(batch, on_progress)
            if number <= 2:
                self._third.wait(timeout=self._hold)
        finally:
            with self._lock:
                self._active -= 1

    def terminate(self) -> None:
        self.inner.terminate()

    def close(self) -> None:
        self.inner.close()


class TestRefusals:
    def test_a_refusal_among_parallel_sessions_lowers_concurrency_and_retries(self, make):
        """auth refused while 2 ran: the limit drops to 1, the batch is retried alone."""
        rig = make({A: blob(A, 10), B: blob(B, 20), C: blob(C, 30)})
        rig.transfer.fail_on_call(1, TransferError("failed to authenticate", kind=Failure.AUTH))
        overlap = Overlap(rig.transfer)
        applier = Applier(
            rig.manifest,
            rig.store,
            overlap,
            options=SyncOptions(
                jobs=2, session_stagger=0.0, retry=EXACT, batch_max_files=2, split_min_bytes=1
            ),
            reporter=rig.reporter,
            sleep=rig.clock.sleep,
            clock=rig.clock,
        )
        report = applier.run(survey(rig.manifest, rig.catalog, rig.store))
        assert report.failures == []
        assert len(rig.transfer.calls) == 3
        assert overlap.peaks == [1, 2, 1], "after the refusal, sessions still ran side by side"
        assert rig.clock.sleeps == [1.0]
        assert [r[2] for r in rig.reporter.retries] == ["auth"]
        assert sorted(rig.recorded()) == [A, B, C]

    def test_a_refusal_alone_under_a_higher_limit_is_still_a_rate_limit(self, make):
        """auth refused while no other session ran, but --jobs 2: lowered and retried, not fatal."""
        rig = make({A: blob(A, 10), B: blob(B, 20), C: blob(C, 30)})
        rig.transfer.fail_on_call(3, TransferError("failed to authenticate", kind=Failure.AUTH))
        b_done = threading.Event()

        class Staggered(Recorder):
            """Holds batch A's thread until batch B has released its session too."""

            def file_done(self, outcome: FileOutcome) -> None:
                super().file_done(outcome)
                if outcome.path == B:
                    b_done.set()
                elif outcome.path == A:
                    b_done.wait(timeout=10)

        rig.reporter = Staggered()
        report = rig.run(jobs=2, batch_max_files=1)
        assert report.failures == []
        assert sorted(rig.transfer.calls[:2]) == [(A,), (B,)]
        assert rig.transfer.calls[2:] == [(C,), (C,)]
        assert rig.clock.sleeps == [1.0]
        assert sorted(rig.recorded()) == [A, B, C]

    def test_a_lone_refusal_stops_the_run(self, make):
        """auth refused with one session: every session would be; stop, no retry, no more calls."""
        rig = make({A: blob(A, 10), B: blob(B, 20)})
        rig.transfer.fail_on_call(1, TransferError("failed to authenticate", kind=Failure.AUTH))
        with pytest.raises(TransferError) as raised:
            rig.run(batch_max_files=1)
        assert raised.value.kind is Failure.AUTH
        assert raised.value.message.startswith("stopped: failed to authenticate; 0 files")
        assert rig.transfer.calls == [(A,)]
        assert rig.clock.sleeps == []
        assert rig.transfer.terminated == 1
        assert rig.recorded() == {}


# -- the run stops ------------------------------------------------------------------------


class TestStops:
    def test_disk_full_stops_the_run_and_keeps_what_was_verified(self, make):
        """kind=disk on call 2: files 1 and 2a are kept and recorded, batch 3 never starts."""
        content = {A: blob(A, 30), B: blob(B, 20), C: blob(C, 10), D: blob(D, 5)}
        rig = make(content)
        full = TransferError("Disk write failed", kind=Failure.DISK)
        rig.transfer.fail_on_call(2, full, arrived={B})
        with pytest.raises(LocalIOError) as raised:
            rig.run(batch_max_files=2)
        assert rig.transfer.calls == [(A, D), (B, C)]
        assert raised.value.message == (
            "stopped: Disk write failed; 3 files completed and recorded before it"
        )
        assert "free some space" in (raised.value.hint or "")
        assert sorted(rig.recorded()) == [A, B, D]
        assert all(rig.placed(p) for p in (A, B, D))
        assert not (rig.dest / C).exists()
        assert rig.clock.sleeps == []
        assert rig.transfer.terminated == 1

    def test_cancel_during_a_session_starts_nothing_more(self, make):
        """Cancelled in call 1: what arrived is kept, no other call, no wait, staging kept."""
        rig = make({A: blob(A, 10), B: blob(B, 20), C: blob(C, 30)})
        rig.transfer.on_fetch = lambda batch: rig.cancel.set()
        report = rig.run(batch_max_files=1)
        assert rig.transfer.calls == [(A,)]
        assert sorted(rig.recorded()) == [A]
        assert report.failures == []
        assert rig.clock.sleeps == []

    def test_cancel_during_a_retry_wait_ends_the_batch(self, make):
        """A cancel while waiting to retry: the retry never starts."""
        rig = make({A: blob(A, 10)})
        rig.transfer.fail_on_call(1, TransferError("stalled", kind=Failure.TRANSIENT))

        def sleep(seconds: float) -> None:
            rig.clock.sleep(seconds)
            rig.cancel.set()

        rig.applier(sleep=sleep).run(survey(rig.manifest, rig.catalog, rig.store))
        assert rig.transfer.calls == [(A,)]
        assert rig.clock.sleeps == [1.0]
        assert rig.recorded() == {}

    def test_cancel_keeps_staging_for_the_next_run(self, make):
        """An interrupted run leaves its partials in staging: the next one resumes them."""
        rig = make({A: blob(A, 10), B: blob(B, 4000)})
        rig.transfer.fail_for(B, TransferError("stalled", kind=Failure.TRANSIENT))
        rig.transfer.on_fetch = lambda batch: rig.cancel.set()
        rig.run()
        partial = rig.dest / ".immsync" / "staging" / (B + ".partial")
        assert partial.is_file() and partial.stat().st_size == 2000


# -- verification ------------------------------------------------------------------------


class TestVerification:
    def test_checksum_mismatch_is_fetched_once_more(self, make):
        """A file with the wrong MD5 is deleted and fetched again (after the first delay)."""
        rig = make({A: blob(A, 10), B: blob(B, 20)})
        rig.transfer.corrupt(B)
        report = rig.run()
        assert rig.transfer.calls == [(A, B), (B,)]
        assert rig.clock.sleeps == [1.0]
        assert report.failures == []
        assert rig.placed(B)
        assert rig.recorded()[B].checksum == file_checksum(rig.dest / B)

    def test_checksum_mismatch_twice_fails_without_a_third_fetch(self, make):
        """Wrong twice: the file fails naming both MD5s; never placed, never recorded."""
        rig = make({A: blob(A, 10), B: blob(B, 20)})
        rig.transfer.corrupt(B, times=5)
        report = rig.run()
        assert rig.transfer.calls == [(A, B), (B,)]
        [failure] = report.failures
        assert failure.path == B
        assert failure.error is not None
        assert failure.error.startswith(f"MD5 mismatch: expected {rig.catalog.files[B].md5}, got ")
        assert failure.error.endswith("; the download was deleted")
        assert not (rig.dest / B).exists()
        assert sorted(rig.recorded()) == [A]
        assert not (rig.dest / ".immsync" / "staging" / B).exists()

    def test_without_md5_a_short_file_is_a_size_mismatch_fetched_once_more(self, make):
        """No upstream MD5: a file cut short on a 'successful' session is caught by its size."""
        rig = make({A: blob(A, 10), B: blob(B, 20)}, md5=False)
        rig.transfer.leave_short(B, times=2)
        report = rig.run()
        assert rig.transfer.calls == [(A, B), (B,)]
        assert [(o.path, o.error) for o in report.failures] == [
            (B, "size mismatch: expected 20 bytes, received 10; the download was deleted")
        ]
        assert sorted(rig.recorded()) == [A]

    def test_each_file_is_recorded_with_what_is_on_disk(self, make):
        """The record's checksum, size and mtime are those of the placed file."""
        rig = make({A: blob(A, 10), B: blob(B, 20)})
        rig.run()
        for path, entry in rig.recorded().items():
            st = (rig.dest / path).stat()
            assert (entry.size, entry.mtime_ns) == (st.st_size, st.st_mtime_ns)
            assert entry.checksum == file_checksum(rig.dest / path)
            assert entry.remote_md5 == rig.catalog.files[path].md5


# -- placing: errors at the rename, without root -----------------------------------------------


def failing_replace(monkeypatch: pytest.MonkeyPatch, dest: Path, path: str, code: int) -> list[str]:
    """Make sync's os.replace fail with *code* when it moves *path* to its final place."""
    real = os.replace
    target = os.fspath(dest / path)
    tried: list[str] = []

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if os.fspath(dst) == target:
            tried.append(os.fspath(dst))
            raise OSError(code, os.strerror(code), os.fspath(dst))
        real(src, dst, **kwargs)

    monkeypatch.setattr(placing.os, "replace", replace)
    return tried


class TestPlacing:
    @pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT])
    def test_a_full_or_read_only_destination_stops_the_run(self, make, monkeypatch, code):
        """The rename fails for lack of space: that file is not recorded, the run stops."""
        rig = make({A: blob(A, 10), B: blob(B, 20), C: blob(C, 30)})
        tried = failing_replace(monkeypatch, rig.dest, B, code)
        with pytest.raises(LocalIOError) as raised:
            rig.run(batch_max_files=1)
        assert tried, "the rename of B was never attempted"
        assert rig.transfer.calls == [(A,), (B,)]
        assert raised.value.message == (
            f"stopped: {B}: cannot place the verified file at {rig.dest / B}: "
            f"{os.strerror(code)}; 1 file completed and recorded before it"
        )
        assert sorted(rig.recorded()) == [A]
        assert not (rig.dest / B).exists()
        # The verified download stays in staging for the next run.
        assert (rig.dest / ".immsync" / "staging" / B).read_bytes() == rig.catalog.content[B]

    def test_another_rename_error_fails_only_that_file(self, make, monkeypatch):
        """EACCES at the rename is that file's problem: the others are placed and recorded."""
        rig = make({A: blob(A, 10), B: blob(B, 20), C: blob(C, 30)})
        failing_replace(monkeypatch, rig.dest, B, errno.EACCES)
        report = rig.run(batch_max_files=1)
        assert rig.transfer.calls == [(A,), (B,), (C,)]
        assert [(o.path, o.error) for o in report.failures] == [
            (B, f"cannot place the verified file at {rig.dest / B}: Permission denied")
        ]
        assert sorted(rig.recorded()) == [A, C]

    def test_the_state_full_after_placing_frees_partials_and_records(self, make, monkeypatch):
        """Recording fails once for lack of space: partials are dropped and the record retried."""
        from immsync.errors import StateError

        rig = make({A: blob(A, 10), B: blob(B, 4000)})
        rig.transfer.fail_for(B, TransferError("stalled", kind=Failure.PERMANENT))
        real = rig.store.record
        calls: list[list[str]] = []

        def record(entries: Any) -> None:
            entries = list(entries)
            calls.append([e.path for e in entries])
            if len(calls) == 1:
                raise StateError("cannot write the state file: database or disk is full")
            real(entries)

        monkeypatch.setattr(rig.store, "record", record)
        rig.run()
        assert calls == [[A], [A]]
        assert sorted(rig.recorded()) == [A]
        assert not list((rig.dest / ".immsync" / "staging").rglob("*.partial"))


class LeavesAFolder:
    """A transfer that leaves a folder where the file belongs, and says it succeeded."""

    name = "folder"

    def fetch(self, batch: TransferBatch, on_progress: Any) -> None:
        for file in batch.files:
            (batch.staging / file.path).mkdir(parents=True, exist_ok=True)

    def terminate(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_non_file_left_in_staging_fails_that_file(make):
    """A folder where the download should be is never placed: the file fails, once."""
    rig = make({A: blob(A, 10)})
    rig.transfer = LeavesAFolder()  # type: ignore[assignment]
    report = rig.run()
    [failure] = report.failures
    assert failure.error == f"the transfer left a non-file at {rig.dest / '.immsync/staging' / A}"
    assert rig.clock.sleeps == []
    assert rig.recorded() == {}



def test_a_name_too_long_to_stage_as_itself_lands_and_is_recorded(make):
    """A 250-byte name is staged under its hash and placed under its own name."""
    long = "SDY1/StudyFiles/" + "n" * 250
    rig = make({long: blob(long, 10)})
    assert rig.run().failures == []
    assert rig.placed(long)
    assert sorted(rig.recorded()) == [long]


def test_tidying_keeps_exactly_the_failed_files_partials(make):
    """A failed file's partial stays to resume; a leftover whose name merely starts with
    the failed file's name goes."""
    rig = make({B: blob(B, 4000)})
    rig.transfer.fail_for(B, TransferError("no such file", kind=Failure.PERMANENT))
    staging = rig.dest / ".immsync" / "staging"
    lookalike = staging / (B + "-copy.txt")
    lookalike.parent.mkdir(parents=True, exist_ok=True)
    lookalike.write_text("left by someone")
    rig.run()
    assert (staging / (B + ".partial")).is_file()
    assert not lookalike.exists()
