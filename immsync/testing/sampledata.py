"""Small, deterministic ImmPort-like file trees for the emulator, tests and the demo.

``build_sample_tree`` is the Aspera-era tree (``/SDYnnn/StudyFiles/...``,
``/SDYnnn/ResultFiles/<Measurement>_result/...``, a release zip at the study root).
``build_today_tree`` is the same studies as today's manifest shows them: ``Protocols/``
(one document also under ``StudyFiles/``, byte for byte), the current release's files at
the study root and an ``archive/`` of earlier releases. ``build_many_files`` makes one
large synthetic study quickly, for benchmarks. Content comes from a seeded PRNG and
mtimes are fixed, so two builds are byte-for-byte identical and listings reproducible.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

SAMPLE_MTIME = 1497531967.0
"""2017-06-15T13:06:07Z, the mtime in ImmPort's own listing example."""

SAMPLE_MTIME_ISO = "2017-06-15T13:06:07Z"

_SEED = 20170615

PROTOCOL_MTIME = 1517443200.0
"""2018-02-01T00:00:00Z: when today's tree's protocol documents were last updated."""

RELEASE_MTIME = 1761825600.0
"""2025-10-30T12:00:00Z: when data release DR58 and its archive were built."""

TODAY_RELEASE = "DR58"

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

# (relative path, size, text?, mtime) of today's tree; "=<path>" as size copies that file.
_TODAY_LAYOUT: tuple[tuple[str, int | str, bool, float], ...] = (
    ("SDY1/StudyFiles/SDY1_protocol.pdf", 150_000, False, SAMPLE_MTIME),
    ("SDY1/StudyFiles/Study_design.txt", 12_000, True, SAMPLE_MTIME),
    ("SDY1/Protocols/SDY1_protocol.pdf", "=SDY1/StudyFiles/SDY1_protocol.pdf", False, SAMPLE_MTIME),
    ("SDY1/Protocols/Flow_cytometry_panel.docx", 40_000, False, PROTOCOL_MTIME),
    ("SDY1/ResultFiles/Flow_cytometry_result/02054141.001.52628.fcs", 180_000, False, SAMPLE_MTIME),
    ("SDY1/ResultFiles/Flow_cytometry_result/02054141.002.52629.fcs", 120_000, False, SAMPLE_MTIME),
    ("SDY1/ResultFiles/Flow_cytometry_result/02054141.003.52630.fcs", 95_000, False, SAMPLE_MTIME),
    ("SDY1/ResultFiles/HAI_result/hai_results.txt", 6_000, True, SAMPLE_MTIME),
    ("SDY1/SDY1-DR58_Tab.zip", 200_000, False, RELEASE_MTIME),
    ("SDY1/SDY1-DR58_summary.txt", 3_000, True, RELEASE_MTIME),
    ("SDY1/SDY1-DR58_manifest.txt", 4_000, True, RELEASE_MTIME),
    ("SDY1/archive/SDY1-DR40.zip", 80_000, False, RELEASE_MTIME),
    ("SDY1/archive/SDY1-DR45.zip", 80_000, False, RELEASE_MTIME),
    ("SDY1/archive/SDY1-DR47.zip", 80_000, False, RELEASE_MTIME),
    ("SDY1/archive/SDY1-DR50.zip", 80_000, False, RELEASE_MTIME),
    ("SDY1/archive/SDY1-DR55.zip", 80_000, False, RELEASE_MTIME),
    ("SDY269/StudyFiles/SDY269_summary.txt", 2_000, True, SAMPLE_MTIME),
    ("SDY269/Protocols/SDY269_protocol.docx", 30_000, False, PROTOCOL_MTIME),
    ("SDY269/ResultFiles/ELISA_result/elisa.txt", 24_000, True, SAMPLE_MTIME),
    ("SDY269/SDY269-DR58_Tab.zip", 60_000, False, RELEASE_MTIME),
    ("SDY269/SDY269-DR58_summary.txt", 1_500, True, RELEASE_MTIME),
    ("SDY269/SDY269-DR58_manifest.txt", 2_000, True, RELEASE_MTIME),
    ("SDY269/archive/SDY269-DR50.zip", 50_000, False, RELEASE_MTIME),
    ("SDY269/archive/SDY269-DR55.zip", 50_000, False, RELEASE_MTIME),
)  # fmt: skip

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


def build_today_tree(root: Path) -> list[str]:
    """Create today's sample tree under *root* and return its file paths, sorted.

    Per study: ``StudyFiles/``, ``Protocols/`` (``SDY1/Protocols/SDY1_protocol.pdf``
    repeats the ``StudyFiles`` copy byte for byte, as ImmPort's manifests show),
    ``ResultFiles/``, the DR58 release files at the study root (``SDY1-DR58_Tab.zip``,
    ``_summary.txt``, ``_manifest.txt``) and ``archive/SDY1-DR40.zip`` ... (earlier
    releases). About 1.6 MB in all.
    """
    written: dict[str, bytes] = {}
    for relpath, size, text, mtime in _TODAY_LAYOUT:
        if isinstance(size, str):
            data = written[size.removeprefix("=")]
        else:
            # Seeded per file, so adding a file to the layout changes no other file.
            rng = random.Random(f"{_SEED}:{relpath}")
            data = _text(rng, size) if text else rng.randbytes(size)
        write_file(root, relpath, data, mtime)
        written[relpath] = data
    _pin_folder_times(root, written)
    return sorted(written)


def build_many_files(
    root: Path, accession: str, count: int, size: int, *, per_folder: int = 1000
) -> list[str]:
    """Create one synthetic study of *count* files of *size* bytes each, quickly.

    Files go to ``<accession>/ResultFiles/Batch<nnnn>_result/<accession>_<nnnnnn>.txt``,
    *per_folder* to a folder; each starts with its own name (distinct MD5s as long as
    *size* holds it) and is padded to *size*. Raw ``os`` calls: 100,000 files take
    seconds, not minutes. Returns the relative paths in creation order (sorted).
    """
    paths: list[str] = []
    base = str(root)
    made: set[str] = set()
    times = (SAMPLE_MTIME, SAMPLE_MTIME)
    padding = b"." * size
    for n in range(count):
        folder = f"{accession}/ResultFiles/Batch{n // per_folder:04d}_result"
        if folder not in made:
            os.makedirs(f"{base}/{folder}", exist_ok=True)
            made.add(folder)
        rel = f"{folder}/{accession}_{n:06d}.txt"
        head = f"{accession} file {n}\n".encode()
        data = (head + padding)[:size]
        path = f"{base}/{rel}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.utime(fd, times)
        finally:
            os.close(fd)
        paths.append(rel)
    for folder in made:
        os.utime(f"{base}/{folder}", times)
    return paths


def _pin_folder_times(root: Path, paths: Iterable[str]) -> None:
    # Folder mtimes appear in listings too; pin them so two builds list identically.
    folders = {p.rsplit("/", i)[0] for p in paths for i in range(1, p.count("/") + 1)}
    for folder in folders:
        os.utime(root / folder, (SAMPLE_MTIME, SAMPLE_MTIME))


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
