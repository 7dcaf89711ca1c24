"""Resuming over HTTPS when the server does not answer the range it was asked for.

A 416 to a resume of a partial file, and a 206 that starts somewhere other than where
the partial file ends, must both start the file over: joining bytes at the wrong offset
would make a file of the right size and the wrong content.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from immsync.errors import TransferError
from immsync.https import HttpsTransfer
from immsync.immport import Credentials, ImmportClient
from immsync.model import RemoteFile, StudyFile, TransferBatch
from immsync.retry import RetryPolicy
from immsync.testing.emulator import Emulator
from immsync.testing.sampledata import build_sample_tree, write_file

PASSWORD = "s3cret-Pa55word"
BIG = "SDY1/ResultFiles/big.bin"
DATA = random.Random(11).randbytes(300_000)
HAVE = 100_000
"""Bytes already in the partial file."""


def fetch(transfer: HttpsTransfer, file: RemoteFile, staging: Path) -> None:
    transfer.fetch(TransferBatch(files=(file,), staging=staging, label="b1"), lambda e: None)


def plant_partial(staging: Path) -> None:
    part = staging / (BIG + ".partial")
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA[:HAVE])


# -- against the emulator's DRS links ----------------------------------------------------------


@pytest.fixture(name="emu")
def _emu(tmp_path: Path) -> Iterator[Emulator]:
    tree = tmp_path / "immport"
    build_sample_tree(tree)
    write_file(tree, BIG, DATA)
    with Emulator(tree, world="legacy", username="alice", password=PASSWORD) as emulator:
        yield emulator


def test_a_416_to_a_resume_starts_the_file_over(emu: Emulator, tmp_path: Path):
    """The server refuses the range (416, no size given): the partial is dropped, 200 whole."""
    session = requests.Session()
    client = ImmportClient(
        session,
        token_url=emu.token_url,
        data_url=emu.data_url,
        query_url=emu.query_url,
        credentials=Credentials("alice", PASSWORD),
        timeout=10.0,
        retry=RetryPolicy(attempts=1),
    )
    staging = tmp_path / "staging"
    plant_partial(staging)
    emu.inject_blob_fault(
        "error", status=416, code="InvalidRange", message="The requested range is not satisfiable"
    )
    transfer = HttpsTransfer(client, jobs=1, chunk_size=64 * 1024)
    try:
        fetch(transfer, RemoteFile(BIG, len(DATA), "2017-06-15T13:06:07Z"), staging)
    finally:
        transfer.close()
        session.close()
    assert (staging / BIG).read_bytes() == DATA
    assert [(r.range, r.status) for r in emu.blob_requests] == [
        (f"bytes={HAVE}-", 416),
        (None, 200),
    ]
    assert emu.bytes_served(BIG) == len(DATA)


# -- against a server that answers the wrong part --------------------------------------------------


@dataclass
class Blob:
    """A tiny link server: GET /blob answers DATA, and a Range the way *mode* says."""

    mode: str
    """``"from_zero"``: any Range gets a 206 of the whole file (Content-Range 0-...);
    ``"always_206"``: even a request without Range gets a 206."""
    ranges: list[str | None] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    blob: Blob

    def do_GET(self) -> None:
        wanted = self.headers.get("Range")
        self.blob.ranges.append(wanted)
        if wanted is None and self.blob.mode != "always_206":
            self.send_response(200)
        else:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(DATA) - 1}/{len(DATA)}")
        self.send_header("Content-Length", str(len(DATA)))
        self.end_headers()
        self.wfile.write(DATA)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True)
class Link:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


class Links:
    """What HttpsTransfer asks of the ImmPort client (study_files, drs), all pointing at *url*."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.drs = self

    def study_files(self, accession: str) -> Mapping[str, StudyFile]:
        return {BIG: StudyFile(BIG, "0f1e2d3c-0000-4000-8000-000000000001", None, len(DATA))}

    def routes(
        self, file_id: str, *, size: int | None, md5: str | None, shortcut_methods: object = ()
    ) -> list[str]:
        return ["shortcut s3"]

    def link(self, file_id: str, route: str, *, fresh: bool = False) -> Link:
        return Link(self.url)

    def forget(self, file_id: str) -> None:
        pass


@pytest.fixture(name="serve")
def _serve() -> Iterator[object]:
    servers: list[ThreadingHTTPServer] = []

    def serve(blob: Blob) -> HttpsTransfer:
        handler = type("Handler", (_Handler,), {"blob": blob})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/blob"
        return HttpsTransfer(Links(url), jobs=1, chunk_size=64 * 1024, methods=("s3",))

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_206_from_the_wrong_offset_starts_the_file_over(serve, tmp_path: Path):
    """Asked for bytes 100000-, the server sends from byte 0: never appended; fetched whole."""
    blob = Blob("from_zero")
    transfer = serve(blob)
    staging = tmp_path / "staging"
    plant_partial(staging)
    fetch(transfer, RemoteFile(BIG, len(DATA), "2017-06-15T13:06:07Z"), staging)
    transfer.close()
    assert (staging / BIG).read_bytes() == DATA
    assert blob.ranges == [f"bytes={HAVE}-", None]


def test_a_206_nobody_asked_for_is_refused(serve, tmp_path: Path):
    """A 206 to a request without Range is not the file: a permanent error, nothing staged."""
    transfer = serve(Blob("always_206"))
    staging = tmp_path / "staging"
    with pytest.raises(TransferError) as raised:
        fetch(transfer, RemoteFile(BIG, len(DATA), "2017-06-15T13:06:07Z"), staging)
    transfer.close()
    assert raised.value.kind == "permanent"
    assert "the server answered part of a file that was not asked for" in raised.value.message
    assert not (staging / BIG).exists()
