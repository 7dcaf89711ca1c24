"""Digests: one read gives xxh3_128 and, on request, MD5."""

from __future__ import annotations

import hashlib

import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from immsync.hashing import CHUNK_SIZE, file_checksum, file_digests, is_checksum


def test_digests_match_reference_implementations(tmp_path):
    """The streamed digests equal xxhash and hashlib over the whole content, across chunk edges."""
    data = bytes(range(256)) * (CHUNK_SIZE // 256 * 2 + 3)
    path = tmp_path / "f"
    path.write_bytes(data)
    d = file_digests(path, md5=True)
    assert d.checksum == "xxh3_128:" + xxhash.xxh3_128(data).hexdigest()
    assert d.md5 == hashlib.md5(data).hexdigest()
    assert d.size == len(data)


def test_md5_only_on_request(tmp_path):
    """MD5 is left out unless asked for (it is ~20x slower than xxh3)."""
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert file_digests(path).md5 is None
    assert file_checksum(path) == "xxh3_128:" + xxhash.xxh3_128(b"abc").hexdigest()


def test_empty_file(tmp_path):
    """An empty file has the digest of no bytes."""
    path = tmp_path / "e"
    path.write_bytes(b"")
    assert file_digests(path, md5=True).md5 == hashlib.md5(b"").hexdigest()


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=5000))
def test_checksum_format(data):
    """Every checksum is 'xxh3_128:' plus 32 lowercase hex digits."""
    assert is_checksum("xxh3_128:" + xxhash.xxh3_128(data).hexdigest())


def test_is_checksum_rejects_malformed():
    """Wrong algorithm, length or case is not a checksum."""
    assert not is_checksum("md5:" + "a" * 32)
    assert not is_checksum("xxh3_128:" + "a" * 31)
    assert not is_checksum("xxh3_128:" + "A" * 32)
