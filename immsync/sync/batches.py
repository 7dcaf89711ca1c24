"""Cutting the fetches into transfer sessions, and admitting sessions one after another."""

from __future__ import annotations

import contextlib
import heapq
import logging
import threading
from collections.abc import Callable, Iterator, Sequence

from ..model import (
    PlanItem,
)

log = logging.getLogger(__name__)

def make_batches(
    items: Sequence[PlanItem], *, max_files: int, max_bytes: int, min_batches: int = 1
) -> list[list[PlanItem]]:
    """Group items into transfer sessions bounded by file count and (softly) by bytes.

    There are as few sessions as the bounds allow, since each costs a token request
    and an ``ascp`` start, but at least *min_batches* (the parallel sessions) when
    there are that many files, so that ``--jobs`` has work to share. Bytes are
    balanced greedily: largest file first, into the lightest batch with room. Within
    a batch files are in path order. A file larger than *max_bytes* still travels.
    """
    if not items:
        return []
    total = sum(i.size for i in items)
    count = max(
        -(-len(items) // max_files),
        -(-total // max_bytes) if max_bytes > 0 else 1,
        min(min_batches, len(items)),
    )
    count = min(count, len(items))
    batches: list[list[PlanItem]] = [[] for _ in range(count)]
    # (bytes, files, batch): ties on bytes go to the batch with fewer files, so that
    # empty files too are shared out instead of all landing in the first batch.
    heap = [(0, 0, n) for n in range(count)]
    for item in sorted(items, key=lambda i: (-i.size, i.path)):
        # A full batch is never pushed back, and count leaves room for every item.
        load, files, n = heapq.heappop(heap)
        batches[n].append(item)
        if files + 1 < max_files:
            heapq.heappush(heap, (load + item.size, files + 1, n))
    for batch in batches:
        batch.sort(key=lambda i: i.path)
    return sorted((b for b in batches if b), key=lambda b: b[0].path)


class SessionSlot:
    """A session admitted by a ``SessionGate``; tell it when the session has connected."""

    __slots__ = ("_connected", "_gate")

    def __init__(self, gate: SessionGate) -> None:
        self._gate = gate
        self._connected = False

    def connected(self) -> None:
        """The server accepted this session (its first progress arrived). Cheap to repeat."""
        if not self._connected:
            self._connected = True
            self._gate._connected(self)


class SessionGate:
    """Admits at most *limit* transfer sessions at once, their starts spaced out.

    Aspera servers refuse authentication when many sessions start together (the
    sra-tools fix was to space starts ~2 s apart). So a session starts only once the
    one started before it has connected (its first progress line: the server accepted
    it), or *stagger* seconds after that one's start, whichever comes first: starts
    never overlap a sign-in, and a fast server is not kept waiting. After a refusal
    (``reduce``) the limit drops by one and every start waits the whole *stagger*, so
    the run slows down instead of failing.
    """

    def __init__(
        self,
        limit: int,
        *,
        stagger: float,
        cancel: threading.Event,
        clock: Callable[[], float],
        wait: Callable[[float], None] | None = None,
    ) -> None:
        """*wait(seconds)* waits that long at most, or until the gate is notified.

        It is called with the gate's lock held; the default waits on the gate's
        condition, which releases it. Tests pass a fake that moves *clock* instead.
        """
        self.limit = max(1, limit)
        self._stagger = stagger
        self._cancel = cancel
        self._clock = clock
        self._active = 0
        self._next_start = float("-inf")
        self._latest: SessionSlot | None = None
        self._patient = False
        self._cond = threading.Condition()
        self._wait = wait or self._wait_on_condition

    @contextlib.contextmanager
    def session(self) -> Iterator[SessionSlot | None]:
        """Yield a slot once admitted, or None if the run was cancelled while waiting."""
        slot: SessionSlot | None = None
        with self._cond:
            while self._active >= self.limit and not self._cancel.is_set():
                self._cond.wait(timeout=0.2)
            if not self._cancel.is_set():
                self._active += 1
                slot = self._await_turn()
                if slot is None:
                    self._release()
        if slot is None:
            yield None
            return
        try:
            yield slot
        finally:
            with self._cond:
                self._release()

    def _await_turn(self) -> SessionSlot | None:
        while not self._cancel.is_set():
            now = self._clock()
            if now >= self._next_start:
                slot = SessionSlot(self)
                self._latest = slot
                self._next_start = now + self._stagger
                return slot
            self._wait(self._next_start - now)
        return None

    def _release(self) -> None:
        self._active -= 1
        self._cond.notify_all()

    def _connected(self, slot: SessionSlot) -> None:
        with self._cond:
            # Only the latest start's connection frees the next start; after a refusal,
            # starts wait the whole stagger again.
            if slot is self._latest and not self._patient:
                self._next_start = min(self._next_start, self._clock())
                self._cond.notify_all()

    def _wait_on_condition(self, seconds: float) -> None:
        # A bounded wait, so that a cancel (an Event, not this condition) is seen soon.
        self._cond.wait(timeout=min(seconds, 0.2))

    @property
    def concurrent(self) -> int:
        with self._cond:
            return self._active

    def reduce(self) -> int:
        """Lower the limit by one (not below one); return the new limit.

        Called when the server refused a session while others ran: from now on every
        start waits the whole stagger, connected or not.
        """
        with self._cond:
            self.limit = max(1, self.limit - 1)
            self._patient = True
            return self.limit
