"""make_batches (how files are grouped into ascp sessions) and SessionGate (how many at once)."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from immsync.model import Action, PlanItem, RemoteFile
from immsync.sync import SessionGate, make_batches


def item(path: str, size: int) -> PlanItem:
    remote = RemoteFile(path, size, "2017-06-15T13:06:07Z")
    return PlanItem(Action.DOWNLOAD, path, size, "never fetched", remote)


def items(sizes: list[int]) -> list[PlanItem]:
    return [item(f"SDY1/f{n:04d}", size) for n, size in enumerate(sizes)]


def paths(batches: list[list[PlanItem]]) -> list[list[str]]:
    return [[i.path for i in b] for b in batches]


class FakeTime:
    """A clock that only moves when someone sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def gate(limit: int, stagger: float = 0.0, cancel: threading.Event | None = None):
    fake = FakeTime()
    made = SessionGate(
        limit,
        stagger=stagger,
        cancel=cancel or threading.Event(),
        clock=fake.clock,
        wait=fake.sleep,
    )
    return made, fake


class TestMakeBatches:
    def test_no_items_no_batches(self):
        """Nothing to fetch makes no session."""
        assert make_batches([], max_files=500, max_bytes=10**9) == []

    def test_one_batch_when_within_bounds(self):
        """Files within both bounds travel together, in path order."""
        got = make_batches(items([5, 1, 3]), max_files=500, max_bytes=10**9)
        assert paths(got) == [["SDY1/f0000", "SDY1/f0001", "SDY1/f0002"]]

    def test_thousand_files_make_two_batches_of_500(self):
        """1,000 files with 500 per session make exactly 2 sessions of 500."""
        got = make_batches(items([1000] * 1000), max_files=500, max_bytes=10**12)
        assert [len(b) for b in got] == [500, 500]

    def test_thousand_files_make_one_batch_of_1000(self):
        """With 1,000 files per session allowed, 1,000 files make 1 session."""
        got = make_batches(items([1000] * 1000), max_files=1000, max_bytes=10**12)
        assert [len(b) for b in got] == [1000]

    def test_count_bound_rounds_up(self):
        """1,001 files at 500 per session need 3 sessions, none over 500."""
        got = make_batches(items([10] * 1001), max_files=500, max_bytes=10**12)
        assert len(got) == 3
        assert max(len(b) for b in got) <= 500

    def test_byte_bound_adds_batches(self):
        """Total bytes over the per-session bound split the work: 10 x 100 at 300 -> 4."""
        got = make_batches(items([100] * 10), max_files=500, max_bytes=300)
        assert len(got) == 4

    def test_file_larger_than_byte_bound_still_travels(self):
        """A file bigger than max_bytes gets a session of its own rather than none."""
        got = make_batches(items([5000, 10]), max_files=500, max_bytes=1000)
        assert sorted(sum(i.size for i in b) for b in got) == [10, 5000]

    def test_min_batches_spreads_work_for_parallel_sessions(self):
        """min_batches=3 splits 6 files into 3 sessions, balanced by bytes."""
        got = make_batches(items([60, 50, 40, 30, 20, 10]), max_files=500, max_bytes=10**9,
                           min_batches=3)
        assert len(got) == 3
        assert sorted(sum(i.size for i in b) for b in got) == [70, 70, 70]

    def test_min_batches_never_exceeds_file_count(self):
        """Asking for 8 sessions with 3 files makes 3, not empty sessions."""
        got = make_batches(items([1, 2, 3]), max_files=500, max_bytes=10**9, min_batches=8)
        assert len(got) == 3
        assert all(got)

    def test_largest_first_into_lightest(self):
        """Greedy balance: 100 alone-ish, 60+50 together, then 40 joins the lighter one."""
        got = make_batches(items([100, 60, 50, 40]), max_files=500, max_bytes=10**9,
                           min_batches=2)
        loads = sorted(sorted(i.size for i in b) for b in got)
        assert loads == [[40, 100], [50, 60]]

    def test_full_batch_takes_no_more_files(self):
        """Balancing never puts more than max_files in a session, even the light one."""
        got = make_batches(items([10_000, 1, 1, 1, 1]), max_files=2, max_bytes=10**9)
        assert len(got) == 3
        assert all(len(b) <= 2 for b in got)

    def test_batches_and_their_files_are_in_path_order(self):
        """Within a batch files are in path order, and batches by their first path."""
        sizes = [7, 300, 5, 250, 9, 120, 1, 80]
        got = make_batches(items(sizes), max_files=3, max_bytes=10**9)
        for batch in got:
            assert [i.path for i in batch] == sorted(i.path for i in batch)
        firsts = [b[0].path for b in got]
        assert firsts == sorted(firsts)

    @given(
        sizes=st.lists(st.integers(min_value=0, max_value=10_000), max_size=60),
        max_files=st.integers(min_value=1, max_value=20),
        max_bytes=st.integers(min_value=1, max_value=50_000),
        min_batches=st.integers(min_value=1, max_value=8),
    )
    def test_every_file_in_exactly_one_bounded_batch(
        self, sizes: list[int], max_files: int, max_bytes: int, min_batches: int
    ):
        """Any input: each file in exactly one batch, none empty, none over max_files."""
        given_items = items(sizes)
        got = make_batches(
            given_items, max_files=max_files, max_bytes=max_bytes, min_batches=min_batches
        )
        flat = [i.path for b in got for i in b]
        assert sorted(flat) == sorted(i.path for i in given_items)
        assert len(flat) == len(set(flat))
        assert all(0 < len(b) <= max_files for b in got)
        if given_items:
            need = max(-(-len(sizes) // max_files), min(min_batches, len(sizes)))
            assert len(got) >= need


class TestSessionGate:
    def test_limit_is_at_least_one(self):
        """A limit of 0 still admits one session at a time."""
        made, _ = gate(0)
        assert made.limit == 1
        with made.session() as admitted:
            assert admitted

    def test_admits_up_to_the_limit_then_waits(self):
        """With limit 2 a third session waits until one of the two ends."""
        made, _ = gate(2)
        entered = threading.Event()

        def third() -> None:
            with made.session() as admitted:
                assert admitted
                entered.set()

        with made.session(), made.session():
            assert made.concurrent == 2
            waiter = threading.Thread(target=third)
            waiter.start()
            assert not entered.wait(0.3)
        assert entered.wait(10)
        waiter.join(10)
        assert made.concurrent == 0

    def test_starts_are_staggered(self):
        """Three sessions asking at once start `stagger` apart: at 100, 102 and 104."""
        made, fake = gate(3, stagger=2.0)
        starts = []
        with made.session():
            starts.append(fake.now)
            with made.session():
                starts.append(fake.now)
                with made.session():
                    starts.append(fake.now)
        assert starts == [100.0, 102.0, 104.0]
        assert fake.sleeps == [2.0, 2.0]

    def test_a_connected_session_lets_the_next_start_at_once(self):
        """The previous session connected at 100.5: the next starts then, not at 102."""
        made, fake = gate(3, stagger=2.0)
        with made.session() as first:
            assert first is not None
            fake.now += 0.5
            first.connected()
            with made.session():
                assert fake.now == 100.5
        assert fake.sleeps == []

    def test_only_the_latest_start_connecting_counts(self):
        """An older session connecting late does not cut the wait after a newer start."""
        made, fake = gate(3, stagger=2.0)
        starts = []
        with made.session() as first:
            assert first is not None
            with made.session():
                first.connected()  # at 102: the second, started then, has not connected
                with made.session():
                    starts.append(fake.now)
        assert starts == [104.0]
        assert fake.sleeps == [2.0, 2.0]

    def test_after_a_refusal_starts_wait_the_whole_stagger(self):
        """Once reduce() was called (the server refused one), connecting frees nothing."""
        made, fake = gate(3, stagger=2.0)
        made.reduce()
        with made.session() as first:
            assert first is not None
            first.connected()
            with made.session():
                assert fake.now == 102.0
        assert fake.sleeps == [2.0]

    def test_no_stagger_sleep_once_time_has_passed(self):
        """A session starting long after the previous one does not sleep at all."""
        made, fake = gate(1, stagger=2.0)
        with made.session():
            pass
        fake.now += 10
        with made.session():
            pass
        assert fake.sleeps == []

    def test_zero_stagger_never_sleeps(self):
        """--session-stagger 0 starts sessions back to back."""
        made, fake = gate(4, stagger=0.0)
        with made.session(), made.session(), made.session():
            pass
        assert fake.sleeps == []

    def test_cancelled_before_start_is_not_admitted(self):
        """A cancelled run admits no new session."""
        cancel = threading.Event()
        cancel.set()
        made, _ = gate(2, cancel=cancel)
        with made.session() as admitted:
            assert admitted is None
        assert made.concurrent == 0

    def test_cancel_releases_a_waiting_session(self):
        """A session waiting for a free slot gives up (None) when the run is cancelled."""
        cancel = threading.Event()
        made, _ = gate(1, cancel=cancel)
        result: list[bool] = []

        def waiter() -> None:
            with made.session() as admitted:
                result.append(admitted)

        with made.session():
            thread = threading.Thread(target=waiter)
            thread.start()
            cancel.set()
            thread.join(10)
            assert result == [None]
            assert made.concurrent == 1

    def test_reduce_lowers_the_limit_but_not_below_one(self):
        """reduce() takes the limit 3 -> 2 -> 1 -> 1."""
        made, _ = gate(3)
        assert [made.reduce(), made.reduce(), made.reduce()] == [2, 1, 1]
        assert made.limit == 1

    def test_reduced_limit_holds_back_new_sessions(self):
        """After reduce() with 2 running, a new session waits until only 0 run (limit 1)."""
        made, _ = gate(2)
        entered = threading.Event()

        def late() -> None:
            with made.session():
                entered.set()

        first = made.session()
        second = made.session()
        first.__enter__()
        second.__enter__()
        made.reduce()
        thread = threading.Thread(target=late)
        thread.start()
        first.__exit__(None, None, None)
        assert not entered.wait(0.3)  # one still runs: the limit is now 1
        second.__exit__(None, None, None)
        assert entered.wait(10)
        thread.join(10)
