"""Choosing a transport and falling back from ascp to HTTPS: units with fakes, then the CLI."""

from __future__ import annotations

import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import World

from immsync.errors import (
    ApiError,
    ExitCode,
    RemoteNotFound,
    TransferError,
    TransportUnavailable,
    UsageError,
)
from immsync.model import ProgressCallback, RemoteFile, TransferBatch
from immsync.state import StateStore, state_path
from immsync.testing.sampledata import write_file
from immsync.transports import (
    AsperaRetired,
    AsperaTokens,
    AutoTransfer,
    choose_transport,
    is_connection_failure,
)

TCP = "Failed to open TCP connection for SSH"
UDP = "Client unable to connect to server (check UDP port and firewall)"
BIG = "SDY1/ResultFiles/big.bin"
BIG_SIZE = 3 * 1024 * 1024 + 5
MIB = 1024 * 1024


@dataclass
class FakeTransfer:
    """Records each batch; raises the next queued error instead, if any."""

    name: str
    errors: list[BaseException] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    terminated: bool = False

    def fetch(self, batch: TransferBatch, on_progress: ProgressCallback) -> None:
        self.fetched.append(batch.label)
        if self.errors:
            raise self.errors.pop(0)

    def terminate(self) -> None:
        self.terminated = True


def batch(label: str) -> TransferBatch:
    return TransferBatch((RemoteFile("SDY1/a.txt", 1, ""),), Path("/nonexistent"), label)


def failure(kind: str, reason: str) -> TransferError:
    return TransferError(f"session failed: {reason}", kind=kind, reason=reason)


# -- recognising connection failures -------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason", "expected"),
    [
        ("unreachable", TCP, True),
        ("unreachable", UDP, True),
        ("unreachable", "failed to open connection to remote host", True),
        ("transient", "Data transfer stalled, timed out", False),
        ("transient", TCP, False),  # the kind decides, never the wording
        ("not_found", "No such file or directory", False),
        ("permanent", TCP, False),
        ("auth", "failed to authenticate", False),
    ],
)
def test_connection_failures_are_recognised(kind: str, reason: str, expected: bool):
    """Only a failure to reach the server at all counts as a connection failure."""
    assert is_connection_failure(failure(kind, reason)) is expected


# -- AutoTransfer ------------------------------------------------------------------------


def test_a_batch_that_cannot_connect_moves_to_the_secondary():
    """ascp failing to open its TCP connection: the same batch goes over HTTPS at once."""
    primary = FakeTransfer("ascp", [failure("unreachable", TCP)])
    secondary = FakeTransfer("https")
    auto = AutoTransfer(primary, secondary)
    auto.fetch(batch("b1"), lambda _e: None)
    auto.fetch(batch("b2"), lambda _e: None)
    assert primary.fetched == ["b1", "b2"]
    assert secondary.fetched == ["b1"]
    assert auto.batches == {"ascp": 1, "https": 1}


@pytest.mark.parametrize(
    "error",
    [
        failure("not_found", "No such file or directory"),
        failure("transient", "Data transfer stalled, timed out"),
        failure("token", "token denied"),
        failure("disk", "Disk write failed"),
    ],
)
def test_other_failures_are_not_moved(error: TransferError):
    """A missing file, a stall, a refused token or a full disk is raised, not rerouted."""
    primary = FakeTransfer("ascp", [error])
    secondary = FakeTransfer("https")
    with pytest.raises(TransferError) as caught:
        AutoTransfer(primary, secondary).fetch(batch("b1"), lambda _e: None)
    assert caught.value is error
    assert secondary.fetched == []


def test_an_unavailable_primary_is_dropped_for_the_rest_of_the_run():
    """ascp that cannot run at all: this batch and every later one use HTTPS only."""
    primary = FakeTransfer("ascp", [TransportUnavailable("ascp vanished")])
    secondary = FakeTransfer("https")
    auto = AutoTransfer(primary, secondary)
    for label in ("b1", "b2", "b3"):
        auto.fetch(batch(label), lambda _e: None)
    assert primary.fetched == ["b1"]
    assert secondary.fetched == ["b1", "b2", "b3"]


