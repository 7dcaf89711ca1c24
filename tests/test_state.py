"""The SQLite state: roundtrip, atomic records, refusal of foreign or damaged files."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from immsync.errors import StateError
from immsync.model import StateEntry
from immsync.state import SCHEMA_VERSION, StateStore


def make_entry(path: str = "SDY1/a.txt", size: int = 3) -> StateEntry:
    return StateEntry(path, size, 123, "xxh3_128:" + "0" * 32, size, "2017-06-15T13:06:07Z", None)


def test_missing_state_is_empty_without_creating_it(tmp_path):
    """Opening a missing state read-only gives no entries and writes nothing."""
    path = tmp_path / ".immsync" / "state.sqlite"
    with StateStore.open(path, create=False) as store:
        assert store.entries() == {}
    assert not path.exists()


def test_a_blank_state_another_run_is_creating_is_read_as_empty_not_written(tmp_path):
    """A reader meeting a state file with no tables yet (a shard creating it) leaves it be."""
    path = tmp_path / "state.sqlite"
    sqlite3.connect(path).close()  # what a creator's connect leaves before its tables
    with StateStore.open(path, create=False) as store:
        assert store.entries() == {}
    assert path.stat().st_size == 0
    with StateStore.open(path, create=True) as store:  # its creator then goes on
        store.record([StateEntry("SDY1/a", 1, 2, "xxh3_128:" + "0" * 32, 1, "t")])
    with StateStore.open(path, create=False) as store:
        assert list(store.entries()) == ["SDY1/a"]


def test_record_and_reload(tmp_path):
    """Recorded entries survive closing and reopening."""
    path = tmp_path / "state.sqlite"
    with StateStore.open(path) as store:
        store.record([make_entry("SDY1/a"), make_entry("SDY1/b", 5)])
    with StateStore.open(path) as store:
        assert store.entries() == {
            "SDY1/a": make_entry("SDY1/a"),
            "SDY1/b": make_entry("SDY1/b", 5),
        }


def test_record_replaces_and_forget_removes(tmp_path):
    """A second record of a path replaces the first; forget drops it."""
    with StateStore.open(tmp_path / "s") as store:
        store.record([make_entry("SDY1/a", 1)])
        store.record([make_entry("SDY1/a", 2)])
        assert store.entries()["SDY1/a"].size == 2
        store.forget(["SDY1/a"])
        assert store.entries() == {}


def test_corrupt_file_is_refused_with_hint(tmp_path):
    """A damaged state is a StateError naming the file and how to rebuild, never an empty state."""
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StateError) as info:
        StateStore.open(path)
    assert str(path) in info.value.message
    assert "--rebuild-state" in (info.value.hint or "")
    assert path.read_bytes().startswith(b"this is not")  # left untouched


def test_foreign_sqlite_file_is_refused(tmp_path):
    """Another program's SQLite database is not taken for ours."""
    path = tmp_path / "state.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE other (x)")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="is not an immsync state file"):
        StateStore.open(path)


def test_future_version_is_refused(tmp_path):
    """A state written by a newer immsync is refused with an upgrade hint."""
    path = tmp_path / "state.sqlite"
    StateStore.open(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="written by a newer immsync") as info:
        StateStore.open(path)
    assert "upgrade immsync" in (info.value.hint or "")


# Recorded paths are destination-relative and safe (the state refuses others).
segments = st.text(alphabet="abcdefgh_.-", min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)
names = st.lists(segments, min_size=1, max_size=4).map("/".join)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(names, st.integers(0, 2**62), max_size=20))
def test_roundtrip_property(tmp_path, files):
    """Whatever is recorded is read back exactly."""
    path = tmp_path / "prop.sqlite"
    path.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"prop.sqlite{suffix}").unlink(missing_ok=True)
    entries = {p: make_entry(p, s) for p, s in files.items()}
    with StateStore.open(path) as store:
        store.record(entries.values())
    with StateStore.open(path) as store:
        assert store.entries() == entries
