"""immsync.ascp: finding ascp and its key, and AscpTransfer against the real stand-in ascp."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from immsync import errors, model
from immsync.ascp import (
    AscpSettings,
    AscpTransfer,
    classify,
    locate_ascp,
    locate_key,
    parse_progress,
)
from immsync.testing import aspera_tokens, fake_ascp
from immsync.testing.aspera_config import FakeAsperaConfig
from immsync.testing.fake_ascp import install_fake_ascp

SECRET = "ascp-test-secret"
PASSWORD = "hunter2-immport-password"
FILES = {
    "SDY1/StudyFiles/a.txt": b"alpha line\n" * 60,
    "SDY1/StudyFiles/b.bin": bytes(i % 251 for i in range(200_000)),
    "SDY1/ResultFiles/X_result/c.csv": b"id,value\n1,2\n",
    "SDY1/ResultFiles/X_result/d.csv": b"id,value\n3,4\n",
    "SDY1/ResultFiles/X_result/e.csv": b"id,value\n5,6\n",
}
A, B, C, D, E = FILES


def remote(path: str) -> model.RemoteFile:
    return model.RemoteFile(path, len(FILES[path]), "2020-01-01T00:00:00Z")


@dataclass
class Rig:
    root: Path
    config: FakeAsperaConfig
    config_path: Path
    settings: AscpSettings
    token_requests: list[list[str]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    token_lifetime: float = 3600.0
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    popen_called: threading.Event = field(default_factory=threading.Event)

    def save(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.config, name, value)
        self.config.save(self.config_path)

    def tokens(self, paths: Sequence[str]) -> str:
        self.token_requests.append(list(paths))
        token = aspera_tokens.mint(SECRET, list(paths), lifetime=self.token_lifetime)
        self.issued.append(token)
        return token

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(*args, **kwargs)
        self.started.append(proc)
        self.popen_called.set()
        return proc

    def transfer(self, **setting_changes: Any) -> AscpTransfer:
        return AscpTransfer(
            replace(self.settings, **setting_changes),
            token_source=self.tokens,
            workdir=self.root / "work",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "IMMPORT_PASSWORD": PASSWORD},
            popen=self.popen,
        )

    def batch(self, *paths: str, label: str = "batch 1/1") -> model.TransferBatch:
        return model.TransferBatch(tuple(remote(p) for p in paths), self.root / "staging", label)

    def sessions(self) -> list[dict[str, Any]]:
        log = self.root / "sessions.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(name="rig")
def _rig(tmp_path: Path) -> Rig:
    docroot = tmp_path / "docroot"
    for path, data in FILES.items():
        (docroot / path).parent.mkdir(parents=True, exist_ok=True)
        (docroot / path).write_bytes(data)
    config = FakeAsperaConfig(docroot=str(docroot), secret=SECRET, session_log="sessions.jsonl")
    config_path = config.save(tmp_path / "aspera.json")
    install = install_fake_ascp(tmp_path / "aspera", config_path)
    return Rig(tmp_path, config, config_path, AscpSettings(install.ascp, install.key))


class Events:
    def __init__(self) -> None:
        self.events: list[model.ProgressEvent] = []
        self.threads: set[int] = set()

    def __call__(self, event: model.ProgressEvent) -> None:
        self.events.append(event)
        self.threads.add(threading.get_ident())


def fetch_error(transfer: AscpTransfer, batch: model.TransferBatch) -> errors.TransferError:
    with pytest.raises(errors.TransferError) as caught:
        transfer.fetch(batch, Events())
    return caught.value


# ----- a good session


def test_fetch_brings_every_file_and_reports_progress(rig: Rig) -> None:
    """One session brings the batch into staging and reports 100% per file, on the caller thread."""
    events = Events()
    rig.transfer().fetch(rig.batch(A, B, C), events)
    for path in (A, B, C):
        assert (rig.root / "staging" / path).read_bytes() == FILES[path]
    assert rig.token_requests == [[f"/{A}", f"/{B}", f"/{C}"]]
    finals = {e.name: e for e in events.events if e.percent == 100}
    assert {n: e.bytes_done for n, e in finals.items()} == {
        "a.txt": len(FILES[A]),
        "b.bin": len(FILES[B]),
        "c.csv": len(FILES[C]),
    }
    assert {e.session for e in events.events} == {"batch 1/1"}
    assert events.threads == {threading.get_ident()}
    assert list((rig.root / "work").iterdir()) == []  # the pair list is gone


def test_command_line_follows_the_contract_and_holds_no_token(rig: Rig) -> None:
    """argv has -i -P -O --user --host --mode=recv -d -p -k 2 .partial; the token goes by env."""
    rig.transfer(target_rate="300m").fetch(rig.batch(A), Events())
    (record,) = rig.sessions()
    argv = record["argv"]
    assert argv[:10] == [
        str(rig.settings.binary), "-i", str(rig.settings.key), "-P", "33001", "-O", "33001",
        "--user=databrowser", "--host=aspera-immport.niaid.nih.gov", "--mode=recv",
    ]  # fmt: skip
    for expected in (["-d"], ["-p"], ["-k", "2"], ["--partial-file-suffix=.partial"]):
        assert any(argv[i : i + len(expected)] == expected for i in range(len(argv)))
    assert argv[argv.index("-l") + 1] == "300m"
    assert argv[-1] == str(rig.root / "staging")
    assert argv[-2].startswith("--file-pair-list=")
    assert "-W" not in argv
    assert record["token_source"] == "env"
    (token,) = rig.issued
    assert not any(token in a or PASSWORD in a for a in argv)


def test_concurrent_fetches_from_several_threads(rig: Rig) -> None:
    """Two batches fetched at once from two threads both arrive."""
    transfer = rig.transfer()
    failures: list[BaseException] = []

    def run(batch: model.TransferBatch) -> None:
        try:
            transfer.fetch(batch, Events())
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [
        threading.Thread(target=run, args=(rig.batch(A, B, label="one"),)),
        threading.Thread(target=run, args=(rig.batch(C, D, label="two"),)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == []
    for path in (A, B, C, D):
        assert (rig.root / "staging" / path).read_bytes() == FILES[path]


def test_empty_batch_starts_nothing(rig: Rig) -> None:
    """A batch without files asks for no token and runs no ascp."""
    rig.transfer().fetch(rig.batch(), Events())
    assert rig.token_requests == []
    assert rig.started == []


# ----- failures


@pytest.mark.parametrize(
    ("fault", "kind", "reason"),
    [
        ({"kind": "auth"}, "auth", fake_ascp.AUTH_FAILED),
        ({"kind": "tcp"}, "unreachable", fake_ascp.TCP_FAILED),
        ({"kind": "udp"}, "unreachable", fake_ascp.UDP_FAILED),
        ({"kind": "token_denied"}, "token", fake_ascp.TOKEN_DENIED),
        ({"kind": "token_mismatch"}, "token", fake_ascp.TOKEN_MISMATCH),
        ({"kind": "stall", "after_bytes": 5}, "transient", fake_ascp.STALLED),
        ({"kind": "disk"}, "disk", fake_ascp.DISK_FAILED),
        ({"kind": "no_such_file"}, "not_found", fake_ascp.NO_SUCH_FILE),
        ({"kind": "partial", "path": f"/{C}"}, "transient", fake_ascp.STALLED),
    ],
)
def test_every_fault_maps_to_its_kind(
    rig: Rig, fault: dict[str, Any], kind: str, reason: str
) -> None:
    """Each ascp failure becomes a TransferError with the right kind, reason, message and hint."""
    rig.save(faults=[fault])
    error = fetch_error(rig.transfer(), rig.batch(A, C))
    assert error.kind == kind
    assert error.reason == reason
    assert error.message.startswith("ascp session batch 1/1 failed (2 files: ")
    assert f"{A}, {C}" in error.message
    assert error.message.endswith(f": {reason}")
    assert error.hint
    assert error.output_tail
    assert any(reason in line for line in error.output_tail)
    (token,) = rig.issued
    assert token not in error.message
    assert not any(token in line for line in error.output_tail)
    assert list((rig.root / "work").iterdir()) == []


def test_partial_completion_says_some_files_arrived(rig: Rig) -> None:
    """When ascp reports Partial Completion the message says so and the good files are there."""
    rig.save(faults=[{"kind": "partial", "path": f"/{C}"}])
    error = fetch_error(rig.transfer(), rig.batch(A, C))
    assert "some files arrived" in error.message
    assert (rig.root / "staging" / A).read_bytes() == FILES[A]


def test_message_names_the_first_files_and_the_count(rig: Rig) -> None:
    """A big batch is named by its first three files and how many more there are."""
    rig.save(faults=[{"kind": "tcp"}])
    error = fetch_error(rig.transfer(), rig.batch(A, B, C, D, E, label="batch 7/9"))
    assert f"ascp session batch 7/9 failed (5 files: {A}, {B}, {C} and 2 more)" in error.message


def test_natural_failures_are_classified(rig: Rig) -> None:
    """Wrong port, no key, expired token, missing file: unreachable, auth, token, not_found."""
    wrong_port = fetch_error(rig.transfer(port=22), rig.batch(A))
    assert (wrong_port.kind, wrong_port.reason) == (
        "unreachable",
        "Failed to open TCP connection for SSH",
    )
    assert "port 22" in (wrong_port.hint or "")
    no_key = fetch_error(rig.transfer(key=rig.root / "missing.openssh"), rig.batch(A))
    assert no_key.kind == "auth"
    rig.token_lifetime = -5
    assert fetch_error(rig.transfer(), rig.batch(A)).kind == "token"
    rig.token_lifetime = 3600
    (rig.root / "docroot" / A).unlink()
    assert fetch_error(rig.transfer(), rig.batch(A)).kind == "not_found"


def test_corrupt_and_truncated_files_pass_the_transport(rig: Rig) -> None:
    """ascp claims success for corrupt or short files: verifying them is the caller's job."""
    rig.save(faults=[{"kind": "corrupt", "path": f"/{B}"}, {"kind": "truncate", "path": f"/{B}"}])
    transfer = rig.transfer()
    transfer.fetch(rig.batch(B), Events())
    assert (rig.root / "staging" / B).read_bytes() != FILES[B]
    transfer.fetch(rig.batch(B), Events())
    assert len((rig.root / "staging" / B).read_bytes()) == len(FILES[B]) // 2


