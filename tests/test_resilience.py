"""How `immsync apply` survives ImmPort and ascp misbehaving, end to end.

Real HTTP to the emulator, real stand-in ascp processes, and for signals and locks a
real `python -m immsync` process. Faults come from the stand-in's config (one fault per
session, consumed in order) and from `Emulator.inject`.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import World

from immsync.errors import ExitCode
from immsync.hashing import file_checksum
from immsync.state import StateStore, state_path
from immsync.testing.sampledata import write_file

FLOW = "SDY1/ResultFiles/Flow_cytometry_result"
FCS = f"{FLOW}/02054141.001.52628.fcs"  # 180,000 bytes in the sample tree
FCS_SIZE = 180_000

SDY1_FLOW_AND_STUDY = """\
  - accession: SDY1
    paths:
      - ResultFiles/Flow_cytometry_result
      - StudyFiles/Study_design.txt
"""
ONLY_FCS = f"  - accession: SDY1\n    paths:\n      - {FCS.removeprefix('SDY1/')}\n"
WHOLE_SDY1 = "  - accession: SDY1\n"


# -- helpers ---------------------------------------------------------------------------


def recorded(world: World) -> dict[str, Any]:
    with StateStore.open(state_path(world.dest), create=False) as store:
        return store.entries()


def selected_remote(world: World, prefix: str) -> list[str]:
    base = world.remote / prefix
    return sorted(p.relative_to(world.remote).as_posix() for p in base.rglob("*") if p.is_file())


def assert_synced(world: World, paths: list[str]) -> None:
    """Every path is at its final place, byte-identical, and recorded with its xxh3."""
    entries = recorded(world)
    for path in paths:
        local = world.dest / path
        assert local.read_bytes() == (world.remote / path).read_bytes(), path
        assert entries[path].checksum == file_checksum(local), path


def staging(world: World) -> Path:
    return world.dest / ".immsync" / "staging"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll *condition* until true; generous timeouts, no timing assertion."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped; its state letter is Z.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_apply(world: World, *args: str, new_session: bool = False) -> subprocess.Popen[str]:
    """`python -m immsync apply` as a real process, with the world's environment."""
    env = {**os.environ, **world.env}
    return subprocess.Popen(
        [
            sys.executable, "-m", "immsync", "apply", str(world.manifest_path),
            "--session-stagger", "0", "--retry-wait", "0.01", *args,
        ],
        env=env,
        cwd=world.root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120.0) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def add_study(world: World, count: int, *, seed: int = 999) -> list[str]:
    """SDY999 with *count* files of 1-10 KB, 100 per folder; returns their paths."""
    rng = random.Random(seed)
    paths = []
    for n in range(count):
        path = f"SDY999/ResultFiles/Batch_{n // 100:02d}_result/file_{n:05d}.txt"
        write_file(world.remote, path, rng.randbytes(rng.randint(1024, 10 * 1024)))
        paths.append(path)
    return sorted(paths)


def add_big_file(world: World, path: str, size: int, *, seed: int = 7) -> None:
    write_file(world.remote, path, random.Random(seed).randbytes(size))


# -- 1. batching -----------------------------------------------------------------------


class TestBatching:
    def test_thousand_small_files_take_two_sessions_and_two_tokens(self, world: World):
        """1,000 small files travel in 2 ascp sessions with 2 tokens (500 files a batch)."""
        paths = add_study(world, 1000)
        world.write_manifest("  - accession: SDY999\n")
        result = world.apply()
        assert result.exit_code == 0, result.output
        sessions = world.sessions()
        tokens = world.emulator.count("/data/download/token")
        figures = f"1,000 files: {len(sessions)} session(s), {tokens} token request(s)"
        print(figures)
        assert len(sessions) == 2, figures
        assert tokens == 2, figures
        assert sorted(len(s["sources"]) for s in sessions) == [500, 500], figures
        assert len(recorded(world)) == 1000
        assert_synced(world, paths[::97])

    def test_thousand_small_files_in_one_session_with_batch_files_1000(self, world: World):
        """--batch-files 1000 moves 1,000 small files in 1 session with 1 token."""
        paths = add_study(world, 1000)
        world.write_manifest("  - accession: SDY999\n")
        result = world.apply("--batch-files", "1000")
        assert result.exit_code == 0, result.output
        sessions = world.sessions()
        tokens = world.emulator.count("/data/download/token")
        figures = f"1,000 files, --batch-files 1000: {len(sessions)} session(s), {tokens} token(s)"
        print(figures)
        assert len(sessions) == 1, figures
        assert tokens == 1, figures
        assert len(sessions[0]["sources"]) == 1000
        assert len(recorded(world)) == 1000
        assert_synced(world, paths[::97])


