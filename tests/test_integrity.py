"""Nothing unverified is ever placed or recorded, whatever goes wrong, end to end.

Upstream MD5s (right, wrong, unavailable), adoption of files already on disk, a
corrupt/foreign/newer state file and its rebuild, and a destination that fills up or
turns read-only in the middle of a sync (a real size-limited tmpfs: mounted as root, or
else in a private user and mount namespace).
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import CliResult, World
from private_mounts import PrivateMounts

from immsync.errors import ExitCode
from immsync.hashing import file_checksum
from immsync.state import StateEntry, StateStore, state_path
from immsync.testing import aspera_tokens
from immsync.testing.aspera_config import FakeAsperaConfig

STUDY = "SDY1/StudyFiles"
DESIGN = f"{STUDY}/Study_design.txt"
PROTOCOL = f"{STUDY}/SDY1_protocol.pdf"
FLOW = "SDY1/ResultFiles/Flow_cytometry_result"
FCS = f"{FLOW}/02054141.001.52628.fcs"
FCS2 = f"{FLOW}/02054141.002.52629.fcs"
FCS3 = f"{FLOW}/02054141.003.52630.fcs"
HAI = "SDY1/ResultFiles/HAI_result/hai_results.txt"
ZIP = "SDY1/SDY1-DR47_Tab.zip"

FLOW_AND_DESIGN = """\
  - accession: SDY1
    paths:
      - ResultFiles/Flow_cytometry_result
      - StudyFiles/Study_design.txt
