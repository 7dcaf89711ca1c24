"""Credentials never follow a redirect to a host they were not configured for.

Real servers on loopback: a redirector (plain or TLS) that sends clients elsewhere or
passes requests through to the emulator, and a capture server on another address
that records whatever reaches it. Sign-in never follows a redirect; API calls follow
one only within the same scheme, host and port; a download link may be redirected
(S3 does), but never from https to http.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests
import trustme
from conftest import PASSWORD, World

from immsync.errors import ExitCode

DESIGN = "SDY1/StudyFiles/Study_design.txt"
ONE_FILE = "  - accession: SDY1\n    paths:\n      - StudyFiles/Study_design.txt\n"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    """A loopback HTTP(S) server whose every request goes to ``answer``."""

    host: str
    answer: Callable[[Seen], tuple[int, dict[str, str], bytes]]
    tls: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, self.path, dict(self.headers), self.rfile.read(length))
                server.seen.append(seen)
                status, headers, body = server.answer(seen)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _any

        self.httpd = ThreadingHTTPServer((self.host, 0), Handler)
        if self.tls is not None:
            self.httpd.socket = self.tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def capture_answer(seen: Seen) -> tuple[int, dict[str, str], bytes]:
    """What a thief's server would say: a plausible success, to tempt a client on."""
    body = {"status": 200, "token": "stolen", "access_token": "stolen", "url": "x", "items": []}
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


