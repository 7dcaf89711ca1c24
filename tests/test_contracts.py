"""Data-safety contracts, one test each, each seen failing with the code broken on purpose.

End-to-end where the contract lives in the command (the emulator and stand-in ascp),
with the in-process fakes where it lives in the Applier. Disk-full and read-only
destinations are simulated by raising ``OSError`` at the call that would meet them,
so these run without root.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import World
from test_applier import Rig, blob

from immsync.errors import ApiError, ExitCode, Failure, TransferError
from immsync.hashing import file_checksum
from immsync.model import StateEntry
from immsync.shard import assign, combine
from immsync.state import StateStore, state_path
from immsync.sync import RemoteView, drop_case_collisions, survey
from immsync.sync import apply as placing
from immsync.testing.fakes import FakeCatalog, FakeTransfer
from immsync.testing.sampledata import write_file

FLOW = "SDY1/ResultFiles/Flow_cytometry_result"
FCS = f"{FLOW}/02054141.001.52628.fcs"
FCS2 = f"{FLOW}/02054141.002.52629.fcs"
FCS3 = f"{FLOW}/02054141.003.52630.fcs"
DESIGN = "SDY1/StudyFiles/Study_design.txt"
FLOW_AND_DESIGN = """\
  - accession: SDY1
    paths:
      - ResultFiles/Flow_cytometry_result
      - StudyFiles/Study_design.txt
"""
DESIGN_ONLY = "  - accession: SDY1\n    paths:\n      - StudyFiles/Study_design.txt\n"
BOTH_STUDIES = "  - accession: SDY1\n  - accession: SDY269\n"


def recorded(world: World) -> dict[str, StateEntry]:
    with StateStore.open(state_path(world.dest), create=False) as store:
        return store.entries()


def staging(world: World) -> Path:
    return world.dest / ".immsync" / "staging"


def fetched_paths(world: World, since: int = 0) -> list[str]:
    return [s.lstrip("/") for session in world.sessions()[since:] for s in session["sources"]]


def upstream(world: World, path: str) -> bytes:
    return (world.remote / path).read_bytes()


def assert_clean_error(result: Any, code: ExitCode) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output


# -- listings that fail --------------------------------------------------------------------


class TestFailedListing:
    def test_a_study_that_cannot_be_listed_loses_nothing_to_prune(self, world: World):
        """SDY269's listing fails (503 after every retry): --prune deletes none of its files."""
        world.write_manifest(BOTH_STUDIES)
        assert world.apply().exit_code == 0
        before = recorded(world)
        theirs = sorted(p for p in before if p.startswith("SDY269/"))
        assert theirs
        world.emulator.inject("/data/query/api/study/manifest/SDY269", status=503, times=50)
        plan = world.run("plan", str(world.manifest_path), "--json")
        assert [a for a in plan.json()["actions"] if a["action"] == "delete"] == []
        result = world.apply("--prune", "--max-delete", "100")
        assert_clean_error(result, ExitCode.REMOTE)
        assert "SDY269 could not be listed" in result.stderr
        for path in theirs:
            assert (world.dest / path).read_bytes() == upstream(world, path), path
        assert recorded(world) == before

    def test_a_failed_root_hides_only_its_own_records(self, tmp_path: Path):
        """With a FakeCatalog: the unlisted study's records are left out of the plan entirely."""
        content = {"SDY1/a.txt": b"one", "SDY2/b.txt": b"two"}
        rig = Rig(tmp_path, content)
        rig.run()
        rig.catalog.failing["SDY2"] = ApiError("503 Service Unavailable", status=503)
        found = survey(rig.manifest, rig.catalog, rig.store)
        assert found.remote.failed_roots == ("SDY2",)
        assert [i.path for i in found.plan.items] == ["SDY1/a.txt"]
        report = rig.applier(prune=True).run(found)
        assert report.outcomes == []
        assert sorted(rig.recorded()) == ["SDY1/a.txt", "SDY2/b.txt"]
        assert (rig.dest / "SDY2/b.txt").read_bytes() == b"two"


# -- local files changed behind our back ----------------------------------------------------------