"""
FLOW_AND_DESIGN_FILES = sorted([FCS, FCS2, FCS3, DESIGN])
WHOLE_SDY1 = "  - accession: SDY1\n"


def recorded(world: World) -> dict[str, StateEntry]:
    with StateStore.open(state_path(world.dest), create=False) as store:
        return store.entries()


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def sessions_with(world: World, path: str) -> list[dict[str, Any]]:
    return [s for s in world.sessions() if "/" + path in s["sources"]]


def assert_recorded_files_intact(
    world: World, entries: dict[str, StateEntry] | None = None
) -> dict[str, StateEntry]:
    """Every recorded file (*entries*, else those in the world's state) is on disk,
    byte-identical to upstream, with its recorded hash."""
    entries = recorded(world) if entries is None else entries
    for path, entry in entries.items():
        local = world.dest / path
        assert local.read_bytes() == (world.remote / path).read_bytes(), path
        assert file_checksum(local) == entry.checksum, path
    return entries


def assert_no_traceback(result: Any) -> None:
    assert "Traceback" not in result.output, result.output


# -- upstream MD5 ----------------------------------------------------------------------


class TestUpstreamMd5:
    def test_md5_mismatch_is_retried_once_then_fails(self, world: World) -> None:
        """A wrong upstream MD5: never placed, fetched twice, named with both values, exit 5."""
        wrong = "0123456789abcdef0123456789abcdef"
        world.emulator.md5_overrides[DESIGN] = wrong
        world.write_manifest(FLOW_AND_DESIGN)
        result = world.apply()
        assert result.exit_code == ExitCode.TRANSFER, result.output
        assert_no_traceback(result)
        actual = md5_of(world.remote / DESIGN)
        assert f"{DESIGN}: MD5 mismatch: expected {wrong}, got {actual}" in result.stderr
        assert not (world.dest / DESIGN).exists()
        assert len(sessions_with(world, DESIGN)) == 2
        entries = assert_recorded_files_intact(world)
        assert sorted(entries) == [FCS, FCS2, FCS3]
        staging = world.dest / ".immsync" / "staging"
        assert not any(p.name.startswith("Study_design") for p in staging.rglob("*"))

    def test_right_md5_passes_and_is_recorded(self, world: World) -> None:
        """With the upstream MD5 right, the file is placed and its MD5 recorded."""
        world.write_manifest(FLOW_AND_DESIGN)
        result = world.apply()
        assert result.exit_code == 0, result.output
        entries = assert_recorded_files_intact(world)
        assert entries[DESIGN].remote_md5 == md5_of(world.remote / DESIGN)
        assert len(sessions_with(world, DESIGN)) == 1

    def test_mismatch_then_fixed_upstream_syncs(self, world: World) -> None:
        """After a mismatch, a rerun with a correct MD5 fetches only the failed file."""
        world.emulator.md5_overrides[DESIGN] = "f" * 32
        world.write_manifest(FLOW_AND_DESIGN)
        assert world.apply().exit_code == ExitCode.TRANSFER
        world.emulator.md5_overrides.clear()
        before = len(world.sessions())
        assert world.apply().exit_code == 0
        assert [s["sources"] for s in world.sessions()[before:]] == [["/" + DESIGN]]
        assert sorted(assert_recorded_files_intact(world)) == FLOW_AND_DESIGN_FILES

    def test_checksums_not_available_is_a_note(self, world: World) -> None:
        """No study manifest upstream: plan --json notes it, and the sync still works."""
        world.emulator.manifest_route = False
        world.write_manifest(FLOW_AND_DESIGN)
        plan = world.run("plan", str(world.manifest_path), "--json")
        assert plan.exit_code == 0, plan.output
        notes = plan.json()["notes"]
        assert any("SDY1: upstream checksums not available" in n for n in notes), notes
        result = world.apply()
        assert result.exit_code == 0, result.output
        entries = assert_recorded_files_intact(world)
        assert sorted(entries) == FLOW_AND_DESIGN_FILES
        assert all(e.remote_md5 is None for e in entries.values())


class TestAdoption:
    def test_matching_local_file_is_recorded_without_transfer(self, world: World) -> None:
        """An unrecorded local file whose MD5 matches upstream is recorded, not fetched."""
        world.write_manifest(FLOW_AND_DESIGN)
        copy = world.dest / DESIGN
        copy.parent.mkdir(parents=True)
        copy.write_bytes((world.remote / DESIGN).read_bytes())  # a fresh mtime
        plan = world.run("plan", str(world.manifest_path), "--json").json()
        assert DESIGN not in [a["path"] for a in plan["actions"]]
        result = world.apply()
        assert result.exit_code == 0, result.output
        assert sessions_with(world, DESIGN) == []
        assert sorted(assert_recorded_files_intact(world)) == FLOW_AND_DESIGN_FILES

    def test_mismatching_local_file_is_fetched(self, world: World) -> None:
        """An unrecorded local file of the right size but other content is fetched over."""
        world.write_manifest(FLOW_AND_DESIGN)
        copy = world.dest / DESIGN
        copy.parent.mkdir(parents=True)
        data = bytearray((world.remote / DESIGN).read_bytes())
        data[100] ^= 0x01
        copy.write_bytes(bytes(data))
        plan = world.run("plan", str(world.manifest_path), "--json").json()
        reasons = {a["path"]: a["reason"] for a in plan["actions"]}
        assert reasons[DESIGN].startswith("present locally but not recorded")
        result = world.apply()
        assert result.exit_code == 0, result.output
        assert len(sessions_with(world, DESIGN)) == 1
        assert copy.read_bytes() == (world.remote / DESIGN).read_bytes()
        assert sorted(assert_recorded_files_intact(world)) == FLOW_AND_DESIGN_FILES


# -- a broken state file ---------------------------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xffthis is not an immsync state\n" * 200)


def _foreign(path: Path) -> None:
    path.unlink()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE recipes (name TEXT, minutes INTEGER)")
    db.execute("INSERT INTO recipes VALUES ('bread', 240)")
    db.commit()
    db.close()


def _future(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()


BREAKERS = {"garbage": _garbage, "foreign": _foreign, "future": _future}


class TestBrokenState:
    def break_state(self, world: World, kind: str) -> tuple[Path, bytes, int]:
        world.write_manifest(FLOW_AND_DESIGN)
        assert world.apply().exit_code == 0
        path = state_path(world.dest)
        BREAKERS[kind](path)
        return path, path.read_bytes(), path.stat().st_mtime_ns

    @pytest.mark.parametrize("kind", sorted(BREAKERS))
    def test_refused_with_a_hint_and_left_untouched(self, world: World, kind: str) -> None:
        """status and apply exit 7 naming --rebuild-state; the state file is not changed."""
        path, data, mtime = self.break_state(world, kind)
        sessions = len(world.sessions())
        for command in ("status", "apply"):
            result = world.run(command, str(world.manifest_path))
            assert result.exit_code == ExitCode.LOCAL, result.output
            assert_no_traceback(result)
            assert str(path) in result.stderr
            assert "--rebuild-state" in result.stderr
            assert path.read_bytes() == data
            assert path.stat().st_mtime_ns == mtime
        assert len(world.sessions()) == sessions
        assert not list(path.parent.glob("*.broken-*"))

    @pytest.mark.parametrize("kind", sorted(BREAKERS))
    def test_rebuild_sets_aside_rehashes_and_fetches_only_the_missing(
        self, world: World, kind: str
    ) -> None:
        """--rebuild-state keeps the old file aside, re-records disk files, fetches the rest."""
        path, data, _ = self.break_state(world, kind)
        (world.dest / FCS2).unlink()
        sessions = len(world.sessions())
        result = world.apply("--rebuild-state")
        assert result.exit_code == 0, result.output
        aside = list(path.parent.glob("state.sqlite.broken-*"))
        assert [p.read_bytes() for p in aside if p.name.count(".") == 2] == [data]
        new = world.sessions()[sessions:]
        assert [s["sources"] for s in new] == [["/" + FCS2]]
        assert sorted(assert_recorded_files_intact(world)) == FLOW_AND_DESIGN_FILES
        assert world.run("verify", str(world.manifest_path)).exit_code == 0

    def test_rebuild_without_upstream_checksums_trusts_size_and_time(self, world: World) -> None:
        """Without MD5s, --rebuild-state adopts files whose size and mtime match the listing."""
        self.break_state(world, "garbage")
        world.emulator.inject("/data/query/api/study/manifest/", status=404, times=10)
        sessions = len(world.sessions())
        result = world.apply("--rebuild-state")
        assert result.exit_code == 0, result.output
        assert world.sessions()[sessions:] == []
        assert sorted(assert_recorded_files_intact(world)) == FLOW_AND_DESIGN_FILES

    def test_rebuild_of_a_healthy_state_changes_nothing(self, world: World) -> None:
        """--rebuild-state with a readable state sets nothing aside and fetches nothing."""
        world.write_manifest(FLOW_AND_DESIGN)
        assert world.apply().exit_code == 0
        sessions = len(world.sessions())
        assert world.apply("--rebuild-state").exit_code == 0
        assert not list(state_path(world.dest).parent.glob("*.broken-*"))
        assert len(world.sessions()) == sessions


# -- a destination that fills up or turns read-only ------------------------------------


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@dataclass
class SmallDest:
    """The world's destination on a 600 KiB tmpfs (the whole of SDY1 is ~760 KB).

    As root the tmpfs is mounted for every process; otherwise it is mounted in a
    private namespace (tests/private_mounts.py), where immsync and other commands then
    run, and ``seen`` is the world with its files as that namespace sees them.
    """

    seen: World
    recorded: Callable[[], dict[str, StateEntry]]
    apply: Callable[..., CliResult]
    run: Callable[..., CliResult]
    command: Callable[[list[str], dict[str, str]], subprocess.CompletedProcess[str]]
    remount: Callable[[str], None]

    def assert_intact(self) -> dict[str, StateEntry]:
        """``assert_recorded_files_intact`` of the destination on the tmpfs."""
        return assert_recorded_files_intact(self.seen, self.recorded())

    @property
    def path(self) -> Path:
        """The mounted destination, to read and write from this process."""
        return self.seen.dest


READ_STATE = """
import json, sys
from pathlib import Path
from immsync.state import StateStore
with StateStore.open(Path(sys.argv[1]), create=False) as store:
    print(json.dumps({path: list(entry) for path, entry in store.entries().items()}))
"""


@pytest.fixture(name="small_dest", params=["root", "namespace"])
def _small_dest(request: pytest.FixtureRequest, world: World) -> Iterator[SmallDest]:
    world.dest.mkdir()
    if request.param == "namespace":
        mounts: PrivateMounts = request.getfixturevalue("private_mounts")
        mounts.small_disk(world.dest, "600k")

        def command_inside(argv: list[str], env: dict[str, str]) -> Any:
            return mounts.run(argv, env=env)

        def remount_inside(options: str) -> None:
            mounts.remount(options, world.dest)

        def recorded_inside() -> dict[str, StateEntry]:
            rows = mounts.python_json(READ_STATE, str(state_path(world.dest)))
            return {path: StateEntry._make(row) for path, row in rows.items()}

        yield SmallDest(
            mounts.seen_world(world),
            recorded_inside,
            functools.partial(mounts.apply, world),
            functools.partial(mounts.immsync, world),
            command_inside,
            remount_inside,
        )
        return

    mounted = _mount("-t", "tmpfs", "-o", "size=600k,mode=0755", "tmpfs", str(world.dest))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")

    def command(argv: list[str], env: dict[str, str]) -> Any:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    def remount(options: str) -> None:
        remounted = _mount("-o", f"remount,{options}", str(world.dest))
        assert remounted.returncode == 0, remounted.stderr

    try:
        yield SmallDest(
            world, functools.partial(recorded, world), world.apply, world.run, command, remount
        )
    finally:
        done = subprocess.run(["umount", str(world.dest)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(world.dest)], capture_output=True, check=False)


def _fill(folder: Path) -> None:
    """Take every free byte of *folder*'s filesystem."""
    with (folder / "filler").open("ab", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass


class TestDestinationTrouble:
    def test_disk_full_stops_cleanly_and_a_rerun_completes(
        self, world: World, small_dest: SmallDest
    ) -> None:
        """Out of space: exit 7 with a clear message, verified files kept; bigger disk: done."""
        world.write_manifest(WHOLE_SDY1)
        result = small_dest.apply("--jobs", "1")
        assert result.exit_code in (ExitCode.LOCAL, ExitCode.TRANSFER), result.output
        assert_no_traceback(result)
        assert "No space left on device" in result.stderr or "Disk write failed" in (result.stderr)
        entries = small_dest.assert_intact()
        assert entries, "some files fit and must have been kept"
        assert len(entries) < 7
        for path in small_dest.seen.local_files():
            assert path in entries, f"{path} was placed but not recorded"
        staging = small_dest.path / ".immsync" / "staging"
        partials = [p for p in staging.rglob("*.partial") if p.is_file()]

        small_dest.remount("size=8m")
        before = len(world.sessions())
        again = small_dest.apply("--jobs", "1")
        assert again.exit_code == 0, again.output
        assert sorted(small_dest.assert_intact()) == sorted(
            p.relative_to(world.remote).as_posix()
            for p in (world.remote / "SDY1").rglob("*")
            if p.is_file()
        )
        new = world.sessions()[before:]
        fetched = {s for session in new for s in session["sources"]}
        assert not fetched & {"/" + p for p in entries}, "a recorded file was fetched again"
        # What staging kept was resumed; otherwise it had been cleaned.
        assert not partials or any(session["resumed"] for session in new)
        assert not any(p.is_file() for p in staging.rglob("*"))

    def test_reruns_while_still_full_are_clear_errors(
        self, world: World, small_dest: SmallDest
    ) -> None:
        """Runs on a destination that stays full fail cleanly too, never losing a record."""
        world.write_manifest(WHOLE_SDY1)
        kept: dict[str, Any] = {}
        for _ in range(3):
            result = small_dest.apply("--jobs", "1")
            assert result.exit_code == ExitCode.LOCAL, result.output
            assert_no_traceback(result)
            entries = small_dest.assert_intact()
            assert kept.keys() <= entries.keys()
            kept = entries
        _fill(small_dest.path)
        full = small_dest.apply("--jobs", "1")
        assert full.exit_code == ExitCode.LOCAL, full.output
        assert_no_traceback(full)
        assert "free space" in full.stderr
        assert small_dest.assert_intact().keys() == kept.keys()

    def test_rebuild_on_a_full_disk_keeps_a_healthy_state(
        self, world: World, small_dest: SmallDest
    ) -> None:
        """--rebuild-state on a full disk never mistakes the healthy state for a broken one."""
        world.write_manifest(FLOW_AND_DESIGN)
        assert small_dest.apply().exit_code == 0
        world.write_manifest(WHOLE_SDY1)
        _fill(small_dest.path)
        result = small_dest.apply("--rebuild-state")
        assert result.exit_code == ExitCode.LOCAL, result.output
        assert_no_traceback(result)
        assert not list(state_path(small_dest.path).parent.glob("*.broken-*"))
        (small_dest.path / "filler").unlink()
        assert sorted(small_dest.assert_intact()) == FLOW_AND_DESIGN_FILES

    def test_stand_in_ascp_reports_a_real_enospc(self, world: World, small_dest: SmallDest) -> None:
        """The stand-in ascp says 'Disk write failed' on a full disk, even logging there (-L)."""
        (small_dest.path / "staging").mkdir()
        (small_dest.path / "logs").mkdir()
        _fill(small_dest.path)
        pairs = world.root / "pairs.txt"
        pairs.write_text(f"/{ZIP}\n{ZIP}\n")
        token = aspera_tokens.mint(world.emulator.aspera_secret, ["/" + ZIP], lifetime=60)
        config = FakeAsperaConfig.load(world.config_path)
        done = small_dest.command(
            [
                str(world.aspera.ascp),
                "-i",
                str(world.aspera.key),
                "-P",
                str(config.port),
                "-O",
                str(config.port),
                f"--user={config.user}",
                f"--host={config.host}",
                "--mode=recv",
                "-d",
                "-k",
                "2",
                "--partial-file-suffix=.partial",
                "-L",
                str(world.dest / "logs"),
                f"--file-pair-list={pairs}",
                str(world.dest / "staging"),
            ],
            {"ASPERA_SCP_TOKEN": token, "PATH": world.env["PATH"]},
        )
        assert done.returncode == 1
        assert "Session Stop  (Error: Disk write failed)" in done.stdout
        assert "Traceback" not in done.stderr
        assert world.sessions()[-1]["error"] == "Disk write failed"

    def test_read_only_destination_is_a_clear_error(
        self, world: World, small_dest: SmallDest
    ) -> None:
        """A destination remounted read-only after a partial sync: exit 7, named, nothing lost."""
        world.write_manifest(FLOW_AND_DESIGN)
        assert small_dest.apply().exit_code == 0
        world.write_manifest(WHOLE_SDY1)
        small_dest.remount("ro")
        result = small_dest.apply()
        assert result.exit_code == ExitCode.LOCAL, result.output
        assert_no_traceback(result)
        assert "Read-only file system" in result.stderr
        assert str(world.dest) in result.stderr
        assert sorted(small_dest.assert_intact()) == FLOW_AND_DESIGN_FILES
        status = small_dest.run("status", str(world.manifest_path))
        assert status.exit_code == 0, status.output
