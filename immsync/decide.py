"""What a batch does after a transfer session fails: a pure function of the facts.

The Applier gathers the facts (why the session failed, how many sessions ran beside
it, how many may run at once) and asks ``decide``; it then carries the step out. No
clock, no state, no I/O: every branch is a table test away.
"""

from __future__ import annotations

from enum import Enum

from .errors import Failure


class Step(Enum):
    """What to do with the files a session left undone."""

    RETRY = "retry"
    """Try them again after the next back-off delay, if one is left."""
    RETRY_WITH_FEWER_SESSIONS = "retry with fewer sessions"
    """Run one session fewer at once, then try again (the server refused a burst)."""
    GIVE_UP = "give up"
    """Fail these files; other batches go on."""
    STOP_RUN = "stop the run"
    """Every other session would fail alike: stop everything, keep what is done."""


def decide(failure: Failure, *, concurrent: int, session_limit: int) -> Step:
    """The next step for a batch whose session failed with *failure*.

    Args:
        failure: why the session failed (a session that "succeeded" but left files
            incomplete counts as ``Failure.TRANSIENT``).
        concurrent: the most sessions that ran at once while this one started or failed.
        session_limit: how many sessions may run at once now.
    """
    if failure.stops_run:
        return Step.STOP_RUN
    if failure is Failure.AUTH:
        # Refused while other sessions were starting: the server's rate limit, not bad
        # credentials. Refused alone, with no other session allowed: the key itself.
        if concurrent > 1 or session_limit > 1:
            return Step.RETRY_WITH_FEWER_SESSIONS
        return Step.STOP_RUN
    return Step.RETRY if failure.retryable else Step.GIVE_UP
