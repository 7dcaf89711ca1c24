"""A stand-in for IBM Aspera ``ascp`` that serves a local folder as the Aspera docroot.

It is a *program*: it parses the real command line (getopt-style short and long
options, ``[[user@]host:]SRC ... DEST``, ``--file-list``, ``--file-pair-list``),
checks the key, ports, user, host and transfer token like the ImmPort server would,
copies ``docroot/<src>`` into ``DEST`` with ascp's partial-file and ``-k`` resume
semantics, and prints ascp's console output (reference §3.5-3.7). Each process reads
the :class:`~immsync.testing.aspera_config.FakeAsperaConfig` file at start.

Faults (``config.faults``): a list of dicts consumed in order. Each session consumes
the *first* fault that still has ``times`` left (default 1) and applies to it: a fault
with ``"path"`` applies only to a session whose sources include that path (or a folder
above it). Remaining counts persist across processes in ``<config>.faults.json``
(updated under ``flock``), keyed by the fault's position and content: saving the same
list again does not re-arm consumed faults, appending does arm the new ones, and
:func:`reset_fault_state` re-arms everything. Kinds:

- ``auth``, ``tcp``: startup failure (``failed to authenticate`` / ``Failed to open TCP
  connection for SSH``), reported on stderr and stdout.
- ``udp``, ``token_denied``, ``token_mismatch``: session refused before any byte.
- ``stall`` ``{"after_bytes": N}``: N bytes of the session arrive (default half), the
  partial file and its ``.aspx`` stay, then ``Data transfer stalled, timed out``.
- ``disk`` ``{"after_bytes": N}`` (default 0): ``Disk write failed`` likewise.
- ``no_such_file``: the file at ``path`` (every file when no path) is missing.
- ``corrupt`` ``{"path"}``: one byte of that file is flipped after writing; success.
- ``truncate`` ``{"path"}``: only half of that file is written; success is claimed.
- ``partial`` ``{"path", "error"}``: that file fails half-way (``error`` defaults to
  ``Data transfer stalled, timed out``), the others arrive: ``Partial Completion``.
- ``hang`` ``{"seconds": S}``: sleep S seconds right after starting, then go on.

Every session appends one JSON line to ``config.session_log``: ``pid``, ``argv``,
``token_source`` (``"argv"``, ``"env"`` or null), ``sources``, ``status``, ``error``,
``bytes_sent``, ``resumed`` (``{source: offset}``), plus ``fault``, ``completed``,
``failed``, and ``started``/``ended`` (wall-clock seconds since the epoch, so tests can
see sessions overlap). Runs that only print help, version or a usage error are not
sessions.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import IO, Any

from immsync.testing import aspera_tokens
from immsync.testing.aspera_config import FakeAsperaConfig

CONFIG_ENV = "IMMSYNC_FAKE_ASCP_CONFIG"
"""Where the program finds its config when ``main`` is not given one."""

KEY_TEXT = (
    "-----BEGIN DSA PRIVATE KEY-----\n"
    "MIIBuwIBAAKBgQDkKQHD6m4yIxgjsey6Pny46acZXERsJHy54p/BqXIyYkVOAkEp\n"
    "c3RhbmQtaW4ga2V5IGZvciB0aGUgaW1tc3luYyBmYWtlIGFzY3A7IG5vdCBhIGtl\n"
    "-----END DSA PRIVATE KEY-----\n"
)

VERSION_TEXT = (
    "IBM Aspera CLI version 3.9.6.1467.159c5b1\n"
    "ascp version 3.9.1.168954\n"
    "Operating System: Linux\n"
    "FIPS 140-2-validated crypto ready to configure\n"
    "AES-NI Supported\n"
    "License max rate=(unlimited), account no.=1, license no.=1\n"
    "Stand-in: immsync.testing.fake_ascp (serves a local docroot)\n"
)

SHORT_USAGE = (
    "Usage: ascp [OPTION] SRC... DEST\n"
    "          SRC to DEST, or multiple SRC to DEST dir\n"
    "          SRC, DEST format: [[user@]host:]PATH\n"
    "Display full usage: -h,--help\n"
)

HELP_TEXT = (
    "Usage: ascp [OPTION] SRC... DEST\n"
    "          SRC to DEST, or multiple SRC to DEST dir\n"
    "          SRC, DEST format: [[user@]host:]PATH\n"
    "  -h,--help                       Display usage\n"
    "  -A,--version                    Display version.\n"
    "  -T                              Disable encryption\n"
    "  -d                              Create target directory, implied for file/file-pair lists\n"
    "  -p                              Preserve file timestamp\n"
    "  -q                              Disable progress display\n"
    "  -v                              Verbose mode\n"
    "  -D...                           Debug level\n"
    "  -l MAX-RATE                     Max transfer rate\n"
    "  -m MIN-RATE                     Min transfer rate\n"
    "                                  RATE: G/g(gig),M/m(meg),K/k(kilo)\n"
    "  -i PRIVATE-KEY-FILE             Private-key file name (id_rsa)\n"
    "  -k RESUME-LEVEL                 Resume criterion: 0,3,2,1\n"
    "  -L LOCAL-LOG-DIR                Local logging directory path\n"
    "  -O FASP-PORT                    UDP port used for FASP transport\n"
    "  -P SSH-PORT                     TCP port used for SSH authentication\n"
    "  -W TOKEN-STRING                 Specify TOKEN-STRING for transfer\n"
    "  -c CIPHER                       File data cipher:  aes128, aes192 or aes256\n"
    "  --mode=MODE                     MODE: send, recv\n"
    "  --user=USERNAME\n"
    "  --host=HOSTNAME\n"
    "  --policy=TRANSFER_POLICY        TRANSFER_POLICY: fixed,high,fair,low\n"
    "  --file-list=FILENAME            File with list of sources\n"
    "  --file-pair-list=FILENAME       File with list of src/dest pairs\n"
    "  --source-prefix=PREFIX          Prepend to each SRC path\n"
    "  --file-manifest=OUTPUT          OUTPUT: text,none\n"
    "  --file-manifest-path=DIRECTORY\n"
    "  --overwrite=METHOD              METHOD: never,always,older,diff,diff+older\n"
    "  --file-checksum=HASH            HASH: sha-512,sha-384,sha-256,sha1,md5,none\n"
    '  --partial-file-suffix=SUFFIX    Default is set to "" disabling\n'
    "                                  the partial file usage\n"
    "\n"
    "  This is immsync's stand-in: the other options of ascp 3.x are accepted and ignored.\n"
)

# getopt tables taken from the ascp 3.x --help listing, plus the legacy -Q and -r
# that peers still pass (reference §3.2).
_SHORT_FLAGS = frozenset("6ADQThdpqrv")
_SHORT_VALUES = frozenset("@CEGIKLNOPRSWXYZcefgiklmostuwxy")
_LONG_OPTIONS: dict[str, bool] = {
    # name -> takes a value
    "help": False,
    "version": False,
    "mode": True,
    "user": True,
    "host": True,
    "policy": True,
    "file-list": True,
    "file-pair-list": True,
    "source-prefix": True,
    "symbolic-links": True,
    "remove-after-transfer": False,
    "move-after-transfer": True,
    "remove-empty-directories": False,
    "remove-empty-source-directory": False,
    "save-before-overwrite": False,
    "skip-special-files": False,
    "file-manifest": True,
    "file-manifest-path": True,
    "file-manifest-inprogress-suffix": True,
    "precalculate-job-size": False,
    "overwrite": True,
    "file-crypt": True,
    "file-checksum": True,
    "partial-file-suffix": True,
    "src-base": True,
    "proxy": True,
    "preserve-file-owner-uid": False,
    "preserve-file-owner-gid": False,
    "preserve-access-time": False,
    "preserve-modification-time": False,
    "preserve-creation-time": False,
    "ignore-host-key": False,
    "check-sshfp": True,
    "apply-local-docroot": False,
    "preserve-xattrs": True,
    "remote-preserve-xattrs": True,
    "preserve-acls": True,
    "remote-preserve-acls": True,
    "multi-session-threshold": True,
    "delete-before-transfer": False,
    "exclude-newer-than": True,
    "exclude-older-than": True,
    "tags": True,
    "tags64": True,
}

_REMOTE_RE = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>[^@/:]+):(?P<path>.*)$")
_RATE_RE = re.compile(r"^\d+(?:\.\d+)?[GgMmKkPp%]?$")
_LINE_WIDTH_NAME = 45
_CHUNK = 64 * 1024
_PROGRESS_EVERY = 0.1

AUTH_FAILED = "failed to authenticate"
TCP_FAILED = "Failed to open TCP connection for SSH"
UDP_FAILED = "Client unable to connect to server (check UDP port and firewall)"
TOKEN_DENIED = "Management authorization refused: token denied by server"  # noqa: S105 (a message)
TOKEN_MISMATCH = "Token doesn't match file-list/file-pair-list"  # noqa: S105 (a message)
NO_SUCH_FILE = "Server aborted session: No such file or directory"
STALLED = "Data transfer stalled, timed out"
DISK_FAILED = "Disk write failed"


@dataclass(frozen=True)
class FakeAsperaInstall:
    """Where :func:`install_fake_ascp` put the program and its key."""

    ascp: Path
    key: Path


def install_fake_ascp(directory: Path, config: Path) -> FakeAsperaInstall:
    """Lay out an Aspera-CLI-like tree: ``bin/ascp`` and ``etc/asperaweb_id_dsa.openssh``.

    ``bin/ascp`` is an executable Python script (shebang: this interpreter) with
    *config* baked in, so it needs no environment; it finds immsync where this
    module was imported from.
    """
    bin_dir = directory / "bin"
    etc_dir = directory / "etc"
    bin_dir.mkdir(parents=True, exist_ok=True)
    etc_dir.mkdir(parents=True, exist_ok=True)
    package_root = Path(__file__).resolve().parents[2]
    script = (
        f"#!{sys.executable}\n"
        "# immsync stand-in for IBM Aspera ascp; see immsync/testing/fake_ascp.py\n"
        "import sys\n"
        f"sys.path.insert(0, {str(package_root)!r})\n"
        "from pathlib import Path\n"
        "from immsync.testing.fake_ascp import main\n"
        f"sys.exit(main(config_path=Path({str(config.absolute())!r})))\n"
    )
    ascp = bin_dir / "ascp"
    ascp.write_text(script, encoding="utf-8")
    ascp.chmod(0o755)
    key = etc_dir / "asperaweb_id_dsa.openssh"
    key.write_text(KEY_TEXT, encoding="ascii")
    key.chmod(0o600)
    return FakeAsperaInstall(ascp=ascp, key=key)


def fault_state_path(config: Path) -> Path:
    """The sidecar that remembers how many times each fault may still fire."""
    return config.with_name(config.name + ".faults.json")


def reset_fault_state(config: Path) -> None:
    """Re-arm every fault of *config* (forget what earlier sessions consumed)."""
    with contextlib.suppress(FileNotFoundError):
        fault_state_path(config).unlink()


# --------------------------------------------------------------------------------------
# Command line


class _UsageError(Exception):
    """Bad command line: *message* (getopt style) goes to stderr, then the short usage."""


@dataclass
class _Options:
    flags: dict[str, int] = field(default_factory=dict)
    values: dict[str, list[str]] = field(default_factory=dict)
    operands: list[str] = field(default_factory=list)

    def last(self, *names: str) -> str | None:
        for name in names:
            got = self.values.get(name)
            if got:
                return got[-1]
        return None

    def has(self, *names: str) -> bool:
        return any(self.flags.get(n) for n in names)


def _resolve_long(prog: str, arg: str, name: str) -> str:
    if name in _LONG_OPTIONS:
        return name
    matches = sorted(o for o in _LONG_OPTIONS if o.startswith(name)) if name else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        choices = " ".join(f"'--{m}'" for m in matches)
        raise _UsageError(f"{prog}: option '{arg}' is ambiguous; possibilities: {choices}")
    raise _UsageError(f"{prog}: unrecognized option '{arg}'")


def parse_args(prog: str, args: Sequence[str]) -> _Options:
    """GNU getopt_long semantics: permuted operands, clustered flags, ``--`` ends options."""
    opts = _Options()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            opts.operands.extend(args[i + 1 :])
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            option = _resolve_long(prog, arg, name)
            if _LONG_OPTIONS[option]:
                if not eq:
                    if i + 1 >= len(args):
                        raise _UsageError(f"{prog}: option '--{option}' requires an argument")
                    i += 1
                    value = args[i]
                opts.values.setdefault(option, []).append(value)
            else:
                if eq:
                    raise _UsageError(f"{prog}: option '--{option}' doesn't allow an argument")
                opts.flags[option] = opts.flags.get(option, 0) + 1
        elif arg.startswith("-") and arg != "-":
            j = 1
            while j < len(arg):
                letter = arg[j]
                if letter in _SHORT_FLAGS:
                    opts.flags[letter] = opts.flags.get(letter, 0) + 1
                    j += 1
                elif letter in _SHORT_VALUES:
                    value = arg[j + 1 :]
                    if not value:
                        if i + 1 >= len(args):
                            raise _UsageError(f"{prog}: option requires an argument -- '{letter}'")
                        i += 1
                        value = args[i]
                    opts.values.setdefault(letter, []).append(value)
                    break
                else:
                    raise _UsageError(f"{prog}: invalid option -- '{letter}'")
        else:
            opts.operands.append(arg)
        i += 1
    return opts


@dataclass
class _Request:
    """What one invocation asks for, once the command line is understood."""

    argv: list[str]
    key: str | None
    ssh_port: int
    udp_port: int
    user: str | None
    host: str | None
    token: str | None
    token_source: str | None
    sources: list[str]
    pair_dests: list[str] | None
    dest: str
    create_dirs: bool
    preserve_times: bool
    resume_level: int
    quiet: bool
    partial_suffix: str
    log_dir: str | None
    overwrite: str
    manifest_dir: str | None


def _port(prog: str, text: str | None, default: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise _UsageError(f"{prog}: invalid port '{text}'")
    return int(text)


def _read_list(prog: str, path: str, *, pairs: bool) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise _UsageError(f"{prog}: cannot open file list '{path}': {exc.strerror}") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    if pairs:
        if len(lines) % 2 or any(not line for line in lines):
            raise _UsageError(f"{prog}: malformed file pair list '{path}'")
    else:
        lines = [line for line in lines if line]
    return lines


def _build_request(prog: str, argv: list[str], opts: _Options, env: dict[str, str]) -> _Request:
    has_list = opts.last("file-list", "file-pair-list") is not None
    if not opts.operands or (len(opts.operands) < 2 and not has_list):
        raise _UsageError("")
    *remote, dest = opts.operands
    user = opts.last("user")
    host = opts.last("host")
    user_from_operand: str | None = None
    mode = opts.last("mode")
    if mode not in (None, "recv", "send"):
        raise _UsageError(f"{prog}: invalid mode '{mode}'")
    if _REMOTE_RE.match(dest) or mode == "send":
        raise _UsageError(f"{prog}: this stand-in only downloads (--mode=recv)")

    sources: list[str] = []
    for operand in remote:
        match = _REMOTE_RE.match(operand)
        if match:
            user_from_operand = match["user"] or user_from_operand
            host = match["host"]
            sources.append(match["path"])
        else:
            sources.append(operand)

    # Without any user, ascp authenticates as the local user (reference §3.1).
    user = user_from_operand or user or _user_name()
    pair_dests: list[str] | None = None
    pair_list = opts.last("file-pair-list")
    file_list = opts.last("file-list")
    if pair_list is not None:
        if remote:
            raise _UsageError(f"{prog}: sources on the command line cannot be used with pairs")
        lines = _read_list(prog, pair_list, pairs=True)
        sources.extend(lines[0::2])
        pair_dests = lines[1::2]
    elif file_list is not None:
        sources.extend(_read_list(prog, file_list, pairs=False))
    if not sources:
        raise _UsageError("")
    prefix = opts.last("source-prefix")
    if prefix:
        sources = [prefix + s for s in sources]

    token = opts.last("W")
    token_source: str | None = "argv" if token is not None else None
    if token is None and env.get("ASPERA_SCP_TOKEN"):
        token, token_source = env["ASPERA_SCP_TOKEN"], "env"

    level_text = opts.last("k") or "0"
    if level_text not in ("0", "1", "2", "3"):
        raise _UsageError(f"{prog}: invalid resume level '{level_text}'")
    for rate in opts.values.get("l", []) + opts.values.get("m", []):
        if not _RATE_RE.match(rate):
            raise _UsageError(f"{prog}: invalid rate '{rate}'")
    manifest = opts.last("file-manifest")
    return _Request(
        argv=argv,
        key=opts.last("i"),
        ssh_port=_port(prog, opts.last("P"), 22),
        udp_port=_port(prog, opts.last("O"), 33001),
        user=user,
        host=host,
        token=token,
        token_source=token_source,
        sources=sources,
        pair_dests=pair_dests,
        dest=dest,
        create_dirs=opts.has("d") or pair_list is not None or file_list is not None,
        preserve_times=opts.has("p"),
        resume_level=int(level_text),
        quiet=opts.has("q"),
        partial_suffix=opts.last("partial-file-suffix") or "",
        log_dir=opts.last("L"),
        overwrite=opts.last("overwrite") or "diff",
        manifest_dir=(opts.last("file-manifest-path") or dest) if manifest == "text" else None,
    )


# --------------------------------------------------------------------------------------
# Console output


def format_size(n: int) -> str:
    """ascp's size column: 1024-based units, switching unit at 10000."""
    value = n
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 10000:
            return f"{value}{unit}"
        value //= 1024
    return f"{value}PB"