# -- 2. parallel sessions ----------------------------------------------------------------


class TestParallelSessions:
    def test_jobs_3_runs_sessions_at_once_and_completes(self, world: World):
        """--jobs 3 with 4 batches runs ascp sessions concurrently; every file arrives."""
        world.write_manifest(WHOLE_SDY1)
        world.configure_aspera(setup_delay=0.5)
        result = world.apply("--jobs", "3", "--batch-files", "2")
        assert result.exit_code == 0, result.output
        sessions = world.sessions()
        assert len(sessions) == 4
        assert len({s["pid"] for s in sessions}) == 4
        overlapping = [
            (a["pid"], b["pid"])
            for i, a in enumerate(sessions)
            for b in sessions[i + 1 :]
            if a["started"] < b["ended"] and b["started"] < a["ended"]
        ]
        assert overlapping, f"no two sessions overlapped: {sessions}"
        # Never more than 3 at once: at any session's start, count those running.
        for s in sessions:
            running = [t for t in sessions if t["started"] <= s["started"] < t["ended"]]
            assert len(running) <= 3
        paths = selected_remote(world, "SDY1")
        assert world.local_files() == paths
        assert_synced(world, paths)


    def test_each_start_waits_for_the_previous_sign_in_not_the_whole_stagger(self, world: World):
        """--session-stagger 60: a session starts once the one before it has connected."""
        world.write_manifest(WHOLE_SDY1)
        world.configure_aspera(setup_delay=0.3)
        result = world.run(
            "apply", str(world.manifest_path), "--jobs", "3", "--batch-files", "2",
            "--session-stagger", "60", "--retry-wait", "0.01",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        starts = sorted(s["started"] for s in world.sessions())
        assert len(starts) == 4
        # Never two sign-ins at once: each start came after the previous one's 0.3 s set-up.
        assert all(later - earlier >= 0.3 for earlier, later in itertools.pairwise(starts))
        # ...and not a minute apart, as a fixed stagger would have spaced them.
        assert starts[-1] - starts[0] < 60
        assert_synced(world, selected_remote(world, "SDY1"))


# -- 3. faults and immsync's answers ------------------------------------------------------


class TestTransferFaults:
    def test_stall_is_retried_and_resumed(self, world: World):
        """A stall after 70,000 bytes is retried; the retry resumes at 70,000, not zero."""
        world.write_manifest(ONLY_FCS)
        world.configure_aspera(faults=[{"kind": "stall", "after_bytes": 70_000}])
        result = world.apply()
        assert result.exit_code == 0, result.output
        first, second = world.sessions()
        assert first["status"] == "error" and "stalled" in first["error"]
        assert first["bytes_sent"] == 70_000
        assert second["status"] == "ok"
        assert second["resumed"] == {"/" + FCS: 70_000}
        assert second["bytes_sent"] == FCS_SIZE - 70_000
        assert "retrying 1 file " in result.stderr
        assert_synced(world, [FCS])

    @pytest.mark.parametrize("kind", ["tcp", "udp"])
    def test_network_failure_is_retried_then_succeeds(self, world: World, kind: str):
        """ascp alone: a TCP or UDP connection failure is retried; the retry succeeds."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.configure_aspera(faults=[{"kind": kind}])
        # --transport ascp: the default (auto) would move the batch over HTTPS instead.
        result = world.apply("--transport", "ascp")
        assert result.exit_code == 0, result.output
        sessions = world.sessions()
        assert [s["status"] for s in sessions] == ["error", "ok"]
        assert "retrying" in result.stderr
        assert_synced(world, [*selected_remote(world, FLOW), "SDY1/StudyFiles/Study_design.txt"])

    @pytest.mark.parametrize("kind", ["token_denied", "token_mismatch"])
    def test_refused_token_gets_a_fresh_token(self, world: World, kind: str):
        """A refused Aspera token makes the retry ask ImmPort for a new one, then succeed."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.configure_aspera(faults=[{"kind": kind}])
        result = world.apply()
        assert result.exit_code == 0, result.output
        assert [s["status"] for s in world.sessions()] == ["error", "ok"]
        assert world.emulator.count("/data/download/token") == 2
        assert_synced(world, [*selected_remote(world, FLOW), "SDY1/StudyFiles/Study_design.txt"])

    def test_auth_refused_among_parallel_sessions_lowers_concurrency(self, world: World):
        """One auth refusal while 3 sessions run lowers the parallel sessions, then succeeds."""
        world.write_manifest(WHOLE_SDY1)
        world.configure_aspera(faults=[{"kind": "auth", "times": 1}], setup_delay=0.2)
        result = world.apply("--jobs", "3", "--batch-files", "2")
        assert result.exit_code == 0, result.output
        assert "lowering parallel sessions to 2" in result.stderr
        statuses = [s["status"] for s in world.sessions()]
        assert statuses.count("error") == 1 and statuses.count("ok") == 4
        assert_synced(world, selected_remote(world, "SDY1"))

    def test_auth_refused_for_a_lone_session_fails_fast(self, world: World):
        """A persistent auth refusal of a single session: one try, exit 5, with a hint."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.configure_aspera(faults=[{"kind": "auth", "times": 99}])
        result = world.apply("--jobs", "1")
        assert result.exit_code == ExitCode.TRANSFER
        assert len(world.sessions()) == 1
        assert "error: stopped: " in result.stderr
        assert "failed to authenticate" in result.stderr
        assert "hint: ascp could not log in" in result.stderr
        assert "asperaweb_id_dsa.openssh" in result.stderr
        assert recorded(world) == {}
        assert "Traceback" not in result.output

    def test_missing_file_fails_fast_naming_it(self, world: World):
        """A file ImmPort lists but Aspera lacks: no retry, the file named, others kept."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.configure_aspera(faults=[{"kind": "no_such_file", "path": "/" + FCS, "times": 99}])
        result = world.apply()
        assert result.exit_code == ExitCode.TRANSFER
        assert len(world.sessions()) == 1
        assert f"{FCS}: " in result.stderr
        assert "No such file or directory" in result.stderr
        entries = recorded(world)
        assert FCS not in entries
        assert "SDY1/StudyFiles/Study_design.txt" in entries

    def test_disk_failure_stops_with_exit_7_keeping_finished_files(self, world: World):
        """Disk write failure: exit 7 'stopped: ...'; files finished before stay recorded."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        # Path order: 001.fcs (180,000 bytes) arrives whole, 002.fcs breaks half-way.
        world.configure_aspera(faults=[{"kind": "disk", "after_bytes": 240_000, "times": 99}])
        result = world.apply("--jobs", "1")
        assert result.exit_code == ExitCode.LOCAL, result.output
        assert "error: stopped: " in result.stderr
        assert "Disk write failed" in result.stderr
        assert "1 file completed and recorded" in result.stderr
        assert len(world.sessions()) == 1  # not retried: every retry would fail alike
        assert sorted(recorded(world)) == [FCS]
        assert_synced(world, [FCS])
        partial = staging(world) / f"{FLOW}/02054141.002.52629.fcs.partial"
        assert partial.stat().st_size == 60_000

    def test_corrupt_file_is_never_placed_and_fetched_again(self, world: World):
        """A corrupted download fails its MD5, is deleted, fetched once more, then placed."""
        world.write_manifest(ONLY_FCS)
        world.configure_aspera(faults=[{"kind": "corrupt", "path": "/" + FCS}])
        result = world.apply()
        assert result.exit_code == 0, result.output
        assert "MD5 mismatch" in result.stderr
        assert len(world.sessions()) == 2
        assert_synced(world, [FCS])

    def test_persistently_corrupt_file_fails_naming_expected_and_got(self, world: World):
        """A file corrupted on both tries is never placed: exit 5 with expected and got MD5."""
        world.write_manifest(ONLY_FCS)
        world.configure_aspera(faults=[{"kind": "corrupt", "path": "/" + FCS, "times": 99}])
        result = world.apply()
        assert result.exit_code == ExitCode.TRANSFER
        assert len(world.sessions()) == 2
        assert "MD5 mismatch: expected " in result.stderr and ", got " in result.stderr
        assert not (world.dest / FCS).exists()
        assert recorded(world) == {}

    def test_truncated_file_is_never_placed_and_fetched_again(self, world: World):
        """A short file behind a 'success' is caught by size, fetched once more, placed."""
        world.write_manifest(ONLY_FCS)
        world.configure_aspera(faults=[{"kind": "truncate", "path": "/" + FCS}])
        result = world.apply()
        assert result.exit_code == 0, result.output
        assert len(world.sessions()) == 2
        assert "size mismatch" in result.stderr
        assert_synced(world, [FCS])

    def test_persistently_truncated_file_fails_naming_expected_and_got(self, world: World):
        """A file short on both tries is never placed: exit 5 naming expected and received size."""
        world.write_manifest(ONLY_FCS)
        world.configure_aspera(faults=[{"kind": "truncate", "path": "/" + FCS, "times": 99}])
        result = world.apply()
        assert result.exit_code == ExitCode.TRANSFER
        assert len(world.sessions()) == 2
        assert f"{FCS}: size mismatch: expected {FCS_SIZE} bytes, received {FCS_SIZE // 2}" in (
            result.stderr
        )
        assert f"{FCS}: {FCS}:" not in result.stderr  # the path is named once
        assert not (world.dest / FCS).exists()
        assert recorded(world) == {}


class TestApiFaults:
    def test_503_and_429_bursts_are_retried(self, world: World):
        """503s on the catalog and 429s on the token endpoint are retried after Retry-After."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.emulator.inject(
            "/data/query/api/study/manifest/", status=503, times=2, retry_after=0.05
        )
        world.emulator.inject("/data/download/token", status=429, times=2, retry_after=0.05)
        result = world.apply()
        assert result.exit_code == 0, result.output
        assert "HTTP 503" in result.stderr and "HTTP 429" in result.stderr
        # One warning per operation that had to wait, not one per attempt.
        assert result.stderr.count("retrying in") == 2
        assert world.emulator.count("/data/download/token") == 3
        assert_synced(world, [*selected_remote(world, FLOW), "SDY1/StudyFiles/Study_design.txt"])

    def test_bearer_expiry_mid_run_signs_in_again_once(self, world: World):
        """Bearer tokens expiring between two sessions' token requests: one new sign-in."""
        world.write_manifest(WHOLE_SDY1)
        # The first session hangs, so the bearer tokens expire before the second
        # session asks for its Aspera token.
        world.configure_aspera(faults=[{"kind": "hang", "seconds": 1.5}])
        emulator = world.emulator
        expired = threading.Event()
        tokens_at_expiry: list[int] = []

        def expire_after_first_token() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if emulator.count("/data/download/token") >= 1:
                    emulator.expire_bearer_tokens()
                    tokens_at_expiry.append(emulator.count("/data/download/token"))
                    expired.set()
                    return
                time.sleep(0.005)

        watcher = threading.Thread(target=expire_after_first_token, daemon=True)
        watcher.start()
        result = world.apply("--jobs", "1", "--batch-files", "4")
        watcher.join(timeout=5)
        assert expired.is_set()
        assert tokens_at_expiry == [1]  # expired before the second session's token request
        assert result.exit_code == 0, result.output
        assert len(world.sessions()) == 2
        assert emulator.count("/auth/token") == 2  # the first sign-in, then exactly one more
        assert_synced(world, selected_remote(world, "SDY1"))

    def test_slow_api_still_works(self, world: World):
        """Every API reply 0.1 s late: the sync still completes."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.emulator.latency = 0.1
        result = world.apply()
        assert result.exit_code == 0, result.output
        assert_synced(world, [*selected_remote(world, FLOW), "SDY1/StudyFiles/Study_design.txt"])


# -- 4. one writer per destination ----------------------------------------------------------


def lock_holder_pid(world: World) -> int | None:
    try:
        text = (world.dest / ".immsync" / "lock").read_text()
        return int(json.loads(text)["pid"]) if text.strip() else None
    except (OSError, ValueError, KeyError):
        return None


def holds_fd_to(pid: int, target: Path) -> bool:
    try:
        links = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return False
    return str(target) in links


class TestConcurrentApplies:
    def test_second_apply_is_refused_then_queues_with_wait(self, world: World):
        """A second apply exits 9 naming the holder; with --wait it queues, then succeeds."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.configure_aspera(faults=[{"kind": "hang", "seconds": 60}])
        first = start_apply(world)
        started = [first]
        try:
            wait_for(lambda: lock_holder_pid(world) == first.pid, "the first run to lock")
            wait_for(lambda: world.emulator.count("/data/download/token") >= 1, "its ascp")
            second = start_apply(world)
            started.append(second)
            code, _out, err = finish(second)
            assert code == ExitCode.LOCKED, err
            assert f"pid {first.pid} on host {socket.gethostname()}" in err
            assert "--wait" in err
            third = start_apply(world, "--wait", "120")
            started.append(third)
            lock = world.dest / ".immsync" / "lock"
            wait_for(lambda: holds_fd_to(third.pid, lock), "the queued run to open the lock")
            assert first.poll() is None  # still holding it while the third waits
            first.send_signal(signal.SIGTERM)
            code, _out, err = finish(first)
            assert code == ExitCode.TERMINATED, err
            code, out, err = finish(third)
            assert code == 0, out + err
        finally:
            for proc in started:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert_synced(world, [*selected_remote(world, FLOW), "SDY1/StudyFiles/Study_design.txt"])


