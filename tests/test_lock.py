"""One writer per destination."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from immsync.errors import LockedError
from immsync.lock import DestinationLock

HOLD = """
import sys, time
from pathlib import Path
from immsync.lock import DestinationLock
with DestinationLock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_in_child(path):
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "held"
    return child


def test_second_holder_fails_naming_the_first(tmp_path):
    """A second run fails at once, naming the holder's pid and host."""
    path = tmp_path / ".immsync" / "lock"
    child = hold_in_child(path)
    try:
        with pytest.raises(LockedError) as info:
            DestinationLock(path).acquire()
        assert f"pid {child.pid} on host" in info.value.message
        assert "--wait" in (info.value.hint or "")
    finally:
        child.kill()
        child.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    """SIGKILL of the holder frees the lock: no stale lock survives its process."""
    path = tmp_path / ".immsync" / "lock"
    child = hold_in_child(path)
    child.kill()
    child.wait()
    with DestinationLock(path):
        info = json.loads(path.read_text())
        assert info["pid"] == os.getpid()


def test_wait_gives_up_after_the_deadline(tmp_path):
    """--wait polls until its deadline, then fails saying how long it waited."""
    path = tmp_path / ".immsync" / "lock"
    child = hold_in_child(path)
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    try:
        with pytest.raises(LockedError, match=r"\(waited 1 s\)"):
            DestinationLock(path, wait=1.0, sleep=sleep, clock=lambda: now[0]).acquire()
        assert now[0] >= 1.0
    finally:
        child.kill()
        child.wait()
