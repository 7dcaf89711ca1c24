"""The stand-in ``ascp``, driven as a real subprocess exactly as callers run the real one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from immsync.testing import aspera_tokens
from immsync.testing.aspera_config import FakeAsperaConfig
from immsync.testing.fake_ascp import (
    format_rate,
    format_size,
    install_fake_ascp,
    progress_line,
    reset_fault_state,
)

SECRET = "fake-ascp-test-secret"
HOST = "aspera-immport.niaid.nih.gov"
A = "/SDY1/StudyFiles/a.txt"
B = "/SDY1/StudyFiles/b.bin"
C = "/SDY1/ResultFiles/X_result/c.csv"
CONTENT = {
    A: b"alpha line\n" * 60,
    B: bytes(i % 251 for i in range(200_000)),
    C: b"id,value\n1,2\n",
}


@dataclass
class Rig:
    root: Path
    config: FakeAsperaConfig
    config_path: Path
    ascp: Path
    key: Path
    docroot: Path
    session_log: Path

    def save(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.config, name, value)
        self.config.save(self.config_path)

    def token(self, *paths: str, lifetime: float = 3600.0) -> str:
        return aspera_tokens.mint(SECRET, list(paths or ("/SDY1",)), lifetime=lifetime)

    def env(self, token: str | None = None) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
        if token is not None:
            env["ASPERA_SCP_TOKEN"] = token
        return env

    def run(
        self, *args: str, token: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.ascp), *args],
            capture_output=True,
            text=True,
            env=env if env is not None else self.env(token),
            cwd=self.root,
            timeout=60,
            check=False,
        )

    def common(self) -> list[str]:
        return [
            "-i",
            str(self.key),
            "-P",
            "33001",
            "-O",
            "33001",
            "--user=databrowser",
            f"--host={HOST}",
            "--mode=recv",
        ]

    def pairs(self, *sources: str) -> Path:
        path = self.root / "pairs.txt"
        path.write_text("".join(f"{s}\n{s.lstrip('/')}\n" for s in sources), encoding="utf-8")
        return path

    def sessions(self) -> list[dict[str, Any]]:
        if not self.session_log.exists():
            return []
        return [json.loads(line) for line in self.session_log.read_text().splitlines()]


@pytest.fixture(name="rig")
def _rig(tmp_path: Path) -> Rig:
    docroot = tmp_path / "docroot"
    for remote, data in CONTENT.items():
        path = docroot / remote.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (1_500_000_000, 1_500_000_000))
    config = FakeAsperaConfig(
        docroot=str(docroot), secret=SECRET, session_log=str(tmp_path / "sessions.jsonl")
    )
    config_path = config.save(tmp_path / "aspera.json")
    install = install_fake_ascp(tmp_path / "aspera", config_path)
    (tmp_path / "out").mkdir()
    return Rig(
        tmp_path,
        config,
        config_path,
        install.ascp,
        install.key,
        docroot,
        tmp_path / "sessions.jsonl",
    )


def lines_of(stdout: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]", stdout) if line.strip()]


# ----- install layout


def test_install_lays_out_an_aspera_cli_tree(rig: Rig) -> None:
    """install_fake_ascp makes bin/ascp executable and etc/asperaweb_id_dsa.openssh a DSA key."""
    assert rig.ascp == rig.root / "aspera" / "bin" / "ascp"
    assert os.access(rig.ascp, os.X_OK)
    assert rig.ascp.read_text().startswith(f"#!{sys.executable}\n")
    assert rig.key.read_text().startswith("-----BEGIN DSA PRIVATE KEY-----")


# ----- command-line forms


def test_immportr_style_host_path_and_w_token(rig: Rig) -> None:
    """`-W TOKEN --user=U host:PATH OUT` (ImmPortR) downloads the file into OUT."""
    result = rig.run(
        "-v", "-i", str(rig.key), "-O", "33001", "-P", "33001", "-W", rig.token(A),
        "--user=databrowser", f"{HOST}:{A}", "out",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (rig.root / "out" / "a.txt").read_bytes() == CONTENT[A]
    (record,) = rig.sessions()
    assert record["token_source"] == "argv"
    assert record["sources"] == [A]
    assert record["status"] == "ok"


def test_attached_values_clustered_flags_and_user_at_host(rig: Rig) -> None:
    """-P33001 -O33001 -k2 -QT -l300m -i<key> and user@host:path work, token from env."""
    result = rig.run(
        "-QT", "-P33001", "-O33001", "-k2", "-l300m", f"-i{rig.key}",
        f"databrowser@{HOST}:{A}", "out", token=rig.token(A),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (rig.root / "out" / "a.txt").read_bytes() == CONTENT[A]
    assert rig.sessions()[0]["token_source"] == "env"


def test_long_options_with_separate_values_and_pair_list(rig: Rig) -> None:
    """--user U --host H --mode recv --file-pair-list F lands pairs below DEST; -p keeps mtime."""
    pairs = rig.pairs(A, B)
    result = rig.run(
        "--user", "databrowser", "--host", HOST, "--mode", "recv", "-O33001", "-P33001",
        "-i", str(rig.key), "-k", "2", "-p", "-q", "--file-pair-list", str(pairs), "dest",
        token=rig.token(A, B),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for remote in (A, B):
        got = rig.root / "dest" / remote.lstrip("/")
        assert got.read_bytes() == CONTENT[remote]
        assert got.stat().st_mtime == 1_500_000_000
    assert "%" not in result.stdout  # -q: no progress
    assert "in 2 files." in result.stdout


def test_file_list_puts_basenames_into_dest(rig: Rig) -> None:
    """--file-list=F lands every source as DEST/<basename>."""
    listing = rig.root / "list.txt"
    listing.write_text(f"{A}\n{C}\n", encoding="utf-8")
    result = rig.run(*rig.common(), f"--file-list={listing}", "out", token=rig.token(A, C))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (rig.root / "out").iterdir()) == ["a.txt", "c.csv"]


def test_directory_source_is_recursive(rig: Rig) -> None:
    """A folder source lands as DEST/<folder>/... with every file below it."""
    result = rig.run(*rig.common(), "-d", "/SDY1/", "out", token=rig.token("/SDY1"))
    assert result.returncode == 0, result.stderr
    for remote, data in CONTENT.items():
        assert (rig.root / "out" / remote.lstrip("/")).read_bytes() == data
    assert "in 3 files, 4 directories." in result.stdout


def test_single_file_into_a_file_name(rig: Rig) -> None:
    """One file source with a DEST that is no folder writes DEST itself."""
    result = rig.run(*rig.common(), A, "out/renamed.txt", token=rig.token(A))
    assert result.returncode == 0, result.stderr
    assert (rig.root / "out" / "renamed.txt").read_bytes() == CONTENT[A]


def test_missing_destination_folder_needs_d(rig: Rig) -> None:
    """Several sources into a folder that does not exist fail unless -d is given."""
    result = rig.run(*rig.common(), A, C, "nowhere", token=rig.token(A, C))
    assert result.returncode == 1
    assert "Destination directory does not exist" in result.stdout
    assert rig.run(*rig.common(), "-d", A, C, "nowhere", token=rig.token(A, C)).returncode == 0


def test_help_prints_usage_and_exits_zero(rig: Rig) -> None:
    """-h and --help print the usage on stdout with status 0 (sra-tools probes this)."""
    for flag in ("-h", "--help"):
        result = rig.run(flag)
        assert result.returncode == 0
        assert result.stdout.startswith("Usage: ascp [OPTION] SRC... DEST\n")
        assert "--file-pair-list=FILENAME" in result.stdout
    assert rig.sessions() == []


def test_version_lines_parse_like_the_real_ones(rig: Rig) -> None:
    """-A prints version lines that ASCLI's / version ([0-9.]+)/ understands."""
    result = rig.run("-A")
    assert result.returncode == 0
    assert re.search(r"^ascp version ([0-9.]+)$", result.stdout, re.MULTILINE)
    assert "Operating System: Linux" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-z", "x", "y"], "invalid option -- 'z'"),
        (["-QTz", "x", "y"], "invalid option -- 'z'"),
        (["--bogus", "x", "y"], "unrecognized option '--bogus'"),
        (["--bogus=1", "x", "y"], "unrecognized option '--bogus=1'"),
        (["x", "y", "-P"], "option requires an argument -- 'P'"),
        (["x", "y", "--mode"], "option '--mode' requires an argument"),
        (["--help=yes"], "option '--help' doesn't allow an argument"),
        (["--pre", "x", "y"], "option '--pre' is ambiguous"),
    ],
)
def test_bad_options_get_getopt_messages(rig: Rig, args: list[str], message: str) -> None:
    """Unknown or incomplete options fail with GNU getopt's wording, the usage, and status 1."""
    result = rig.run(*args)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{rig.ascp}: {message}")
    assert "Display full usage: -h,--help" in result.stderr