def test_resume_after_stall_sends_only_the_remaining_bytes(rig: Rig) -> None:
    """A stalled session leaves .partial + .aspx; the retry resumes and sends only the rest."""
    rig.save(faults=[{"kind": "stall", "after_bytes": 80_000}])
    transfer = rig.transfer()
    error = fetch_error(transfer, rig.batch(B))
    assert error.kind == "transient"
    folder = rig.root / "staging" / "SDY1" / "StudyFiles"
    assert sorted(p.name for p in folder.iterdir()) == ["b.bin.aspx", "b.bin.partial"]
    transfer.fetch(rig.batch(B), Events())
    assert (folder / "b.bin").read_bytes() == FILES[B]
    assert sorted(p.name for p in folder.iterdir()) == ["b.bin"]
    first, second = rig.sessions()
    assert first["bytes_sent"] == 80_000
    assert second["resumed"] == {f"/{B}": 80_000}
    assert second["bytes_sent"] == len(FILES[B]) - 80_000


# ----- what reaches the process, and stopping it


def wait_for_start(rig: Rig) -> subprocess.Popen[bytes]:
    assert rig.popen_called.wait(20)
    return rig.started[-1]


def read_cmdline(pid: int) -> bytes:
    # Popen returns once exec is past its point of no return, which can be a moment
    # before the kernel has set up the new argv: until then cmdline reads empty.
    deadline = time.monotonic() + 10
    while not (cmdline := Path(f"/proc/{pid}/cmdline").read_bytes()):
        assert time.monotonic() < deadline, "ascp never showed a command line"
        time.sleep(0.005)
    return cmdline