def format_rate(bits_per_second: float) -> str:
    mbps = bits_per_second / 1e6
    if mbps >= 100:
        return f"{mbps:.0f}Mb/s"
    if mbps >= 1:
        return f"{mbps:.1f}Mb/s"
    return f"{bits_per_second / 1e3:.0f}Kb/s"


def format_clock(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    if hours:
        return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{rest // 60:02d}:{rest % 60:02d}"


def progress_line(
    name: str, percent: int, done: int, elapsed: float, remaining: float | None
) -> str:
    """One redraw of ascp's progress display (reference §3.6)."""
    if elapsed < 1:
        rate, clock = "", "--:--"
    else:
        rate = format_rate(done * 8 / elapsed)
        clock = format_clock(elapsed if remaining is None else remaining)
    tail = "    " if remaining is None else " ETA"
    return (
        f"{name:<{_LINE_WIDTH_NAME}}{percent:>4}%{format_size(done):>7}{rate:>9}    {clock}{tail}"
    )


def _summary(head: str, sent: int, elapsed: float, files: int, dirs: int, failed: int) -> str:
    rate = int(sent * 8 / 1024 / max(elapsed, 1e-3))
    counts = f"{files} file" + ("" if files == 1 else "s")
    if dirs:
        counts += f", {dirs} director" + ("y" if dirs == 1 else "ies")
    if failed:
        counts += f"; {failed} file" + (" failed" if failed == 1 else "s failed")
    return (
        f"{head}: {sent // 1024}K bytes transferred in {int(elapsed)} seconds\n"
        f" ({rate}K bits/sec), in {counts}."
    )


class _Console:
    """stdout with ascp's \\r-redrawn progress line; everything is flushed at once."""

    def __init__(self, out: IO[str], err: IO[str], *, quiet: bool) -> None:
        self._out = out
        self._err = err
        self._quiet = quiet
        self._open_line = False

    def _write(self, stream: IO[str], text: str) -> None:
        # The reader may have gone away (killed parent); ascp would just die quietly.
        with contextlib.suppress(BrokenPipeError, ValueError):
            stream.write(text)
            stream.flush()

    def progress(self, line: str, *, final: bool) -> None:
        if self._quiet:
            return
        self._write(self._out, line + ("\n" if final else "\r"))
        self._open_line = not final

    def line(self, text: str) -> None:
        if self._open_line:
            self._write(self._out, "\n")
            self._open_line = False
        self._write(self._out, text + "\n")

    def error(self, text: str) -> None:
        self._write(self._err, text + "\n")


# --------------------------------------------------------------------------------------
# Faults, logs


def _fault_key(index: int, fault: dict[str, Any]) -> str:
    blob = json.dumps(fault, sort_keys=True, separators=(",", ":"))
    return f"{index}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _fault_applies(fault: dict[str, Any], sources: Sequence[str]) -> bool:
    target = fault.get("path")
    if not target:
        return True
    want = aspera_tokens.normalise(str(target))
    return any(_under(want, aspera_tokens.normalise(s)) for s in sources)


def take_fault(
    config_path: Path, faults: list[dict[str, Any]], sources: Sequence[str]
) -> dict[str, Any] | None:
    """Consume and return the first fault that still fires and applies to *sources*."""
    if not faults:
        return None
    state_path = fault_state_path(config_path)
    fd = os.open(state_path, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            text = fh.read()
            try:
                remaining: dict[str, int] = json.loads(text) if text.strip() else {}
            except ValueError:
                remaining = {}
            chosen: dict[str, Any] | None = None
            for index, fault in enumerate(faults):
                key = _fault_key(index, fault)
                left = remaining.get(key, int(fault.get("times", 1)))
                remaining[key] = left
                if chosen is None and left > 0 and _fault_applies(fault, sources):
                    remaining[key] = left - 1
                    chosen = fault
            fh.seek(0)
            fh.truncate()
            json.dump(remaining, fh, indent=1, sort_keys=True)
            fh.flush()
            return chosen
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _append_locked(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write(text)
            fh.flush()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _TransferLog:
    """``-L DIR``: ``aspera-scp-transfer.log`` and its hard link ``.0.log`` (reference §3.5)."""

    def __init__(self, target: str | None, err: IO[str]) -> None:
        self._err = err
        self._path: Path | None = None
        self._tag = f"{os.getpid():x}-00000001"
        if target and target != "-":
            folder = Path(target)
            folder.mkdir(parents=True, exist_ok=True)
            self._path = folder / "aspera-scp-transfer.log"
            self._path.touch()
            twin = folder / "aspera-scp-transfer.0.log"
            if not twin.exists():
                with contextlib.suppress(OSError):
                    os.link(self._path, twin)
        self._to_stderr = target == "-"

    def write(self, level: str, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        line = f"{stamp} [{self._tag}] {level} {message}\n"
        if self._path is not None:
            # A full disk under -L must not turn into a crash: the session reports
            # "Disk write failed" for the file that could not be written, as ascp does.
            with contextlib.suppress(OSError):
                _append_locked(self._path, line)
        elif self._to_stderr:
            with contextlib.suppress(BrokenPipeError, ValueError):
                self._err.write(line)
                self._err.flush()


# --------------------------------------------------------------------------------------
# The session


class _Failed(Exception):
    """The whole session ends with ascp error *message*."""

    def __init__(self, message: str, *, startup: bool = False, code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.startup = startup
        self.code = code


class _FileFailed(Exception):
    """One file of the session failed; the others go on."""


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass
class _Item:
    source: str
    """The remote path as the session names it (normalised, leading slash)."""
    origin: Path
    """The docroot file it is read from (may not exist)."""
    target: Path
    """The final local path."""


def _unsafe_relative(text: str) -> bool:
    parts = PurePosixPath(text).parts
    return text.startswith("/") or ".." in parts or "\0" in text


class _Session:
    def __init__(
        self,
        config: FakeAsperaConfig,
        config_path: Path,
        request: _Request,
        console: _Console,
        err: IO[str],
    ) -> None:
        self.config = config
        self.request = request
        self.console = console
        self.docroot = (config_path.parent / config.docroot).resolve()
        self.tlog = _TransferLog(request.log_dir, err)
        self.uuid = str(uuid.uuid4())
        self.fault: dict[str, Any] | None = None
        self.items: list[_Item] = []
        self.folders: list[Path] = []
        self.total = 0
        self.bytes_sent = 0
        self.resumed: dict[str, int] = {}
        self.completed: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.started = time.monotonic()
        self.started_at = time.time()
        self.first_byte: float | None = None

    # ----- checks before any byte moves

    def connect(self) -> None:
        """TCP, SSH authentication, token authorisation, then the UDP data channel."""
        cfg, req = self.config, self.request
        kind = None if self.fault is None else self.fault.get("kind")
        if self.fault is not None and kind == "hang":
            time.sleep(float(self.fault.get("seconds", 30)))
        if kind == "tcp" or req.ssh_port != cfg.port:
            raise _Failed(TCP_FAILED, startup=True, code=44)
        key_ok = req.key is not None and os.path.isfile(req.key) and os.access(req.key, os.R_OK)
        if kind == "auth" or not key_ok or req.user != cfg.user or req.host != cfg.host:
            raise _Failed(AUTH_FAILED, startup=True, code=19)
        if req.token is None:
            raise _Failed(AUTH_FAILED, startup=True, code=19)
        if kind == "token_denied":
            raise _Failed(TOKEN_DENIED, code=34)
        if kind == "token_mismatch":
            raise _Failed(TOKEN_MISMATCH, code=34)
        try:
            aspera_tokens.check(cfg.secret, req.token, list(req.sources))
        except aspera_tokens.TokenRejected as exc:
            mismatch = "match" in str(exc)
            raise _Failed(TOKEN_MISMATCH if mismatch else TOKEN_DENIED, code=34) from exc
        if kind == "udp" or req.udp_port != cfg.port:
            raise _Failed(UDP_FAILED, code=13)
        if cfg.setup_delay:
            time.sleep(cfg.setup_delay)

    # ----- what goes where

    def _origin(self, source: str) -> Path:
        candidate = (self.docroot / source.lstrip("/")).resolve()
        if not candidate.is_relative_to(self.docroot):
            # Outside the docroot is, to the client, simply not there.
            return self.docroot / ".immsync-fake-ascp-missing"
        return candidate

    def plan(self) -> None:
        req = self.request
        dest = Path(req.dest)
        single = len(req.sources) == 1 and req.pair_dests is None
        single_file = single and self._origin(req.sources[0]).is_file()
        if not dest.is_dir() and not req.create_dirs and not single_file:
            raise _Failed(f"Destination directory does not exist: {dest}", code=41)
        for index, source in enumerate(req.sources):
            remote = aspera_tokens.normalise(source)
            origin = self._origin(source)
            pair = req.pair_dests[index] if req.pair_dests is not None else ""
            if pair:
                if _unsafe_relative(pair):
                    raise _Failed(f"Invalid destination path: {pair}", code=41)
                base = dest / pair
                if base.is_dir() and origin.is_file():
                    base = base / PurePosixPath(remote).name
            elif single_file and not dest.is_dir() and not req.create_dirs:
                # One file into a name that is not a folder: DEST is the file name.
                base = dest
            else:
                base = dest / PurePosixPath(remote).name
            if not origin.is_dir():
                self.items.append(_Item(remote, origin, base))
                continue
            for folder, subdirs, files in os.walk(origin):
                subdirs.sort()
                rel = Path(folder).relative_to(origin)
                self.folders.append(base / rel)
                for name in sorted(files):
                    sub = (rel / name).as_posix()
                    self.items.append(
                        _Item(f"{remote.rstrip('/')}/{sub}", Path(folder) / name, base / sub)
                    )
        self.total = sum(i.origin.stat().st_size for i in self.items if i.origin.is_file())

    # ----- moving bytes

    def _fault_for(self, item: _Item, *kinds: str) -> dict[str, Any] | None:
        fault = self.fault
        if fault is None or fault.get("kind") not in kinds:
            return None
        target = fault.get("path")
        if target and not _under(item.source, aspera_tokens.normalise(str(target))):
            return None
        return fault

    def _session_limit(self) -> tuple[int, str] | None:
        """Bytes after which the whole session breaks, and with which message."""
        fault = self.fault
        if fault is not None and fault.get("kind") == "stall":
            return int(fault.get("after_bytes", self.total // 2)), STALLED
        if fault is not None and fault.get("kind") == "disk":
            return int(fault.get("after_bytes", 0)), DISK_FAILED
        return None

    def _throttle(self) -> None:
        rate = self.config.rate_limit
        if not rate or self.first_byte is None:
            return
        ahead = self.bytes_sent / rate - (time.monotonic() - self.first_byte)
        if ahead > 0:
            time.sleep(ahead)

    def _skip_existing(self, item: _Item, size: int) -> bool:
        req = self.request
        if not item.target.is_file():
            return False
        if req.overwrite == "never":
            return True
        if req.resume_level == 0 or req.overwrite == "always":
            return False
        here = item.target.stat()
        if here.st_size != size:
            return False
        if req.resume_level == 1:
            return int(here.st_mtime) == int(item.origin.stat().st_mtime)
        return item.target.read_bytes() == item.origin.read_bytes()

    def _resume_offset(self, item: _Item, partial: Path, aspx: Path, size: int) -> int:
        if self.request.resume_level < 1 or not (aspx.is_file() and partial.is_file()):
            return 0
        try:
            meta = json.loads(aspx.read_text(encoding="utf-8"))
            have = partial.stat().st_size
        except (OSError, ValueError):
            return 0
        if meta.get("source") == item.source and meta.get("size") == size and have <= size:
            return have
        return 0

    def transfer(self, item: _Item) -> None:
        req = self.request
        name = item.target.name
        if self._fault_for(item, "no_such_file") or not item.origin.is_file():
            raise _FileFailed(NO_SUCH_FILE)
        size = item.origin.stat().st_size
        started = time.monotonic()
        if self._skip_existing(item, size):
            self.console.progress(progress_line(name, 100, size, 0.0, None), final=True)
            return
        item.target.parent.mkdir(parents=True, exist_ok=True)
        partial = item.target.with_name(name + req.partial_suffix)
        aspx = item.target.with_name(name + ".aspx")
        offset = self._resume_offset(item, partial, aspx, size)
        if offset:
            self.resumed[item.source] = offset
        if req.resume_level >= 1:
            checkpoint = {"source": item.source, "size": size, "mtime": item.origin.stat().st_mtime}
            aspx.write_text(json.dumps(checkpoint), encoding="utf-8")
        limit = self._session_limit()
        short = self._fault_for(item, "truncate")
        broken = self._fault_for(item, "partial")
        stop_at = size // 2 if (short or broken) else size
        done = offset
        last_draw = 0.0
        with item.origin.open("rb") as src, partial.open("r+b" if offset else "wb") as out:
            src.seek(offset)
            out.seek(offset)
            out.truncate(offset)
            first = progress_line(name, _pct(done, size), done, 0.0, 0.0)
            self.console.progress(first, final=False)
            while done < stop_at:
                want = min(_CHUNK, stop_at - done)
                if self.config.rate_limit:
                    want = min(want, max(1, int(self.config.rate_limit / 20)))
                if limit is not None:
                    room = limit[0] - self.bytes_sent
                    if room <= 0:
                        raise _Failed(limit[1], code=40)
                    want = min(want, room)
                block = src.read(want)
                if not block:
                    break
                out.write(block)
                # Flushed at once, so a process killed mid-file leaves every byte it counted.
                out.flush()
                if self.first_byte is None:
                    self.first_byte = time.monotonic()
                done += len(block)
                self.bytes_sent += len(block)
                self._throttle()
                now = time.monotonic()
                if now - last_draw >= _PROGRESS_EVERY and done < size:
                    last_draw = now
                    elapsed = now - started
                    moved = done - offset
                    remaining = (size - done) * elapsed / moved if moved else None
                    line = progress_line(name, _pct(done, size), done, elapsed, remaining)
                    self.console.progress(line, final=False)
        if broken:
            raise _FileFailed(str(broken.get("error") or STALLED))
        if partial != item.target:
            os.replace(partial, item.target)
        with contextlib.suppress(FileNotFoundError):
            aspx.unlink()
        if req.preserve_times:
            st = item.origin.stat()
            os.utime(item.target, ns=(st.st_atime_ns, st.st_mtime_ns))
        if self._fault_for(item, "corrupt"):
            _flip_byte(item.target)
        elapsed = time.monotonic() - started
        self.console.progress(progress_line(name, 100, size, elapsed, None), final=True)
        stop = f'FASP Transfer Stop uuid={self.uuid} file="{item.target}" status=success'
        self.tlog.write("LOG", stop)

    def run(self) -> None:
        self.tlog.write("LOG", f"FASP Session Start uuid={self.uuid} op=recv status=started")
        self.connect()
        self.plan()
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
        for item in self.items:
            try:
                self.transfer(item)
            except _FileFailed as exc:
                self.failed.append((item.source, str(exc)))
                self.tlog.write("ERR", f'file "{item.target}": {exc}')
            except OSError as exc:
                self.tlog.write("ERR", f'file "{item.target}": {exc}')
                raise _Failed(DISK_FAILED, code=25) from exc
            else:
                self.completed.append(item.source)
        if self.failed:
            raise _Failed(self.failed[0][1], code=27)
        limit = self._session_limit()
        if limit is not None:
            # The stall came after the last byte: everything is here, yet the session failed.
            raise _Failed(limit[1], code=40)

    def report_success(self) -> None:
        elapsed = time.monotonic() - self.started
        files, dirs = len(self.completed), len(self.folders)
        self.console.line(_summary("Completed", self.bytes_sent, elapsed, files, dirs, 0))
        self.tlog.write("LOG", f"FASP Session Stop uuid={self.uuid} op=recv status=success")

    def report_failure(self, failure: _Failed, prog: str) -> None:
        if failure.startup:
            self.console.error(f"{prog}: {failure.message}, exiting.")
        if self.completed:
            elapsed = time.monotonic() - self.started
            failed = max(len(self.items) - len(self.completed), 1)
            self.console.line(
                _summary(
                    "Partial Completion",
                    self.bytes_sent,
                    elapsed,
                    len(self.completed),
                    len(self.folders),
                    failed,
                )
            )
        else:
            self.console.line("")
        self.console.line(f"Session Stop  (Error: {failure.message})")
        self.tlog.write(
            "LOG",
            f"FASP Session Stop uuid={self.uuid} op=recv status=failed"
            f' errcode={failure.code} errstr="{failure.message}"',
        )

    def write_manifest(self) -> None:
        if self.request.manifest_dir is None:
            return
        folder = Path(self.request.manifest_dir)
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"Transfer success: {source}" for source in self.completed]
        lines += [f"Transfer failed: {source}" for source, _ in self.failed]
        lines.append(f"--Total file transfer passed: {len(self.completed)}")
        lines.append(f"--Total file transfer failed: {len(self.items) - len(self.completed)}")
        path = folder / f"aspera-transfer-{self.uuid}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def record(self, status: str, error: str | None) -> dict[str, Any]:
        req = self.request
        return {
            "pid": os.getpid(),
            "argv": req.argv,
            "token_source": req.token_source,
            "sources": req.sources,
            "destination": req.dest,
            "status": status,
            "error": error,
            "bytes_sent": self.bytes_sent,
            "resumed": self.resumed,
            "fault": self.fault,
            "completed": self.completed,
            "failed": [source for source, _ in self.failed],
            "started": self.started_at,
            "ended": time.time(),
        }


def _pct(done: int, size: int) -> int:
    return 100 if size == 0 else min(100, done * 100 // size)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    if not data:
        path.write_bytes(b"\0")
        return
    data[len(data) // 2] ^= 0xFF
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM/SIGINT into an exception so partials stay and the log is written."""

    def handler(signum: int, frame: FrameType | None) -> None:
        # Stop once: a second signal (Ctrl-C reaches the whole process group, then
        # immsync's own SIGTERM follows) must not cut the cleanup and its log line short.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise _Interrupted(signum)

    previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            break
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def main(
    argv: list[str] | None = None,
    *,
    config_path: Path | None = None,
    prog: str | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Run one ``ascp`` invocation; return its exit status (0 success, 1 any failure).

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).
        config_path: the FakeAsperaConfig file (default ``$IMMSYNC_FAKE_ASCP_CONFIG``).
        prog: what messages are prefixed with; ascp uses its argv[0] as invoked.
        stdout, stderr: where to write (default the process's own).
    """
    if argv is None:
        argv = sys.argv[1:]
        prog = prog or sys.argv[0]
    prog = prog or "ascp"
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    env = dict(os.environ)

    try:
        opts = parse_args(prog, argv)
        if opts.has("h", "help"):
            out.write(HELP_TEXT)
            out.flush()
            return 0
        if opts.has("A", "version"):
            out.write(VERSION_TEXT)
            out.flush()
            return 0
        request = _build_request(prog, [prog, *argv], opts, env)
    except _UsageError as exc:
        if str(exc):
            err.write(f"{exc}\n")
        err.write(SHORT_USAGE)
        err.flush()
        return 1

    console = _Console(out, err, quiet=request.quiet)
    if config_path is None and env.get(CONFIG_ENV):
        config_path = Path(env[CONFIG_ENV])
    if config_path is None:
        console.error(f"{prog}: no stand-in configuration (set {CONFIG_ENV}), exiting.")
        return 1
    config_path = config_path.absolute()
    config = FakeAsperaConfig.load(config_path)
    session = _Session(config, config_path, request, console, err)
    status, error = "ok", None
    with _signals_raise():
        try:
            try:
                session.fault = take_fault(config_path, config.faults, request.sources)
                session.run()
            except _Interrupted as exc:
                message = f"Session interrupted by signal {exc.signum}"
                raise _Failed(message, startup=True) from exc
        except _Failed as exc:
            status, error = "error", exc.message
            with contextlib.suppress(_Interrupted):
                session.report_failure(exc, prog)
        else:
            with contextlib.suppress(_Interrupted):
                session.report_success()
        finally:
            with contextlib.suppress(_Interrupted):
                session.write_manifest()
                if config.session_log:
                    line = json.dumps(session.record(status, error), sort_keys=True)
                    _append_locked(config_path.parent / config.session_log, line + "\n")
    return 0 if status == "ok" else 1


def _user_name() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


if __name__ == "__main__":
    sys.exit(main())
