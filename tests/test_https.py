"""The HTTPS/DRS transport against the emulator's DRS links: real HTTP, real sockets."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from private_mounts import PrivateMounts

from immsync.errors import ApiError, AuthError, RemoteNotFound, TransferError
from immsync.https import HttpsTransfer
from immsync.immport import Credentials, ImmportClient
from immsync.model import ProgressEvent, RemoteFile, TransferBatch
from immsync.retry import RetryPolicy
from immsync.testing.emulator import Emulator, file_uuid
from immsync.testing.sampledata import SAMPLE_MTIME, build_sample_tree, write_file

PASSWORD = "s3cret-Pa55word"  # the emulator's test account
FAST = RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0, jitter=0.0)
BIG = "SDY1/ResultFiles/big.bin"
BIG_SIZE = 3 * 1024 * 1024 + 123
SMALL = "SDY1/StudyFiles/Study_design.txt"
KIB = 1024


@pytest.fixture(name="tree")
def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "immport"
    build_sample_tree(root)
    write_file(root, BIG, random.Random(7).randbytes(BIG_SIZE))
    return root


@pytest.fixture(name="emu")
def _emu(tree: Path) -> Iterator[Emulator]:
    with Emulator(tree, world="legacy", username="alice", password=PASSWORD) as emulator:
        yield emulator


@pytest.fixture(name="client")
def _client(emu: Emulator) -> Iterator[ImmportClient]:
    session = requests.Session()
    yield ImmportClient(
        session,
        token_url=emu.token_url,
        data_url=emu.data_url,
        query_url=emu.query_url,
        credentials=Credentials("alice", PASSWORD),
        timeout=10.0,
        retry=FAST,
        sleep=lambda _s: None,
    )
    session.close()


@pytest.fixture(name="staging")
def _staging(tmp_path: Path) -> Path:
    return tmp_path / "dest" / ".immsync" / "staging"


@pytest.fixture(name="make")
def _make(client: ImmportClient) -> Iterator[Any]:
    made: list[HttpsTransfer] = []

    def make(**options: Any) -> HttpsTransfer:
        options.setdefault("jobs", 2)
        options.setdefault("chunk_size", 64 * KIB)
        transfer = HttpsTransfer(client, **options)
        made.append(transfer)
        return transfer

    yield make
    for transfer in made:
        transfer.close()


def remote(tree: Path, *paths: str) -> tuple[RemoteFile, ...]:
    return tuple(
        RemoteFile(p, (tree / p).stat().st_size, "2017-06-15T13:06:07Z") for p in paths
    )


def study_files(tree: Path) -> tuple[RemoteFile, ...]:
    paths = sorted(
        p.relative_to(tree).as_posix() for p in (tree / "SDY1").rglob("*") if p.is_file()
    )
    return remote(tree, *paths)


def fetch(
    transfer: HttpsTransfer, files: tuple[RemoteFile, ...], staging: Path, label: str = "b1"
) -> list[ProgressEvent]:
    events: list[ProgressEvent] = []
    transfer.fetch(TransferBatch(files=files, staging=staging, label=label), events.append)
    return events


def staged(staging: Path, path: str) -> Path:
    return staging / path


def partial(staging: Path, path: str) -> Path:
    return staging / (path + ".partial")


def served(emu: Emulator, path: str) -> int:
    """Bytes the emulator sent for *path*, once its reply threads have counted them: a
    client can finish reading before the server thread records the last chunk."""
    last = emu.bytes_served(path)
    for _ in range(40):
        time.sleep(0.05)
        now = emu.bytes_served(path)
        if now == last:
            break
        last = now
    return last


# -- the client's manifest and link calls ---------------------------------------------------


def test_study_files_give_each_file_its_drs_id(client: ImmportClient, tree: Path):
    """study_files maps every path of the study to its fileUUID, MD5 and size."""
    files = client.study_files("SDY1")
    assert files[SMALL].uuid == str(file_uuid(SMALL))
    assert files[SMALL].size == (tree / SMALL).stat().st_size
    assert files[SMALL].md5 is not None and len(files[SMALL].md5) == 32
    assert set(files) == {f.path for f in study_files(tree)}


def test_the_study_manifest_is_fetched_once_per_run(client: ImmportClient, emu: Emulator):
    """Checksums for planning and DRS ids for downloading share one manifest request."""
    assert client.study_checksums("SDY1")
    assert client.study_files("SDY1")
    assert client.study_files("SDY1")
    assert emu.count("/data/query/api/study/manifest/SDY1") == 1


def test_drs_url_answers_a_link_and_404_for_an_unknown_id(client: ImmportClient):
    """drs_url returns the link from the DRS reply; an unknown id is RemoteNotFound."""
    link = client.drs_url(str(file_uuid(SMALL)), "s3")
    assert link.startswith("http://127.0.0.1:") and "/_blob/s3/" in link
    assert requests.get(link, timeout=10).status_code == 200
    with pytest.raises(RemoteNotFound):
        client.drs_url("00000000-0000-0000-0000-000000000000", "stream")


def test_drs_url_refuses_a_plain_http_link_to_a_remote_host(client: ImmportClient, emu: Emulator):
    """A DRS link over plain http to a non-loopback host is refused, not fetched."""
    client.bearer_token()
    emu.inject("/data/query/drs/download/", status=200, body={"url": "http://example.org/x?sig=1"})
    with pytest.raises(ApiError, match="plain-http download link"):
        client.drs_url(str(file_uuid(SMALL)), "s3")


# -- the emulator's links ---------------------------------------------------------------------


def test_links_honour_range_and_answer_416_past_the_end(client: ImmportClient, tree: Path):
    """A link answers 206 with Content-Range for a range and 416 with the size past the end."""
    link = client.drs_url(str(file_uuid(BIG)), "s3")
    data = (tree / BIG).read_bytes()
    part = requests.get(link, headers={"Range": "bytes=100-199"}, timeout=10)
    assert (part.status_code, part.content) == (206, data[100:200])
    assert part.headers["Content-Range"] == f"bytes 100-199/{BIG_SIZE}"
    tail = requests.get(link, headers={"Range": "bytes=-10"}, timeout=10)
    assert tail.content == data[-10:]
    past = requests.get(link, headers={"Range": f"bytes={BIG_SIZE}-"}, timeout=10)
    assert past.status_code == 416
    assert past.headers["Content-Range"] == f"bytes */{BIG_SIZE}"


def test_expired_links_answer_s3_access_denied(client: ImmportClient, emu: Emulator):
    """An expired link answers 403 with S3's XML AccessDenied / Request has expired."""
    emu.issue_expired_links(1)
    reply = requests.get(client.drs_url(str(file_uuid(SMALL)), "s3"), timeout=10)
    assert reply.status_code == 403
    assert "<Code>AccessDenied</Code><Message>Request has expired</Message>" in reply.text
    assert emu.bytes_served(SMALL) == 0