def test_token_never_in_cmdline_and_terminate_interrupts(rig: Rig) -> None:
    """A running ascp's /proc cmdline holds neither token nor password; terminate() stops it."""
    rig.save(faults=[{"kind": "hang", "seconds": 60}])
    transfer = rig.transfer()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            transfer.fetch(rig.batch(A, B), Events())
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    proc = wait_for_start(rig)
    cmdline = read_cmdline(proc.pid)
    (token,) = rig.issued
    assert str(rig.settings.binary).encode() in cmdline.split(b"\0")
    assert b"-W" not in cmdline.split(b"\0")
    assert token.encode() not in cmdline
    assert PASSWORD.encode() not in cmdline
    environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
    assert f"ASPERA_SCP_TOKEN={token}".encode() in environ

    transfer.terminate()
    worker.join(30)
    assert not worker.is_alive()  # far sooner than the 60 s hang
    (error,) = outcome
    assert isinstance(error, errors.TransferError)
    assert error.kind == "interrupted"
    assert "was stopped" in error.message
    assert proc.returncode is not None

    after = fetch_error(transfer, rig.batch(C))
    assert after.kind == "interrupted"
    assert len(rig.started) == 1  # no new ascp after terminate()


def test_killed_by_someone_else_is_transient(rig: Rig) -> None:
    """An ascp killed by a signal we did not send is a transient failure naming the signal."""
    rig.save(faults=[{"kind": "hang", "seconds": 60}])
    transfer = rig.transfer()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            transfer.fetch(rig.batch(A), Events())
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    wait_for_start(rig).send_signal(signal.SIGKILL)
    worker.join(30)
    (error,) = outcome
    assert isinstance(error, errors.TransferError)
    assert error.kind == "transient"
    assert error.reason == "ascp was killed by signal SIGKILL"


