"""Containment: no path from the manifest or the server may land outside the destination.

Every destination-relative path is checked twice: lexically (``check_relative``: no
absolute path, no ``..``, no control characters that would corrupt an ``ascp`` pair
list) and physically (``resolve_inside``: no existing component is a symlink that
leads out of the destination).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from .errors import UnsafePath
from .model import MAX_NAME_BYTES, MAX_PATH_BYTES

_FORBIDDEN_CHARS = {"\0": "a NUL byte", "\n": "a line break", "\r": "a carriage return"}


def _suspect(path: str) -> bool:
    """Whether any rule of ``unsafe_reason`` could object to *path*.

    True for every unsafe path (and for a few safe ones, such as ``a/.hidden``): a
    forbidden character, a leading "/" or ".", a trailing "/", or a "/." or "//" that
    may start a "." or ".." segment or make an empty one. Substring tests, because this
    runs for every file of a listing and every record of the state: they cost a fifth
    of a regular expression's search.
    """
    return (
        not path
        or path[0] in "/."
        or path[-1] == "/"
        or "/." in path
        or "//" in path
        or "\0" in path
        or "\n" in path
        or "\r" in path
        or "\\" in path
    )


def unsafe_reason(path: str) -> str | None:
    """Why *path* is not a safe destination-relative POSIX path, or None if it is.

    Safe means it stays inside the destination and a file system can hold it: no name
    in it longer than 255 bytes, and at most 4,096 bytes in all.
    """
    # Up to 255 ASCII characters, no name can be too long: decided without encoding.
    if not _suspect(path) and len(path) <= MAX_NAME_BYTES and path.isascii():
        return None
    if not path:
        return "it is empty"
    for char, name in _FORBIDDEN_CHARS.items():
        if char in path:
            return f"it contains {name}"
    if "\\" in path:
        return "it contains a backslash"
    if path.startswith("/"):
        return "it is absolute"
    parts = path.split("/")
    if ".." in parts:
        return "it contains a '..' segment"
    if any(p in ("", ".") for p in parts):
        return "it contains an empty or '.' segment"
    return _length_reason(path)


def _length_reason(path: str) -> str | None:
    size = len(path.encode("utf-8", "surrogatepass"))
    if size > MAX_PATH_BYTES:
        return f"it is {size} bytes long, more than the {MAX_PATH_BYTES} a path may have"
    longest = max(len(p.encode("utf-8", "surrogatepass")) for p in path.split("/"))
    if longest > MAX_NAME_BYTES:
        return (
            f"a name in it is {longest} bytes long, more than the {MAX_NAME_BYTES} a file "
            "system allows"
        )
    return None


def check_relative(path: str, *, what: str = "path") -> str:
    """Return *path* unchanged if safe, else raise UnsafePath naming it."""
    reason = unsafe_reason(path)
    if reason:
        raise UnsafePath(f"refusing {what} {path!r}: {reason}")
    return path


def resolve_inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing it if any existing ancestor is a symlink leaving *root*.

    The final component itself may be a symlink only if it stays inside *root*: we
    replace files with ``os.replace``, which swaps the link itself, but a later read
    through it must not reach outside.
    """
    check_relative(relative)
    root_real = Path(os.path.realpath(root))
    target = root.joinpath(*PurePosixPath(relative).parts)
    probe = root
    for part in PurePosixPath(relative).parts:
        probe = probe / part
        if probe.is_symlink():
            real = Path(os.path.realpath(probe))
            if real != root_real and root_real not in real.parents:
                raise UnsafePath(
                    f"refusing to write {relative!r}: {probe} is a symlink to {real}, "
                    f"outside the destination {root}",
                    hint="remove the symlink or point the manifest's destination elsewhere",
                )
    return target