class TestLocalChanges:
    def test_a_truncated_file_with_its_mtime_put_back_is_repaired(self, world: World):
        """`cp -p` of a cut file: same mtime to the nanosecond, fewer bytes: it is repaired."""
        world.write_manifest(FLOW_AND_DESIGN)
        assert world.apply().exit_code == 0
        entry = recorded(world)[FCS]
        target = world.dest / FCS
        with target.open("r+b") as fh:
            fh.truncate(entry.size - 1000)
        os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns))
        assert target.stat().st_mtime_ns == entry.mtime_ns
        status = world.run("status", str(world.manifest_path), "--json")
        assert {c["path"]: c["state"] for c in status.json()["files"]}[FCS] == "modified"
        plan = world.run("plan", str(world.manifest_path), "--json").json()
        assert [(a["action"], a["path"]) for a in plan["actions"]] == [("repair", FCS)]
        since = len(world.sessions())
        assert world.apply().exit_code == 0
        assert fetched_paths(world, since) == [FCS]
        assert target.read_bytes() == upstream(world, FCS)
        assert world.run("verify", str(world.manifest_path)).exit_code == 0

    def test_new_bytes_one_nanosecond_later_are_repaired(self, world: World):
        """Same size, content changed, mtime moved by 1 ns: hashed, found different, repaired."""
        world.write_manifest(FLOW_AND_DESIGN)
        assert world.apply().exit_code == 0
        entry = recorded(world)[FCS]
        target = world.dest / FCS
        data = bytearray(target.read_bytes())
        data[100] ^= 0xFF
        target.write_bytes(bytes(data))
        os.utime(target, ns=(entry.mtime_ns + 1, entry.mtime_ns + 1))
        plan = world.run("plan", str(world.manifest_path), "--json").json()
        assert [(a["action"], a["path"]) for a in plan["actions"]] == [("repair", FCS)]
        assert world.apply().exit_code == 0
        assert target.read_bytes() == upstream(world, FCS)

    def test_a_same_size_file_without_upstream_md5_is_not_adopted(self, world: World):
        """No MD5 upstream: an unrecorded file of the right size proves nothing; it is fetched."""
        world.emulator.manifest_route = False  # the legacy listing: sizes and times only
        world.write_manifest(DESIGN_ONLY)
        impostor = world.dest / DESIGN
        impostor.parent.mkdir(parents=True)
        impostor.write_bytes(b"x" * len(upstream(world, DESIGN)))
        result = world.apply()
        assert result.exit_code == 0, result.output
        assert fetched_paths(world) == [DESIGN]
        assert impostor.read_bytes() == upstream(world, DESIGN)
        assert recorded(world)[DESIGN].checksum == file_checksum(impostor)


def test_names_differing_only_in_case_are_all_left_out():
    """For a case-insensitive destination: neither twin is fetched, and both are named."""
    files = {p: blob(p, 3) for p in ("SDY1/A.txt", "SDY1/a.txt", "SDY1/b.txt")}
    catalog = FakeCatalog.of(files)
    view = RemoteView(
        selected=dict(catalog.files), listed=frozenset(files), failed_roots=(), problems=(),
        notes=(),
    )
    kept = drop_case_collisions(view)
    assert sorted(kept.selected) == ["SDY1/b.txt"]
    assert kept.problems == (
        "SDY1/A.txt and SDY1/a.txt differ only in case and the destination's filesystem "
        "is case-insensitive; none of them was fetched",
    )
    assert drop_case_collisions(kept) == kept


# -- prune -------------------------------------------------------------------------------------


