"""The shipped fakes do what their docstrings promise: users' tests rely on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from immsync.errors import ApiError, Failure, RemoteNotFound, TransferError
from immsync.model import ProgressEvent, TransferBatch
from immsync.testing.fakes import FakeCatalog, FakeClock, FakeTransfer, content_of, remote_file

A, B = "SDY1/StudyFiles/a.txt", "SDY1/StudyFiles/b.txt"


def batch(tmp_path: Path, *paths: str, sizes: int = 10) -> TransferBatch:
    files = tuple(remote_file(p, content_of(p, sizes), md5=False) for p in paths)
    return TransferBatch(files=files, staging=tmp_path / "staging", label="b1")


def test_files_land_in_staging_with_progress(tmp_path: Path):
    """Each file arrives at staging/<path> whole; 0 % and 100 % are reported by base name."""
    events: list[ProgressEvent] = []
    transfer = FakeTransfer()
    transfer.fetch(batch(tmp_path, A, B), events.append)
    assert (tmp_path / "staging" / A).read_bytes() == content_of(A, 10)
    assert [(e.name, e.percent) for e in events] == [
        ("a.txt", 0), ("a.txt", 100), ("b.txt", 0), ("b.txt", 100)
    ]
    assert transfer.calls == [(A, B)]
    assert not list((tmp_path / "staging").rglob("*.partial"))


def test_cues_fail_the_right_calls(tmp_path: Path):
    """fail_on_call hits only call n; fail_for leaves half a partial and spares the rest."""
    transfer = FakeTransfer()
    stalled = TransferError("stalled", kind=Failure.TRANSIENT)
    transfer.fail_on_call(2, stalled, arrived={B}).fail_for(A, stalled)
    with pytest.raises(TransferError):
        transfer.fetch(batch(tmp_path, A, B), lambda e: None)
    assert (tmp_path / "staging" / (A + ".partial")).stat().st_size == 5
    assert (tmp_path / "staging" / B).exists()
    (tmp_path / "staging" / B).unlink()
    with pytest.raises(TransferError) as raised:
        transfer.fetch(batch(tmp_path, A, B), lambda e: None)
    assert raised.value is stalled
    assert (tmp_path / "staging" / B).exists() and not (tmp_path / "staging" / A).exists()
    transfer.fetch(batch(tmp_path, A, B), lambda e: None)
    assert transfer.errors == [stalled, stalled, None]


def test_short_corrupt_and_lost_files_claim_success(tmp_path: Path):
    """leave_short, corrupt and lose each spoil one file of a call that still succeeds."""
    transfer = FakeTransfer().leave_short(A).corrupt(B)
    transfer.fetch(batch(tmp_path, A, B), lambda e: None)
    assert (tmp_path / "staging" / A).stat().st_size == 5
    assert (tmp_path / "staging" / B).read_bytes() != content_of(B, 10)
    transfer.lose(A).fetch(batch(tmp_path, A), lambda e: None)
    assert transfer.times_fetched(A) == 2


def test_terminate_makes_later_calls_interrupted(tmp_path: Path):
    """After terminate(), fetch raises kind=interrupted and writes nothing."""
    transfer = FakeTransfer()
    transfer.terminate()
    with pytest.raises(TransferError) as raised:
        transfer.fetch(batch(tmp_path, A), lambda e: None)
    assert raised.value.kind is Failure.INTERRUPTED
    assert not (tmp_path / "staging").exists()


def test_unsafe_paths_are_never_written(tmp_path: Path):
    """A path that would leave staging is refused, as the real transports refuse it."""
    with pytest.raises(TransferError):
        FakeTransfer().fetch(batch(tmp_path, "SDY1/../../x"), lambda e: None)
    assert not (tmp_path / "x").exists()


def test_the_catalog_lists_fails_and_gives_checksums():
    """walk filters by root, fails on cue; study_checksums gives (md5, size) or None."""
    catalog = FakeCatalog.of({A: b"a", B: b"bb"})
    assert [f.path for f in catalog.walk("/SDY1/StudyFiles")] == [A, B]
    assert [f.path for f in catalog.walk("/" + B)] == [B]
    with pytest.raises(RemoteNotFound):
        catalog.walk("/SDY1/ResultFiles")
    assert catalog.study_checksums("SDY1") == {
        A: (catalog.files[A].md5, 1), B: (catalog.files[B].md5, 2)
    }
    catalog.failing["SDY1"] = ApiError("down", status=503, transient=True)
    with pytest.raises(ApiError):
        catalog.walk("/SDY1")
    assert catalog.study_checksums("SDY1") is None
    assert FakeCatalog.of({A: b"a"}, md5=False).study_checksums("SDY1") is None


def test_the_catalog_names_its_caveats():
    """Files without an MD5 and files marked unavailable are the study's caveats."""
    catalog = FakeCatalog.of({A: b"a"}, md5=False)
    catalog.put(B, b"b")
    catalog.unavailable[B] = "no DRS object yet"
    caveats = catalog.caveats("SDY1")
    assert caveats.without_md5 == frozenset({A})
    assert dict(caveats.unavailable) == {B: "no DRS object yet"}
    assert catalog.caveats("SDY2").without_md5 == frozenset()


def test_the_clock_moves_only_when_told():
    """sleep records and advances; advance only advances; never backwards."""
    clock = FakeClock(start=10.0)
    assert clock() == 10.0
    clock.sleep(2.5)
    clock.advance(0.5)
    assert clock.monotonic() == 13.0
    assert clock.sleeps == [2.5]
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_the_catalog_suggests_the_paths_of_the_study():
    """paths_near gives the study's paths, for a 'did you mean' on a missing root."""
    catalog = FakeCatalog.of({A: b"a", B: b"b", "SDY2/x.txt": b"x"})
    assert catalog.paths_near("/SDY1/StudyFiles/nothing") == [A, B]


def test_a_name_too_long_to_stage_travels_under_its_staged_name(tmp_path: Path):
    """The fake stages where the Applier looks: staged_name(path), as the transports do."""
    from immsync.staging import staged_name

    long = "SDY1/StudyFiles/" + "n" * 250
    transfer = FakeTransfer()
    transfer.fetch(batch(tmp_path, long), lambda e: None)
    assert staged_name(long) != long
    assert (tmp_path / "staging" / staged_name(long)).read_bytes() == content_of(long, 10)