def test_progress_callback_failure_leaves_no_ascp_behind(rig: Rig) -> None:
    """If on_progress raises, the exception propagates and the ascp process is reaped."""
    rig.save(rate_limit=100_000.0)

    def explode(event: model.ProgressEvent) -> None:
        raise RuntimeError("display broke")

    with pytest.raises(RuntimeError, match="display broke"):
        rig.transfer().fetch(rig.batch(B), explode)
    assert rig.started[-1].returncode is not None
    assert list((rig.root / "work").iterdir()) == []


def test_unsafe_names_are_refused_before_any_work(rig: Rig) -> None:
    """A path with a line break, NUL, `..` or a leading / never reaches a pair list or a token."""
    for bad in ("SDY1/a\nb.txt", "SDY1/a\rb", "SDY1/a\0b", "SDY1/../x", "/SDY1/x"):
        batch = model.TransferBatch((model.RemoteFile(bad, 1, "t"),), rig.root / "staging")
        error = fetch_error(rig.transfer(), batch)
        assert error.kind == "permanent"
    assert rig.token_requests == []
    assert rig.started == []


def test_unstartable_binary_is_transport_unavailable(rig: Rig) -> None:
    """A missing or non-executable ascp raises TransportUnavailable naming it and IMMSYNC_ASCP."""
    plain = rig.root / "not-executable"
    plain.write_text("#!/bin/sh\n")
    for binary in (rig.root / "missing-ascp", plain):
        with pytest.raises(errors.TransportUnavailable) as caught:
            rig.transfer(binary=binary).fetch(rig.batch(A), Events())
        assert str(binary) in str(caught.value)
        assert "IMMSYNC_ASCP" in str(caught.value)
    assert list((rig.root / "work").iterdir()) == []


# ----- parsing and classification


def test_parse_progress_reads_real_ascp_lines() -> None:
    """Progress lines as captured from real ascp parse into name, percent, size and rate."""
    assert parse_progress(
        "02054141.001.52628.fcs                        100%  236KB             --:--    "
    ) == ("02054141.001.52628.fcs", 100, 236 * 1024, None)
    assert parse_progress("SRR576938.fastq.gz     100%  244MB  112Mb/s    00:20    ") == (
        "SRR576938.fastq.gz",
        100,
        244 * 1024**2,
        "112Mb/s",
    )
    assert parse_progress("my file.tar.gz   1%  300MB 97.1Mb/s    44:21 ETA") == (
        "my file.tar.gz",
        1,
        300 * 1024**2,
        "97.1Mb/s",
    )
    assert parse_progress("Completed: 236K bytes transferred in 0 seconds") is None


def test_classify_reasons() -> None:
    """Reasons from the reference map to the documented kinds, unknown ones to permanent."""
    assert classify("Server aborted session: No such file or directory") == "not_found"
    assert classify("Disk write failed (server)") == "disk"
    assert classify("Connection abandoned.") == "transient"
    assert classify("failed to authenticate") == "auth"
    assert classify("Server aborted session: Client requests stronger encryption") == "permanent"


# ----- locating ascp and the key