# -- downloading --------------------------------------------------------------------------


def test_a_batch_lands_in_staging_whole(make: Any, tree: Path, staging: Path, emu: Emulator):
    """Every file of the batch is in staging byte-identical, no .partial left, listing mtime."""
    files = study_files(tree)
    fetch(make(), files, staging)
    for f in files:
        assert staged(staging, f.path).read_bytes() == (tree / f.path).read_bytes()
        assert not partial(staging, f.path).exists()
        assert int(staged(staging, f.path).stat().st_mtime) == int(SAMPLE_MTIME)
    assert {r.method for r in emu.blob_requests} == {"s3"}


def test_progress_arrives_in_the_calling_thread(make: Any, tree: Path, staging: Path):
    """Progress events reach on_progress in the caller's thread, ending at 100% per file."""
    caller = threading.get_ident()
    threads: set[int] = set()
    events: list[ProgressEvent] = []

    def on_progress(event: ProgressEvent) -> None:
        threads.add(threading.get_ident())
        events.append(event)

    files = remote(tree, BIG, SMALL)
    make().fetch(TransferBatch(files=files, staging=staging, label="batch 1/1"), on_progress)
    assert threads == {caller}
    last = {e.name: e for e in events}
    assert last["big.bin"].bytes_done == BIG_SIZE and last["big.bin"].percent == 100
    assert {e.session for e in events} == {"batch 1/1"}
    assert len([e for e in events if e.name == "big.bin"]) > 10  # chunk by chunk