class TestPrune:
    def test_prune_never_deletes_through_a_link_leaving_the_destination(
        self, world: World, tmp_path: Path
    ):
        """A recorded folder replaced by a symlink to elsewhere: prune deletes nothing there."""
        world.write_manifest(FLOW_AND_DESIGN)
        assert world.apply().exit_code == 0
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        results = world.dest / "SDY1" / "ResultFiles"
        results.rename(elsewhere / "ResultFiles")
        results.symlink_to(elsewhere / "ResultFiles")
        world.write_manifest(DESIGN_ONLY)
        result = world.apply("--prune", "--max-delete", "10")
        # Each deletion fails on its own, saying why; the rest of the run goes on.
        assert_clean_error(result, ExitCode.TRANSFER)
        assert f"not deleted: {results} is a symbolic link" in result.stderr
        for path in (FCS, FCS2, FCS3):
            kept = elsewhere / path.removeprefix("SDY1/")
            assert kept.read_bytes() == upstream(world, path), path
            assert path in recorded(world)

    def test_prune_never_deletes_through_a_link_inside_the_destination(self, world: World):
        """A recorded folder replaced by a link to another folder of the destination."""
        world.write_manifest(FLOW_AND_DESIGN)
        assert world.apply().exit_code == 0
        moved = world.dest / "my-own-copy"
        results = world.dest / "SDY1" / "ResultFiles"
        results.rename(moved)
        results.symlink_to(moved)
        world.write_manifest(DESIGN_ONLY)
        result = world.apply("--prune", "--max-delete", "10")
        assert (moved / FCS.removeprefix("SDY1/ResultFiles/")).exists()
        assert result.exit_code == ExitCode.TRANSFER, result.output
        assert f"not deleted: {results} is a symbolic link" in result.stderr

    def test_a_file_that_cannot_be_deleted_keeps_its_record(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ):
        """EBUSY on one deletion: that file is named and stays recorded; the others go."""
        world.write_manifest(FLOW_AND_DESIGN)
        assert world.apply().exit_code == 0
        stuck = os.fspath(world.dest / FCS2)
        real_unlink = pathlib.Path.unlink

        def unlink(self: pathlib.Path, missing_ok: bool = False) -> None:
            if os.fspath(self) == stuck:
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), stuck)
            real_unlink(self, missing_ok=missing_ok)

        monkeypatch.setattr(pathlib.Path, "unlink", unlink)
        world.write_manifest(DESIGN_ONLY)
        result = world.apply("--prune", "--max-delete", "10")
        assert_clean_error(result, ExitCode.TRANSFER)
        assert f"{FCS2}: cannot delete {stuck}: Device or resource busy" in result.stderr
        assert sorted(recorded(world)) == sorted([DESIGN, FCS2])
        assert not (world.dest / FCS).exists() and not (world.dest / FCS3).exists()
        assert (world.dest / FCS2).exists()


# -- staging -----------------------------------------------------------------------------------


class TestStaging:
    def test_a_partial_of_an_older_version_is_never_resumed(self, world: World):
        """A same-size new version upstream: the old partial is discarded, never joined to it."""
        world.emulator.manifest_route = False  # no MD5 would catch a joined file
        world.write_manifest(FLOW_AND_DESIGN)
        world.configure_aspera(faults=[{"kind": "partial", "path": "/" + FCS, "times": 99}])
        first = world.apply("--retries", "0")
        assert first.exit_code == ExitCode.TRANSFER, first.output
        partial = staging(world) / (FCS + ".partial")
        assert partial.stat().st_size == len(upstream(world, FCS)) // 2
        old = upstream(world, FCS)
        new = bytes(b ^ 0x5A for b in old)
        write_file(world.remote, FCS, new, mtime=time.time())
        world.configure_aspera(faults=[])
        since = len(world.sessions())
        result = world.apply()
        assert result.exit_code == 0, result.output
        assert (world.dest / FCS).read_bytes() == new
        assert all("/" + FCS not in s["resumed"] for s in world.sessions()[since:])

    def test_leftovers_are_tidied_and_partials_of_failed_files_kept(self, tmp_path: Path):
        """After a run: stray staged files are gone; a failed file's partial stays to resume."""
        a, b = "SDY1/StudyFiles/a.txt", "SDY1/StudyFiles/b.txt"
        rig = Rig(tmp_path, {a: blob(a, 100), b: blob(b, 4000)})
        area = rig.dest / ".immsync" / "staging"
        for stray in ("SDY1/old/gone.bin", "SDY1/old/gone.bin.aspx", "SDY7/x.partial"):
            (area / stray).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            (area / stray).write_bytes(b"stale")
        os.chmod(rig.dest / ".immsync", 0o700)
        rig.transfer.fail_for(b, TransferError("stalled", kind=Failure.PERMANENT))
        report = rig.run()
        assert [o.path for o in report.failures] == [b]
        left = sorted(p.relative_to(area).as_posix() for p in area.rglob("*") if p.is_file())
        assert left == [b + ".partial"]
        assert sorted(p.name for p in area.iterdir()) == ["SDY1"]
        # The failed file's version is still claimed, so its partial resumes next time.
        identity = [(f.path, f.size, f.mtime, f.md5) for f in map(rig.catalog.files.get, (a, b))]
        assert rig.store.claim_staging(identity) == [a]
        rig.store.close()


