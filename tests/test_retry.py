"""Retry policy: backoff shape, transient vs permanent errors, Retry-After, logging."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import pytest

from immsync.retry import RetryPolicy, call_with_retries, delays


class FakeSleep:
    """Records requested waits instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class Transient(Exception):
    def __init__(self, message: str = "HTTP 503", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Flaky:
    """Fails with the given errors in order, then returns "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def run(
    fn: Callable[[], str], policy: RetryPolicy | None = None, sleep: FakeSleep | None = None
) -> str:
    return call_with_retries(
        fn,
        policy=policy or RetryPolicy(),
        is_transient=lambda e: isinstance(e, Transient),
        retry_after=lambda e: getattr(e, "retry_after", None),
        describe="GET https://example.org/x",
        sleep=sleep or FakeSleep(),
        rng=random.Random(1),
    )


def test_delays_without_jitter_double_each_time():
    """With no jitter the waits are base, 2*base, 4*base ... one fewer than attempts."""
    policy = RetryPolicy(attempts=5, base_delay=0.5, max_delay=30, jitter=0)
    assert list(delays(policy, random.Random(0))) == [0.5, 1.0, 2.0, 4.0]


def test_delays_are_capped_at_max_delay():
    """No wait exceeds max_delay however many retries."""
    policy = RetryPolicy(attempts=12, base_delay=1, max_delay=5, jitter=0)
    assert max(delays(policy, random.Random(0))) == 5


@pytest.mark.parametrize("jitter", [0.5, 1.0])
def test_jitter_only_shortens_delays(jitter):
    """Jittered waits stay within [ceiling*(1-jitter), ceiling]."""
    policy = RetryPolicy(attempts=8, base_delay=1, max_delay=10, jitter=jitter)
    for seed in range(50):
        for n, value in enumerate(delays(policy, random.Random(seed))):
            ceiling = min(10, 2**n)
            assert ceiling * (1 - jitter) - 1e-9 <= value <= ceiling


def test_single_attempt_policy_has_no_delays():
    """attempts=1 means no retry at all."""
    assert list(delays(RetryPolicy(attempts=1), random.Random(0))) == []


def test_transient_failures_are_retried_until_success():
    """Two transient failures then success: returns the value after two waits."""
    sleep = FakeSleep()
    fn = Flaky(Transient(), Transient())
    assert run(fn, sleep=sleep) == "ok"
    assert fn.calls == 3
    assert len(sleep.calls) == 2


def test_permanent_failure_is_raised_at_once():
    """A non-transient error is re-raised on the first try without waiting."""
    sleep = FakeSleep()
    fn = Flaky(KeyError("nope"))
    with pytest.raises(KeyError):
        run(fn, sleep=sleep)
    assert fn.calls == 1
    assert sleep.calls == []


def test_last_error_is_raised_when_attempts_are_spent():
    """After `attempts` transient failures the last error propagates."""
    sleep = FakeSleep()
    errors = [Transient(f"failure {i}") for i in range(4)]
    fn = Flaky(*errors, Transient("never reached"))
    with pytest.raises(Transient, match="failure 3"):
        run(fn, policy=RetryPolicy(attempts=4), sleep=sleep)
    assert fn.calls == 4
    assert len(sleep.calls) == 3


def test_retry_after_replaces_the_backoff():
    """A server-requested wait is used as given."""
    sleep = FakeSleep()
    run(Flaky(Transient(retry_after=7.0)), sleep=sleep)
    assert sleep.calls == [7.0]


def test_retry_after_is_capped_at_max_delay():
    """A server asking for an hour waits only max_delay."""
    sleep = FakeSleep()
    run(Flaky(Transient(retry_after=3600)), policy=RetryPolicy(max_delay=12), sleep=sleep)
    assert sleep.calls == [12]


def test_each_retry_is_logged_with_reason_and_delay(caplog):
    """Every retry logs a WARNING naming the operation, the reason and the wait."""
    caplog.set_level(logging.WARNING, logger="immsync.retry")
    run(Flaky(Transient("HTTP 503 Service Unavailable", retry_after=2.0)))
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert "GET https://example.org/x" in text
    assert "HTTP 503 Service Unavailable" in text
    assert "2.0 s" in text
    assert "attempt 2 of 4" in text


def test_repeated_retries_warn_once_and_count_at_info(caplog):
    """Three retries of one operation: one WARNING saying how many may follow, then INFO."""
    caplog.set_level(logging.INFO, logger="immsync.retry")
    run(Flaky(Transient("HTTP 503"), Transient("HTTP 503"), Transient("HTTP 503")))
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING, logging.INFO, logging.INFO]
    assert "attempt 2 of 4, up to 3 more" in caplog.records[0].getMessage()