def test_downloads_are_bounded_and_reuse_sessions(client: ImmportClient, tree: Path, staging: Path):
    """With jobs=2, two sessions carry every file of the batch (connections reused)."""
    created: list[requests.Session] = []

    def factory() -> requests.Session:
        session = requests.Session()
        created.append(session)
        return session

    transfer = HttpsTransfer(client, jobs=2, session_factory=factory)
    fetch(transfer, study_files(tree), staging)
    fetch(transfer, remote(tree, BIG), staging / "again")
    transfer.close()
    assert 1 <= len(created) <= 2


def test_a_partial_file_is_resumed_without_resending_its_bytes(
    make: Any, tree: Path, staging: Path, emu: Emulator
):
    """An existing .partial is continued with Range: only the missing bytes are served."""
    data = (tree / BIG).read_bytes()
    part = partial(staging, BIG)
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1_000_000])
    fetch(make(), remote(tree, BIG), staging)
    assert staged(staging, BIG).read_bytes() == data
    assert served(emu, BIG) == BIG_SIZE - 1_000_000
    assert [r.range for r in emu.blob_requests] == ["bytes=1000000-"]


def test_a_cut_download_resumes_without_resending_what_it_had(
    make: Any, tree: Path, staging: Path, emu: Emulator
):
    """A body cut after 1 MiB keeps that MiB; the next attempt is served only the rest."""
    emu.inject_blob_fault("short", after_bytes=1024 * KIB)
    transfer = make(methods=("s3",))
    with pytest.raises(TransferError) as caught:
        fetch(transfer, remote(tree, BIG), staging)
    assert caught.value.kind == "transient"
    assert partial(staging, BIG).stat().st_size == 1024 * KIB
    assert served(emu, BIG) == 1024 * KIB
    fetch(transfer, remote(tree, BIG), staging)
    assert served(emu, BIG) == BIG_SIZE  # every byte sent exactly once
    assert staged(staging, BIG).read_bytes() == (tree / BIG).read_bytes()


def test_a_file_changed_since_its_partial_download_is_fetched_whole_again(
    make: Any, tree: Path, staging: Path, emu: Emulator
):
    """Resumes send If-Match on the ETag seen: new bytes upstream answer 412, no mix."""
    emu.inject_blob_fault("short", after_bytes=1024 * KIB)
    transfer = make(methods=("s3",))
    with pytest.raises(TransferError):
        fetch(transfer, remote(tree, BIG), staging)
    etag = staged(staging, BIG).with_name(staged(staging, BIG).name + ".etag")
    assert etag.read_text().strip().startswith('"')
    new = bytes(b ^ 0x5A for b in (tree / BIG).read_bytes())  # same size, same listing
    write_file(tree, BIG, new, mtime=SAMPLE_MTIME + 0.5)
    fetch(transfer, remote(tree, BIG), staging)
    assert staged(staging, BIG).read_bytes() == new
    assert [r.status for r in emu.blob_requests] == [200, 412, 200]
    assert served(emu, BIG) == 1024 * KIB + BIG_SIZE
    assert not etag.exists()  # done: nothing left to resume


def test_a_reset_connection_is_transient_and_resumes(
    make: Any, tree: Path, staging: Path, emu: Emulator
):
    """A reset mid-body is transient; the retry is served only what the partial lacks."""
    emu.inject_blob_fault("drop", after_bytes=1024 * KIB)
    transfer = make(methods=("s3",))
    with pytest.raises(TransferError) as caught:
        fetch(transfer, remote(tree, BIG), staging)
    assert caught.value.kind == "transient"
    # A reset may discard bytes the kernel had received but we had not read yet.
    kept = partial(staging, BIG).stat().st_size
    assert kept <= 1024 * KIB
    before = served(emu, BIG)
    fetch(transfer, remote(tree, BIG), staging)
    assert served(emu, BIG) - before == BIG_SIZE - kept
    assert staged(staging, BIG).read_bytes() == (tree / BIG).read_bytes()


