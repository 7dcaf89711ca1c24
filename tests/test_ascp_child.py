"""An ascp started by immsync never outlives it unseen.

Killed with SIGKILL, immsync cannot stop its ascp itself, and an ascp left running
would go on writing into staging while a new run takes the destination. Two things
prevent that: the kernel sends ascp SIGTERM when the thread that started it dies
(Linux), and ascp inherits the destination lock, so the destination stays locked for
as long as any ascp of the run is alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import World

from immsync import model
from immsync.ascp import AscpSettings, AscpTransfer
from immsync.errors import LockedError, TransferError
from immsync.lock import DestinationLock
from immsync.testing import aspera_tokens
from immsync.testing.aspera_config import FakeAsperaConfig
from immsync.testing.fake_ascp import install_fake_ascp

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc and uses PR_SET_PDEATHSIG"
)
SECRET = "test-secret"


def children_named(parent: int, word: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == parent and word.encode() in cmdline:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; nobody may be reaping it here


def wait_until(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def apply_with_a_hanging_ascp(world: World) -> tuple[subprocess.Popen[bytes], list[int]]:
    """A real `immsync apply` whose ascp session hangs, and that ascp's pids."""
    world.configure_aspera(faults=[{"kind": "hang", "seconds": 60}])
    world.write_manifest("  - accession: SDY1\n    paths: [StudyFiles]\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "immsync", "apply", str(world.manifest_path), "--transport",
         "ascp", "--session-stagger", "0"],
        env={**os.environ, **world.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ascps: list[int] = []
    try:
        wait_until(lambda: ascps.extend(children_named(proc.pid, "ascp")) or ascps, 60, "ascp")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, ascps


def test_ascp_ends_when_immsync_is_killed(world: World) -> None:
    proc, ascps = apply_with_a_hanging_ascp(world)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        wait_until(lambda: not any(alive(pid) for pid in ascps), 20, "ascp to end")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The next run finds the destination free and converges.
    world.configure_aspera(faults=[])
    result = world.apply()
    assert result.exit_code == 0, result.output
    assert "SDY1/StudyFiles/Study_design.txt" in world.local_files()


def test_the_destination_stays_locked_while_an_inherited_ascp_lives(tmp_path: Path) -> None:
    """Without the parent-death signal (other systems), the inherited lock still holds."""
    docroot = tmp_path / "docroot"
    (docroot / "SDY1").mkdir(parents=True)
    (docroot / "SDY1" / "a.txt").write_bytes(b"x" * 1000)
    config = FakeAsperaConfig(
        docroot=str(docroot), secret=SECRET, faults=[{"kind": "hang", "seconds": 60}]
    )
    install = install_fake_ascp(tmp_path / "aspera", config.save(tmp_path / "aspera.json"))
    lock_path = tmp_path / "dest" / ".immsync" / "lock"
    lock = DestinationLock(lock_path)
    lock.acquire()
    started: list[subprocess.Popen[bytes]] = []

    def popen_without_death_signal(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        kwargs["preexec_fn"] = None  # as where PR_SET_PDEATHSIG does not exist
        child: subprocess.Popen[bytes] = subprocess.Popen(*args, **kwargs)  # type: ignore[call-overload]
        started.append(child)
        return child

    transfer = AscpTransfer(
        AscpSettings(install.ascp, install.key),
        token_source=lambda paths: aspera_tokens.mint(SECRET, list(paths), lifetime=600),
        workdir=tmp_path / "work",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        popen=popen_without_death_signal,
        hold_fds=(lock.fileno(),),
    )
    batch = model.TransferBatch(
        (model.RemoteFile("SDY1/a.txt", 1000, "2017-06-15T13:06:07Z"),),
        tmp_path / "dest" / ".immsync" / "staging",
        "batch 1/1",
    )
    errors: list[BaseException] = []
    runner = threading.Thread(
        target=lambda: _fetch(transfer, batch, errors), daemon=True
    )
    runner.start()
    wait_until(lambda: bool(started), 30, "ascp to start")
    # immsync "dies": its own descriptor closes without unlocking.
    os.close(lock.fileno())
    lock._fd = None
    with pytest.raises(LockedError):
        DestinationLock(lock_path).acquire()
    transfer.terminate()
    runner.join(timeout=30)
    with DestinationLock(lock_path):
        pass  # free once ascp has ended


def _fetch(
    transfer: AscpTransfer, batch: model.TransferBatch, errors: list[BaseException]
) -> None:
    try:
        transfer.fetch(batch, lambda event: None)
    except TransferError as exc:
        errors.append(exc)


def test_apply_hands_its_destination_lock_to_every_ascp(world: World) -> None:
    proc, ascps = apply_with_a_hanging_ascp(world)
    try:
        lock = world.dest / ".immsync" / "lock"
        opened = set()
        for fd in os.listdir(f"/proc/{ascps[0]}/fd"):
            try:
                opened.add(os.readlink(f"/proc/{ascps[0]}/fd/{fd}"))
            except OSError:
                continue
        assert str(lock) in opened, opened
    finally:
        proc.kill()
        proc.wait()
