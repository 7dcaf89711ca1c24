"""Retrying a call that may fail for a passing reason.

Generic and tiny on purpose: the caller says what is transient and how long the other
side asked us to wait; this module only decides when to try again and logs why.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry."""

    attempts: int = 4
    """Total tries, the first included; 1 means never retry."""
    base_delay: float = 0.5
    """Delay before the first retry; it doubles for each retry after it."""
    max_delay: float = 30.0
    """No single wait is longer, whatever the backoff or the server asks for."""
    jitter: float = 0.5
    """Fraction of each delay that is randomised: 0 is none, 1 is full jitter."""


def delays(policy: RetryPolicy, rng: random.Random) -> Iterator[float]:
    """The waits before each retry: ``attempts - 1`` values, exponential and jittered.

    Jitter only ever shortens a delay, so ``max_delay`` stays a true upper bound;
    it spreads out clients that failed together so they do not retry together.
    """
    jitter = min(max(policy.jitter, 0.0), 1.0)
    for n in range(max(policy.attempts, 1) - 1):
        ceiling = min(policy.max_delay, policy.base_delay * (2.0**n))
        yield max(0.0, ceiling * (1.0 - jitter * rng.random()))


def call_with_retries(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    retry_after: Callable[[BaseException], float | None] = lambda e: None,
    describe: str,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Call *fn* until it returns, retrying transient failures per *policy*.

    Args:
        fn: the operation; called up to ``policy.attempts`` times.
        policy: attempts and backoff.
        is_transient: True for errors worth another try; any other error is
            raised at once.
        retry_after: seconds the failure asked us to wait (e.g. ``Retry-After``),
            or None to use the backoff. Capped at ``policy.max_delay``.
        describe: names the operation in log lines, e.g. ``"POST https://.../data/list"``.
        sleep: waits; tests pass a recorder.
        rng: source of jitter; a fresh ``random.Random`` when None.

    Returns:
        What *fn* returned.

    Raises:
        The last error from *fn* once the attempts are spent, or the first
        non-transient one.
    """
    backoff = delays(policy, rng if rng is not None else random.Random())
    attempts = max(policy.attempts, 1)
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:
            if attempt >= attempts or not is_transient(exc):
                raise
            delay = next(backoff)
            asked = retry_after(exc)
            if asked is not None:
                delay = min(max(asked, 0.0), policy.max_delay)
            reason = _reason(exc)
            # Errors often already start with the operation's name; do not say it twice.
            what = reason if reason.startswith(describe) else f"{describe}: {reason}"
            # One warning per operation, not one per attempt: the later ones (and their
            # count) are for -v, so that a slow server does not fill the screen.
            level = logging.WARNING if attempt == 1 else logging.INFO
            more = attempts - attempt
            log.log(
                level,
                "%s; retrying in %.1f s (attempt %d of %d%s)",
                what,
                delay,
                attempt + 1,
                attempts,
                f", up to {more} more" if attempt == 1 and more > 1 else "",
            )
            sleep(delay)
            attempt += 1


def _reason(exc: BaseException) -> str:
    # Only the first line: ImmsyncError.__str__ appends a hint that would clutter the log.
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