def test_a_failed_s3_download_continues_over_stream(
    make: Any, tree: Path, staging: Path, emu: Emulator
):
    """s3 cut short mid-body falls back to stream, which resumes where s3 stopped."""
    emu.inject_blob_fault("short", method="s3", after_bytes=512 * KIB)
    fetch(make(), remote(tree, BIG), staging)
    assert staged(staging, BIG).read_bytes() == (tree / BIG).read_bytes()
    methods = [(r.method, r.range is not None) for r in emu.blob_requests]
    assert methods == [("s3", False), ("stream", True)]
    # What s3 sent and the stream did not have to send again add up to the file.
    assert served(emu, BIG) <= BIG_SIZE + 512 * KIB


def test_server_ignoring_range_restarts_cleanly(
    make: Any, tree: Path, staging: Path, emu: Emulator
):
    """A 200 to a Range request replaces the partial instead of appending to it."""
    data = (tree / BIG).read_bytes()
    part = partial(staging, BIG)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 5000)
    emu.blob_ignore_range = True
    fetch(make(), remote(tree, BIG), staging)
    assert staged(staging, BIG).read_bytes() == data
    assert served(emu, BIG) == BIG_SIZE


def test_a_whole_leftover_is_confirmed_by_416_not_downloaded(
    make: Any, tree: Path, staging: Path, emu: Emulator
):
    """A staged file of full size is confirmed with one 416 and no body bytes."""
    target = staged(staging, BIG)
    target.parent.mkdir(parents=True)
    target.write_bytes((tree / BIG).read_bytes())
    fetch(make(), remote(tree, BIG), staging)
    assert target.read_bytes() == (tree / BIG).read_bytes()
    assert served(emu, BIG) == 0
    assert [r.status for r in emu.blob_requests] == [416]


def test_a_partial_longer_than_the_file_is_discarded(
    make: Any, tree: Path, staging: Path, emu: Emulator
):
    """A .partial bigger than the listed size cannot be a prefix: it is replaced."""
    part = partial(staging, SMALL)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"y" * ((tree / SMALL).stat().st_size + 10))
    fetch(make(), remote(tree, SMALL), staging)
    assert staged(staging, SMALL).read_bytes() == (tree / SMALL).read_bytes()


def test_an_ascp_partial_with_its_checkpoint_is_started_over(
    make: Any, tree: Path, staging: Path, emu: Emulator
):
    """A .partial beside ascp's .aspx checkpoint may have holes: it is downloaded again whole."""
    data = (tree / BIG).read_bytes()
    part = partial(staging, BIG)
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:500_000] + bytes(500_000))  # a hole ascp would have filled
    sidecar = staged(staging, BIG).with_name("big.bin.aspx")
    sidecar.write_text("{}")
    fetch(make(), remote(tree, BIG), staging)
    assert staged(staging, BIG).read_bytes() == data
    assert served(emu, BIG) == BIG_SIZE
    assert not sidecar.exists()


def test_a_symlinked_partial_is_never_written_through(
    make: Any, tree: Path, staging: Path, tmp_path: Path
):
    """A symlink planted as the .partial is replaced, its target left untouched."""
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep")
    part = partial(staging, SMALL)
    part.parent.mkdir(parents=True)
    part.symlink_to(outside)
    fetch(make(), remote(tree, SMALL), staging)
    assert outside.read_bytes() == b"keep"
    assert staged(staging, SMALL).read_bytes() == (tree / SMALL).read_bytes()


# -- links that expire or fail ----------------------------------------------------------------


def test_an_expired_link_is_replaced_once(make: Any, tree: Path, staging: Path, emu: Emulator):
    """A 403 'Request has expired' asks for one fresh link and downloads with it."""
    emu.issue_expired_links(1)
    fetch(make(), remote(tree, SMALL), staging)
    assert staged(staging, SMALL).read_bytes() == (tree / SMALL).read_bytes()
    assert [(r.method, r.status) for r in emu.blob_requests] == [("s3", 403), ("s3", 200)]
    assert emu.count("/data/query/drs/download/s3/") == 2