# -- durability --------------------------------------------------------------------------------


def observe_fsync_and_replace(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record, in order, each fsync (by the path of its descriptor) and each rename target."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name a descriptor's file")
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        with lock:
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        with lock:
            events.append(("replace", f"{os.fspath(src)} -> {os.fspath(dst)}"))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(placing.os, "fsync", fsync)
    monkeypatch.setattr(placing.os, "replace", replace)
    return events


class TestDurability:
    @pytest.mark.parametrize("progress", [True, False], ids=["hashed-early", "hashed-at-the-end"])
    def test_every_file_is_flushed_before_its_rename(self, tmp_path, monkeypatch, progress):
        """fsync of the staged file comes before os.replace moves it to its final path."""
        content = {f"SDY1/StudyFiles/{n}.txt": blob(n, 5000) for n in "abc"}
        rig = Rig(tmp_path, content)
        rig.transfer = FakeTransfer(rig.catalog.content, progress=progress)
        events = observe_fsync_and_replace(monkeypatch)
        rig.run()
        area = rig.dest / ".immsync" / "staging"
        for path in content:
            staged = os.fspath(area / path)
            placing = ("replace", f"{staged} -> {rig.dest / path}")
            assert placing in events, path
            flushes = [n for n, e in enumerate(events) if e == ("fsync", staged)]
            assert flushes and flushes[0] < events.index(placing), f"{path}: {events}"
        assert sorted(rig.recorded()) == sorted(content)

    def test_status_reads_no_file_content(self, world: World):
        """`immsync status` opens no data file (an audit hook watches); `verify` opens each."""
        world.write_manifest(FLOW_AND_DESIGN)
        assert world.apply().exit_code == 0
        assert opened_below(world, "status") == []
        assert sorted(opened_below(world, "verify")) == sorted(recorded(world))


