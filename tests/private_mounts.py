"""Mounts without root: a private user and mount namespace for the tests that need them.

Mounting a size-limited tmpfs, or binding another user's folder into a destination,
needs root on the machine, but not inside an unprivileged user namespace
(``unshare --user --map-root-user --mount``). There this process's user is user id 0,
and folders of users it does not map (root's, for one) belong to the overflow user id
(65534). A mount made there is seen only by processes inside the namespace, so:

- ``run`` and ``immsync`` run a command inside it (``nsenter``), such as the immsync
  command line with a test world's environment; the network is not a separate
  namespace, so the emulator on 127.0.0.1 stays reachable;
- ``seen`` names a path as the namespace sees it, through ``/proc/<pid>/root``, for
  the test to inspect what a run left behind (or to write there) while it lives;
  ``python_json`` reads inside it what cannot be read that way (a SQLite state).

The namespace lives as long as a holder process that waits on its standard input;
closing it, or the test process ending, ends the namespace and its mounts with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import APPLY_TEST_OPTIONS, CliResult, World

OTHER_USER = 65534
"""The user id a folder of root's shows inside the namespace (the kernel's overflow id)."""


class PrivateMounts:
    """An unprivileged user and mount namespace, held open by a waiting process."""

    def __init__(self) -> None:
        for tool in ("unshare", "nsenter", "mount"):
            if shutil.which(tool) is None:
                pytest.skip(f"mounting without root needs util-linux's {tool}, not found here")
        self._holder = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "echo ready; exec cat"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._holder.stdout is not None
        if self._holder.stdout.readline().strip() != "ready":
            _, why = self._holder.communicate(timeout=10)
            pytest.skip(
                "unprivileged user namespaces are unavailable or refused here "
                f"(unshare --user --map-root-user --mount: {why.strip()})"
            )
        self.pid = self._holder.pid
        entered = self.run(["true"])
        if entered.returncode != 0:
            self.close()
            pytest.skip(f"cannot enter the namespace (nsenter): {entered.stderr.strip()}")
        if not os.access(self.seen(Path("/")), os.R_OK | os.X_OK):
            self.close()
            pytest.skip(f"cannot see the namespace's files through /proc/{self.pid}/root")

    def run(
        self, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run *argv* inside the namespace (as its user id 0), capturing its output."""
        return subprocess.run(
            [
                "nsenter",
                f"--target={self.pid}",
                "--user",
                "--mount",
                "--preserve-credentials",
                f"--wd={cwd or Path.cwd()}",
                "--",
                *argv,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def mount(self, *args: str) -> None:
        """``mount *args`` inside the namespace; skip the test if it is refused."""
        done = self.run(["mount", *args])
        if done.returncode != 0:
            pytest.skip(f"cannot mount without root here: {done.stderr.strip()}")

    def remount(self, options: str, mountpoint: Path) -> None:
        """Change a tmpfs mounted here (the source is named: mount(8) needs it here)."""
        done = self.run(["mount", "-o", f"remount,{options}", "tmpfs", str(mountpoint)])
        assert done.returncode == 0, done.stderr

    def small_disk(self, mountpoint: Path, size: str) -> Path:
        """A tmpfs of *size* (mount's notation, such as ``600k``) at *mountpoint*."""
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint))
        return mountpoint

    def immsync(self, world: World, *args: str) -> CliResult:
        """The immsync command line inside the namespace, with *world*'s environment."""
        done = self.run(
            [sys.executable, "-m", "immsync", *args],
            env={**os.environ, **world.env},
            cwd=world.root,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)

    def apply(self, world: World, *extra: str) -> CliResult:
        """``immsync apply`` of *world*'s manifest inside the namespace, as ``World.apply``."""
        return self.immsync(world, "apply", str(world.manifest_path), *APPLY_TEST_OPTIONS, *extra)

    def python_json(self, code: str, *args: str) -> Any:
        """What Python *code*, run inside the namespace with *args*, prints as JSON.

        For what this process cannot read through ``seen``: SQLite, for one, resolves
        the link ``/proc/<pid>/root`` and so opens the file outside the namespace.
        """
        done = self.run([sys.executable, "-c", code, *args], env=dict(os.environ))
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def seen(self, path: Path) -> Path:
        """*path* as the namespace sees it, with its mounts, for this process to read."""
        return Path(f"/proc/{self.pid}/root") / path.relative_to("/")

    def seen_world(self, world: World) -> World:
        """A copy of *world* whose files (destination, state, session log) are the
        namespace's view, for the assertions written for a world on this machine."""
        return World(
            self.seen(world.root), world.remote, world.emulator, world.config_path, world.aspera
        )

    def close(self) -> None:
        if self._holder.poll() is None:
            self._holder.communicate(timeout=10)  # closing its input ends the holder


def private_mounts_for_non_root() -> Iterator[PrivateMounts]:
    """A namespace for a test's variant that runs where the tests are not root."""
    if os.geteuid() == 0:
        pytest.skip("as root, the variant of this test that needs root runs instead")
    mounts = PrivateMounts()
    try:
        yield mounts
    finally:
        mounts.close()