def test_a_link_refused_twice_falls_back_to_stream(
    make: Any, tree: Path, staging: Path, emu: Emulator
):
    """Two refused s3 links in a row: the stream access method fetches the file."""
    emu.issue_expired_links(2)
    fetch(make(), remote(tree, SMALL), staging)
    assert [(r.method, r.status) for r in emu.blob_requests] == [
        ("s3", 403), ("s3", 403), ("stream", 200)
    ]


def test_s3_failing_with_500_falls_back_to_stream(
    make: Any, tree: Path, staging: Path, emu: Emulator
):
    """500s on s3 links only: every file still arrives, through stream links."""
    emu.inject_blob_fault("error", method="s3", times=99)
    files = study_files(tree)
    fetch(make(), files, staging)
    for f in files:
        assert staged(staging, f.path).read_bytes() == (tree / f.path).read_bytes()
    assert {r.method for r in emu.blob_requests if r.status == 200} == {"stream"}


def test_the_drs_endpoint_failing_for_s3_falls_back_to_stream(
    make: Any, tree: Path, staging: Path, emu: Emulator
):
    """The DRS endpoint answering 500 for s3 links: stream links are asked for instead."""
    emu.inject("/data/query/drs/download/s3/", status=500, times=99)
    fetch(make(), remote(tree, SMALL), staging)
    assert staged(staging, SMALL).exists()
    assert [r.method for r in emu.blob_requests] == ["stream"]


def test_a_missing_source_is_not_found(make: Any, tree: Path, staging: Path, emu: Emulator):
    """S3 NoSuchKey, then a stream 500 'The specified key does not exist.': kind not_found."""
    emu.inject_blob_fault(
        "error", method="s3", status=404, code="NoSuchKey",
        message="The specified key does not exist.",
    )
    emu.inject_blob_fault(
        "error", method="stream", status=500, code="", message="The specified key does not exist."
    )
    with pytest.raises(TransferError) as caught:
        fetch(make(), remote(tree, SMALL), staging)
    assert caught.value.kind == "not_found"
    assert SMALL in caught.value.message


def test_a_file_gone_from_the_manifest_is_not_found_and_the_rest_arrive(
    make: Any, tree: Path, staging: Path, client: ImmportClient
):
    """A file without a DRS id fails as not_found; the batch's other files still arrive."""
    client.study_files("SDY1")
    ghost = RemoteFile("SDY1/StudyFiles/ghost.txt", 10, "2017-06-15T13:06:07Z")
    with pytest.raises(TransferError) as caught:
        fetch(make(), (*remote(tree, SMALL), ghost), staging)
    assert caught.value.kind == "not_found"
    assert "ghost.txt" in caught.value.message
    assert staged(staging, SMALL).exists()


def test_a_short_body_is_transient(make: Any, tree: Path, staging: Path, emu: Emulator):
    """A body that ends before its Content-Length is a transient failure; the partial stays."""
    emu.inject_blob_fault("short", after_bytes=256 * KIB, times=2)
    with pytest.raises(TransferError) as caught:
        fetch(make(), remote(tree, BIG), staging)
    assert caught.value.kind == "transient"
    assert partial(staging, BIG).exists()


def test_a_stalled_body_times_out_as_transient(
    make: Any, tree: Path, staging: Path, emu: Emulator
):
    """No byte for longer than the read timeout: transient, with 'timed out'."""
    emu.inject_blob_fault("stall", after_bytes=64 * KIB, seconds=3.0)
    with pytest.raises(TransferError) as caught:
        fetch(make(read_timeout=0.3, methods=("s3",)), remote(tree, BIG), staging)
    assert caught.value.kind == "transient"
    assert "timed out" in caught.value.message