def opened_below(world: World, command: str) -> list[str]:
    """Destination files (outside .immsync) a fresh `immsync <command>` process opens."""
    code = (
        "import json, os, sys\n"
        f"dest = {os.fspath(world.dest)!r} + '/'\n"
        "seen = []\n"
        "def hook(event, args):\n"
        "    if event == 'open' and isinstance(args[0], str):\n"
        "        path = os.path.abspath(args[0])\n"
        "        if path.startswith(dest) and '/.immsync/' not in path:\n"
        "            seen.append(path[len(dest):])\n"
        "sys.addaudithook(hook)\n"
        "from immsync.cli import main\n"
        f"sys.argv = ['immsync', {command!r}, {os.fspath(world.manifest_path)!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(set(seen))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=world.root,
        env={**os.environ, **world.env},
        check=True,
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


# -- transports' failures ------------------------------------------------------------------------


class TestTransportFailures:
    def test_an_unknown_ascp_error_is_permanent_and_not_retried(self, world: World):
        """An ascp error nobody classified: one session, exit 5, its words shown; no retry."""
        reason = "Server aborted session: Client requests stronger encryption"
        world.write_manifest(DESIGN_ONLY)
        world.configure_aspera(
            faults=[{"kind": "partial", "path": "/" + DESIGN, "error": reason, "times": 9}]
        )
        result = world.apply("--transport", "ascp")
        assert_clean_error(result, ExitCode.TRANSFER)
        assert len(world.sessions()) == 1
        assert reason in result.stderr
        assert "retrying" not in result.output

    @pytest.mark.parametrize(
        ("code", "words"),
        [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")],
    )
    def test_a_full_or_read_only_destination_at_the_rename_exits_7(
        self, world: World, monkeypatch: pytest.MonkeyPatch, code: int, words: str
    ):
        """No root needed: the rename into place fails; exit 7, clear words, records intact."""
        world.write_manifest(FLOW_AND_DESIGN)
        target = os.fspath(world.dest / FCS2)
        real_replace = os.replace

        def replace(src: Any, dst: Any, **kwargs: Any) -> None:
            if os.fspath(dst) == target:
                raise OSError(code, os.strerror(code), target)
            real_replace(src, dst, **kwargs)

        monkeypatch.setattr(placing.os, "replace", replace)
        result = world.apply("--jobs", "1")
        assert_clean_error(result, ExitCode.LOCAL)
        assert f"cannot place the verified file at {target}: {words}" in result.stderr
        assert "free some space" in result.stderr
        entries = recorded(world)
        assert FCS2 not in entries and not (world.dest / FCS2).exists()
        for path in entries:
            assert (world.dest / path).read_bytes() == upstream(world, path)
        monkeypatch.undo()
        again = world.apply("--jobs", "1")
        assert again.exit_code == 0, again.output
        assert sorted(recorded(world)) == sorted([FCS, FCS2, FCS3, DESIGN])


# -- shards ------------------------------------------------------------------------------------


class TestShards:
    def test_ties_in_size_are_split_the_same_way_whatever_the_listing_order(self):
        """Equal sizes: every shard computes the same split from a shuffled listing."""
        import random

        sizes = {f"SDY1/f{i:03d}": 1000 if i % 3 else 250 for i in range(90)}
        expected = assign(sizes, 4)
        rng = random.Random(3)
        for _ in range(5):
            items = list(sizes.items())
            rng.shuffle(items)
            assert assign(dict(items), 4) == expected

    def test_ties_in_size_are_balanced_by_bytes_then_count(self):
        """30 equal files and 8 empty ones over 4 shards: bytes 800/800/700/700, then the
        empty files even out the two lighter shards' counts, 4 each (never 8 on one)."""
        sizes = {f"SDY1/g{i:02d}": 100 for i in range(30)}
        sizes |= {f"SDY1/empty{i}": 0 for i in range(8)}
        split = assign(sizes, 4)
        shares = [[p for p, n in split.items() if n == k] for k in range(1, 5)]
        loads = [(sum(sizes[p] for p in mine), sum(not sizes[p] for p in mine)) for mine in shares]
        assert sorted(loads) == [(700, 4), (700, 4), (800, 0), (800, 0)]

    def test_conflicting_records_resolve_as_documented(self, tmp_path: Path):
        """The record matching the file on disk wins, whatever its layer; else the newest layer."""
        target = tmp_path / "SDY1" / "a.txt"
        target.parent.mkdir()
        target.write_bytes(b"abc")
        mtime = target.stat().st_mtime_ns

        def record(size: int, mtime_ns: int, digit: str, path: str = "SDY1/a.txt") -> StateEntry:
            return StateEntry(path, size, mtime_ns, "xxh3_128:" + digit * 32, size, "t")

        fits, fits_too = record(3, mtime, "1"), record(3, mtime, "2")
        stale, staler = record(2, 1, "3"), record(5, 7, "4")

        def winner(*layers: StateEntry) -> StateEntry:
            return combine(tmp_path, [{e.path: e} for e in layers])[layers[0].path]

        assert winner(stale, fits, staler) == fits  # a middle layer, because it matches
        assert winner(fits, stale) == fits
        assert winner(fits, fits_too) == fits_too  # both match: the newest
        assert winner(stale, staler) == staler  # neither matches: the newest
        gone_old = record(1, 1, "5", "SDY1/gone")
        gone_new = record(1, 2, "6", "SDY1/gone")
        assert winner(gone_old, gone_new) == gone_new  # no file: the newest
        assert winner(fits, fits) == fits