def test_repeated_connection_failures_switch_to_the_secondary():
    """After switch_after connection failures in a row, ascp is not tried again."""
    primary = FakeTransfer("ascp", [failure("unreachable", TCP) for _ in range(5)])
    secondary = FakeTransfer("https")
    auto = AutoTransfer(primary, secondary, switch_after=2)
    for label in ("b1", "b2", "b3", "b4"):
        auto.fetch(batch(label), lambda _e: None)
    assert primary.fetched == ["b1", "b2"]
    assert secondary.fetched == ["b1", "b2", "b3", "b4"]


def test_a_success_resets_the_failure_count():
    """Connection failures separated by a success never switch ascp off."""
    primary = FakeTransfer("ascp")
    secondary = FakeTransfer("https")
    auto = AutoTransfer(primary, secondary, switch_after=2)
    for label in ("b1", "b2", "b3", "b4"):
        if label in ("b1", "b3"):
            primary.errors.append(failure("unreachable", TCP))
        auto.fetch(batch(label), lambda _e: None)
    assert primary.fetched == ["b1", "b2", "b3", "b4"]
    assert secondary.fetched == ["b1", "b3"]


def test_terminate_stops_both_transports():
    """terminate() reaches the primary and the secondary."""
    primary, secondary = FakeTransfer("ascp"), FakeTransfer("https")
    AutoTransfer(primary, secondary).terminate()
    assert primary.terminated and secondary.terminated


# -- AsperaTokens: the first token request is the probe --------------------------------------


class Mint:
    """A token endpoint that answers from a script: a token, or an error to raise."""

    def __init__(self, *answers: str | BaseException, delay: float = 0.0) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.delay = delay

    def __call__(self, paths: object) -> str:
        self.calls += 1
        time.sleep(self.delay)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.mark.parametrize("status", [404, 410])
def test_a_404_or_410_first_means_the_aspera_service_is_gone(status: int):
    """The first request answering 404/410: AsperaRetired now and later, with no request."""
    gone = (
        RemoteNotFound("POST x/download/token answered HTTP 404", status=404)
        if status == 404
        else ApiError("POST x/download/token failed with HTTP 410", status=410)
    )
    mint = Mint(gone)
    tokens = AsperaTokens(mint)
    for _ in range(3):
        with pytest.raises(AsperaRetired, match=f"does not answer .*HTTP {status}"):
            tokens(["/SDY1/a"])
    assert mint.calls == 1


def test_a_404_after_a_token_was_issued_is_a_missing_path():
    """Once the service answered, a 404 is about the paths: raised as it came."""
    missing = RemoteNotFound("no such path", status=404)
    tokens = AsperaTokens(Mint("t1", missing))
    assert tokens(["/SDY1/a"]) == "t1"
    with pytest.raises(RemoteNotFound) as caught:
        tokens(["/SDY1/gone"])
    assert caught.value is missing


@pytest.mark.parametrize("status", [403, 500])
def test_other_first_failures_pass_through_and_the_next_request_probes_again(status: int):
    error = ApiError("refused", status=status)
    mint = Mint(error, "t2")
    tokens = AsperaTokens(mint)
    with pytest.raises(ApiError) as caught:
        tokens(["/SDY1/a"])
    assert caught.value is error and not isinstance(caught.value, AsperaRetired)
    assert tokens(["/SDY1/a"]) == "t2"


def test_concurrent_first_requests_send_one_probe():
    """Batches starting together: one request decides; the others wait and get its answer."""
    mint = Mint(RemoteNotFound("gone", status=404), delay=0.2)
    tokens = AsperaTokens(mint)
    raised: list[BaseException] = []

    def ask() -> None:
        try:
            tokens(["/SDY1/a"])
        except AsperaRetired as exc:
            raised.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mint.calls == 1 and len(raised) == 4


