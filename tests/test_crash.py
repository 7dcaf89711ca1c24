"""Crash trials: `kill -9` an apply at a random moment, run it again, check everything.

The default suite runs one fast trial (killed half-way through a file). The 24 random
trials are slow (about a minute): run them with `make test-slow` or `pytest -m slow`. The
seed is printed and can be chosen with IMMSYNC_CRASH_SEED to replay a failing trial.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import World

from immsync.hashing import file_checksum
from immsync.state import StateStore, state_path
from immsync.testing.sampledata import write_file

TRIALS = 24
BIG = "SDY1/ResultFiles/Flow_cytometry_result/zz_big.bin"
BIG_SIZE = 32 * 1024 * 1024
RATE = 24 * 1024 * 1024
"""Bytes per second per session while a trial runs: the big file takes about 1.3 s."""
OPTIONS = ("--session-stagger", "0", "--retry-wait", "0.01", "--jobs", "2", "--batch-files", "3")


@dataclass
class Trial:
    number: int
    mode: str
    """"time": killed after a random delay; "mid-big": once the big file is that far."""
    target: float
    """Seconds after start, or the share of the big file, at which to kill."""
    size: int = BIG_SIZE
    """Bytes of the big file."""
    rate: int = RATE
    """Bytes per second per session while the trial runs."""
    partial_at_kill: int = 0
    resumed_at: int | None = None
    rerun_big_bytes: int | None = None

    def describe(self) -> str:
        text = f"trial {self.number:2d} {self.mode:7s} at {self.target:5.2f}: "
        if self.resumed_at is None:
            return text + f"partial {self.partial_at_kill} B, not resumed"
        resent = self.partial_at_kill - self.resumed_at
        return text + (
            f"partial {self.partial_at_kill} B, resumed at {self.resumed_at} B, "
            f"{resent} B re-sent of what had arrived, {self.rerun_big_bytes} B sent by the rerun"
        )


def group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group *pgid*."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp.
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


def selected(world: World) -> list[str]:
    base = world.remote / "SDY1"
    return sorted(p.relative_to(world.remote).as_posix() for p in base.rglob("*") if p.is_file())


def partial_size(world: World) -> int:
    try:
        return (world.dest / ".immsync" / "staging" / (BIG + ".partial")).stat().st_size
    except OSError:
        return 0


def run_trial(world: World, trial: Trial) -> None:
    shutil.rmtree(world.dest, ignore_errors=True)
    world.configure_aspera(rate_limit=trial.rate)
    proc = subprocess.Popen(
        [sys.executable, "-m", "immsync", "apply", str(world.manifest_path), *OPTIONS],
        env={**os.environ, **world.env},
        cwd=world.root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its ascp children share its process group
    )
    try:
        if trial.mode == "time":
            deadline = time.monotonic() + trial.target
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.005)
        else:
            wait_for(
                lambda: partial_size(world) >= trial.target * trial.size or proc.poll() is not None,
                f"the big file to reach {trial.target:.0%}",
            )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_for(lambda: not group_alive(proc.pid), "every killed process to be gone")
    trial.partial_at_kill = partial_size(world)

    world.configure_aspera(rate_limit=None)
    before = len(world.sessions())
    rerun = world.run("apply", str(world.manifest_path), *OPTIONS)
    assert rerun.exit_code == 0, f"{trial.describe()}\n{rerun.output}"
    for session in world.sessions()[before:]:
        if "/" + BIG in session["sources"]:
            trial.resumed_at = session["resumed"].get("/" + BIG)
            if trial.resumed_at is not None:
                trial.rerun_big_bytes = trial.size - trial.resumed_at
    check_destination(world, trial)


def check_destination(world: World, trial: Trial) -> None:
    label = trial.describe()
    paths = selected(world)
    for path in paths:
        assert (world.dest / path).read_bytes() == (world.remote / path).read_bytes(), (
            f"{label}: {path} differs"
        )
    verify = world.run("verify", str(world.manifest_path))
    assert verify.exit_code == 0, f"{label}\n{verify.output}"
    with StateStore.open(state_path(world.dest), create=False) as store:
        entries = store.entries()
    assert sorted(entries) == paths, label
    for path, entry in entries.items():
        local = world.dest / path
        assert local.stat().st_size == entry.size, f"{label}: {path}"
        assert file_checksum(local) == entry.checksum, f"{label}: {path}"
    if trial.resumed_at is not None:
        # Resuming never skips bytes that had not arrived.
        assert trial.resumed_at <= trial.partial_at_kill, label


def test_one_kill_9_mid_file_then_rerun_resumes(world: World):
    """kill -9 half-way through a 4 MiB file: the rerun resumes it where it was, all verified."""
    size = 4 * 1024 * 1024
    write_file(world.remote, BIG, random.Random(9).randbytes(size))
    world.write_manifest("  - accession: SDY1\n")
    trial = Trial(0, "mid-big", 0.5, size=size, rate=4 * 1024 * 1024)
    run_trial(world, trial)
    assert 0 < trial.partial_at_kill < size, trial.describe()
    assert trial.resumed_at == trial.partial_at_kill, trial.describe()
    assert trial.rerun_big_bytes == size - trial.partial_at_kill


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_kill_9_at_random_moments_then_rerun(world: World):
    """24 trials of kill -9 mid-run, then a rerun: complete, verified, and resumed mid-file."""
    seed = int(os.environ.get("IMMSYNC_CRASH_SEED", "20170615"))
    print(f"\ncrash trials: seed {seed} (set IMMSYNC_CRASH_SEED to replay)")
    rng = random.Random(seed)
    write_file(world.remote, BIG, rng.randbytes(BIG_SIZE))
    world.write_manifest("  - accession: SDY1\n")
    trials = []
    for number in range(TRIALS):
        # Half are killed at a random instant (before, during or after the transfers),
        # half once the big file has partly arrived, so mid-file kills are certain.
        if number % 2:
            trial = Trial(number, "time", rng.uniform(0.0, 4.0))
        else:
            trial = Trial(number, "mid-big", rng.uniform(0.05, 0.95))
        run_trial(world, trial)
        print(trial.describe())
        trials.append(trial)
    resumed = [t for t in trials if t.resumed_at]
    summary = "\n".join(t.describe() for t in trials)
    assert resumed, f"no rerun resumed the big file mid-way:\n{summary}"
    assert all(t.rerun_big_bytes is not None and t.rerun_big_bytes < BIG_SIZE for t in resumed)
    mid = [t for t in trials if t.mode == "mid-big" and 0 < t.partial_at_kill < BIG_SIZE]
    assert mid and all(t.resumed_at == t.partial_at_kill for t in mid), summary
