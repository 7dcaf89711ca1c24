"""The one place immsync starts IBM Aspera ``ascp``: finding it, running it, reading it.

``ascp`` reports progress as ``\\r``-redrawn lines on stdout and failures as
``Session Stop  (Error: ...)`` (stdout) and ``ascp: ..., exiting.`` (stderr); its exit
status is only 0 or 1 (reference §3.6-3.7). So this module reads both streams as they
come, turns progress lines into :class:`~immsync.model.ProgressEvent`, and turns a
failure into a :class:`~immsync.errors.TransferError` whose ``kind`` tells the caller
whether to retry, refresh the token, or give up.

The transfer token goes to ``ascp`` only through ``ASPERA_SCP_TOKEN`` in its
environment, never in argv, where any local user could read it (``/proc/<pid>/cmdline``).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import ctypes
import itertools
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from immsync import errors, model
from immsync.staging import checkpoint_of, partial_of, staged_name

log = logging.getLogger(__name__)

ASCP_ENV = "IMMSYNC_ASCP"
KEY_ENV = "IMMSYNC_ASPERA_KEY"
TOKEN_ENV = "ASPERA_SCP_TOKEN"  # noqa: S105 (a variable name, not a secret)
TERMINATE_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL when a transfer is cancelled."""
TAIL_LINES = 20
_SHOWN_FILES = 3

PopenFactory = Callable[..., subprocess.Popen[bytes]]