def test_missing_dest_is_a_usage_error(rig: Rig) -> None:
    """Only one operand, or none, prints the short usage and exits 1."""
    for args in ([], [f"{HOST}:{A}"]):
        result = rig.run(*args)
        assert result.returncode == 1
        assert result.stderr.startswith("Usage: ascp [OPTION] SRC... DEST")
    assert rig.sessions() == []


def test_long_option_prefixes_are_accepted(rig: Rig) -> None:
    """Like getopt_long, an unambiguous prefix (--partial-file=) names the option."""
    result = rig.run(*rig.common(), "--partial-file=.part", A, "out", token=rig.token(A))
    assert result.returncode == 0, result.stderr


# ----- output format


def test_progress_and_summary_lines(rig: Rig) -> None:
    """stdout shows \\r-redrawn progress, a final 100% line, then the two Completed lines."""
    result = subprocess.run(
        [str(rig.ascp), *rig.common(), A, "out"],
        capture_output=True,
        env=rig.env(rig.token(A)),
        cwd=rig.root,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    stdout = result.stdout.decode()
    assert f"{'a.txt':<45}   0%     0B{'':>9}    --:-- ETA\r" in stdout
    final = f"{'a.txt':<45} 100%   660B{'':>9}    --:--    "
    lines = lines_of(stdout)
    assert lines[-3] == final
    assert re.fullmatch(r"Completed: 0K bytes transferred in \d+ seconds", lines[-2])
    assert re.fullmatch(r" \(\d+K bits/sec\), in 1 file\.", lines[-1])


def test_size_and_rate_formatting() -> None:
    """Sizes use 1024 units switching at 10000 and rates read like 14.3Mb/s (reference §3.6)."""
    assert format_size(660) == "660B"
    assert format_size(241_664) == "236KB"
    assert format_size(1_048_576) == "1024KB"
    assert format_size(255_997_952) == "244MB"
    assert format_rate(14_300_000) == "14.3Mb/s"
    assert format_rate(112_400_000) == "112Mb/s"
    line = progress_line("myfile", 100, 1_048_576, 0.5867, None)
    assert line.endswith(" 100% 1024KB             --:--    ")
    assert progress_line("f", 40, 1_048_576, 2.0, 3.0).endswith(" 40% 1024KB  4.2Mb/s    00:03 ETA")


def test_startup_failure_goes_to_stderr_and_session_stop_to_stdout(rig: Rig) -> None:
    """A wrong -P gives `ascp: Failed to open TCP connection for SSH, exiting.` and Session Stop."""
    result = rig.run("-i", str(rig.key), "-P", "22", f"databrowser@{HOST}:{A}", "out", token="x")
    assert result.returncode == 1
    assert result.stderr == f"{rig.ascp}: Failed to open TCP connection for SSH, exiting.\n"
    assert result.stdout == "\nSession Stop  (Error: Failed to open TCP connection for SSH)\n"


# ----- authentication and the token


def test_unreadable_key_fails_authentication(rig: Rig) -> None:
    """A missing -i key file is an authentication failure (exit 1)."""
    args = ["-i", str(rig.root / "nokey"), "-P33001", f"databrowser@{HOST}:{A}", "out"]
    result = rig.run(*args, token=rig.token(A))
    assert result.returncode == 1
    assert "failed to authenticate, exiting." in result.stderr
    assert "Session Stop  (Error: failed to authenticate)" in result.stdout


def test_wrong_user_or_host_fails_authentication(rig: Rig) -> None:
    """Only the configured user at the configured host gets in."""
    for operand in (f"someone@{HOST}:{A}", f"databrowser@elsewhere.example:{A}"):
        result = rig.run("-i", str(rig.key), "-P33001", operand, "out", token=rig.token(A))
        assert result.returncode == 1
        assert "failed to authenticate" in result.stderr


def test_no_token_fails_authentication(rig: Rig) -> None:
    """Without -W or ASPERA_SCP_TOKEN the server does not let the session in."""
    result = rig.run(*rig.common(), A, "out")
    assert result.returncode == 1
    assert "failed to authenticate" in result.stderr
    assert rig.sessions()[0]["token_source"] is None


def test_expired_token_is_denied(rig: Rig) -> None:
    """An expired token gets `Management authorization refused: token denied by server`."""
    result = rig.run(*rig.common(), A, "out", token=rig.token(A, lifetime=-10))
    assert result.returncode == 1
    assert "Session Stop  (Error: Management authorization refused: token denied by server)" in (
        result.stdout
    )


def test_token_not_covering_a_source_mismatches(rig: Rig) -> None:
    """A token minted for other paths gets `Token doesn't match file-list/file-pair-list`."""
    pairs = rig.pairs(A, C)
    result = rig.run(*rig.common(), f"--file-pair-list={pairs}", "out", token=rig.token(A))
    assert result.returncode == 1
    assert "(Error: Token doesn't match file-list/file-pair-list)" in result.stdout
    assert not (rig.root / "out" / "SDY1").exists()


# ----- sources that are not there


def test_missing_source_is_no_such_file(rig: Rig) -> None:
    """A source missing from the docroot ends with `Server aborted session: No such file...`."""
    result = rig.run(*rig.common(), "/SDY1/nope.txt", "out", token=rig.token())
    assert result.returncode == 1
    assert result.stdout.endswith(
        "\nSession Stop  (Error: Server aborted session: No such file or directory)\n"
    )


def test_source_outside_docroot_is_not_served(rig: Rig) -> None:
    """`..` cannot climb out of the docroot."""
    (rig.root / "secret.txt").write_text("no")
    result = rig.run(*rig.common(), "/SDY1/../../secret.txt", "out", token=rig.token("/"))
    assert result.returncode == 1
    assert "No such file or directory" in result.stdout
    assert not (rig.root / "out" / "secret.txt").exists()


def test_one_missing_file_is_a_partial_completion(rig: Rig) -> None:
    """In a multi-file session a missing file fails alone: Partial Completion, exit 1."""
    pairs = rig.pairs(A, "/SDY1/nope.txt", C)
    result = rig.run(*rig.common(), f"--file-pair-list={pairs}", "out", token=rig.token())
    assert result.returncode == 1
    lines = lines_of(result.stdout)
    assert re.fullmatch(r"Partial Completion: 0K bytes transferred in \d+ seconds", lines[-3])
    assert re.fullmatch(r" \(\d+K bits/sec\), in 2 files; 1 file failed\.", lines[-2])
    assert lines[-1] == "Session Stop  (Error: Server aborted session: No such file or directory)"
    assert (rig.root / "out" / A.lstrip("/")).read_bytes() == CONTENT[A]
    assert (rig.root / "out" / C.lstrip("/")).read_bytes() == CONTENT[C]
    assert rig.sessions()[0]["failed"] == ["/SDY1/nope.txt"]


def test_pair_destination_outside_dest_is_refused(rig: Rig) -> None:
    """A pair destination with `..` or a leading / is refused; nothing is written outside DEST."""
    for bad in ("../escape.txt", "/escape.txt", "a/../../escape.txt"):
        pairs = rig.root / "pairs.txt"
        pairs.write_text(f"{A}\n{bad}\n", encoding="utf-8")
        result = rig.run(*rig.common(), f"--file-pair-list={pairs}", "out", token=rig.token(A))
        assert result.returncode == 1
        assert "Invalid destination path" in result.stdout
    assert not (rig.root / "escape.txt").exists()


# ----- partial files and resume


def test_stall_leaves_partial_and_aspx_then_resume_sends_only_the_rest(rig: Rig) -> None:
    """-k 2 resumes a stalled file from its .partial: the second run sends only what was missing."""
    rig.save(faults=[{"kind": "stall", "after_bytes": 70_000}])
    args = [*rig.common(), "-k", "2", "--partial-file-suffix=.partial", B, "out"]
    first = rig.run(*args, token=rig.token(B))
    assert first.returncode == 1
    assert "Session Stop  (Error: Data transfer stalled, timed out)" in first.stdout
    out = rig.root / "out"
    assert sorted(p.name for p in out.iterdir()) == ["b.bin.aspx", "b.bin.partial"]
    assert (out / "b.bin.partial").read_bytes() == CONTENT[B][:70_000]

    second = rig.run(*args, token=rig.token(B))
    assert second.returncode == 0, second.stdout
    assert sorted(p.name for p in out.iterdir()) == ["b.bin"]
    assert (out / "b.bin").read_bytes() == CONTENT[B]
    stalled, resumed = rig.sessions()
    assert stalled["bytes_sent"] == 70_000
    assert resumed["resumed"] == {B: 70_000}
    assert resumed["bytes_sent"] == len(CONTENT[B]) - 70_000


def test_resume_level_zero_keeps_no_checkpoint_and_resends(rig: Rig) -> None:
    """With -k 0 no .aspx is written and the next run sends the whole file again."""
    rig.save(faults=[{"kind": "stall", "after_bytes": 1000}])
    args = [*rig.common(), "-k", "0", "--partial-file-suffix=.partial", B, "out"]
    assert rig.run(*args, token=rig.token(B)).returncode == 1
    assert [p.name for p in (rig.root / "out").iterdir()] == ["b.bin.partial"]
    assert rig.run(*args, token=rig.token(B)).returncode == 0
    assert rig.sessions()[1]["bytes_sent"] == len(CONTENT[B])
    assert rig.sessions()[1]["resumed"] == {}


def test_without_suffix_the_partial_has_the_final_name(rig: Rig) -> None:
    """Without --partial-file-suffix the file grows under its own name beside its .aspx."""
    rig.save(faults=[{"kind": "stall", "after_bytes": 500}])
    assert rig.run(*rig.common(), "-k1", B, "out", token=rig.token(B)).returncode == 1
    assert sorted(p.name for p in (rig.root / "out").iterdir()) == ["b.bin", "b.bin.aspx"]
    assert rig.run(*rig.common(), "-k1", B, "out", token=rig.token(B)).returncode == 0
    assert rig.sessions()[1]["resumed"] == {B: 500}


def test_sigterm_stops_promptly_and_keeps_partials(rig: Rig) -> None:
    """SIGTERM mid-file exits 1 and leaves the .partial and .aspx for a later resume."""
    rig.save(rate_limit=50_000.0)
    args = [*rig.common(), "-k2", "--partial-file-suffix=.partial", B, "out"]
    proc = subprocess.Popen(
        [str(rig.ascp), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=rig.env(rig.token(B)),
        cwd=rig.root,
    )
    partial = rig.root / "out" / "b.bin.partial"
    deadline = time.monotonic() + 20
    while not (partial.exists() and partial.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert b"interrupted by signal 15" in err
    assert partial.exists()
    assert (rig.root / "out" / "b.bin.aspx").exists()
    assert not (rig.root / "out" / "b.bin").exists()
    assert rig.sessions()[0]["status"] == "error"


# ----- faults


@pytest.mark.parametrize(
    ("fault", "message", "on_stderr"),
    [
        ({"kind": "auth"}, "failed to authenticate", True),
        ({"kind": "tcp"}, "Failed to open TCP connection for SSH", True),
        ({"kind": "udp"}, "Client unable to connect to server (check UDP port and firewall)",
         False),
        ({"kind": "token_denied"}, "Management authorization refused: token denied by server",
         False),
        ({"kind": "token_mismatch"}, "Token doesn't match file-list/file-pair-list", False),
        ({"kind": "disk"}, "Disk write failed", False),
        ({"kind": "no_such_file"}, "Server aborted session: No such file or directory", False),
        ({"kind": "stall", "after_bytes": 10}, "Data transfer stalled, timed out", False),
    ],
)  # fmt: skip
def test_session_faults(rig: Rig, fault: dict[str, Any], message: str, on_stderr: bool) -> None:
    """Each session fault ends the session with ascp's own words, exit 1."""
    rig.save(faults=[fault])
    result = rig.run(*rig.common(), A, "out", token=rig.token(A))
    assert result.returncode == 1
    assert result.stdout.endswith(f"Session Stop  (Error: {message})\n")
    assert (f"{rig.ascp}: {message}, exiting.\n" == result.stderr) is on_stderr
    assert rig.sessions()[0]["fault"] == fault
    assert rig.sessions()[0]["error"] == message


def test_fault_counts_persist_across_processes(rig: Rig) -> None:
    """`times: 2` fails exactly two sessions, then the next one succeeds."""
    rig.save(faults=[{"kind": "tcp", "times": 2}])
    codes = [rig.run(*rig.common(), A, "out", token=rig.token(A)).returncode for _ in range(3)]
    assert codes == [1, 1, 0]


def test_faults_are_consumed_in_order_and_saving_again_does_not_rearm(rig: Rig) -> None:
    """Each session takes the first live fault; re-saving keeps counts; reset re-arms."""
    rig.save(faults=[{"kind": "auth"}, {"kind": "udp"}])

    def run() -> subprocess.CompletedProcess[str]:
        return rig.run(*rig.common(), A, "out", token=rig.token(A))

    assert "failed to authenticate" in run().stdout
    rig.save()
    assert "check UDP port" in run().stdout
    assert run().returncode == 0
    reset_fault_state(rig.config_path)
    assert "failed to authenticate" in run().stdout


def test_fault_with_path_applies_only_to_sessions_that_include_it(rig: Rig) -> None:
    """A fault naming a path skips sessions without that path and waits for one with it."""
    rig.save(faults=[{"kind": "tcp", "path": C}])
    assert rig.run(*rig.common(), A, "out", token=rig.token(A)).returncode == 0
    folder = rig.run(*rig.common(), "-d", "/SDY1/ResultFiles", "out", token=rig.token())
    assert folder.returncode == 1
    assert rig.run(*rig.common(), C, "out", token=rig.token(C)).returncode == 0


def test_partial_fault_fails_one_file_and_keeps_the_others(rig: Rig) -> None:
    """`partial` makes one file fail half-way while the rest arrive: Partial Completion, exit 1."""
    rig.save(faults=[{"kind": "partial", "path": B}])
    pairs = rig.pairs(A, B, C)
    args = [*rig.common(), "-k2", "--partial-file-suffix=.partial", f"--file-pair-list={pairs}"]
    result = rig.run(*args, "out", token=rig.token())
    assert result.returncode == 1
    assert "Partial Completion:" in result.stdout
    assert "; 1 file failed." in result.stdout
    assert result.stdout.endswith("Session Stop  (Error: Data transfer stalled, timed out)\n")
    base = rig.root / "out"
    assert (base / A.lstrip("/")).read_bytes() == CONTENT[A]
    assert (base / C.lstrip("/")).read_bytes() == CONTENT[C]
    assert (base / (B.lstrip("/") + ".partial")).stat().st_size == len(CONTENT[B]) // 2
    assert (base / (B.lstrip("/") + ".aspx")).exists()


def test_corrupt_and_truncate_claim_success(rig: Rig) -> None:
    """`corrupt` flips a byte and `truncate` writes half, yet ascp reports success."""
    rig.save(faults=[{"kind": "corrupt", "path": B}, {"kind": "truncate", "path": B}])
    for _ in range(2):
        result = rig.run(*rig.common(), B, "out", token=rig.token(B))
        assert result.returncode == 0
        assert "Completed:" in result.stdout
        got = (rig.root / "out" / "b.bin").read_bytes()
        assert got != CONTENT[B]
        if len(got) == len(CONTENT[B]):
            assert sum(x != y for x, y in zip(got, CONTENT[B], strict=True)) == 1
        else:
            assert got == CONTENT[B][: len(CONTENT[B]) // 2]


def test_hang_delays_the_session_then_it_proceeds(rig: Rig) -> None:
    """`hang` keeps the process alive before copying, then the transfer goes on."""
    rig.save(faults=[{"kind": "hang", "seconds": 0.2}])
    result = rig.run(*rig.common(), A, "out", token=rig.token(A))
    assert result.returncode == 0
    assert (rig.root / "out" / "a.txt").read_bytes() == CONTENT[A]


# ----- logs


def test_transfer_log_dir_holds_hard_linked_logs(rig: Rig) -> None:
    """-L DIR writes aspera-scp-transfer.log and its hard link aspera-scp-transfer.0.log."""
    result = rig.run(*rig.common(), "-L", "logs", A, "out", token=rig.token(A))
    assert result.returncode == 0
    log = rig.root / "logs" / "aspera-scp-transfer.log"
    assert log.stat().st_nlink == 2
    assert os.path.samefile(log, rig.root / "logs" / "aspera-scp-transfer.0.log")
    assert "FASP Session Start" in log.read_text()


def test_session_log_records_argv_verbatim(rig: Rig) -> None:
    """The session log keeps argv as given, so tests can check what callers put there."""
    token = rig.token(A)
    rig.run(*rig.common(), "-W", token, A, "out")
    (record,) = rig.sessions()
    assert record["argv"] == [str(rig.ascp), *rig.common(), "-W", token, A, "out"]
    assert record["pid"] > 0
    assert record["bytes_sent"] == len(CONTENT[A])


def test_config_can_come_from_the_environment(rig: Rig) -> None:
    """`python -m immsync.testing.fake_ascp` finds its config through IMMSYNC_FAKE_ASCP_CONFIG."""
    env = rig.env(rig.token(A))
    env["IMMSYNC_FAKE_ASCP_CONFIG"] = str(rig.config_path)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    result = subprocess.run(
        [sys.executable, "-m", "immsync.testing.fake_ascp", *rig.common(), A, "out"],
        capture_output=True,
        text=True,
        env=env,
        cwd=rig.root,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (rig.root / "out" / "a.txt").exists()