def redirect_to(target: str, status: int = 307) -> Callable[[Seen], tuple[int, dict, bytes]]:
    def answer(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        return status, {"Location": target + seen.path}, b""

    return answer


def pass_through(upstream: str, *, rewrite_links: Callable[[str], str] | None = None) -> Any:
    """Forward each request to *upstream*; optionally rewrite DRS links in JSON replies.

    ``/hop?to=URL`` answers 302 to URL, as S3 or a CDN in front of it would.
    """

    def answer(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(seen.path)
        if parts.path == "/hop":
            return 302, {"Location": parse_qs(parts.query)["to"][0]}, b""
        headers = {k: v for k, v in seen.headers.items() if k.lower() not in ("host",)}
        reply = requests.request(
            seen.method, upstream + seen.path, headers=headers, data=seen.body, timeout=30
        )
        body = reply.content
        if rewrite_links is not None and body.startswith(b"{"):
            doc = json.loads(body)
            if isinstance(doc, dict) and isinstance(doc.get("url"), str):
                doc["url"] = rewrite_links(doc["url"])
                body = json.dumps(doc).encode()
        kept = {"Content-Type": reply.headers.get("Content-Type", "application/json")}
        return reply.status_code, kept, body

    return answer


@pytest.fixture(name="servers")
def _servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture(name="capture")
def _capture(servers: list[Server]) -> Server:
    # Another loopback address: another host, as far as any client can tell.
    server = Server("127.0.0.2", capture_answer)
    servers.append(server)
    return server


@pytest.fixture(name="ca")
def _ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return ca, bundle


def tls_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


def assert_nothing_reached(capture: Server, world: World) -> None:
    assert capture.seen == [], [(s.method, s.path) for s in capture.seen]
    token_values = world.emulator.issued_tokens()
    for seen in capture.seen:  # belt and braces, should the list above ever be relaxed
        blob = json.dumps(seen.headers) + seen.body.decode("latin-1")
        assert PASSWORD not in blob and not any(t in blob for t in token_values)


class TestSignIn:
    @pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
    def test_a_redirected_sign_in_sends_the_password_nowhere_else(
        self, world: World, servers: list[Server], capture: Server, status: int
    ) -> None:
        redirector = Server("127.0.0.1", redirect_to(capture.url, status))
        servers.append(redirector)
        world.env["IMMPORT_TOKEN_URL"] = redirector.url + "/auth/token"
        world.write_manifest(ONE_FILE)
        result = world.apply()
        assert result.exit_code == ExitCode.REMOTE, result.output
        assert_nothing_reached(capture, world)
        assert len(redirector.seen) == 1, "a refused redirect is not retried"
        assert f"{redirector.url}/auth/token redirected to {capture.url}/auth/token" in (
            result.stderr
        )
        assert "never follows a redirect with a password" in result.stderr
        assert PASSWORD not in result.output
        assert world.local_files() == []


class TestApiCalls:
    def test_a_redirect_to_another_host_is_refused_naming_both(
        self, world: World, servers: list[Server], capture: Server
    ) -> None:
        redirector = Server("127.0.0.1", redirect_to(capture.url, 302))
        servers.append(redirector)
        world.env["IMMPORT_DATA_API_BASE_URL"] = redirector.url + "/data"
        world.env["IMMSYNC_QUERY_API_BASE_URL"] = redirector.url + "/data/query"
        world.write_manifest(ONE_FILE)
        result = world.run("plan", str(world.manifest_path))
        assert result.exit_code != 0, result.output
        assert_nothing_reached(capture, world)
        assert f"redirected to {capture.url}/data/" in result.output
        assert "only to the host they were configured for" in result.output

    def test_a_redirect_within_the_same_host_is_followed(
        self, world: World, servers: list[Server]
    ) -> None:
        upstream = world.emulator.base_url

        def answer(seen: Seen) -> tuple[int, dict[str, str], bytes]:
            if seen.path.startswith("/moved/"):
                return 308, {"Location": seen.path.removeprefix("/moved")}, b""
            return pass_through(upstream)(seen)

        same_host = Server("127.0.0.1", answer)
        servers.append(same_host)
        world.env["IMMPORT_DATA_API_BASE_URL"] = same_host.url + "/moved/data"
        world.write_manifest(ONE_FILE)
        result = world.apply()
        assert result.exit_code == 0, result.output
        assert DESIGN in world.local_files()
        assert any(s.path.startswith("/moved/data/") for s in same_host.seen)
        assert any(s.path.startswith("/data/query/api/study/manifest") for s in same_host.seen)


class TestDownloadLinks:
    def test_a_link_may_be_redirected_to_another_host_without_credentials(
        self, world: World, servers: list[Server]
    ) -> None:
        upstream = world.emulator.base_url
        proxy_box: list[Server] = []

        def via_hop(link: str) -> str:
            return f"{proxy_box[0].url}/hop?to={quote(link, safe='')}"

        proxy = Server("127.0.0.1", pass_through(upstream, rewrite_links=via_hop))
        proxy_box.append(proxy)
        servers.append(proxy)
        world.env["IMMSYNC_QUERY_API_BASE_URL"] = proxy.url + "/data/query"
        world.write_manifest(ONE_FILE)
        result = world.apply("--transport", "https")
        assert result.exit_code == 0, result.output
        assert DESIGN in world.local_files()
        hops = [s for s in proxy.seen if s.path.startswith("/hop")]
        assert hops, "the link went through the redirecting hop"
        assert all("Authorization" not in s.headers for s in hops)

    def test_a_link_is_never_downgraded_from_https_to_http(
        self, world: World, servers: list[Server], ca: tuple[trustme.CA, Path]
    ) -> None:
        authority, bundle = ca
        upstream = world.emulator.base_url
        proxy_box: list[Server] = []

        def via_hop(link: str) -> str:
            # The link now starts on https and hops to the emulator's plain http.
            return f"{proxy_box[0].url}/hop?to={quote(link, safe='')}"

        proxy = Server(
            "127.0.0.1", pass_through(upstream, rewrite_links=via_hop), tls=tls_context(authority)
        )
        proxy_box.append(proxy)
        servers.append(proxy)
        world.env["IMMSYNC_QUERY_API_BASE_URL"] = proxy.url + "/data/query"
        world.env["REQUESTS_CA_BUNDLE"] = str(bundle)
        world.write_manifest(ONE_FILE)
        blobs_before = len(world.emulator.blob_requests)
        result = world.apply("--transport", "https")
        assert result.exit_code == ExitCode.TRANSFER, result.output
        assert "never moves from https to an unencrypted link" in result.output
        assert len(world.emulator.blob_requests) == blobs_before, "the http link was fetched"
        assert world.local_files() == []
        assert "X-Amz-Signature" not in result.output and "signature=" not in result.output
