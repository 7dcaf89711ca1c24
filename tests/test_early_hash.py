"""Files are hashed as soon as the transport reports them complete, not after the session."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from immsync.hashing import file_digests
from immsync.model import RemoteFile
from immsync.sync import _EarlyHashes

MTIME = "2017-06-15T13:06:07Z"


def staged(staging: Path, path: str, data: bytes) -> RemoteFile:
    target = staging / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return RemoteFile(path, len(data), MTIME, md5=None)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def test_a_reported_file_is_hashed_with_its_inode(tmp_path: Path, pool):
    """file_done(name) hashes the staged file: digests equal a later full hash."""
    a = staged(tmp_path, "SDY1/A/a.txt", b"alpha" * 1000)
    b = staged(tmp_path, "SDY1/B/b.txt", b"beta")
    early = _EarlyHashes(tmp_path, [a, b], pool)
    early.file_done("a.txt")
    got = early.results()
    assert list(got) == ["SDY1/A/a.txt"]
    assert got[a.path].digests == file_digests(tmp_path / a.path)
    assert got[a.path].describes(os.lstat(tmp_path / a.path))


def test_same_base_name_in_two_folders_hashes_both(tmp_path: Path, pool):
    """ascp prints base names: a name shared by two files of the session covers both."""
    one = staged(tmp_path, "SDY1/A/x.txt", b"one")
    two = staged(tmp_path, "SDY1/B/x.txt", b"two")
    early = _EarlyHashes(tmp_path, [one, two], pool)
    early.file_done("x.txt")
    assert sorted(early.results()) == [one.path, two.path]


@pytest.mark.parametrize("leftover", [".partial", ".aspx"])
def test_a_file_the_transport_still_works_on_is_left_alone(tmp_path: Path, pool, leftover):
    """A .partial or .aspx beside it: not hashed now; the end of the session judges it."""
    a = staged(tmp_path, "SDY1/a.txt", b"alpha")
    (tmp_path / f"SDY1/a.txt{leftover}").write_bytes(b"")
    early = _EarlyHashes(tmp_path, [a], pool)
    early.file_done("a.txt")
    assert early.results() == {}


def test_short_or_missing_files_are_not_hashed(tmp_path: Path, pool):
    """Not yet its full size, or not there: nothing is recorded early."""
    short = staged(tmp_path, "SDY1/short.txt", b"abc")
    short = RemoteFile(short.path, 10, MTIME)
    gone = RemoteFile("SDY1/gone.txt", 3, MTIME)
    early = _EarlyHashes(tmp_path, [short, gone], pool)
    early.file_done("short.txt")
    early.file_done("gone.txt")
    assert early.results() == {}


def test_a_file_replaced_after_the_hash_is_not_described(tmp_path: Path, pool):
    """Re-sent after the hash (ascp renames a new .partial over it): the hash is stale."""
    a = staged(tmp_path, "SDY1/a.txt", b"alpha")
    early = _EarlyHashes(tmp_path, [a], pool)
    early.file_done("a.txt")
    hashed = early.results()[a.path]
    fresh = tmp_path / "SDY1/a.txt.partial"
    fresh.write_bytes(b"ALPHA")
    os.replace(fresh, tmp_path / a.path)
    assert not hashed.describes(os.lstat(tmp_path / a.path))


def test_each_file_is_hashed_once_per_session(tmp_path: Path, pool):
    """Redraws of the 100% line do not hash a file again: the first digests stand."""
    a = staged(tmp_path, "SDY1/a.txt", b"alpha")
    early = _EarlyHashes(tmp_path, [a], pool)
    early.file_done("a.txt")
    first = early.results()[a.path].digests
    (tmp_path / a.path).write_bytes(b"ALPHA")  # in place: only a re-hash would see it
    for _ in range(3):
        early.file_done("a.txt")
    assert early.results()[a.path].digests == first
