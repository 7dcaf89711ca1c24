"""Content digests: xxh3_128 for our own records, MD5 where ImmPort gives one.

Digest strings carry their algorithm (``xxh3_128:<hex>``) so the algorithm can change
later without a state migration. Both digests come from one read of the file.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import xxhash

ALGORITHM = "xxh3_128"
# 1 MiB reads: large enough that per-call overhead vanishes next to hashing, small
# enough to stay in L2/L3 cache while both digests consume the same buffer.
CHUNK_SIZE = 1 << 20
# From this size up, files are hashed through a read-only memory map. xxh3 runs at
# memory speed (~25 GB/s), so copying page-cache bytes into a buffer with read() cost
# two thirds of verify's time; hashing the page cache in place does not. Below it the
# map's set-up costs more than the copy it saves (measured: benchmarks/, "hashing").
MMAP_MIN_SIZE = 2 * CHUNK_SIZE


@dataclass(frozen=True, slots=True)
class Digests:
    checksum: str
    """``xxh3_128:<32 lowercase hex>``."""
    size: int
    md5: str | None = None
    """Lowercase hex MD5, computed only when asked for."""


def file_digests(path: Path, *, md5: bool = False, mapped: bool = True) -> Digests:
    """Hash *path* in one pass: always xxh3_128, and MD5 too when *md5* is true.

    *mapped*: large files are read through a memory map (see ``_hash_mapped``). Pass
    False for a file someone may be rewriting right now, such as a local file that
    changed under a sync: reading it can then give torn bytes, never a crash.
    """
    xxh = xxhash.xxh3_128()
    md5_hash = hashlib.md5(usedforsecurity=False) if md5 else None
    size = 0
    with path.open("rb", buffering=0) as fh:
        if mapped and os.fstat(fh.fileno()).st_size >= MMAP_MIN_SIZE:
            size = _hash_mapped(fh.fileno(), xxh, md5_hash)
            fh.seek(size)  # a file that grew since it was mapped: read the rest
        buffer = bytearray(CHUNK_SIZE)
        view = memoryview(buffer)
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


def _hash_mapped(fd: int, xxh: xxhash.xxh3_128, md5_hash: hashlib._Hash | None) -> int:
    """Feed the file's bytes to the digests from a memory map; return how many.

    Like every memory-mapped reader (b3sum, ripgrep), a process hashing a file that
    another process truncates at that moment gets SIGBUS. So immsync maps its own
    staged downloads and, in ``verify``, the files it recorded; a local file found
    changed while planning, which someone may be rewriting, is read instead.
    """
    try:
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # not mappable (a FIFO, some network file systems)
        return 0
    with mapped:
        view = memoryview(mapped)
        try:
            if md5_hash is None:
                xxh.update(view)
            else:
                # Both digests take each slice while it is still in the CPU cache.
                for start in range(0, len(view), CHUNK_SIZE):
                    chunk = view[start : start + CHUNK_SIZE]
                    xxh.update(chunk)
                    md5_hash.update(chunk)
                    chunk.release()
        finally:
            view.release()
        return len(mapped)


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