def test_a_retired_aspera_service_moves_the_run_with_one_notice_and_no_warning(
    caplog: pytest.LogCaptureFixture,
):
    primary = FakeTransfer("ascp", [AsperaRetired("ImmPort's Aspera service does not answer")])
    secondary = FakeTransfer("https")
    notices: list[str] = []
    auto = AutoTransfer(primary, secondary, notice=notices.append)
    with caplog.at_level("WARNING", logger="immsync"):
        for label in ("b1", "b2", "b3"):
            auto.fetch(batch(label), lambda _e: None)
    assert primary.fetched == ["b1"]
    assert secondary.fetched == ["b1", "b2", "b3"]
    assert len(notices) == 1 and "does not answer" in notices[0]
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []


# -- choose_transport ---------------------------------------------------------------------


def _choose(mode: str, *, ascp_found: bool, origin: str = "") -> tuple[object, str]:
    def probe() -> str:
        if not ascp_found:
            raise TransportUnavailable("ascp (IBM Aspera) was not found")
        return "found at /opt/aspera/bin/ascp"

    choice = choose_transport(
        mode,
        make_ascp=lambda: FakeTransfer("ascp"),
        make_https=lambda: FakeTransfer("https"),
        probe_ascp=probe,
        origin=origin,
    )
    return choice.transfer, choice.reason


def test_auto_takes_ascp_with_https_behind_it_when_ascp_is_found():
    """auto with ascp installed: an AutoTransfer, and the reason names where ascp is."""
    transfer, reason = _choose("auto", ascp_found=True)
    assert isinstance(transfer, AutoTransfer)
    assert reason.startswith("ascp (found at /opt/aspera/bin/ascp)")


def test_auto_takes_https_when_ascp_is_missing():
    """auto without ascp: HTTPS only, and the reason says why."""
    transfer, reason = _choose("auto", ascp_found=False)
    assert isinstance(transfer, FakeTransfer) and transfer.name == "https"
    assert reason == "https (no ascp installed; -v says where it looked)"


@pytest.mark.parametrize("mode", ["ascp", "https"])
def test_a_forced_mode_is_taken_as_given(mode: str):
    """ascp or https as asked, even when the other is available; the origin is named."""
    transfer, reason = _choose(mode, ascp_found=mode == "https", origin="--transport")
    assert isinstance(transfer, FakeTransfer) and transfer.name == mode
    assert reason == f"{mode} (--transport)"


def test_an_unknown_mode_is_a_usage_error():
    """A transport other than ascp, https or auto is refused."""
    with pytest.raises(UsageError, match="unknown transport 'ftp'"):
        _choose("ftp", ascp_found=True)


# -- through the command line --------------------------------------------------------------


SDY1 = "  - accession: SDY1\n"


def remote_files(world: World) -> list[str]:
    base = world.remote / "SDY1"
    return sorted(p.relative_to(world.remote).as_posix() for p in base.rglob("*") if p.is_file())


def over_https(world: World) -> set[str]:
    return {r.path for r in world.emulator.blob_requests if r.path and r.status in (200, 206)}


def over_ascp(world: World) -> set[str]:
    return {s.lstrip("/") for session in world.sessions() for s in session["completed"]}


def recorded(world: World) -> dict:
    with StateStore.open(state_path(world.dest), create=False) as store:
        return store.entries()


def assert_synced(world: World) -> None:
    assert world.local_files() == remote_files(world)
    for path in remote_files(world):
        assert (world.dest / path).read_bytes() == (world.remote / path).read_bytes()
    assert sorted(recorded(world)) == remote_files(world)


def no_ascp_anywhere(world: World, tmp_path: Path) -> None:
    world.env["IMMSYNC_ASCP"] = ""  # naming a missing ascp is an error of its own
    world.env["HOME"] = str(tmp_path / "empty-home")
    world.env["PATH"] = str(tmp_path / "empty-bin")


