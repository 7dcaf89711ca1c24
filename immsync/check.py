"""Offline checks of what immsync recorded: ``status`` (cheap) and ``verify`` (thorough).

``status`` compares each recorded file's size and modification time with what is on
disk and reads no file content, so it stays fast on a 100,000-file mirror. ``verify``
re-hashes every recorded file and compares the digest.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from .hashing import file_digests
from .model import StateEntry

MAX_VERIFY_WORKERS = 4
"""Files ``verify`` hashes at once, at most (fewer on a machine with fewer CPUs)."""


class FileState(Enum):
    OK = "ok"
    MODIFIED = "modified"
    MISSING = "missing"


class FileCheck(NamedTuple):
    """One recorded file's verdict (a named tuple: ``status`` makes 100,000 of them)."""

    entry: StateEntry
    state: FileState
    detail: str = ""


def status(destination: Path, entries: Mapping[str, StateEntry]) -> list[FileCheck]:
    """Each recorded file, judged by its fingerprint (size and mtime) alone."""
    # One lstat per file on a plain string: building a Path for each of 100,000 files
    # cost more than the system calls themselves. The loop is kept tight on purpose:
    # it runs once per recorded file and is most of what `immsync status` does.
    base = os.fspath(destination) + "/"
    lstat, is_regular, ok = os.lstat, stat.S_ISREG, FileState.OK
    results: list[FileCheck] = []
    append = results.append
    for path in sorted(entries):
        entry = entries[path]
        try:
            st = lstat(base + path)
        except (FileNotFoundError, NotADirectoryError):
            append(FileCheck(entry, FileState.MISSING, "not on disk"))
            continue
        if st.st_size == entry.size and st.st_mtime_ns == entry.mtime_ns:
            if is_regular(st.st_mode):
                append(FileCheck(entry, ok))
                continue
        elif is_regular(st.st_mode):
            detail = (
                f"size {entry.size} -> {st.st_size}"
                if st.st_size != entry.size
                else "modification time changed"
            )
            append(FileCheck(entry, FileState.MODIFIED, detail))
            continue
        append(FileCheck(entry, FileState.MISSING, "not on disk"))
    return results


def verify(
    destination: Path,
    entries: Mapping[str, StateEntry],
    *,
    on_file: Callable[[FileCheck], None] | None = None,
    workers: int | None = None,
) -> list[FileCheck]:
    """Each recorded file, judged by re-hashing its content.

    Files are hashed *workers* at a time (default: one per CPU, at most
    ``MAX_VERIFY_WORKERS``). The digests release the GIL, so this scales with cores
    when the files are cached, and keeps several reads queued when they are not.
    Results, and the calls to *on_file*, come in path order.
    """
    paths = sorted(entries)
    count = workers if workers is not None else min(MAX_VERIFY_WORKERS, os.cpu_count() or 1)
    results: list[FileCheck] = []

    def done(check: FileCheck) -> None:
        results.append(check)
        if on_file is not None:
            on_file(check)

    if count <= 1 or len(paths) <= 1:
        for path in paths:
            done(_verify_one(destination, entries[path]))
        return results
    pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="immsync-verify")
    try:
        # A bounded window of futures, not one per file: 100,000 pending futures
        # would cost more memory than the checks themselves.
        window: deque[Future[FileCheck]] = deque()
        for path in paths:
            window.append(pool.submit(_verify_one, destination, entries[path]))
            if len(window) >= 4 * count:
                done(window.popleft().result())
        while window:
            done(window.popleft().result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _verify_one(destination: Path, entry: StateEntry) -> FileCheck:
    target = destination / entry.path
    if _lstat(target) is None:
        return FileCheck(entry, FileState.MISSING, "not on disk")
    try:
        digests = file_digests(target)
    except OSError as exc:
        return FileCheck(entry, FileState.MISSING, f"unreadable: {exc.strerror or exc}")
    if digests.checksum == entry.checksum:
        return FileCheck(entry, FileState.OK)
    return FileCheck(
        entry,
        FileState.MODIFIED,
        f"checksum {digests.checksum} != recorded {entry.checksum}",
    )


def _lstat(path: Path) -> os.stat_result | None:
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if stat.S_ISREG(st.st_mode) else None
