"""Hardening against hostile names, files, manifests and states, end to end.

Each test drives the command line (in-process against the emulator, or as a child
process where the failure it guards against would kill a process) and holds one
guarantee listed in README's "Security and integrity" section.
"""

from __future__ import annotations

import json
import os
import pty
import select
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import xxhash
from conftest import PASSWORD, World
from hypothesis import given, settings
from hypothesis import strategies as st

from immsync.errors import ExitCode
from immsync.model import StateEntry
from immsync.paths import _suspect, unsafe_reason
from immsync.state import StateStore, state_path
from immsync.testing.sampledata import write_file

# -- helpers ---------------------------------------------------------------------------


def run_cli_with_hook(
    args: list[str], hook: str, *, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``python -m immsync ARGS`` in a child process, with an audit hook installed first.

    *hook* is Python source defining ``target`` (a path) and ``hook(event, args)``,
    which may call ``is_target(name)``; it may define ``report()`` too, whose return
    value is printed as JSON on the last line of stderr at exit.
    """
    code = (
        "import atexit, json, os, sys\n"
        "def is_target(name):\n"
        "    return isinstance(name, (str, os.PathLike)) and os.fspath(name) == target\n"
        f"{hook}\n"
        "sys.addaudithook(hook)\n"
        "if 'report' in globals():\n"
        "    atexit.register(lambda: print(json.dumps(report()), file=sys.stderr))\n"
        "from immsync.cli import main\n"
        f"sys.argv = ['immsync', *{args!r}]\n"
        "main()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def recorded_destination(root: Path, files: dict[str, bytes]) -> Path:
    """A manifest whose destination holds *files*, each recorded as immsync records it."""
    dest = root / "data"
    entries = []
    for rel, data in files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        st = target.stat()
        checksum = f"xxh3_128:{xxhash.xxh3_128(data).hexdigest()}"
        entries.append(
            StateEntry(rel, st.st_size, st.st_mtime_ns, checksum, st.st_size, "2020-01-01")
        )
    with StateStore.open(state_path(dest), create=True) as store:
        store.record(entries)
    manifest = root / "manifest.yaml"
    manifest.write_text("version: 1\ndestination: data\nstudies:\n  - accession: SDY1\n")
    return manifest


BIG = "SDY1/ResultFiles/Big_result/big.bin"


def big_content() -> bytes:
    # Well over any size at which a hasher might switch to a memory map.
    return bytes(range(256)) * (32 * 1024 * 1024 // 256)


# -- 6. verify reads, never maps ---------------------------------------------------------


def test_verify_never_memory_maps_a_recorded_file(tmp_path):
    """`immsync verify` reads files: a file truncated while mapped would kill it by SIGBUS."""
    manifest = recorded_destination(tmp_path, {BIG: big_content()})
    hook = (
        f"target = {str(tmp_path / 'data' / BIG)!r}\n"
        "seen = {'mmap': 0, 'opened': 0}\n"
        "def hook(event, args):\n"
        "    if event == 'mmap.__new__':\n"
        "        seen['mmap'] += 1\n"
        "    elif event == 'open' and args and is_target(args[0]):\n"
        "        seen['opened'] += 1\n"
        "def report():\n"
        "    return seen\n"
    )
    done = run_cli_with_hook(["verify", str(manifest)], hook, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stderr.strip().splitlines()[-1])
    assert seen["opened"] == 1  # the hook does see verify hash the file
    assert seen["mmap"] == 0


def test_verify_of_a_file_truncated_while_it_is_hashed_names_it(tmp_path):
    """A recorded file cut short as verify opens it: exit 6 naming it, no crash."""
    manifest = recorded_destination(tmp_path, {BIG: big_content(), "SDY1/small.txt": b"ok\n"})
    # Truncated by another process the moment verify has opened it, before any byte
    # is hashed: what a concurrent writer does at the worst time.
    hook = (
        f"target = {str(tmp_path / 'data' / BIG)!r}\n"
        "import subprocess\n"
        "cut = []\n"
        "def hook(event, args):\n"
        "    if event == 'open' and args and is_target(args[0]) and not cut:\n"
        "        cut.append(1)\n"
        "        subprocess.run(['truncate', '-s', '4096', target], check=True)\n"
    )
    done = run_cli_with_hook(["verify", str(manifest)], hook, cwd=tmp_path)
    assert done.returncode == 6, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    assert "1 recorded file failed verification" in done.stderr
    assert f"modified  {BIG}  (checksum xxh3_128:" in done.stderr
    assert os.path.getsize(tmp_path / "data" / BIG) == 4096


def test_verify_survives_a_file_truncated_in_the_middle_of_hashing(tmp_path):
    """The real race: truncated while its bytes are being hashed, verify is never killed.

    A watcher thread in the verify process cuts the file to nothing as soon as verify
    has mapped it, or has read some of it. Mapped, the next page touched raised SIGBUS
    and the process died without a word; read, the file hashes short and is reported.
    """
    manifest = recorded_destination(tmp_path, {"SDY1/small.txt": b"ok\n"})
    big = tmp_path / "data" / BIG
    big.parent.mkdir(parents=True, exist_ok=True)
    with big.open("wb") as fh:
        fh.truncate(1 << 30)  # sparse: 1 GiB to hash, nothing to write
    st = big.stat()
    with StateStore.open(state_path(tmp_path / "data")) as store:
        zeros = xxhash.xxh3_128()
        block = bytes(1 << 20)
        for _ in range(1024):
            zeros.update(block)
        store.record(
            [StateEntry(BIG, st.st_size, st.st_mtime_ns, f"xxh3_128:{zeros.hexdigest()}", 1, "")]
        )
    hook = (
        f"target = {str(big)!r}\n"
        "import threading\n"
        "def reading_or_mapped():\n"
        "    with open(f'/proc/{os.getpid()}/maps') as maps:\n"
        "        if target in maps.read():\n"
        "            return True\n"
        "    for fd in os.listdir(f'/proc/{os.getpid()}/fd'):\n"
        "        try:\n"
        "            if os.readlink(f'/proc/{os.getpid()}/fd/{fd}') != target:\n"
        "                continue\n"
        "            with open(f'/proc/{os.getpid()}/fdinfo/{fd}') as info:\n"
        "                if int(info.readline().split()[1]) > 0:\n"
        "                    return True\n"
        "        except OSError:\n"
        "            pass\n"
        "    return False\n"
        "def cut():\n"
        "    while not reading_or_mapped():\n"
        "        pass\n"
        "    os.truncate(target, 0)\n"
        "started = []\n"
        "def hook(event, args):\n"
        "    if event == 'open' and args and is_target(args[0]) and not started:\n"
        "        started.append(1)\n"
        "        threading.Thread(target=cut, daemon=True).start()\n"
    )
    done = run_cli_with_hook(["verify", str(manifest)], hook, cwd=tmp_path)
    assert done.returncode >= 0, f"killed by signal {-done.returncode}: {done.stderr}"
    assert "Traceback" not in done.stderr
    if big.stat().st_size == 0:  # cut while verify still read it (the usual case)
        assert done.returncode == 6, done.stderr
        assert f"modified  {BIG}" in done.stderr
    else:
        assert done.returncode == 0, done.stderr


# -- 7. names from the server are shown, never obeyed -----------------------------------

STUDY_FILES = "  - accession: SDY1\n    paths:\n      - StudyFiles\n"
# A name that retitles the terminal (OSC 0), then clears it (CSI 2J).
ESCAPES = "SDY1/StudyFiles/evil\x1b]0;pwned\x07\x1b[2J.txt"
ESCAPES_SHOWN = "SDY1/StudyFiles/evil\\x1b]0;pwned\\x07\\x1b[2J.txt"
# Rich markup: a closing tag with nothing open (a folder "bad[" holding "]name").
MARKUP = "SDY1/StudyFiles/bad[/]name"


def hostile_names(world: World, *names: str) -> None:
    for name in names:
        write_file(world.remote, name, f"content of {name!r}\n")
    world.write_manifest(STUDY_FILES)


def assert_no_raw_control(text: str) -> None:
    """No ESC or BEL from a name reached this output (JSON writes them as \\u001b)."""
    assert "\x1b" not in text and "\x07" not in text, text


def run_on_a_terminal(world: World, *args: str) -> tuple[int, str]:
    """Run ``immsync ARGS`` as a child whose stdout and stderr are a terminal (a pty)."""
    primary, secondary = pty.openpty()
    env = {**os.environ, **world.env, "COLUMNS": "400", "TERM": "xterm"}
    child = subprocess.Popen(
        [sys.executable, "-m", "immsync", *args],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        env=env,
        cwd=world.root,
    )
    os.close(secondary)
    output = bytearray()
    try:
        while True:
            ready, _, _ = select.select([primary], [], [], 60)
            if not ready:
                raise AssertionError(f"no output for 60 s: {bytes(output)!r}")
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(primary)
        code = child.wait(timeout=60)
    return code, output.decode("utf-8", "replace")


def test_markup_and_escapes_in_names_on_a_terminal(world: World):
    """On a terminal, a failed file named with Rich markup is reported, not a crash (exit 5).

    The progress display and the failure report print the names as text: the markup
    shows literally, and a name's escape sequences are shown, never sent to the terminal.
    """
    hostile_names(world, MARKUP, ESCAPES)
    world.configure_aspera(
        faults=[
            {"kind": "partial", "path": "/" + MARKUP, "times": 99},
            {"kind": "partial", "path": "/" + ESCAPES, "times": 99},
        ]
    )
    # One file a session: each session takes the first fault aimed at its files.
    options = ("--session-stagger", "0", "--retries", "0", "--batch-files", "1")
    code, output = run_on_a_terminal(world, "apply", str(world.manifest_path), *options)
    assert code == ExitCode.TRANSFER, output
    assert "MarkupError" not in output and "Traceback" not in output
    assert f"{MARKUP}: " in output  # in the failure report, markup and all
    assert ESCAPES_SHOWN in output
    assert "\x1b]0;pwned" not in output and "\x1b[2J" not in output


def test_escapes_in_names_are_shown_in_every_human_output(world: World):
    """plan, apply (progress, failures, logs), status and verify show \\x1b; JSON keeps it."""
    hostile_names(world, ESCAPES, MARKUP)
    manifest = str(world.manifest_path)

    plan = world.run("-v", "plan", manifest)
    assert plan.exit_code == 0, plan.output
    assert f"  {ESCAPES_SHOWN}  (not present locally)" in plan.stdout
    assert f"  {MARKUP}  (not present locally)" in plan.stdout
    assert_no_raw_control(plan.output)
    plan_json = world.run("plan", manifest, "--json")
    assert {a["path"] for a in plan_json.json()["actions"]} >= {ESCAPES, MARKUP}

    world.configure_aspera(faults=[{"kind": "partial", "path": "/" + ESCAPES, "times": 99}])
    failed = world.run(
        "apply", manifest, "--session-stagger", "0", "--retries", "0", "--json"
    )
    assert failed.exit_code == ExitCode.TRANSFER, failed.output
    assert f"failed: {ESCAPES_SHOWN}: " in failed.stderr  # the progress lines
    assert f"  {ESCAPES_SHOWN}: " in failed.stderr  # the closing error
    assert_no_raw_control(failed.output)
    events = [json.loads(line) for line in failed.stdout.splitlines()]
    assert [e["path"] for e in events if e["type"] == "file_failed"] == [ESCAPES]

    world.configure_aspera(faults=[])
    fetched = world.run("-vv", "apply", manifest, "--transport", "https")
    assert fetched.exit_code == 0, fetched.output
    assert f"immsync: DEBUG: {ESCAPES_SHOWN}: GET http://" in fetched.stderr  # a log line
    assert_no_raw_control(fetched.output)
    landed = world.dest / ESCAPES
    assert landed.read_text() == f"content of {ESCAPES!r}\n"  # the true name on disk
    landed.write_text("changed locally\n")

    status = world.run("status", manifest)
    assert f"modified  {ESCAPES_SHOWN}" in status.stdout
    assert_no_raw_control(status.output)
    status_json = world.run("status", manifest, "--json")
    assert ESCAPES in {f["path"] for f in status_json.json()["files"]}
    verify = world.run("verify", manifest)
    assert verify.exit_code == ExitCode.INTEGRITY
    assert f"modified  {ESCAPES_SHOWN}" in verify.stderr
    assert_no_raw_control(verify.output)


# -- 9. a netrc file must be the user's own and private ----------------------------------


def netrc_world(world: World, tmp_path: Path, *, named: bool) -> Path:
    """Credentials only in a netrc file: named by NETRC, or the default ~/.netrc."""
    home = tmp_path / "home"
    home.mkdir()
    netrc = tmp_path / "netrc" if named else home / ".netrc"
    netrc.write_text(f"machine 127.0.0.1\n  login alice\n  password {PASSWORD}\n")
    netrc.chmod(0o600)
    world.env.update(IMMPORT_USERNAME="", IMMPORT_PASSWORD="", HOME=str(home))
    if named:
        world.env["NETRC"] = str(netrc)
    world.write_manifest(STUDY_FILES)
    return netrc


@pytest.mark.parametrize("named", [True, False], ids=["NETRC", "default"])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620], ids=lambda mode: f"{mode:o}")
def test_a_netrc_others_may_read_or_change_is_refused(world: World, tmp_path, named, mode):
    """A netrc with any group or other permission is refused (exit 2), as ssh refuses keys."""
    netrc = netrc_world(world, tmp_path, named=named)
    assert world.run("plan", str(world.manifest_path)).exit_code == 0  # 600: used
    netrc.chmod(mode)
    result = world.run("plan", str(world.manifest_path))
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stderr == (
        f"error: refusing the netrc file {netrc}: its permissions ({mode:o}) let others "
        "read or change it\n"
        f"hint: a netrc file holds passwords: make it yours and private (chmod 600 {netrc}), "
        "or set IMMPORT_USERNAME and IMMPORT_PASSWORD\n"
    )
    assert world.emulator.count("/auth/token") == 1  # only the first run signed in


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize("named", [True, False], ids=["NETRC", "default"])
def test_a_netrc_owned_by_someone_else_is_refused(world: World, tmp_path, named):
    """A private netrc that belongs to another user is refused too (exit 2), naming the owner."""
    netrc = netrc_world(world, tmp_path, named=named)
    os.chown(netrc, 4242, 4242)
    result = world.run("plan", str(world.manifest_path))
    assert result.exit_code == ExitCode.USAGE, result.output
    assert (
        f"error: refusing the netrc file {netrc}: it belongs to uid 4242, not to you (uid 0)\n"
        in result.stderr
    )
    assert "chmod 600" in result.stderr
    assert world.emulator.count("/auth/token") == 0


def a_file_of_roots() -> Path:
    """A regular file of root's that others may not read, such as Debian's /etc/.pwd.lock,
    so that only its owner is wrong; else one that all may read, such as /etc/passwd."""
    candidates = ("/etc/.pwd.lock", "/etc/security/opasswd", "/etc/passwd", "/etc/hostname")
    found = [
        path
        for path in map(Path, candidates)
        if path.is_file() and not path.is_symlink() and path.stat().st_uid == 0
    ]
    if not found:
        pytest.skip("no regular file of root's found to stand for another user's netrc")
    return min(found, key=lambda path: path.stat().st_mode & 0o077 != 0)


@pytest.mark.skipif(os.getuid() == 0, reason="as root, the variant giving the file away runs")
@pytest.mark.parametrize("named", [True, False], ids=["NETRC", "default"])
def test_a_netrc_of_roots_is_refused_by_another_user(world: World, tmp_path, named):
    """Run by a user who is not root, a netrc that root owns is refused (exit 2) before it
    is read: named by NETRC, or as ~/.netrc (a link to it: a user cannot make a file of
    root's, and the check is of the file the link leads to, as reading it would be)."""
    netrc_world(world, tmp_path, named=named)
    roots = a_file_of_roots()
    netrc = tmp_path / "home" / ".netrc"
    if named:
        world.env["NETRC"] = str(roots)
        netrc = roots
    else:
        netrc.unlink()
        netrc.symlink_to(roots)
    result = world.run("plan", str(world.manifest_path))
    assert result.exit_code == ExitCode.USAGE, result.output
    assert (
        f"error: refusing the netrc file {netrc}: it belongs to uid 0, not to you "
        f"(uid {os.getuid()})\n" in result.stderr
    )
    assert "chmod 600" in result.stderr
    assert world.emulator.count("/auth/token") == 0


# -- 11. a manifest has a size bound -----------------------------------------------------

MANIFEST_HEAD = "version: 1\ndestination: data\nstudies:\n  - accession: SDY1\n"


def padded_manifest(path: Path, size: int, *, filler: str = "#") -> Path:
    """A valid manifest followed by one comment line, *size* bytes in all."""
    body = MANIFEST_HEAD + filler * (size - len(MANIFEST_HEAD) - 1) + "\n"
    path.write_text(body)
    assert path.stat().st_size == size
    return path


def test_a_manifest_over_10_mib_is_refused_before_parsing(world: World):
    """10 MiB and a byte (comments, else valid): exit 2 naming the limit, for every command."""
    manifest = padded_manifest(world.manifest_path, 10 * 2**20 + 1)
    expected = (
        f"error: manifest {manifest} is larger than 10 MiB, the most immsync reads; it was "
        "not parsed\n"
        "hint: a manifest names studies and folders: name a folder instead of each file below "
        "it, or select files with include/exclude patterns\n"
    )
    for command in ("validate", "plan", "apply", "status", "verify"):
        result = world.run(command, str(manifest))
        assert result.exit_code == ExitCode.USAGE, (command, result.output)
        assert result.stderr == expected, command
    assert world.emulator.count("/") == 0


def test_a_manifest_of_exactly_10_mib_is_read(world: World):
    """The bound is 10 MiB exactly: a 10 MiB file is parsed (here, to a YAML error)."""
    # A NUL right after the header: parsing stops there, which keeps the test quick.
    manifest = padded_manifest(world.manifest_path, 10 * 2**20, filler="\0")
    result = world.run("validate", str(manifest))
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "unacceptable character #x0000" in result.stderr
    assert "larger than 10 MiB" not in result.stderr


# -- 12. paths read from the state are checked like paths from the server ---------------


def record_outside_file(world: World, recorded_path: str | bytes) -> Path:
    """Sync the study, then add a state row, as a hand edit would, for a file outside it.

    The row carries the outside file's true size, time and checksum, so that a reader
    trusting it would find the file "ok".
    """
    world.write_manifest(STUDY_FILES)
    assert world.apply().exit_code == 0
    outside = world.root / "outside.txt"
    outside.write_text("not immsync's\n")
    st = outside.stat()
    checksum = f"xxh3_128:{xxhash.xxh3_128(outside.read_bytes()).hexdigest()}"
    db = sqlite3.connect(state_path(world.dest))
    try:
        db.execute(
            "INSERT INTO files VALUES (?,?,?,?,?,?,?)",
            (recorded_path, st.st_size, st.st_mtime_ns, checksum, st.st_size, "2020", None),
        )
        db.commit()
    finally:
        db.close()
    return outside


def assert_refused_as_corrupt(world: World, result, shown: str, reason: str) -> None:
    assert result.exit_code == ExitCode.LOCAL, result.output
    state = state_path(world.dest)
    assert (
        f"error: the state file {state} is corrupt: it records the path {shown}, which is "
        f"unsafe: {reason}\n"
    ) in result.stderr
    assert f"hint: run `immsync apply --rebuild-state {world.manifest_path}`" in result.stderr


def test_a_state_row_leading_outside_is_corrupt_state_for_every_reader(world: World):
    """verify, status, plan and apply --prune refuse a '..' row (exit 7, hint), touching nothing."""
    outside = record_outside_file(world, "../outside.txt")
    manifest = str(world.manifest_path)
    before = sorted(world.local_files())
    for args in (
        ("verify", manifest),
        ("status", manifest),
        ("plan", manifest),
        ("apply", manifest, "--prune", "--max-delete", "100%"),
    ):
        result = world.run(*args)
        assert_refused_as_corrupt(
            world, result, "'../outside.txt'", "it contains a '..' segment"
        )
        assert outside.read_text() == "not immsync's\n", args
        assert sorted(world.local_files()) == before, args

    rebuilt = world.apply("--rebuild-state", "--prune")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert outside.read_text() == "not immsync's\n"
    with StateStore.open(state_path(world.dest), create=False) as store:
        assert "../outside.txt" not in store.entries()
    assert list(world.dest.glob(".immsync/state.sqlite.broken-*"))
    assert world.run("verify", manifest).exit_code == 0


@pytest.mark.parametrize(
    ("recorded", "shown", "reason"),
    [
        ("SDY1/../../outside.txt", "'SDY1/../../outside.txt'", "it contains a '..' segment"),
        ("ABSOLUTE", None, "it is absolute"),
        ("SDY1//outside.txt", "'SDY1//outside.txt'", "it contains an empty or '.' segment"),
        ("SDY1/a\nb", "'SDY1/a\\nb'", "it contains a line break"),
        (b"../outside.txt", "b'../outside.txt'", "it is not text"),
    ],
    ids=["dotdot-inside", "absolute", "empty-segment", "line-break", "blob"],
)
def test_every_unsafe_state_row_is_refused_by_verify(world: World, recorded, shown, reason):
    """Each form of unsafe path, and a path that is not text at all, is a corrupt state."""
    if recorded == "ABSOLUTE":
        recorded = str(world.root / "outside.txt")
        shown = repr(recorded)
    outside = record_outside_file(world, recorded)
    result = world.run("verify", str(world.manifest_path))
    assert_refused_as_corrupt(world, result, shown, reason)
    assert outside.exists()


SEGMENTS = st.sampled_from(
    ["a", "b.c", "", ".", "..", ".d", "e.", "...", "f\\g", "h\ni", "\0", "\r"]
)


@settings(max_examples=500)
@given(st.lists(SEGMENTS, min_size=1, max_size=5).map("/".join))
def test_the_quick_path_check_misses_no_unsafe_path(path):
    """The substring pre-check flags every path the full rules would refuse."""
    parts = path.split("/")
    unsafe = (
        not path
        or any(c in path for c in "\0\n\r\\")
        or path.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
    )
    assert _suspect(path) or not unsafe
    assert (unsafe_reason(path) is not None) == unsafe


# -- 3. long names: refused past the limits, staged so they cannot overflow --------------

# Legal names that no staging suffix may push past 255 bytes: 250 bytes, most of them
# two-byte characters (the limit counts bytes, not characters), and 255 ASCII bytes.
LONG_250 = "SDY1/StudyFiles/" + "\u00e9" * 120 + "abcdef.txt"
LONG_255 = "SDY1/StudyFiles/" + "n" * 251 + ".txt"
# Names no file system takes: listed by a server, never written.
NAME_300 = "SDY1/StudyFiles/" + "x" * 296 + ".txt"
PATH_4100 = "SDY1/StudyFiles/" + "/".join(["d" * 200] * 20) + "/" + "f" * 80 + ".txt"


def manifest_row(path: str) -> dict[str, object]:
    """A study manifest row, as the emulator's legacy world writes one, for *path*."""
    return {
        "path": path,
        "fileName": path.rsplit("/", 1)[-1],
        "studyAccession": path.split("/", 1)[0],
        "filesizeBytes": 10,
        "fileType": "study_file",
        "generatedMD5": None,
        "reportedMD5": None,
        "dateFileUpdated": "2020-01-01T00:00:00.000+00:00",
        "fileUUID": "00000000-0000-4000-8000-000000000300",
        "drsObjectCreated": True,
    }


@pytest.mark.parametrize("transport", ["ascp", "https"])
def test_long_names_land_and_too_long_ones_are_refused(world: World, transport):
    """Names of 250 and 255 bytes land; a 300-byte name and a 4,100-byte path are refused by
    name while everything else syncs (exit 4); nothing crashes, staging is left clean."""
    assert len(LONG_250.rsplit("/", 1)[1].encode()) == 250
    assert len(LONG_255.rsplit("/", 1)[1].encode()) == 255
    assert len(PATH_4100.encode()) > 4096
    for path in (LONG_250, LONG_255):
        write_file(world.remote, path, f"content of {path[-20:]}\n")
    world.emulator.manifest_extra_rows["SDY1"] = [manifest_row(NAME_300), manifest_row(PATH_4100)]
    world.write_manifest(STUDY_FILES)
    options = ("--transport", transport)

    plan = world.run("plan", str(world.manifest_path), "--json")
    assert plan.exit_code == ExitCode.REMOTE, plan.output
    document = plan.json()
    planned = {a["path"] for a in document["actions"]}
    assert {LONG_250, LONG_255} <= planned and not {NAME_300, PATH_4100} & planned
    assert (
        f"refused remote entry {NAME_300!r}: a name in it is 300 bytes long, more than the "
        "255 a file system allows" in document["problems"]
    )
    assert (
        f"refused remote entry {PATH_4100!r}: it is {len(PATH_4100)} bytes long, more than "
        "the 4096 a path may have" in document["problems"]
    )

    result = world.apply(*options, "--json")
    assert result.exit_code == ExitCode.REMOTE, result.output
    assert "Traceback" not in result.output
    assert f"refused remote entry {NAME_300!r}" in result.stderr
    summary = [json.loads(line) for line in result.stdout.splitlines()][-1]
    assert summary["type"] == "summary" and summary["result"]["failures"] == []
    expected = sorted(
        p.relative_to(world.remote).as_posix()
        for p in (world.remote / "SDY1" / "StudyFiles").rglob("*")
        if p.is_file()
    )
    assert world.local_files() == expected
    for path in (LONG_250, LONG_255):
        assert (world.dest / path).read_bytes() == (world.remote / path).read_bytes()
    assert [p for p in (world.dest / ".immsync" / "staging").rglob("*") if p.is_file()] == []

    if transport == "ascp":
        assert world.sessions(), "the files travelled through the stand-in ascp"
    else:
        assert world.sessions() == [] and world.emulator.bytes_served() > 0

    again = world.apply(*options)
    assert again.exit_code == ExitCode.REMOTE, again.output
    assert "0 downloaded" in again.stderr or "Up to date" in again.stdout + again.stderr
    assert world.run("verify", str(world.manifest_path)).exit_code == 0


@pytest.mark.parametrize("transport", ["ascp", "https"])
def test_an_unexpected_os_error_fails_that_file_only(world: World, transport):
    """A symlink loop where a listed file's folder belongs (ELOOP): that file fails, the
    rest syncs and is recorded (exit 5), with no traceback, in plan as in apply."""
    looped = "SDY1/StudyFiles/sub/deeper.txt"
    write_file(world.remote, looped, "deeper\n")
    world.write_manifest(STUDY_FILES)
    loop = world.dest / "SDY1" / "StudyFiles" / "sub"
    loop.parent.mkdir(parents=True)
    loop.symlink_to("sub")  # itself: every lookup through it fails with ELOOP

    plan = world.run("plan", str(world.manifest_path))
    assert plan.exit_code == 0, plan.output
    assert f"  {looped}  (not present locally)" in plan.stdout

    result = world.apply("--transport", transport)
    assert result.exit_code == ExitCode.TRANSFER, result.output
    assert "Traceback" not in result.output
    assert f"\n  {looped}: cannot place the verified file" in result.stderr
    others = sorted(
        p.relative_to(world.remote).as_posix()
        for p in (world.remote / "SDY1" / "StudyFiles").iterdir()
        if p.is_file()
    )
    with StateStore.open(state_path(world.dest), create=False) as store:
        assert sorted(store.entries()) == others
    assert loop.is_symlink() and os.readlink(loop) == "sub"


def test_a_staged_leftover_that_cannot_be_removed_fails_that_file_only(world: World):
    """A folder where an old partial download of a file lies (EISDIR when removing it):
    that file is not fetched and is named (exit 5); the rest syncs."""
    stuck = "SDY1/StudyFiles/Study_design.txt"
    world.write_manifest(STUDY_FILES)
    (world.dest / ".immsync" / "staging" / (stuck + ".partial")).mkdir(parents=True)

    result = world.apply()
    assert result.exit_code == ExitCode.TRANSFER, result.output
    assert "Traceback" not in result.output
    assert f"\n  {stuck}: cannot remove the download of another version, " in result.stderr
    assert "Is a directory" in result.stderr
    others = {
        p.relative_to(world.remote).as_posix()
        for p in (world.remote / "SDY1" / "StudyFiles").iterdir()
        if p.is_file()
    } - {stuck}
    with StateStore.open(state_path(world.dest), create=False) as store:
        assert set(store.entries()) == others
