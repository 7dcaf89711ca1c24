"""DRS as the default way files travel, over real HTTP against the emulator's two worlds.

The GA4GH DRS API first (checked against the study file manifest), ImmPort's shortcut
behind it, ``drs://`` URIs, links kept for the run, the API key kept to ImmPort's hosts,
HTTPS concurrency, and ``auto`` choosing ascp only while ImmPort's Aspera service answers.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import PASSWORD, World

from immsync.app.config import HTTPS_JOBS
from immsync.errors import ExitCode, TransferError, UsageError
from immsync.https import DEFAULT_JOBS, HttpsTransfer
from immsync.immport import ApiKey, Credentials, ImmportClient
from immsync.immport.drs import drs_base_url, split_drs_uri
from immsync.model import RemoteFile, TransferBatch
from immsync.retry import RetryPolicy
from immsync.state import StateStore, state_path
from immsync.testing.emulator import Emulator, file_uuid

FAST = RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0, jitter=0.0)
DESIGN = "SDY1/StudyFiles/Study_design.txt"
HAI = "SDY1/ResultFiles/HAI_result/hai_results.txt"
FCS = "SDY1/ResultFiles/Flow_cytometry_result/02054141.001.52628.fcs"
OBJECTS = "/ga4gh/drs/v1/objects/"
SHORTCUT = "/data/query/drs/download/"
SERVICE_INFO = "/ga4gh/drs/v1/service-info"
TOKEN = "/data/download/token"
RETIRED_LINE = "ImmPort's Aspera service does not answer"


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(name="emu")
def _emu(today_tree: Path) -> Iterator[Emulator]:
    with Emulator(today_tree) as emulator:
        yield emulator


@pytest.fixture(name="api_key")
def _api_key(emu: Emulator) -> ApiKey:
    return ApiKey(emu.add_api_key().api_key, "test")


def make_client(emu: Emulator, api_key: ApiKey, *, drs_url: str | None = "") -> ImmportClient:
    return ImmportClient(
        requests.Session(),
        token_url=emu.token_url,
        data_url=emu.data_url,
        query_url=emu.query_url,
        drs_url=emu.drs_url if drs_url == "" else drs_url,
        credentials=Credentials(api_key=api_key),
        timeout=10.0,
        retry=FAST,
        sleep=lambda _s: None,
    )


@pytest.fixture(name="client")
def _client(emu: Emulator, api_key: ApiKey) -> ImmportClient:
    return make_client(emu, api_key)


@pytest.fixture(name="staging")
def _staging(tmp_path: Path) -> Path:
    return tmp_path / "dest" / ".immsync" / "staging"


def with_ascp(world: World) -> World:
    """*world* with the stand-in ascp and its key found, as an Aspera user has them."""
    world.env["IMMSYNC_ASCP"] = str(world.aspera.ascp)
    return world


def remote(tree: Path, *paths: str) -> tuple[RemoteFile, ...]:
    found = []
    for path in paths:
        data = (tree / path).read_bytes()
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        found.append(RemoteFile(path, len(data), "2017-06-15T13:06:07Z", md5=md5))
    return tuple(found)


def fetch(transfer: HttpsTransfer, files: tuple[RemoteFile, ...], staging: Path) -> None:
    try:
        transfer.fetch(TransferBatch(files, staging, "t"), lambda _event: None)
    finally:
        transfer.close()


def arrived(staging: Path, tree: Path, path: str) -> bool:
    staged = staging / path
    return staged.is_file() and staged.read_bytes() == (tree / path).read_bytes()


def uuid_of(path: str) -> str:
    return str(file_uuid(path))


def count(emu: Emulator, prefix: str) -> int:
    return emu.count(prefix)


def served(emu: Emulator, path: str) -> int:
    """Bytes the emulator sent for *path*, once its reply threads have counted them."""
    last = emu.bytes_served(path)
    for _ in range(40):
        time.sleep(0.05)
        now = emu.bytes_served(path)
        if now == last:
            break
        last = now
    return last


def served_over_links(emu: Emulator) -> set[str]:
    return {r.path for r in emu.blob_requests if r.path and r.status in (200, 206)}


def recorded(world: World) -> dict[str, Any]:
    with StateStore.open(state_path(world.dest), create=False) as store:
        return store.entries()


SDY1 = "  - accession: SDY1\n"


# -- the routes: GA4GH first, the shortcut behind it -----------------------------------


def test_ga4gh_is_the_first_route_one_object_and_one_access_per_file(
    client: ImmportClient, emu: Emulator, today_tree: Path, staging: Path
):
    """Each file: one DRS object, one access request, its bytes; the shortcut is not asked."""
    files = remote(today_tree, DESIGN, HAI, FCS)
    fetch(HttpsTransfer(client, jobs=2), files, staging)
    assert all(arrived(staging, today_tree, f.path) for f in files)
    for f in files:
        assert count(emu, OBJECTS + uuid_of(f.path)) == 2  # the object, and one access
        assert count(emu, f"{OBJECTS}{uuid_of(f.path)}/access/") == 1
    assert count(emu, SHORTCUT) == 0
    assert count(emu, SERVICE_INFO) == 0
    assert client.drs.kept() == 0  # links are kept for files in flight only


def test_an_inline_access_url_needs_no_access_request(
    client: ImmportClient, emu: Emulator, today_tree: Path, staging: Path
):
    """A DRS object carrying its links inline: one request per file before the bytes."""
    emu.drs_inline_access_url = True
    files = remote(today_tree, DESIGN, HAI)
    fetch(HttpsTransfer(client), files, staging)
    assert all(arrived(staging, today_tree, f.path) for f in files)
    assert count(emu, OBJECTS) == 2
    assert "/access/" not in " ".join(r.path for r in emu.requests_log)
    assert count(emu, SHORTCUT) == 0


def test_a_file_ga4gh_does_not_know_comes_through_the_shortcut(
    client: ImmportClient, emu: Emulator, today_tree: Path, staging: Path
):
    """A 404 for one object moves that file to the shortcut; GA4GH stays on for the rest."""
    emu.inject(OBJECTS + uuid_of(DESIGN), status=404, times=99)
    files = remote(today_tree, DESIGN, HAI)
    fetch(HttpsTransfer(client, jobs=1), files, staging)
    assert all(arrived(staging, today_tree, f.path) for f in files)
    assert count(emu, f"{SHORTCUT}s3/{uuid_of(DESIGN)}") == 1
    assert count(emu, f"{OBJECTS}{uuid_of(HAI)}/access/") == 1  # GA4GH still serves HAI
    assert count(emu, SHORTCUT) == 1
    assert count(emu, SERVICE_INFO) == 1  # asked once: the service itself answers


def test_where_no_ga4gh_service_answers_the_run_uses_the_shortcut(
    tree: Path, staging: Path
):
    """Legacy ImmPort has no GA4GH routes: one object 404 and one service check, then
    the shortcut alone for every file."""
    with Emulator(tree, world="legacy", username="alice", password=PASSWORD) as emu:
        client = ImmportClient(
            requests.Session(),
            token_url=emu.token_url,
            data_url=emu.data_url,
            query_url=emu.query_url,
            drs_url=emu.drs_url,
            credentials=Credentials("alice", PASSWORD),
            timeout=10.0,
            retry=FAST,
            sleep=lambda _s: None,
        )
        files = remote(tree, DESIGN, HAI, "SDY1/StudyFiles/SDY1_protocol.pdf")
        fetch(HttpsTransfer(client, jobs=1), files, staging)
        assert all(arrived(staging, tree, f.path) for f in files)
        assert count(emu, OBJECTS) == 1
        assert count(emu, SERVICE_INFO) == 1
        assert count(emu, SHORTCUT) == 3
        assert client.drs.ga4gh_off is not None


def test_an_unreachable_drs_service_falls_back_to_the_shortcut(
    emu: Emulator, api_key: ApiKey, today_tree: Path, staging: Path
):
    """Connection refused at the DRS base: the shortcut serves the files all the same."""
    client = make_client(emu, api_key, drs_url=refused_url())
    files = remote(today_tree, DESIGN, HAI)
    fetch(HttpsTransfer(client, jobs=1), files, staging)
    assert all(arrived(staging, today_tree, f.path) for f in files)
    assert count(emu, SHORTCUT) == 2
    assert client.drs.ga4gh_off is not None
    assert client.counters.get("drs_object") == 1 * FAST.attempts  # the first file only


@pytest.mark.parametrize("which", ["size", "md5"])
def test_a_drs_object_disagreeing_with_the_manifest_is_refused_before_download(
    client: ImmportClient, emu: Emulator, today_tree: Path, staging: Path, which: str
):
    """A DRS object's size or MD5 differing from the manifest's fails that file, naming
    both values; not a byte of it is fetched, by no route; the other files arrive."""
    if which == "size":
        emu.drs_size_overrides[HAI] = (today_tree / HAI).stat().st_size + 1
    else:
        emu.drs_md5_overrides[HAI] = "0" * 32
    files = remote(today_tree, DESIGN, HAI)
    with pytest.raises(TransferError) as caught:
        fetch(HttpsTransfer(client), files, staging)
    message = caught.value.message
    assert HAI in message and "disagrees with the study file manifest" in message
    assert "not downloaded" in message
    assert ("0" * 32 if which == "md5" else "bytes") in message
    assert caught.value.kind == "permanent"
    assert arrived(staging, today_tree, DESIGN)
    assert not (staging / HAI).exists() and not (staging / (HAI + ".partial")).exists()
    assert HAI not in {r.path for r in emu.blob_requests}
    assert count(emu, SHORTCUT) == 0
    assert count(emu, f"{OBJECTS}{uuid_of(HAI)}/access/") == 0


def test_a_mismatch_through_the_command_line_fails_that_file_only(today: World):
    """apply: exit 5, the mismatching file named with both sizes, the others recorded."""
    today.write_manifest(SDY1)
    today.emulator.drs_size_overrides[HAI] = 1
    result = today.apply("--transport", "https", "--retries", "1")
    assert result.exit_code == ExitCode.TRANSFER, result.output
    assert HAI in result.stderr and "disagrees with the study file manifest" in result.stderr
    assert HAI not in recorded(today)
    assert DESIGN in recorded(today)
    assert HAI not in {r.path for r in today.emulator.blob_requests}


# -- drs:// URIs -----------------------------------------------------------------------


def test_drs_uris_map_to_the_ga4gh_object_url():
    """drs://host/id is https://host/ga4gh/drs/v1/objects/id; http only on loopback."""
    assert split_drs_uri("drs://drs.immport.org/abc-1") == ("https://drs.immport.org", "abc-1")
    assert split_drs_uri("drs://127.0.0.1:8080/x") == ("http://127.0.0.1:8080", "x")
    assert split_drs_uri("https://drs.immport.org") is None
    assert split_drs_uri("c8464342-9b6b-5698-9088-b99bba8d4678") is None
    assert drs_base_url("drs://drs.immport.org") == "https://drs.immport.org"
    assert drs_base_url("https://drs.immport.org/") == "https://drs.immport.org"
    for bad in ("drs://", "drs://host", "drs://prefix:accession"):
        with pytest.raises(ValueError, match="not a drs://host/id URI"):
            split_drs_uri(bad)


