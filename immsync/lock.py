"""One writer per destination: an advisory lock on ``<destination>/.immsync/lock``.

``flock`` is released by the kernel when its holder dies, however it dies, so a lock
left by a killed run is never stale: the next run simply gets it. The file's content
(pid, host, start time) only serves to tell the user who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from .errors import LockedError, StateError
from .statedir import open_private_file, private_folder


class DestinationLock:
    """Context manager holding the lock of one destination.

    Exclusive by default. Shards of one sharded run (``apply --shard``) hold it
    *shared*, beside their own exclusive shard lock: they run together, while an
    unsharded apply or a merge, which take it exclusively, wait for all of them (and
    they for it).
    """

    def __init__(
        self,
        path: Path,
        *,
        wait: float | None = None,
        shared: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.wait = wait
        """Seconds to wait for the holder to finish; None fails at once."""
        self.shared = shared
        self._sleep = sleep
        self._clock = clock
        self._fd: int | None = None

    def acquire(self) -> None:
        # Checked, never followed: a link planted at the lock's place would otherwise
        # have this run truncate and write whatever file it points to.
        private_folder(self.path.parent)
        try:
            fd = open_private_file(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(
                f"cannot create the lock file {self.path}: {exc.strerror or exc}",
                hint="check that the destination is writable",
            ) from exc
        deadline = None if self.wait is None else self._clock() + self.wait
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is None or self._clock() >= deadline:
                    holder = describe_holder(self.path)
                    os.close(fd)
                    waited = "" if deadline is None else f" (waited {self.wait:g} s)"
                    raise LockedError(
                        f"the destination {self.path.parent.parent} is in use by {holder}{waited}",
                        hint="wait for that run to finish, or pass --wait SECONDS to queue "
                        "behind it",
                    ) from None
                self._sleep(0.2)
        self._fd = fd
        if self.shared:
            # Many hold it at once, so none is named; a name a killed exclusive holder
            # left behind would now be wrong.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            return
        holder_info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        # Who holds the lock is only told to others; a full disk must not stop the run
        # (it is reported where it matters, with its own message).
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder_info).encode() + b"\n", 0)

    def fileno(self) -> int:
        """The lock's descriptor, for a child process that must keep the lock while it lives."""
        if self._fd is None:
            raise ValueError("the lock is not held")
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            # Leave the file in place: unlinking a lock file races with a run that
            # has just opened it and would let two runs hold "the" lock at once.
            if not self.shared:
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DestinationLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def describe_holder(path: Path) -> str:
    """'pid 123 on host x since 2026-...' from the lock file, as well as it can tell."""
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
        return f"pid {info['pid']} on host {info['host']} since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        # Shards hold the lock shared and write nothing in it.
        return "another immsync process (a sharded run, `apply --shard`, leaves no name)"