def test_without_ascp_auto_syncs_over_https_and_a_rerun_moves_nothing(
    world: World, tmp_path: Path
):
    """No ascp installed anywhere: HTTPS does it all; a rerun is a no-op."""
    world.write_manifest(SDY1)
    no_ascp_anywhere(world, tmp_path)
    first = world.apply()
    assert first.exit_code == 0, first.output
    assert "transport: https (no ascp installed; -v says where it looked)" in first.stderr
    assert_synced(world)
    assert world.sessions() == []
    assert over_https(world) == set(remote_files(world))
    requests_before = len(world.emulator.blob_requests)
    second = world.apply()
    assert second.exit_code == 0, second.output
    assert "nothing transferred" in second.output
    assert "transport:" not in second.stderr  # nothing to move, nothing to choose
    assert len(world.emulator.blob_requests) == requests_before
    assert world.run("verify", str(world.manifest_path)).exit_code == 0


def test_auto_uses_ascp_when_it_is_installed(world: World):
    """With ascp found, auto moves the files by ascp and says where ascp is."""
    world.write_manifest(SDY1)
    result = world.apply()
    assert result.exit_code == 0, result.output
    assert f"transport: ascp (found at {world.aspera.ascp})" in result.stderr
    assert over_ascp(world) == set(remote_files(world))
    assert world.emulator.blob_requests == []


def test_transport_https_skips_ascp_even_when_installed(world: World):
    """--transport https: no ascp session, no Aspera token, every file over HTTPS."""
    world.write_manifest(SDY1)
    result = world.apply("--transport", "https")
    assert result.exit_code == 0, result.output
    assert "transport: https (--transport)" in result.stderr
    assert world.sessions() == []
    assert world.emulator.count("/data/download/token") == 0
    assert_synced(world)


def test_the_manifest_chooses_and_the_option_overrides(world: World):
    """A manifest's transport: https is used; --transport ascp wins over it."""
    world.manifest_path.write_text(
        f"version: 1\ndestination: data\ntransport: https\nstudies:\n{SDY1}"
    )
    first = world.apply()
    assert first.exit_code == 0, first.output
    assert "transport: https (the manifest's transport: https)" in first.stderr
    assert world.sessions() == []
    (world.dest / "SDY1/StudyFiles/Study_design.txt").unlink()
    second = world.apply("--transport", "ascp")
    assert second.exit_code == 0, second.output
    assert "transport: ascp (--transport)" in second.stderr
    assert over_ascp(world) == {"SDY1/StudyFiles/Study_design.txt"}


def test_an_unknown_manifest_transport_is_refused(world: World):
    """transport: ftp in a manifest is a validation error naming the choices."""
    world.manifest_path.write_text(
        f"version: 1\ndestination: data\ntransport: ftp\nstudies:\n{SDY1}"
    )
    result = world.run("validate", str(world.manifest_path))
    assert result.exit_code == ExitCode.USAGE
    assert "transport: unknown transport 'ftp': use ascp, https or auto" in result.stderr


def test_the_transport_line_stays_off_stdout_and_out_of_quiet_runs(world: World):
    """The transport line goes to stderr only (never into --json's stdout), not with -q."""
    world.write_manifest(SDY1)
    result = world.apply("--json", "--transport", "https")
    assert result.exit_code == 0
    assert "transport:" not in result.stdout
    (world.dest / "SDY1/StudyFiles/Study_design.txt").unlink()
    quiet = world.run("-q", "apply", str(world.manifest_path), "--session-stagger", "0")
    assert quiet.exit_code == 0
    assert "transport:" not in quiet.stderr