def test_a_drs_uri_is_accepted_as_the_drs_base_and_as_an_object_id(
    emu: Emulator, api_key: ApiKey, today_tree: Path
):
    """IMMSYNC_DRS_BASE_URL=drs://host:port, and an id given as drs://host:port/uuid."""
    client = make_client(emu, api_key, drs_url=f"drs://127.0.0.1:{emu.port}")
    assert client.drs.drs_base == emu.drs_url
    uri = emu.drs_uri(uuid_of(DESIGN))
    size = (today_tree / DESIGN).stat().st_size
    routes = client.drs.routes(uri, size=size, md5=None)
    assert routes[0].startswith("GA4GH ")
    link = client.drs.link(uri, routes[0])
    assert requests.get(link.url, timeout=10).content == (today_tree / DESIGN).read_bytes()
    assert count(emu, OBJECTS + uuid_of(DESIGN)) == 2


def test_a_drs_uri_naming_another_host_gets_no_api_key_and_uses_the_shortcut(
    emu: Emulator, api_key: ApiKey, today_tree: Path
):
    """drs://elsewhere/uuid: no request goes to elsewhere; the shortcut takes the bare id."""
    with CaptureServer() as elsewhere:
        client = make_client(emu, api_key)
        uri = f"drs://127.0.0.1:{elsewhere.port}/{uuid_of(DESIGN)}"
        routes = client.drs.routes(uri, size=None, md5=None)
        assert routes == ["shortcut s3", "shortcut stream"]
        link = client.drs.link(uri, routes[0])
        assert requests.get(link.url, timeout=10).content == (today_tree / DESIGN).read_bytes()
        assert elsewhere.requests == []
    assert count(emu, f"{SHORTCUT}s3/{uuid_of(DESIGN)}") == 1


