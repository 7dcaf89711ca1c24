"""Sizes and times as immsync shows and reads them, written once.

Standard library only, and nothing from immsync: every layer may use it.
"""

from __future__ import annotations

from datetime import UTC, datetime


def format_size(n: float) -> str:
    """Bytes as a short human figure with 1024-based units: ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_utc(text: str) -> datetime | None:
    """An ISO-8601 time or date as ImmPort writes them, as an aware UTC datetime.

    ``2017-06-15T13:06:07Z``, ``2017-06-15T13:06:07.000+00:00`` and the study
    manifest's bare ``2018-02-01`` (midnight UTC) are all accepted; anything else
    gives None. A time without a zone is taken as UTC.
    """
    try:
        stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC)


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 file``, ``2 files``: a number with its noun in the right form."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def format_duration(seconds: float) -> str:
    """A span of time as people read it: ``8 s``, ``3 min 04 s``, ``2 h 05 min``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_rate(bytes_per_second: float) -> str:
    """A transfer rate in the units of ``format_size``: ``3.2 MiB/s``."""
    return f"{format_size(bytes_per_second)}/s"