def test_a_mixed_run_moves_unreachable_batches_over_https(world: World):
    """One batch whose ascp session cannot connect goes over HTTPS; the others by ascp."""
    world.write_manifest(SDY1)
    blocked = "SDY1/StudyFiles/Study_design.txt"
    world.configure_aspera(faults=[{"kind": "tcp", "path": "/" + blocked, "times": 99}])
    result = world.apply("--batch-files", "2", "--jobs", "1")
    assert result.exit_code == 0, result.output
    assert "could not connect" in result.stderr and "moving this batch over https" in result.stderr
    https, ascp = over_https(world), over_ascp(world)
    assert blocked in https and blocked not in ascp
    assert ascp and https and not (ascp & https)
    assert ascp | https == set(remote_files(world))
    assert_synced(world)


def test_a_file_missing_at_its_source_fails_alone(world: World):
    """Over HTTPS, a file whose source is gone fails (exit 5); the others are recorded."""
    world.write_manifest(SDY1)
    gone = "SDY1/StudyFiles/Study_design.txt"
    for method, status in (("s3", 404), ("stream", 500)):
        world.emulator.inject_blob_fault(
            "error", method=method, path=gone, status=status, code="NoSuchKey",
            message="The specified key does not exist.", times=99,
        )
    result = world.apply("--transport", "https")
    assert result.exit_code == ExitCode.TRANSFER
    assert gone in result.stderr and "missing at its source" in result.stderr
    assert sorted(recorded(world)) == [p for p in remote_files(world) if p != gone]


def test_an_interrupted_https_download_resumes_in_the_next_run(world: World):
    """A download cut short in one run resumes in the next: no byte is served twice."""
    write_file(world.remote, BIG, random.Random(3).randbytes(BIG_SIZE))
    world.write_manifest("  - accession: SDY1\n    paths: [ResultFiles/big.bin]\n")
    for method in ("s3", "stream"):
        world.emulator.inject_blob_fault("short", method=method, after_bytes=MIB)
    first = world.apply("--transport", "https", "--retries", "0")
    assert first.exit_code == ExitCode.TRANSFER
    partial = world.dest / ".immsync" / "staging" / (BIG + ".partial")
    assert partial.stat().st_size == 2 * MIB  # a MiB by s3, then one more by stream
    assert world.emulator.bytes_served(BIG) == 2 * MIB
    second = world.apply("--transport", "https")
    assert second.exit_code == 0, second.output
    assert world.emulator.bytes_served(BIG) == BIG_SIZE
    assert (world.dest / BIG).read_bytes() == (world.remote / BIG).read_bytes()
    assert not partial.exists()


# -- failing early and plainly ---------------------------------------------------------


def test_transport_ascp_without_ascp_fails_before_any_request(world):
    """--transport ascp with no ascp: exit 8 in the first second, nothing sent to ImmPort."""
    world.env["IMMSYNC_ASCP"] = ""
    world.env["PATH"] = str(world.root)  # an empty PATH: no ascp anywhere
    world.env["HOME"] = str(world.root)
    world.write_manifest("  - accession: SDY1\n")
    before = len(world.emulator.requests_log)
    result = world.apply("--transport", "ascp")
    assert result.exit_code == 8, result.output
    assert "ascp (IBM Aspera) was not found" in result.stderr
    assert "Applications" not in result.stderr or sys.platform == "darwin"
    assert len(world.emulator.requests_log) == before


def test_an_immsync_ascp_that_names_nothing_is_an_error_under_auto(world, tmp_path):
    world.env["IMMSYNC_ASCP"] = str(tmp_path / "no-such-ascp")
    world.write_manifest("  - accession: SDY1\n")
    before = len(world.emulator.requests_log)
    result = world.apply()
    assert result.exit_code == 8, result.output
    assert "IMMSYNC_ASCP is set to" in result.stderr
    assert len(world.emulator.requests_log) == before


def test_no_ascp_under_auto_is_one_short_line(today):
    today.write_manifest("  - accession: SDY1\n    paths: [StudyFiles]\n")
    today.env["PATH"] = str(today.root)
    today.env["HOME"] = str(today.root)
    result = today.apply()
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("transport:")]
    assert lines == ["transport: https (no ascp installed; -v says where it looked)"]