def test_a_plain_http_drs_base_to_a_remote_host_is_refused(emu: Emulator, api_key: ApiKey):
    with pytest.raises(UsageError, match="plain-http ImmPort DRS URL"):
        make_client(emu, api_key, drs_url="http://drs.example.org")


# -- links kept for the run ------------------------------------------------------------


def cut_every_route(emu: Emulator, path: str) -> None:
    """The next download of *path* by each of its four routes (GA4GH s3 and https, the
    shortcut's s3 and stream) ends after 1000 bytes."""
    for method in ("s3", "stream"):
        emu.inject_blob_fault("short", method=method, path=path, after_bytes=1000, times=2)


def test_a_retry_reuses_the_links_it_was_given(
    client: ImmportClient, emu: Emulator, today_tree: Path, staging: Path
):
    """Every route cut short, then the retry resumes over the kept GA4GH link: one DRS
    object and one link per access method for the file, across both attempts."""
    cut_every_route(emu, FCS)
    transfer = HttpsTransfer(client, jobs=1)
    files = remote(today_tree, FCS)
    with pytest.raises(TransferError) as caught:
        transfer.fetch(TransferBatch(files, staging, "t"), lambda _e: None)
    assert caught.value.kind == "transient"
    assert client.drs.kept() == 1
    transfer.fetch(TransferBatch(files, staging, "t"), lambda _e: None)
    transfer.close()
    assert arrived(staging, today_tree, FCS)
    assert client.drs.kept() == 0
    assert count(emu, f"{OBJECTS}{uuid_of(FCS)}/access/s3") == 1
    assert count(emu, f"{OBJECTS}{uuid_of(FCS)}/access/stream") == 1
    assert count(emu, OBJECTS + uuid_of(FCS)) == 3  # the object and the two accesses
    assert count(emu, f"{SHORTCUT}s3/{uuid_of(FCS)}") == 1
    assert count(emu, f"{SHORTCUT}stream/{uuid_of(FCS)}") == 1
    # Each attempt resumed where the last stopped: no byte was sent twice.
    assert served(emu, FCS) == (today_tree / FCS).stat().st_size


