"""Content digests: xxh3_128 for our own records, MD5 where ImmPort gives one.

Digest strings carry their algorithm (``xxh3_128:<hex>``) so the algorithm can change
later without a state migration. Both digests come from one read of the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import xxhash

ALGORITHM = "xxh3_128"
# 1 MiB reads: large enough that per-call overhead vanishes next to hashing, small
# enough to stay in L2/L3 cache while both digests consume the same buffer.
#
# Files are read, never memory-mapped: a process touching a mapped page of a file
# another process has just truncated is killed by SIGBUS, with no message and nothing
# to catch. A read of a truncated file merely comes up short, which the size and
# digest checks then report.
CHUNK_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class Digests:
    checksum: str
    """``xxh3_128:<32 lowercase hex>``."""
    size: int
    md5: str | None = None
    """Lowercase hex MD5, computed only when asked for."""


def file_digests(path: Path, *, md5: bool = False) -> Digests:
    """Hash *path* in one pass: always xxh3_128, and MD5 too when *md5* is true.

    A file cut short or rewritten meanwhile gives the digests of whatever bytes the
    reads returned (and their count as ``size``), never a crash.
    """
    xxh = xxhash.xxh3_128()
    md5_hash = hashlib.md5(usedforsecurity=False) if md5 else None
    size = 0
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            chunk = view[:n]
            xxh.update(chunk)
            if md5_hash is not None:
                md5_hash.update(chunk)
            size += n
    return Digests(
        checksum=f"{ALGORITHM}:{xxh.hexdigest()}",
        size=size,
        md5=md5_hash.hexdigest() if md5_hash is not None else None,
    )


def file_checksum(path: Path) -> str:
    """The ``xxh3_128:<hex>`` digest of *path*."""
    return file_digests(path).checksum


def is_checksum(text: str) -> bool:
    """True for a well-formed ``xxh3_128:<32 lowercase hex>`` string."""
    algorithm, _, hexdigest = text.partition(":")
    return (
        algorithm == ALGORITHM
        and len(hexdigest) == 32
        and all(c in "0123456789abcdef" for c in hexdigest)
    )