def test_size_disagreeing_with_the_listing_is_refused(make: Any, tree: Path, staging: Path):
    """A server offering another size than the listing's is a permanent, named failure."""
    stale = RemoteFile(SMALL, (tree / SMALL).stat().st_size + 5, "2017-06-15T13:06:07Z")
    with pytest.raises(TransferError) as caught:
        fetch(make(), (stale,), staging)
    assert caught.value.kind == "permanent"
    assert "changed upstream" in caught.value.message


def test_refused_credentials_are_not_a_file_error(emu: Emulator, tree: Path, staging: Path):
    """A refused sign-in raises AuthError from fetch, not a per-file TransferError."""
    session = requests.Session()
    client = ImmportClient(
        session,
        token_url=emu.token_url,
        data_url=emu.data_url,
        query_url=emu.query_url,
        credentials=Credentials("alice", "wrong"),
        retry=FAST,
        sleep=lambda _s: None,
    )
    with pytest.raises(AuthError):
        fetch(HttpsTransfer(client), remote(tree, SMALL), staging)
    session.close()


# -- secrets, stopping, disks -----------------------------------------------------------------


def test_links_never_appear_whole_in_logs_or_errors(
    make: Any, tree: Path, staging: Path, emu: Emulator, caplog: pytest.LogCaptureFixture
):
    """Logs at DEBUG and error messages show links without their query (the signature)."""
    caplog.set_level(logging.DEBUG, logger="immsync")
    emu.issue_expired_links(1)
    emu.inject_blob_fault("drop", after_bytes=100 * KIB, times=99)
    with pytest.raises(TransferError) as caught:
        fetch(make(), remote(tree, BIG), staging)
    # The emulator (the server side) logs its request lines; immsync's own logs are checked.
    logged = [r.getMessage() for r in caplog.records if not r.name.startswith("immsync.testing")]
    text = "\n".join(logged) + str(caught.value) + caught.value.reason
    assert "/_blob/s3/" in text  # the path is shown ...
    assert "sig=" not in text and "X-Amz" not in text  # ... its signature never


def test_terminate_stops_downloads_promptly(
    make: Any, tree: Path, staging: Path, emu: Emulator
):
    """terminate() mid-download: fetch raises 'interrupted', the partial stays, no new fetch."""
    emu.blob_chunk_delay = 0.02  # about 3 MiB/s
    transfer = make()
    started = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            transfer.fetch(
                TransferBatch(remote(tree, BIG), staging, "b1"),
                # Once bytes arrived: the body's first event says where it starts.
                lambda e: started.set() if e.bytes_done else None,
            )
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(10)
    transfer.terminate()
    worker.join(10)
    assert not worker.is_alive()
    assert isinstance(outcome[0], TransferError) and outcome[0].kind == "interrupted"
    assert 0 < partial(staging, BIG).stat().st_size < BIG_SIZE
    with pytest.raises(TransferError) as again:
        fetch(transfer, remote(tree, SMALL), staging)
    assert again.value.kind == "interrupted"


def test_a_full_disk_is_kind_disk(make: Any, tree: Path, tmp_path: Path):
    """Staging on a 256 KiB tmpfs: writing the 3 MiB file fails with kind 'disk'."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
        capture_output=True, text=True, check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        with pytest.raises(TransferError) as caught:
            fetch(make(), remote(tree, BIG, SMALL), small / "staging")
        assert caught.value.kind == "disk"
        assert "No space left" in caught.value.message
    finally:
        done = subprocess.run(["umount", str(small)], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(small)], capture_output=True, check=False)
    assert os.path.isdir(small)


def test_a_full_disk_is_kind_disk_without_root(
    make: Any, tree: Path, tmp_path: Path, private_mounts: PrivateMounts
):
    """The same on a 256 KiB tmpfs mounted in a private namespace (where the tests are not
    root): this process writes into it through the namespace's view of the folder."""
    small = private_mounts.seen(private_mounts.small_disk(tmp_path / "small", "256k"))
    with pytest.raises(TransferError) as caught:
        fetch(make(), remote(tree, BIG, SMALL), small / "staging")
    assert caught.value.kind == "disk"
    assert "No space left" in caught.value.message