def test_a_retried_apply_asks_for_one_link_per_file_and_method(today: World):
    """Through the command line: the batch retried after its links were cut asks for
    no link again."""
    today.write_manifest(SDY1)
    cut_every_route(today.emulator, FCS)
    result = today.apply("--transport", "https")
    assert result.exit_code == 0, result.output
    assert "retrying" in result.output.lower()
    assert count(today.emulator, f"{OBJECTS}{uuid_of(FCS)}/access/") == 2
    assert count(today.emulator, OBJECTS + uuid_of(FCS)) == 3
    assert count(today.emulator, f"{SHORTCUT}s3/{uuid_of(FCS)}") == 1
    assert (today.dest / FCS).read_bytes() == (today.remote / FCS).read_bytes()


def test_an_expired_link_is_dropped_and_asked_for_once_more(
    client: ImmportClient, emu: Emulator, today_tree: Path, staging: Path
):
    """The link host refuses an expired link (403): one fresh link, then the bytes."""
    emu.issue_expired_links(1)
    fetch(HttpsTransfer(client, jobs=1), remote(today_tree, DESIGN), staging)
    assert arrived(staging, today_tree, DESIGN)
    assert count(emu, f"{OBJECTS}{uuid_of(DESIGN)}/access/s3") == 2
    assert [r.status for r in emu.blob_requests] == [403, 200]


