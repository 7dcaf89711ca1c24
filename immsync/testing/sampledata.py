"""A small, deterministic ImmPort-like file tree for the emulator, tests and the demo.

The layout follows what ImmPort serves (``/SDYnnn/StudyFiles/...``,
``/SDYnnn/ResultFiles/<Measurement>_result/...``, a release zip at the study root).
Content comes from a seeded PRNG and every file gets the same fixed mtime, so two
builds are byte-for-byte identical and listings are reproducible.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime
from pathlib import Path

SAMPLE_MTIME = 1497531967.0
"""2017-06-15T13:06:07Z, the mtime in ImmPort's own listing example."""

SAMPLE_MTIME_ISO = "2017-06-15T13:06:07Z"

_SEED = 20170615

# (relative path, size in bytes, text?) - sizes keep the whole tree under 2 MB.
_LAYOUT: tuple[tuple[str, int, bool], ...] = (
    ("SDY1/StudyFiles/SDY1_protocol.pdf", 150_000, False),
    ("SDY1/StudyFiles/Study_design.txt", 12_000, True),
    ("SDY1/ResultFiles/Flow_cytometry_result/02054141.001.52628.fcs", 180_000, False),
    ("SDY1/ResultFiles/Flow_cytometry_result/02054141.002.52629.fcs", 120_000, False),
    ("SDY1/ResultFiles/Flow_cytometry_result/02054141.003.52630.fcs", 95_000, False),
    ("SDY1/ResultFiles/HAI_result/hai_results.txt", 6_000, True),
    ("SDY1/SDY1-DR47_Tab.zip", 200_000, False),
    ("SDY269/StudyFiles/SDY269_summary.txt", 2_000, True),
    ("SDY269/ResultFiles/ELISA_result/elisa.txt", 24_000, True),
)

_WORDS = (
    "subject", "visit", "arm", "biosample", "PBMC", "serum", "HAI", "titer",
    "influenza", "vaccine", "day0", "day7", "day28", "ELISA", "IgG", "CD4", "CD8",
)  # fmt: skip


def build_sample_tree(root: Path) -> list[str]:
    """Create the sample tree under *root* and return its file paths, sorted.

    Returns:
        Destination-relative POSIX paths such as ``SDY1/StudyFiles/Study_design.txt``.
    """
    rng = random.Random(_SEED)
    paths = []
    for relpath, size, text in _LAYOUT:
        data = _text(rng, size) if text else rng.randbytes(size)
        write_file(root, relpath, data)
        paths.append(relpath)
    # Folder mtimes appear in listings too; pin them so two builds list identically.
    folders = {p.rsplit("/", i)[0] for p in paths for i in range(1, p.count("/") + 1)}
    for folder in folders:
        os.utime(root / folder, (SAMPLE_MTIME, SAMPLE_MTIME))
    return sorted(paths)


def write_file(
    root: Path,
    relpath: str,
    data: bytes | str,
    mtime: float | datetime | None = None,
) -> Path:
    """Write *data* at ``root/relpath`` (parents created) and set its mtime.

    Args:
        mtime: seconds since the epoch or an aware datetime; ``SAMPLE_MTIME`` when None.
            Tests give a later one to make a file look changed upstream.
    """
    target = root.joinpath(*relpath.strip("/").split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    if mtime is None:
        stamp = SAMPLE_MTIME
    elif isinstance(mtime, datetime):
        stamp = mtime.timestamp()
    else:
        stamp = float(mtime)
    os.utime(target, (stamp, stamp))
    return target


def iso_mtime(stamp: float) -> str:
    """Seconds since the epoch as ImmPort writes mtimes: ``2017-06-15T13:06:07Z``."""
    return datetime.fromtimestamp(int(stamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(rng: random.Random, size: int) -> bytes:
    lines = []
    total = 0
    while total < size:
        line = "\t".join(rng.choice(_WORDS) + str(rng.randrange(1000)) for _ in range(8)) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode("ascii")[:size]