def make_executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_locate_ascp_prefers_explicit_then_path_then_install_places(tmp_path: Path) -> None:
    """IMMSYNC_ASCP wins, then PATH, then ~/.aspera/connect, cli and sdk in that order."""
    home = tmp_path / "home"
    sdk = make_executable(home / ".aspera" / "sdk" / "ascp")
    assert locate_ascp(None, path_env=None, home=home) == sdk
    cli = make_executable(home / ".aspera" / "cli" / "bin" / "ascp")
    assert locate_ascp(None, path_env=None, home=home) == cli
    connect = make_executable(home / ".aspera" / "connect" / "bin" / "ascp")
    assert locate_ascp(None, path_env=None, home=home) == connect
    on_path = make_executable(tmp_path / "bin" / "ascp")
    path_env = f"{tmp_path / 'nothing'}:{tmp_path / 'bin'}"
    assert locate_ascp(None, path_env=path_env, home=home) == on_path
    mine = make_executable(tmp_path / "mine" / "ascp")
    assert locate_ascp(str(mine), path_env=path_env, home=home) == mine
    assert locate_ascp(str(home / ".aspera" / "cli"), path_env=None, home=home) == cli


def test_locate_ascp_not_found_names_every_place(tmp_path: Path) -> None:
    """The error lists PATH and every install place of this platform, and IMMSYNC_ASCP."""
    home = tmp_path / "home"
    with pytest.raises(errors.TransportUnavailable) as caught:
        locate_ascp(None, path_env=str(tmp_path / "empty"), home=home)
    text = str(caught.value)
    assert "PATH" in text
    for place in (
        home / ".aspera" / "connect" / "bin" / "ascp",
        home / ".aspera" / "cli" / "bin" / "ascp",
        home / ".aspera" / "sdk" / "ascp",
        Path("/opt/aspera/bin/ascp"),
    ):
        assert str(place) in text
    assert ("Aspera Connect.app" in text) == (sys.platform == "darwin")
    assert "IMMSYNC_ASCP" in text


def test_locate_ascp_rejects_a_bad_explicit_value(tmp_path: Path) -> None:
    """A wrong IMMSYNC_ASCP is an error naming it, not a silent fallback to PATH."""
    make_executable(tmp_path / "bin" / "ascp")
    plain = tmp_path / "plain"
    plain.write_text("x")
    for value in (str(tmp_path / "nope"), str(plain)):
        with pytest.raises(errors.TransportUnavailable, match="IMMSYNC_ASCP is set to"):
            locate_ascp(value, path_env=str(tmp_path / "bin"), home=tmp_path)


def test_locate_key_order_and_error(tmp_path: Path) -> None:
    """IMMSYNC_ASPERA_KEY wins, then <ascp>/../etc/asperaweb_id_dsa.openssh, then the SDK key."""
    ascp = make_executable(tmp_path / "cli" / "bin" / "ascp")
    with pytest.raises(errors.TransportUnavailable) as caught:
        locate_key(None, ascp)
    text = str(caught.value)
    assert str(tmp_path / "cli" / "etc" / "asperaweb_id_dsa.openssh") in text
    assert str(tmp_path / "cli" / "bin" / "aspera_bypass_dsa.pem") in text
    assert "IMMSYNC_ASPERA_KEY" in text
    sdk_key = tmp_path / "cli" / "bin" / "aspera_bypass_dsa.pem"
    sdk_key.write_text("key")
    assert locate_key(None, ascp) == sdk_key
    etc_key = tmp_path / "cli" / "etc" / "asperaweb_id_dsa.openssh"
    etc_key.parent.mkdir()
    etc_key.write_text("key")
    assert locate_key(None, ascp) == etc_key
    mine = tmp_path / "my.key"
    mine.write_text("key")
    assert locate_key(str(mine), ascp) == mine
    with pytest.raises(errors.TransportUnavailable, match="IMMSYNC_ASPERA_KEY is set to"):
        locate_key(str(tmp_path / "absent.key"), ascp)


def test_locate_key_follows_a_symlinked_ascp(tmp_path: Path) -> None:
    """An ascp found through a PATH symlink still finds the key of the real install."""
    real = make_executable(tmp_path / "connect" / "bin" / "ascp")
    key = tmp_path / "connect" / "etc" / "asperaweb_id_dsa.openssh"
    key.parent.mkdir()
    key.write_text("key")
    link = tmp_path / "usr-bin" / "ascp"
    link.parent.mkdir()
    link.symlink_to(real)
    assert locate_key(None, link) == key


def test_fake_install_is_found_like_a_real_one(rig: Rig) -> None:
    """The stand-in's layout satisfies locate_ascp and locate_key like an Aspera CLI install."""
    binary = locate_ascp(None, path_env=str(rig.settings.binary.parent), home=rig.root)
    assert binary == rig.settings.binary
    assert locate_key(None, binary) == rig.settings.key