def test_a_kept_link_that_expired_between_attempts_is_renewed_once(
    client: ImmportClient, emu: Emulator, today_tree: Path, staging: Path
):
    """A link kept from the first attempt has expired by the retry: renewed, not re-failed."""
    emu.drs_link_lifetime = 1.0
    cut_every_route(emu, FCS)
    transfer = HttpsTransfer(client, jobs=1)
    files = remote(today_tree, FCS)
    with pytest.raises(TransferError):
        transfer.fetch(TransferBatch(files, staging, "t"), lambda _e: None)
    time.sleep(2.1)
    transfer.fetch(TransferBatch(files, staging, "t"), lambda _e: None)
    transfer.close()
    assert arrived(staging, today_tree, FCS)
    assert count(emu, f"{OBJECTS}{uuid_of(FCS)}/access/s3") == 2
    assert [r.status for r in emu.blob_requests if r.method == "s3"][-2:] == [403, 206]


def test_an_inline_link_refused_is_renewed_by_describing_the_object_again(
    client: ImmportClient, emu: Emulator, today_tree: Path, staging: Path
):
    emu.drs_inline_access_url = True
    emu.issue_expired_links(2)  # the object's first description carries two expired links
    fetch(HttpsTransfer(client, jobs=1), remote(today_tree, DESIGN), staging)
    assert arrived(staging, today_tree, DESIGN)
    assert count(emu, OBJECTS + uuid_of(DESIGN)) == 2
    assert [r.status for r in emu.blob_requests] == [403, 200]


