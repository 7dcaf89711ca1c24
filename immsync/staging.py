"""Everything about the staging folder's names: where a file travels, and what lies beside it.

A file is transferred into ``<destination>/.immsync/staging/<staged_name(path)>``, never
its final path. While a transport works on it, ascp keeps ``<name>.partial`` and its
resume checkpoint ``<name>.aspx`` (or ``<name>.partial.aspx``) beside it; the HTTPS
transport writes the same ``.partial`` and keeps the ``ETag`` it resumes against in
``<name>.etag``. This module is the one place that knows those names; the folder's
safety (never following a link) is ``statedir``'s.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterable
from pathlib import Path

from .model import MAX_NAME_BYTES, MAX_PATH_BYTES

IN_TRANSIT_SUFFIXES = (".partial", ".aspx", ".partial.aspx")
"""Beside a staged file while a transport still works on it: ascp's partial file and
resume checkpoint (named after either form); HTTPS writes the same partial file."""
STAGING_SUFFIXES = (*IN_TRANSIT_SUFFIXES, ".etag")
"""Every suffix a transport adds to a staged file's name (``.etag``: the HTTPS
validator of a partial download)."""
LONG_NAMES_DIRNAME = "long-names"
"""Where files are staged whose own path cannot be staged (see ``staged_name``)."""
STAGED_PATH_BUDGET = MAX_PATH_BYTES // 4
"""The longest path staged as itself, suffix included, in bytes: a quarter of what a
path may have, so that the staging folder's own path can take the rest."""
_SUFFIX_ROOM = max(len(s) for s in STAGING_SUFFIXES)


def staged_name(path: str) -> str:
    """Where the file at *path* travels, relative to the staging folder.

    Its own path, unless a staging suffix would make its name longer than a name may
    be (names of 243 to 255 bytes are legal but cannot carry ``.partial.aspx``), or
    its path longer than ``STAGED_PATH_BUDGET``: then ``long-names/<hash of the path>``,
    which cannot overflow, and which no study folder can clash with (those are named
    ``SDY<digits>``). Every transport and the applier stage through this, so the
    mapping is kept here, once.
    """
    if len(path) + _SUFFIX_ROOM <= MAX_NAME_BYTES and path.isascii():
        return path  # the usual case, decided without encoding
    encoded = path.encode("utf-8", "surrogatepass")
    name = encoded.rpartition(b"/")[2]
    if (
        len(name) + _SUFFIX_ROOM <= MAX_NAME_BYTES
        and len(encoded) + _SUFFIX_ROOM <= STAGED_PATH_BUDGET
    ):
        return path
    return f"{LONG_NAMES_DIRNAME}/{hashlib.sha256(encoded).hexdigest()[:32]}"


def partial_of(staged: Path) -> Path:
    """The in-transit file of *staged*: ``<name>.partial``."""
    return staged.with_name(staged.name + ".partial")


def checkpoint_of(partial: Path) -> Path:
    """ascp's resume checkpoint beside *partial* (``<name>.aspx``): its partial file may
    have holes that only this accounts for."""
    return partial.with_name(partial.name.removesuffix(".partial") + ".aspx")


def validator_of(partial: Path) -> Path:
    """Where the HTTPS transport keeps the ``ETag`` *partial* was downloaded against."""
    return partial.with_name(partial.name.removesuffix(".partial") + ".etag")


def staged_bytes(staging: Path, paths_and_sizes: Iterable[tuple[str, int]]) -> int:
    """Bytes of these files already in *staging* from an earlier run: each one's partial
    file, or its whole staged file not yet verified, up to its size. Reads no content."""
    total = 0
    for path, size in paths_and_sizes:
        staged = staging / staged_name(path)
        for candidate in (staged, partial_of(staged)):
            try:
                info = candidate.lstat()
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += min(info.st_size, size)
                break
    return total
