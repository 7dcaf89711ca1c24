"""Offline checks of what immsync recorded: ``status`` (cheap) and ``verify`` (thorough).

``status`` compares each recorded file's size and modification time with what is on
disk and reads no file content, so it stays fast on a 100,000-file mirror. ``verify``
re-hashes every recorded file and compares the digest.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .hashing import file_digests
from .model import StateEntry


class FileState(Enum):
    OK = "ok"
    MODIFIED = "modified"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class FileCheck:
    entry: StateEntry
    state: FileState
    detail: str = ""


def status(destination: Path, entries: Mapping[str, StateEntry]) -> list[FileCheck]:
    """Each recorded file, judged by its fingerprint (size and mtime) alone."""
    results = []
    for path in sorted(entries):
        entry = entries[path]
        st = _lstat(destination / path)
        if st is None:
            results.append(FileCheck(entry, FileState.MISSING, "not on disk"))
        elif (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
            detail = (
                f"size {entry.size} -> {st.st_size}"
                if st.st_size != entry.size
                else "modification time changed"
            )
            results.append(FileCheck(entry, FileState.MODIFIED, detail))
        else:
            results.append(FileCheck(entry, FileState.OK))
    return results


def verify(
    destination: Path,
    entries: Mapping[str, StateEntry],
    *,
    on_file: Callable[[FileCheck], None] | None = None,
) -> list[FileCheck]:
    """Each recorded file, judged by re-hashing its content."""
    results = []
    for path in sorted(entries):
        entry = entries[path]
        target = destination / path
        if _lstat(target) is None:
            check = FileCheck(entry, FileState.MISSING, "not on disk")
        else:
            try:
                digests = file_digests(target)
            except OSError as exc:
                check = FileCheck(entry, FileState.MISSING, f"unreadable: {exc.strerror or exc}")
            else:
                if digests.checksum == entry.checksum:
                    check = FileCheck(entry, FileState.OK)
                else:
                    check = FileCheck(
                        entry,
                        FileState.MODIFIED,
                        f"checksum {digests.checksum} != recorded {entry.checksum}",
                    )
        results.append(check)
        if on_file is not None:
            on_file(check)
    return results


def _lstat(path: Path) -> os.stat_result | None:
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if stat.S_ISREG(st.st_mode) else None