# -- 5. interruption ---------------------------------------------------------------------------


BIG = "SDY1/ResultFiles/Flow_cytometry_result/zz_big.bin"
BIG_SIZE = 6 * 1024 * 1024


def partial_size(world: World, path: str) -> int:
    try:
        return (staging(world) / (path + ".partial")).stat().st_size
    except OSError:
        return 0


class TestInterruption:
    @pytest.mark.parametrize(
        ("signum", "code"),
        [(signal.SIGINT, ExitCode.INTERRUPTED), (signal.SIGTERM, ExitCode.TERMINATED)],
    )
    def test_signal_stops_records_done_and_rerun_resumes(
        self, world: World, signum: int, code: int
    ):
        """SIGINT/SIGTERM mid-file: exit 130/143, done files kept, no ascp left, rerun resumes."""
        add_big_file(world, BIG, BIG_SIZE)
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        # 2 MB/s: the three small .fcs files (path order) arrive, then zz_big.bin crawls.
        world.configure_aspera(rate_limit=2 * 1024 * 1024)
        summary = world.root / "summary.json"
        proc = start_apply(world, "--jobs", "1", "--summary-file", str(summary), new_session=True)
        try:
            wait_for(lambda: partial_size(world, BIG) > 0, "the big file to start arriving")
            if signum == signal.SIGINT:
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole group
            else:
                proc.send_signal(signal.SIGTERM)
            returncode, _out, err = finish(proc)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert returncode == code, err
        assert "interrupted: 3 files completed and recorded, 2 remain" in err
        assert "run the same command again to resume" in err
        result = json.loads(summary.read_text())["result"]
        assert (result["exit_code"], result["interrupted"]) == (code, True)
        assert result["counts"]["download"] == 3  # what was done before, not zeros
        sessions = world.sessions()
        assert sessions, "the interrupted ascp logged nothing"
        assert not [s["pid"] for s in sessions if pid_alive(s["pid"])]
        assert sorted(recorded(world)) == selected_remote(world, FLOW)[:3]
        kept = partial_size(world, BIG)
        assert 0 < kept < BIG_SIZE
        world.configure_aspera(rate_limit=None)
        before = len(sessions)
        result = world.apply()
        assert result.exit_code == 0, result.output
        rerun = world.sessions()[before:]
        assert len(rerun) == 1
        assert rerun[0]["resumed"].get("/" + BIG) == kept
        assert rerun[0]["bytes_sent"] < BIG_SIZE
        assert_synced(world, [*selected_remote(world, FLOW), "SDY1/StudyFiles/Study_design.txt"])

    @pytest.mark.parametrize(
        ("signum", "code", "word"),
        [
            (signal.SIGINT, ExitCode.INTERRUPTED, "interrupted"),
            (signal.SIGTERM, ExitCode.TERMINATED, "terminated"),
        ],
    )
    def test_signal_while_listing_ends_with_a_message(
        self, world: World, signum: int, code: int, word: str
    ):
        """Stopped before any transfer: exit 130/143 with one line, no traceback, no ascp."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        # Long enough that a loaded machine still signals while the listing is in flight.
        world.emulator.latency = 2.0
        proc = start_apply(world)
        try:
            wait_for(
                lambda: world.emulator.count("/data/query/api/study/manifest/") >= 1,
                "the listing",
            )
            proc.send_signal(signum)
            returncode, _out, err = finish(proc, timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert returncode == code, err
        assert f"error: {word}; every file recorded so far is complete" in err
        assert "Traceback" not in err
        assert world.sessions() == []

    def test_signal_during_a_retry_wait_ends_the_run_at_once(self, world: World):
        """SIGTERM while a failed session waits to retry ends the run without the wait."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.configure_aspera(faults=[{"kind": "stall", "after_bytes": 0, "times": 99}])
        # The first retry waits 30-60 s (jittered, capped at 60).
        proc = start_apply(world, "--jobs", "1", "--retry-wait", "1000")
        lines: list[str] = []
        assert proc.stderr is not None
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        reader.start()
        try:
            wait_for(lambda: any("retrying 4 files" in line for line in lines), "a retry wait")
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.join(timeout=10)
        err = "".join(lines)
        assert returncode == ExitCode.TERMINATED, err
        assert "interrupted: 0 files completed and recorded, 4 remain" in err
        assert len(world.sessions()) == 1
