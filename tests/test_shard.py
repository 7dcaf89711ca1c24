"""`apply --shard K/N`: a deterministic, byte-balanced split; shard states; merging them."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import World
from hypothesis import given
from hypothesis import strategies as st

from immsync.errors import ExitCode, UsageError
from immsync.lock import DestinationLock
from immsync.model import StateEntry
from immsync.shard import Shard, assign, combine, shard_lock_path, shard_state_path
from immsync.state import StateStore, state_path
from immsync.testing.sampledata import write_file

WHOLE = "  - accession: SDY1\n  - accession: SDY269\n"


def upstream_files(world: World) -> list[str]:
    files = (p for p in world.remote.rglob("*") if p.is_file())
    return sorted(p.relative_to(world.remote).as_posix() for p in files)


def fetched(world: World) -> Counter[str]:
    return Counter(s.lstrip("/") for session in world.sessions() for s in session["sources"])


def recorded(path: Path) -> dict[str, StateEntry]:
    with StateStore.open(path, create=False) as store:
        return store.entries()


def run_shards_concurrently(world: World, count: int) -> list[subprocess.CompletedProcess[str]]:
    """`python -m immsync apply --shard k/N` for every k, all started before any is awaited."""
    env = {**os.environ, **world.env}
    argv = [sys.executable, "-m", "immsync", "apply", str(world.manifest_path)]
    argv += ["--session-stagger", "0", "--retry-wait", "0.01"]
    children = [
        subprocess.Popen(
            [*argv, "--shard", f"{k}/{count}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(1, count + 1)
    ]
    results = []
    for child in children:
        stdout, stderr = child.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr))
    return results


class TestSplit:
    def test_parse(self):
        """K/N counts from 1; anything else is a usage error with a job-array hint."""
        assert Shard.parse("2/8") == Shard(2, 8)
        assert Shard.parse(" 1 / 1 ").name == "1-of-1"
        for bad in ("0/3", "4/3", "3", "a/b", "1/0", "-1/2"):
            with pytest.raises(UsageError):
                Shard.parse(bad)

    def test_the_split_does_not_depend_on_listing_order(self):
        """Every shard computes the same assignment whatever order the listing came in."""
        rng = random.Random(7)
        sizes = {f"SDY1/f{i:04d}": rng.randrange(10**6) for i in range(500)}
        items = list(sizes.items())
        rng.shuffle(items)
        assert assign(dict(items), 7) == assign(sizes, 7)

    @given(st.dictionaries(st.text(min_size=1, max_size=12), st.integers(0, 10**9), max_size=80),
           st.integers(1, 9))
    def test_bytes_are_balanced_within_one_file(self, sizes: dict[str, int], count: int):
        """Each path goes to one shard, and the loads differ by at most the largest file."""
        split = assign(sizes, count)
        assert split.keys() == sizes.keys()
        loads = [sum(sizes[p] for p, n in split.items() if n == k) for k in range(1, count + 1)]
        assert max(loads) - min(loads) <= max(sizes.values(), default=0)

    def test_empty_files_are_balanced_by_count(self):
        """Zero-byte files do not all land on one shard: counts break the byte tie."""
        split = assign({f"SDY1/empty{i}": 0 for i in range(30)}, 3)
        assert sorted(Counter(split.values()).values()) == [10, 10, 10]


class TestShardedRun:
    def test_three_concurrent_shards_make_one_verified_mirror(self, world: World):
        """3 shards as concurrent processes: every file fetched exactly once, all verified."""
        world.write_manifest(WHOLE)
        results = run_shards_concurrently(world, 3)
        for result in results:
            assert result.returncode == 0, result.stdout + result.stderr
        expected = upstream_files(world)
        counts = fetched(world)
        assert sorted(counts) == expected
        assert set(counts.values()) == {1}, counts
        assert world.local_files() == expected
        # Each shard kept its own state; none wrote the main one.
        shards = [recorded(shard_state_path(world.dest, Shard(k, 3))) for k in (1, 2, 3)]
        assert sorted(p for s in shards for p in s) == expected
        assert all(shards), "every shard should have had work with 9 files"
        assert not state_path(world.dest).exists()
        # status and verify see every shard's records before any merge.
        status = world.run("status", str(world.manifest_path), "--json").json()
        assert [f["path"] for f in status["files"]] == expected
        assert {f["state"] for f in status["files"]} == {"ok"}
        assert world.run("verify", str(world.manifest_path)).exit_code == 0
        # Folding the shards in: the main state holds all, and a second merge is a no-op.
        merge = world.run("merge-shards", str(world.manifest_path))
        assert merge.exit_code == 0, merge.output
        assert "merged 3 shard states (1/3, 2/3, 3/3): 9 records written" in merge.stdout
        assert sorted(recorded(state_path(world.dest))) == expected
        assert not any(shard_state_path(world.dest, Shard(k, 3)).exists() for k in (1, 2, 3))
        again = world.run("merge-shards", str(world.manifest_path))
        assert again.exit_code == 0 and "no shard states to merge" in again.stdout
        sessions = len(world.sessions())
        assert world.apply().exit_code == 0
        assert len(world.sessions()) == sessions
        assert world.run("verify", str(world.manifest_path)).exit_code == 0

    def test_a_shard_plans_only_its_share(self, world: World):
        """--dry-run --shard: the plan lists exactly the paths assign() gives that shard."""
        world.write_manifest(WHOLE)
        sizes = {p: (world.remote / p).stat().st_size for p in upstream_files(world)}
        mine = sorted(p for p, n in assign(sizes, 2).items() if n == 2)
        result = world.apply("--shard", "2/2", "--dry-run", "--json")
        assert result.exit_code == 0, result.output
        plan = json.loads(result.stdout.splitlines()[-1])["plan"]
        assert [a["path"] for a in plan["actions"]] == mine
        assert not world.dest.exists()

    def test_a_moved_file_is_not_fetched_again(self, world: World):
        """A new upstream file reshuffles the split; shards see each other's records: 1 fetch."""
        world.write_manifest(WHOLE)
        for k in (1, 2):
            assert world.apply("--shard", f"{k}/2").exit_code == 0
        write_file(world.remote, "SDY1/StudyFiles/added.txt", b"x" * 150_001)
        before = fetched(world)
        for k in (1, 2):
            assert world.apply("--shard", f"{k}/2").exit_code == 0
        assert fetched(world) - before == Counter({"SDY1/StudyFiles/added.txt": 1})
        assert world.run("verify", str(world.manifest_path)).exit_code == 0

    def test_an_unsharded_apply_folds_finished_shards_in_first(self, world: World):
        """After a sharded run, a plain apply merges the shard states and fetches nothing."""
        world.write_manifest(WHOLE)
        for k in (1, 2):
            assert world.apply("--shard", f"{k}/2").exit_code == 0
        plan = world.run("plan", str(world.manifest_path), "--json").json()
        assert plan["actions"] == []  # plan sees the shards' records too
        sessions = len(world.sessions())
        assert world.apply().exit_code == 0
        assert len(world.sessions()) == sessions
        assert sorted(recorded(state_path(world.dest))) == upstream_files(world)
        assert not shard_state_path(world.dest, Shard(1, 2)).exists()

    def test_merge_refuses_while_a_shard_runs(self, world: World):
        """A shard still holding its lock: merge-shards exits 9 naming it, changing nothing."""
        world.write_manifest(WHOLE)
        assert world.apply("--shard", "1/2").exit_code == 0
        with DestinationLock(shard_lock_path(world.dest, Shard(1, 2))):
            result = world.run("merge-shards", str(world.manifest_path))
        assert result.exit_code == ExitCode.LOCKED
        assert "shard 1/2 is still running (pid" in result.stderr
        assert shard_state_path(world.dest, Shard(1, 2)).exists()
        assert recorded(state_path(world.dest)) == {}

    def test_a_shard_refuses_while_an_unsharded_run_holds_the_destination(self, world: World):
        """An unsharded apply holds the destination: a shard exits 9 naming it, fetching nothing."""
        world.write_manifest(WHOLE)
        with DestinationLock(world.dest / ".immsync" / "lock"):
            result = world.apply("--shard", "1/2")
        assert result.exit_code == ExitCode.LOCKED
        assert f"is in use by pid {os.getpid()}" in result.stderr
        assert world.sessions() == []

    def test_an_unsharded_apply_refuses_while_a_shard_runs(self, world: World):
        """A shard of a running sharded run: a plain apply exits 9 instead of racing it."""
        world.write_manifest(WHOLE)
        with DestinationLock(world.dest / ".immsync" / "lock", shared=True):
            result = world.apply()
            assert world.apply("--shard", "2/2").exit_code == 0  # its sibling shares it
        assert result.exit_code == ExitCode.LOCKED
        assert "a sharded run" in result.stderr
        assert not (world.dest / ".immsync" / "state.sqlite").exists()

    def test_shard_refuses_prune(self, world: World):
        """--shard with --prune is a usage error: deletions need the whole picture."""
        world.write_manifest(WHOLE)
        result = world.apply("--shard", "1/2", "--prune")
        assert result.exit_code == ExitCode.USAGE
        assert "--shard cannot be combined with --prune" in result.stderr


class TestCombine:
    def test_the_record_matching_the_file_on_disk_wins(self, tmp_path: Path):
        """Of two records for one path, the one whose size and mtime match the file is kept."""
        target = tmp_path / "SDY1" / "a.txt"
        target.parent.mkdir()
        target.write_bytes(b"abc")
        st = target.stat()
        fits = StateEntry("SDY1/a.txt", 3, st.st_mtime_ns, "xxh3_128:" + "1" * 32, 3, "t")
        stale = StateEntry("SDY1/a.txt", 2, 1, "xxh3_128:" + "2" * 32, 2, "t0")
        assert combine(tmp_path, [{fits.path: fits}, {stale.path: stale}])[fits.path] == fits
        assert combine(tmp_path, [{stale.path: stale}, {fits.path: fits}])[fits.path] == fits
        gone = StateEntry("SDY1/gone", 1, 1, "xxh3_128:" + "3" * 32, 1, "t")
        newer = StateEntry("SDY1/gone", 1, 2, "xxh3_128:" + "4" * 32, 1, "t")
        assert combine(tmp_path, [{gone.path: gone}, {newer.path: newer}])[gone.path] == newer
