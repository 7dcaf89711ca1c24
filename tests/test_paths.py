"""Containment of destination-relative paths."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from immsync.errors import UnsafePath
from immsync.paths import check_relative, resolve_inside, unsafe_reason


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "it is empty"),
        ("/etc/passwd", "it is absolute"),
        ("SDY1/../../x", "it contains a '..' segment"),
        ("..", "it contains a '..' segment"),
        ("SDY1/a\0b", "it contains a NUL byte"),
        ("SDY1/a\nSDY1/b", "it contains a line break"),
        ("SDY1/a\rb", "it contains a carriage return"),
        ("SDY1\\a", "it contains a backslash"),
        ("SDY1//a", "it contains an empty or '.' segment"),
        ("SDY1/./a", "it contains an empty or '.' segment"),
    ],
)
def test_hostile_paths_are_refused(path, reason):
    """Each hostile form is named with its reason."""
    assert unsafe_reason(path) == reason
    with pytest.raises(UnsafePath, match="refusing"):
        check_relative(path)


def test_ordinary_path_is_accepted():
    """A plain nested path passes unchanged."""
    assert check_relative("SDY1/ResultFiles/x y.fcs") == "SDY1/ResultFiles/x y.fcs"


@given(st.text(alphabet="ab./\\\0\n\r", max_size=12))
def test_accepted_exactly_when_every_rule_holds(path: str):
    """Any string: accepted iff non-empty, relative, no bad character or segment."""
    expected_safe = (
        path != ""
        and not path.startswith("/")
        and not any(c in path for c in "\0\n\r\\")
        and all(part not in ("", ".", "..") for part in path.split("/"))
    )
    assert (unsafe_reason(path) is None) == expected_safe


def test_symlink_leading_outside_is_refused(tmp_path):
    """A symlinked folder inside the destination that points outside it is refused."""
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    os.symlink(outside, dest / "SDY1")
    with pytest.raises(UnsafePath, match="is a symlink to"):
        resolve_inside(dest, "SDY1/a.txt")


def test_symlink_staying_inside_is_allowed(tmp_path):
    """A symlink that stays within the destination is fine."""
    dest = tmp_path / "dest"
    (dest / "real").mkdir(parents=True)
    os.symlink(dest / "real", dest / "SDY1")
    assert resolve_inside(dest, "SDY1/a.txt") == dest / "SDY1" / "a.txt"