def _end_with_parent() -> Callable[[], None] | None:
    """On Linux, a function that has the kernel send ascp SIGTERM when immsync dies.

    Without it, an immsync killed with SIGKILL leaves ascp writing into staging. The
    signal follows the *thread* that started ascp; each session's thread waits for
    its ascp, so the two end together. Elsewhere: None (the lock, inherited by ascp,
    still keeps the next run away until ascp has ended).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    set_parent_death_signal = 1  # PR_SET_PDEATHSIG
    sigterm = int(signal.SIGTERM)

    # Runs in the child between fork and exec: only a system call, nothing that could
    # wait on a lock another thread of the parent held at fork time.
    def child_setup() -> None:
        prctl(set_parent_death_signal, sigterm, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return child_setup


# --------------------------------------------------------------------------------------
# Finding ascp and its key


def _ascp_candidates(home: Path, platform: str = sys.platform) -> list[Path]:
    """Where Aspera Connect, the Aspera CLI, the SDK and HSTS put ascp on *platform*."""
    if platform == "darwin":
        return [
            home / "Applications" / "Aspera Connect.app" / "Contents" / "Resources" / "ascp",
            Path("/Applications/Aspera Connect.app/Contents/Resources/ascp"),
            home / "Applications" / "IBM Aspera Connect.app" / "Contents" / "Resources" / "ascp",
            Path("/Applications/IBM Aspera Connect.app/Contents/Resources/ascp"),
            home / "Applications" / "Aspera CLI" / "bin" / "ascp",
            home / ".aspera" / "sdk" / "ascp",
        ]
    return [
        home / ".aspera" / "connect" / "bin" / "ascp",
        home / ".aspera" / "cli" / "bin" / "ascp",
        home / ".aspera" / "sdk" / "ascp",
        Path("/opt/aspera/bin/ascp"),
    ]


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _is_readable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.R_OK)


def locate_ascp(explicit: str | None, *, path_env: str | None, home: Path) -> Path:
    """Find the ``ascp`` program.

    Args:
        explicit: the ``IMMSYNC_ASCP`` setting, if any: a path to ascp (or to an
            install folder holding ``bin/ascp``). When set, nothing else is tried.
        path_env: the ``PATH`` to search; None skips the PATH search.
        home: the user's home folder, for the per-user install places.

    Raises:
        TransportUnavailable: not found; the message names every place looked at.
    """
    if explicit:
        given = Path(explicit).expanduser()
        for candidate in (given, given / "bin" / "ascp", given / "ascp"):
            if _is_executable(candidate):
                return candidate
        raise errors.TransportUnavailable(
            f"{ASCP_ENV} is set to {given}, which is not an executable ascp program",
            hint=f"Point {ASCP_ENV} at the ascp program (for example "
            "~/.aspera/connect/bin/ascp), or unset it to search PATH and the usual places.",
        )
    looked: list[str] = []
    if path_env is not None:
        found = shutil.which("ascp", path=path_env)
        if found:
            return Path(found)
        looked.append("every folder on PATH")
    for candidate in _ascp_candidates(home):
        if _is_executable(candidate):
            return candidate
        looked.append(str(candidate))
    raise errors.TransportUnavailable(
        "ascp (IBM Aspera) was not found. Looked in: " + "; ".join(looked),
        hint="Install IBM Aspera Connect or the Aspera CLI, or set "
        f"{ASCP_ENV} to the full path of the ascp program.",
    )


def _key_candidates(ascp: Path) -> list[Path]:
    bases = [ascp]
    with contextlib.suppress(OSError):
        real = ascp.resolve()
        if real != ascp:
            # A PATH symlink (e.g. /usr/local/bin/ascp) says nothing about where the key is.
            bases.append(real)
    found: list[Path] = []
    for base in bases:
        for candidate in (
            base.parent.parent / "etc" / "asperaweb_id_dsa.openssh",
            base.parent / "asperaweb_id_dsa.openssh",
            base.parent / "aspera_bypass_dsa.pem",
            base.parent.parent / "etc" / "aspera" / "aspera_bypass_dsa.pem",
        ):
            if candidate not in found:
                found.append(candidate)
    return found


def locate_key(explicit: str | None, ascp: Path) -> Path:
    """Find the SSH key ``ascp`` authenticates with (Aspera's public ``asperaweb_id_dsa``).

    Args:
        explicit: the ``IMMSYNC_ASPERA_KEY`` setting, if any; when set it must be a
            readable file and nothing else is tried.
        ascp: the program found by :func:`locate_ascp`; installs keep the key beside it.

    Raises:
        TransportUnavailable: not found; the message names every place looked at.
    """
    if explicit:
        given = Path(explicit).expanduser()
        if _is_readable(given):
            return given
        raise errors.TransportUnavailable(
            f"{KEY_ENV} is set to {given}, which is not a readable file",
            hint=f"Point {KEY_ENV} at the Aspera key asperaweb_id_dsa.openssh.",
        )
    candidates = _key_candidates(ascp)
    for candidate in candidates:
        if _is_readable(candidate):
            return candidate
    raise errors.TransportUnavailable(
        f"The Aspera key for {ascp} was not found. Looked in: "
        + "; ".join(str(c) for c in candidates),
        hint=f"Set {KEY_ENV} to the key file; Aspera Connect and the Aspera CLI ship it "
        "as etc/asperaweb_id_dsa.openssh.",
    )


# --------------------------------------------------------------------------------------
# Reading ascp's output


_PROGRESS_RE = re.compile(
    r"^(?P<name>.*?\S)\s+(?P<percent>\d{1,3})%\s+(?P<size>\d+(?:\.\d+)?)(?P<unit>[KMGTP]?B)"
    r"(?:\s+(?P<rate>\d+(?:\.\d+)?\s?[KMGT]?b(?:ps|/s)))?"
    r"\s+(?P<time>--:--|\d+(?::\d\d)+)(?:\s+ETA)?\s*$"
)
_STOP_RE = re.compile(r"Session Stop\s+\(Error:\s*(?P<reason>.*?)\)?\s*$")
_EXITING_RE = re.compile(r"^\S.*?: (?P<reason>.+), exiting\.?\s*$")
_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "PB": 1024**5}

_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "token",
        re.compile(
            r"token denied|Management authorization refused|Token doesn't match|token.*expired",
            re.IGNORECASE,
        ),
    ),
    ("auth", re.compile(r"failed to authenticate|authentication fail", re.IGNORECASE)),
    ("disk", re.compile(r"Disk write failed|No space left|Disk quota exceeded", re.IGNORECASE)),
    ("not_found", re.compile(r"No such file or directory", re.IGNORECASE)),
    (
        "unreachable",
        re.compile(
            r"Failed to open TCP connection|Client unable to connect|Connection refused"
            r"|failed to open connection",
            re.IGNORECASE,
        ),
    ),
    (
        "transient",
        re.compile(
            r"Data transfer stalled|Connection (?:lost|abandoned|reset)|timed out"
            r"|killed by signal|interrupted by signal",
            re.IGNORECASE,
        ),
    ),
)


def classify(reason: str) -> errors.Failure:
    """Why ascp failed, from its own words (``PERMANENT`` when they are unknown).

    The one place that reads ascp's wording: everything after this asks the failure.
    """
    for kind, pattern in _KINDS:
        if pattern.search(reason):
            return errors.Failure(kind)
    return errors.Failure.PERMANENT


def _resumable(batch: model.TransferBatch) -> dict[str, int]:
    """Bytes each file of *batch* has in staging that ``ascp -k 2`` can resume from.

    ascp resumes only a partial file with its checkpoint beside it (a partial file
    without one, such as an HTTPS download's, is sent again from its start), and skips
    a whole file an earlier session left that its checksum finds equal to the source.
    """
    found = {}
    for file in batch.files:
        staged = batch.staging / staged_name(file.path)
        partial = partial_of(staged)
        try:
            if staged.is_file() and not staged.is_symlink():
                have = staged.stat().st_size if staged.stat().st_size == file.size else 0
            elif checkpoint_of(partial).is_file() and partial.is_file():
                have = partial.stat().st_size
            else:
                continue
        except OSError:
            continue
        if 0 < have <= file.size:
            found[file.path] = have
    return found


def _resumed_from(staged: int, first_shown: int, size: int) -> int:
    """Where ascp resumed a file, from the bytes it had in staging and its first progress.

    ascp says nothing else about a resume: its first progress line of the file shows
    the staged bytes already done when it resumed, and less when it started over (its
    checkpoint did not match the source). Percentages are whole, so the first line may
    show up to 1% of the file less than the staged bytes.
    """
    if staged and first_shown >= staged - size // 100 - 1:
        return staged
    return 0


def parse_progress(line: str) -> tuple[str, int, int, str | None] | None:
    """``(name, percent, bytes shown, rate)`` from one progress redraw, else None."""
    match = _PROGRESS_RE.match(line)
    if not match:
        return None
    size = float(match["size"]) * _UNITS[match["unit"]]
    if not math.isfinite(size):
        return None  # hundreds of digits: not a size ascp could have printed
    shown = int(size)
    return match["name"], min(int(match["percent"]), 100), shown, match["rate"]


def _hint(kind: errors.Failure, settings: AscpSettings, staging: Path) -> str:
    target = f"{settings.host} (TCP and UDP port {settings.port})"
    return {
        "auth": f"ascp could not log in to {settings.host} as {settings.user}: check that "
        f"{settings.key} is Aspera's asperaweb_id_dsa.openssh key ({KEY_ENV} selects "
        "another) and that the TCP port is right. Many sessions starting at once can "
        "also be refused: retry with fewer parallel sessions. Or use --transport https: "
        "ImmPort's download links need no Aspera login.",
        "token": "The Aspera transfer token was refused (expired, or not covering these "
        "paths); a new token is needed for the retry.",
        "not_found": "ImmPort lists this file, but its Aspera server does not have it; "
        "try again later, or report it to ImmPort.",
        "disk": f"Check free space and write permission under {staging}.",
        "transient": f"The transfer from {target} broke off; partial files resume on the "
        "retry.",
        "unreachable": f"The network path to {target} failed; check that a firewall lets "
        "both through, then retry (partial files resume).",
        "interrupted": "The transfer was stopped; partial files stay and resume next time.",
    }.get(kind, "Run with --verbose to see the ascp command line and its whole output.")


class _Output:
    """What one ascp process has said so far (both streams), token redacted."""

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._lock = threading.Lock()
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.stop_reason: str | None = None
        self.exit_reason: str | None = None
        self.partial = False
        self._last_progress: str | None = None

    def redact(self, text: str) -> str:
        return text.replace(self._secret, "<token>") if len(self._secret) >= 4 else text

    def add(self, raw: str, *, progress_name: str | None = None) -> str:
        line = self.redact(raw.rstrip())
        with self._lock:
            if progress_name is not None and self._last_progress == progress_name and self.tail:
                # Redraws of one file's progress would crowd everything else out of the tail.
                self.tail[-1] = line
            else:
                self.tail.append(line)
            self._last_progress = progress_name
            stop = _STOP_RE.search(line)
            if stop:
                self.stop_reason = stop["reason"].strip()
            exiting = _EXITING_RE.match(line)
            if exiting and self.exit_reason is None:
                self.exit_reason = exiting["reason"].strip()
            if line.startswith("Partial Completion"):
                self.partial = True
        return line

    def lines(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self.tail)


def _describe(files: Sequence[model.RemoteFile]) -> str:
    shown = ", ".join(f.path for f in files[:_SHOWN_FILES])
    more = len(files) - _SHOWN_FILES
    count = f"{len(files)} file" + ("" if len(files) == 1 else "s")
    return f"{count}: {shown}" + (f" and {more} more" if more > 0 else "")


def _check_path(path: str) -> None:
    if any(c in path for c in ("\n", "\r", "\0")):
        raise errors.TransferError(
            f"Cannot ask ascp for {path!r}: the name contains a line break or NUL, "
            "which a file-pair list cannot carry",
            kind="permanent",
            reason="unsafe file name",
        )
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or ".." in parts:
        raise errors.TransferError(
            f"Cannot ask ascp for {path!r}: not a plain relative path",
            kind="permanent",
            reason="unsafe file name",
        )


# --------------------------------------------------------------------------------------
# Running it


@dataclass(frozen=True)
class AscpSettings:
    """How to reach ImmPort's Aspera server (reference §1.0) with which program and key."""

    binary: Path
    key: Path
    host: str = "aspera-immport.niaid.nih.gov"
    user: str = "databrowser"
    port: int = 33001
    """Both the TCP (SSH) and the UDP (FASP data) port."""
    target_rate: str | None = None
    """ascp ``-l`` rate such as ``300m``; None leaves ascp's default."""


class AscpTransfer:
    """A :class:`~immsync.model.Transfer` that runs one ``ascp`` session per batch.

    ``fetch`` may run in several threads at once; ``terminate`` stops them all.
    """

    name = "ascp"

    def __init__(
        self,
        settings: AscpSettings,
        *,
        token_source: Callable[[Sequence[str]], str],
        workdir: Path,
        env: Mapping[str, str],
        popen: PopenFactory = subprocess.Popen,
        hold_fds: Sequence[int] = (),
    ) -> None:
        """
        Args:
            settings: program, key and server.
            token_source: returns an Aspera transfer token covering the given ImmPort
                paths (``/SDY1/...``); called once per session.
            workdir: private folder for the file-pair lists.
            env: the environment for ascp (the token is added to it).
            popen: starts the process; ``subprocess.Popen`` or a wrapper with its signature.
            hold_fds: descriptors each ascp inherits, such as the destination lock's:
                while any ascp still writes into staging, the destination stays locked,
                even if immsync itself was killed.
        """
        self._hold_fds = tuple(hold_fds)
        self.settings = settings
        self._token_source = token_source
        self._workdir = workdir
        self._env = dict(env)
        self._popen = popen
        # Re-entrant: terminate() may run in a signal handler on a thread inside fetch().
        self._lock = threading.RLock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._cancelled = False
        self._counter = itertools.count(1)

    def command(self, staging: Path, pair_list: Path) -> list[str]:
        """The ascp argv for one session (it holds no secret)."""
        s = self.settings
        argv = [
            str(s.binary),
            "-i",
            str(s.key),
            "-P",
            str(s.port),
            "-O",
            str(s.port),
            f"--user={s.user}",
            f"--host={s.host}",
            "--mode=recv",
            "-d",
            "-p",
            "-k",
            "2",
            "--partial-file-suffix=.partial",
        ]
        if s.target_rate:
            argv += ["-l", s.target_rate]
        # Absolute, so that DEST can neither start with "-" nor read as host:path.
        argv += [f"--file-pair-list={pair_list}", str(staging.absolute())]
        return argv

    def fetch(self, batch: model.TransferBatch, on_progress: model.ProgressCallback) -> None:
        """Run one ascp session bringing *batch* into ``batch.staging``.

        Raises:
            TransferError: ascp failed (``kind`` classifies why) or was terminated
                (``kind="interrupted"``); files that arrived stay in staging.
            TransportUnavailable: ascp could not be started.
        """
        if not batch.files:
            return
        for file in batch.files:
            _check_path(file.path)
        session = batch.label or f"ascp-{next(self._counter)}"
        self._raise_if_cancelled(batch, session)
        token = self._token_source(model.batch_paths(batch.files))
        pair_list: Path | None = None
        try:
            try:
                self._workdir.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(
                    prefix="ascp-pairs-", suffix=".txt", dir=self._workdir
                )
                pair_list = Path(name)
                with os.fdopen(fd, "wb") as fh:
                    for file in batch.files:
                        staged = staged_name(file.path)
                        fh.write(f"{file.remote_path}\n{staged}\n".encode())
            except OSError as exc:
                # A full or read-only disk shows here first: say so, as ascp would.
                reason = f"cannot write the file list in {self._workdir}: {exc.strerror or exc}"
                raise errors.TransferError(
                    f"ascp session {session} was not started ({_describe(batch.files)}): "
                    f"{reason}",
                    reason=reason,
                    kind=errors.Failure.DISK,
                    hint=_hint(errors.Failure.DISK, self.settings, batch.staging),
                ) from exc
            self._run(batch, session, pair_list, token, on_progress)
        finally:
            if pair_list is not None:
                pair_list.unlink(missing_ok=True)

    def close(self) -> None:
        """Nothing to release: each session's ``ascp`` has ended when its fetch returns."""

    def terminate(self) -> None:
        """Stop every running session: SIGTERM now, SIGKILL after a grace period.

        Safe from any thread. Sessions started later are refused, so a cancelled
        run cannot start new transfers.
        """
        with self._lock:
            self._cancelled = True
            victims = list(self._running)
        for proc in victims:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if victims:
            threading.Thread(
                target=self._kill_after_grace, args=(victims,), name="ascp-kill", daemon=True
            ).start()

    @staticmethod
    def _kill_after_grace(victims: list[subprocess.Popen[bytes]]) -> None:
        deadline = time.monotonic() + TERMINATE_GRACE
        for proc in victims:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("ascp (pid %d) ignored SIGTERM; killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()

    # ----- internals

    def _raise_if_cancelled(self, batch: model.TransferBatch, session: str) -> None:
        if self._cancelled:
            raise errors.TransferError(
                f"ascp session {session} was not started, the transfer was stopped "
                f"({_describe(batch.files)})",
                kind=errors.Failure.INTERRUPTED,
                reason="stopped",
                hint=_hint(errors.Failure.INTERRUPTED, self.settings, batch.staging),
            )

    def _start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        try:
            return self._popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                close_fds=True,
                pass_fds=self._hold_fds,
                preexec_fn=_end_with_parent(),
                bufsize=0,
            )
        except OSError as exc:
            raise errors.TransportUnavailable(
                f"Cannot run ascp at {argv[0]}: {exc.strerror or exc}",
                hint=f"Set {ASCP_ENV} to a working ascp program.",
            ) from exc

    def _run(
        self,
        batch: model.TransferBatch,
        session: str,
        pair_list: Path,
        token: str,
        on_progress: model.ProgressCallback,
    ) -> None:
        argv = self.command(batch.staging, pair_list)
        log.debug("ascp session %s: %s", session, shlex.join(argv))
        # Before ascp starts: once it runs, it writes checkpoints of its own.
        resumable = _resumable(batch)
        env = dict(self._env)
        env[TOKEN_ENV] = token
        with self._lock:
            self._raise_if_cancelled(batch, session)
            proc = self._start(argv, env)
            self._running.add(proc)
            if self._cancelled:
                # terminate() ran (in a signal handler) while this process was starting.
                proc.send_signal(signal.SIGTERM)
        output = _Output(token)
        try:
            reader = threading.Thread(
                target=self._read_stderr, args=(proc.stderr, output), daemon=True
            )
            reader.start()
            self._read_stdout(proc.stdout, output, batch, session, on_progress, resumable)
            returncode = proc.wait()
            reader.join()
        finally:
            if proc.poll() is None:
                # on_progress raised: leave no ascp behind.
                proc.kill()
                proc.wait()
            with self._lock:
                self._running.discard(proc)
                cancelled = self._cancelled
        if returncode == 0:
            log.debug("ascp session %s finished", session)
            return
        raise self._failure(batch, session, returncode, output, cancelled=cancelled)

    @staticmethod
    def _read_stderr(stream: IO[bytes] | None, output: _Output) -> None:
        if stream is None:
            return
        with stream:
            for raw in stream:
                text = raw.decode("utf-8", "replace").strip("\r\n")
                if text.strip():
                    log.debug("ascp stderr: %s", output.add(text))

    def _read_stdout(
        self,
        stream: IO[bytes] | None,
        output: _Output,
        batch: model.TransferBatch,
        session: str,
        on_progress: model.ProgressCallback,
        resumable: Mapping[str, int],
    ) -> None:
        if stream is None:
            return
        names = collections.Counter(PurePosixPath(f.path).name for f in batch.files)
        sizes = {PurePosixPath(f.path).name: f.size for f in batch.files}
        paths = {PurePosixPath(f.path).name: f.path for f in batch.files}
        started: set[str] = set()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending = ""
        fd = stream.fileno()
        with stream:
            while True:
                chunk = os.read(fd, 65536)
                pending += decoder.decode(chunk, final=not chunk)
                *complete, pending = re.split(r"[\r\n]", pending)
                if not chunk:
                    complete.append(pending)
                for piece in complete:
                    if not piece.strip():
                        continue
                    progress = parse_progress(piece)
                    if progress is None:
                        log.debug("ascp: %s", output.add(piece))
                        continue
                    name, percent, shown, rate = progress
                    output.add(piece, progress_name=name)
                    done = shown
                    unique = names.get(name) == 1
                    if unique:
                        done = sizes[name] * percent // 100
                    resumed_from = None
                    if unique and name not in started:
                        started.add(name)
                        staged = resumable.get(paths[name], 0)
                        resumed_from = _resumed_from(staged, done, sizes[name])
                    on_progress(
                        model.ProgressEvent(
                            session=session,
                            name=name,
                            percent=percent,
                            bytes_done=done,
                            rate=rate,
                            path=paths[name] if unique else None,
                            resumed_from=resumed_from,
                        )
                    )
                if not chunk:
                    return

    def _failure(
        self,
        batch: model.TransferBatch,
        session: str,
        returncode: int,
        output: _Output,
        *,
        cancelled: bool,
    ) -> errors.TransferError:
        reason = output.stop_reason or output.exit_reason
        if reason is None:
            if returncode < 0:
                reason = f"ascp was killed by signal {signal.Signals(-returncode).name}"
            else:
                reason = f"ascp exited with status {returncode} without saying why"
        kind = errors.Failure.INTERRUPTED if cancelled else classify(reason)
        if kind is errors.Failure.PERMANENT and returncode < 0:
            kind = errors.Failure.TRANSIENT  # killed from outside: another try may do
        what = "was stopped" if kind is errors.Failure.INTERRUPTED else "failed"
        partly = ", some files arrived" if output.partial else ""
        message = f"ascp session {session} {what} ({_describe(batch.files)}{partly}): {reason}"
        log.debug("ascp session %s: exit %d, kind %s", session, returncode, kind)
        return errors.TransferError(
            message,
            reason=reason,
            kind=kind,
            output_tail=output.lines(),
            hint=_hint(kind, self.settings, batch.staging),
        )
