"""`status` and `verify` as library calls: verdicts per file, serial and parallel alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from immsync.check import FileCheck, FileState, status, verify
from immsync.hashing import file_checksum
from immsync.model import StateEntry


@pytest.fixture(name="mirror")
def _mirror(tmp_path: Path) -> tuple[Path, dict[str, StateEntry]]:
    """Five recorded files, then: one changed in place, one missing, one a symlink."""
    entries = {}
    for n in range(5):
        path = f"SDY1/StudyFiles/f{n}.txt"
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"%d" % n * (100 + n))
        st = target.stat()
        entries[path] = StateEntry(path, st.st_size, st.st_mtime_ns, file_checksum(target), 0, "")
    changed = tmp_path / "SDY1/StudyFiles/f1.txt"
    mtime = changed.stat().st_mtime_ns
    changed.write_bytes(b"X" * 101)
    os.utime(changed, ns=(mtime, mtime))  # same size, same time: only a hash sees it
    (tmp_path / "SDY1/StudyFiles/f2.txt").unlink()
    link = tmp_path / "SDY1/StudyFiles/f3.txt"
    link.unlink()
    link.symlink_to(tmp_path / "SDY1/StudyFiles/f4.txt")
    return tmp_path, entries


def verdicts(checks: list[FileCheck]) -> list[tuple[str, FileState]]:
    return [(c.entry.path, c.state) for c in checks]


EXPECTED = [
    ("SDY1/StudyFiles/f0.txt", FileState.OK),
    ("SDY1/StudyFiles/f1.txt", FileState.MODIFIED),
    ("SDY1/StudyFiles/f2.txt", FileState.MISSING),
    ("SDY1/StudyFiles/f3.txt", FileState.MISSING),
    ("SDY1/StudyFiles/f4.txt", FileState.OK),
]


@pytest.mark.parametrize("workers", [1, 3])
def test_verify_judges_by_content_in_path_order(mirror, workers: int):
    """Serial (1 worker) and parallel give the same verdicts, reported in path order."""
    dest, entries = mirror
    seen: list[str] = []
    checks = verify(dest, entries, workers=workers, on_file=lambda c: seen.append(c.entry.path))
    assert verdicts(checks) == EXPECTED
    assert seen == sorted(entries)
    assert checks[1].detail.startswith("checksum xxh3_128:")


def test_status_judges_by_size_and_time_only(mirror):
    """The file changed behind the same size and time passes status; verify is what sees it."""
    dest, entries = mirror
    assert verdicts(status(dest, entries)) == [
        (path, FileState.OK if state is FileState.MODIFIED else state) for path, state in EXPECTED
    ]