# -- the API key stays with ImmPort ----------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class CaptureServer:
    """A plain HTTP server on 127.0.0.1 recording each request's headers.

    *answer* returns ``(status, headers, body)`` for a path; the default serves 404.
    """

    answer: Callable[[str], tuple[int, dict[str, str], bytes]] = field(
        default=lambda _path: (404, {}, b"")
    )
    requests: list[Seen] = field(default_factory=list)

    def __enter__(self) -> CaptureServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(Seen(self.path, dict(self.headers.items())))
                status, headers, body = outer.answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def refused_url() -> str:
    """``http://127.0.0.1:<port>`` of a port just closed: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_the_api_key_never_reaches_a_link_host_and_access_headers_only_their_url(
    client: ImmportClient, emu: Emulator, api_key: ApiKey, today_tree: Path, staging: Path
):
    """A DRS object whose access URL is on another host, with headers of its own, which
    redirects to a third: the key goes to neither; the access headers only to the first."""
    data = (today_tree / DESIGN).read_bytes()
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    with CaptureServer(lambda _p: (200, {}, data)) as final, CaptureServer() as link_host:
        link_host.answer = lambda _p: (302, {"Location": f"{final.url}/bytes?sig=2"}, b"")
        emu.inject(
            OBJECTS + uuid_of(DESIGN),
            status=200,
            times=5,
            body={
                "id": uuid_of(DESIGN),
                "self_uri": emu.drs_uri(uuid_of(DESIGN)),
                "size": len(data),
                "created_time": "2017-06-15T13:06:07Z",
                "checksums": [{"type": "md5", "checksum": md5}],
                "access_methods": [
                    {
                        "type": "https",
                        "access_url": {
                            "url": f"{link_host.url}/signed?sig=1",
                            "headers": ["X-Blob-Grant: grant-for-link-host"],
                        },
                    }
                ],
            },
        )
        fetch(HttpsTransfer(client), remote(today_tree, DESIGN), staging)
        assert arrived(staging, today_tree, DESIGN)
        seen = link_host.requests + final.requests
        assert [s.path for s in seen] == ["/signed?sig=1", "/bytes?sig=2"]
        for request in seen:
            assert "Authorization" not in request.headers
            assert api_key.value not in " ".join(request.headers.values())
        assert link_host.requests[0].headers.get("X-Blob-Grant") == "grant-for-link-host"
        assert "X-Blob-Grant" not in final.requests[0].headers


def test_apply_sends_no_key_to_the_link_host(today: World):
    """Through the command line: the link GET goes without the key (a capture server
    stands in as the link host behind the DRS object's access URL)."""
    data = (today.remote / DESIGN).read_bytes()
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    today.write_manifest("  - accession: SDY1\n    paths: [StudyFiles/Study_design.txt]\n")
    with CaptureServer(lambda _p: (200, {}, data)) as link_host:
        today.emulator.inject(
            OBJECTS + uuid_of(DESIGN),
            status=200,
            times=5,
            body={
                "id": uuid_of(DESIGN),
                "size": len(data),
                "checksums": [{"type": "md5", "checksum": md5}],
                "access_methods": [{"type": "s3", "access_url": f"{link_host.url}/b?sig=1"}],
            },
        )
        result = today.apply("--transport", "https")
        assert result.exit_code == 0, result.output
        assert [s.path for s in link_host.requests] == ["/b?sig=1"]
        assert "Authorization" not in link_host.requests[0].headers
    assert (today.dest / DESIGN).read_bytes() == data


# -- concurrency over HTTPS ------------------------------------------------------------


class PeakBlobs:
    """Counts the emulator's link downloads in flight.

    Each download waits (up to 3 s) until *target* are in flight, then *hold* seconds
    more, so the peak reaches the transport's real limit however loaded the machine is,
    and shows it when the limit is higher than *target*.
    """

    def __init__(self, emu: Emulator, target: int, hold: float = 0.2) -> None:
        self.peak = 0
        self.target = target
        self._now = 0
        self._ready = threading.Condition()
        original = emu._blob

        def blob(*args: Any, **kwargs: Any) -> Any:
            with self._ready:
                self._now += 1
                self.peak = max(self.peak, self._now)
                self._ready.notify_all()
                self._ready.wait_for(lambda: self._now >= self.target, timeout=3.0)
            try:
                time.sleep(hold)
                return original(*args, **kwargs)
            finally:
                with self._ready:
                    self._now -= 1

        emu._blob = blob  # type: ignore[method-assign]


def test_https_downloads_sixteen_files_at_once_unless_jobs_is_given(today: World):
    """Without --jobs, HTTPS moves DEFAULT_JOBS (16) files at once; --jobs 2 means 2."""
    assert DEFAULT_JOBS == HTTPS_JOBS == 16
    today.write_manifest(SDY1)
    files = len(today.run("plan", str(today.manifest_path), "--json").json()["actions"])
    expected = min(DEFAULT_JOBS, files)
    assert expected >= 8, "the sample study must be large enough to show the limit"
    peak = PeakBlobs(today.emulator, target=expected)
    first = today.apply("--transport", "https")
    assert first.exit_code == 0, first.output
    assert peak.peak == expected
    for path in recorded(today):
        (today.dest / path).unlink()
    peak.peak, peak.target = 0, 2
    second = today.apply("--transport", "https", "--jobs", "2")
    assert second.exit_code == 0, second.output
    assert peak.peak == 2


# -- auto: ascp only while ImmPort's Aspera service answers -------------------------------


def test_auto_moves_to_https_when_the_token_endpoint_answers_404(today: World):
    """Today's ImmPort (token endpoint 404) with ascp installed: one information line,
    one token request for the whole run however many batches, every file over DRS."""
    with_ascp(today)
    today.write_manifest(SDY1)
    result = today.apply("--batch-files", "2", "--jobs", "3")
    assert result.exit_code == 0, result.output
    assert result.stderr.count(RETIRED_LINE) == 1
    assert "HTTP 404" in result.stderr
    assert "WARNING" not in result.stderr and "ERROR" not in result.stderr
    assert count(today.emulator, TOKEN) == 1
    assert today.sessions() == []
    assert served_over_links(today.emulator) == set(recorded(today))
    assert len(recorded(today)) > 6  # more than three batches of two


def test_auto_moves_to_https_when_the_token_endpoint_answers_410(world: World):
    """The legacy world with its token endpoint gone (410): the same switch."""
    world.write_manifest(SDY1)
    world.emulator.inject(TOKEN, status=410, times=99)
    result = world.apply("--batch-files", "2")
    assert result.exit_code == 0, result.output
    assert result.stderr.count(RETIRED_LINE) == 1
    assert "HTTP 410" in result.stderr
    assert world.emulator.count(TOKEN) == 1
    assert world.sessions() == []
    assert served_over_links(world.emulator) == set(recorded(world))


def test_quiet_keeps_the_switch_line_out(today: World):
    with_ascp(today)
    today.write_manifest(SDY1)
    result = today.run("-q", "apply", str(today.manifest_path), "--session-stagger", "0")
    assert result.exit_code == 0, result.output
    assert RETIRED_LINE not in result.stderr


def test_forced_ascp_where_aspera_is_gone_says_so(today: World):
    """--transport ascp against today's ImmPort: exit 8 naming the token endpoint's 404."""
    with_ascp(today)
    today.write_manifest(SDY1)
    result = today.apply("--transport", "ascp")
    assert result.exit_code == ExitCode.SETUP, result.output
    assert RETIRED_LINE in result.stderr and "HTTP 404" in result.stderr
    assert "--transport https" in result.stderr
    assert today.sessions() == []


def test_auto_keeps_ascp_where_the_token_endpoint_answers(world: World):
    """The legacy world: the token endpoint answers, ascp moves every file, no switch."""
    world.write_manifest(SDY1)
    result = world.apply("--batch-files", "2")
    assert result.exit_code == 0, result.output
    assert RETIRED_LINE not in result.stderr
    assert world.emulator.blob_requests == []
    completed = {s.lstrip("/") for session in world.sessions() for s in session["completed"]}
    assert completed == set(recorded(world))


def test_a_no_op_run_in_todays_world_sends_only_the_manifest_request(today: World):
    """Nothing to fetch: auto probes nothing; no DRS, no token request, only the manifest."""
    with_ascp(today)
    today.write_manifest(SDY1)
    assert today.apply().exit_code == 0
    before = len(today.emulator.requests_log)
    again = today.apply()
    assert again.exit_code == 0, again.output
    after = [r.path for r in today.emulator.requests_log[before:]]
    assert after == ["/data/query/api/study/manifest/SDY1"]
    assert RETIRED_LINE not in again.stderr and "transport:" not in again.stderr


def test_a_no_op_run_in_the_legacy_world_asks_for_no_token_and_no_link(world: World):
    world.write_manifest(SDY1)
    assert world.apply().exit_code == 0
    before = len(world.emulator.requests_log)
    again = world.apply()
    assert again.exit_code == 0, again.output
    after = [r.path for r in world.emulator.requests_log[before:]]
    assert after
    assert not [p for p in after if p.startswith((TOKEN, OBJECTS, SHORTCUT, SERVICE_INFO))]


def test_default_drs_base_follows_a_non_default_query_api(tmp_path: Path):
    """Pointing the query API elsewhere (a mirror, the emulator) keeps the key off
    ImmPort's DRS host: the DRS base defaults to the query API's origin."""
    from immsync.app.config import DEFAULT_DRS_URL, Environment

    assert Environment.read({}).drs_url == DEFAULT_DRS_URL == "https://drs.immport.org"
    mirror = Environment.read({"IMMSYNC_QUERY_API_BASE_URL": "https://mirror.example/q"})
    assert mirror.drs_url == "https://mirror.example"
    given = Environment.read(
        {"IMMSYNC_QUERY_API_BASE_URL": "https://m.example/q", "IMMSYNC_DRS_BASE_URL": "drs://d"}
    )
    assert given.drs_url == "drs://d"

