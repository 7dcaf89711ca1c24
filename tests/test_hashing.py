"""Digests: one read gives xxh3_128 and, on request, MD5."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

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
    """file_checksum gives 'xxh3_128:' + 32 lowercase hex; is_checksum takes it, and no variant."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f"
        path.write_bytes(data)
        checksum = file_checksum(path)
    hexdigest = xxhash.xxh3_128(data).hexdigest()
    assert checksum == "xxh3_128:" + hexdigest
    assert is_checksum(checksum)
    malformed = [
        "md5:" + hexdigest,
        hexdigest,
        checksum[:-1],
        checksum + "0",
        checksum[:-1] + "g",
        "xxh3_128;" + hexdigest,
    ]
    if hexdigest.upper() != hexdigest:
        malformed.append("xxh3_128:" + hexdigest.upper())
    for text in malformed:
        assert not is_checksum(text), text


def test_is_checksum_rejects_malformed():
    """Wrong algorithm, length or case is not a checksum."""
    assert not is_checksum("md5:" + "a" * 32)
    assert not is_checksum("xxh3_128:" + "a" * 31)
    assert not is_checksum("xxh3_128:" + "A" * 32)
