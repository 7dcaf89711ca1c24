"""The Applier's next step after a failed session: a pure table."""

from __future__ import annotations

import pytest

from immsync.decide import Step, decide
from immsync.errors import Failure


@pytest.mark.parametrize(
    ("failure", "concurrent", "limit", "step"),
    [
        (Failure.TRANSIENT, 1, 1, Step.RETRY),
        (Failure.UNREACHABLE, 2, 2, Step.RETRY),
        (Failure.TOKEN, 1, 4, Step.RETRY),
        (Failure.DISK, 1, 1, Step.STOP_RUN),
        (Failure.DISK, 4, 4, Step.STOP_RUN),
        (Failure.AUTH, 1, 1, Step.STOP_RUN),  # refused alone: the key itself
        (Failure.AUTH, 3, 1, Step.RETRY_WITH_FEWER_SESSIONS),  # others ran beside it
        (Failure.AUTH, 1, 2, Step.RETRY_WITH_FEWER_SESSIONS),  # others may still start
        (Failure.NOT_FOUND, 1, 1, Step.GIVE_UP),
        (Failure.PERMANENT, 4, 4, Step.GIVE_UP),
        (Failure.INTERRUPTED, 1, 1, Step.GIVE_UP),
    ],
)
def test_each_failure_leads_to_one_step(
    failure: Failure, concurrent: int, limit: int, step: Step
) -> None:
    assert decide(failure, concurrent=concurrent, session_limit=limit) is step


def test_every_failure_has_a_step() -> None:
    for failure in Failure:
        assert isinstance(decide(failure, concurrent=1, session_limit=1), Step)
