"""What a hostile or broken server cannot make a run do: list forever, hang, or leak.

Real servers on loopback play the part: one whose every folder lists twenty more,
one that sends its reply a byte at a time, one whose study manifest never ends.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from conftest import World

from immsync.errors import ApiError, ExitCode
from immsync.immport import Credentials, ImmportClient, ListingLimits
from immsync.immport.wire import Secrets


class EndlessTree(BaseHTTPRequestHandler):
    """Every folder holds twenty folders; there is no study manifest route."""

    requests_seen = 0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        type(self).requests_seen += 1
        path = "/" + str(body.get("path", "/")).strip("/")
        items = [
            {"path": f"{path}/d{i}", "basename": f"d{i}", "type": "directory", "size": 0}
            for i in range(20)
        ]
        self._send(200, {"self": {"path": path, "type": "directory", "size": 0}, "items": items})

    def do_GET(self) -> None:
        self._send(404, {"status": 404, "error": "Not Found", "message": "No handler"})

    def _send(self, status: int, doc: Any) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Trickle(BaseHTTPRequestHandler):
    """Answers every request with a valid reply, one byte every 0.05 s."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        data = b'[{"path": "SDY1/StudyFiles/a.txt"}]' + b" " * 400
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for byte in data:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass  # the client gave up, as it should


@pytest.fixture(name="serve")
def _serve() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(handler: type[BaseHTTPRequestHandler]) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class TestBoundedListing:
    @pytest.mark.parametrize(
        ("variable", "value", "words"),
        [
            ("IMMSYNC_LIST_MAX_REQUESTS", "60", "more than 60 folders"),
            ("IMMSYNC_LIST_MAX_QUEUED", "100", "more than 100 folders waiting to be listed"),
            ("IMMSYNC_LIST_MAX_ENTRIES", "300", "more than 300 entries"),
        ],
    )
    def test_an_endless_tree_stops_at_the_bound_with_exit_4(
        self, world: World, serve: Any, variable: str, value: str, words: str
    ) -> None:
        base = serve(EndlessTree)
        EndlessTree.requests_seen = 0
        world.env.update(
            {
                "IMMPORT_DATA_API_BASE_URL": base + "/data",
                "IMMPORT_TOKEN": "a-bearer-token",
                "IMMPORT_PASSWORD": "",
                variable: value,
            }
        )
        world.write_manifest("  - accession: SDY1\n")
        started = time.monotonic()
        result = world.run("plan", str(world.manifest_path))
        assert result.exit_code == ExitCode.REMOTE, result.output
        assert f"the listing of /SDY1 stopped: it reached {words} (the bound {variable}" in (
            result.stderr
        )
        assert time.monotonic() - started < 60
        assert EndlessTree.requests_seen <= int(value) + 20

    def test_the_default_bounds_are_finite_and_documented(self) -> None:
        limits = ListingLimits()
        assert 0 < limits.max_requests <= 100_000 and 0 < limits.max_entries <= 10_000_000
        assert 0 < limits.max_queued <= limits.max_requests

    def test_a_bound_that_is_not_a_number_is_a_usage_error(self, world: World) -> None:
        world.env["IMMSYNC_LIST_MAX_REQUESTS"] = "lots"
        world.write_manifest("  - accession: SDY1\n")
        result = world.run("plan", str(world.manifest_path))
        assert result.exit_code == ExitCode.USAGE
        assert "IMMSYNC_LIST_MAX_REQUESTS must be a positive whole number" in result.stderr

    def test_a_study_manifest_over_its_row_bound_stops_that_study(self, today: World) -> None:
        today.env["IMMSYNC_MANIFEST_MAX_ROWS"] = "5"
        today.write_manifest("  - accession: SDY1\n")
        result = today.run("plan", str(today.manifest_path))
        assert result.exit_code == ExitCode.REMOTE, result.output
        assert "file manifest of SDY1 has more than 5 rows" in result.stderr
        assert "IMMSYNC_MANIFEST_MAX_ROWS" in result.stderr

    def test_a_study_manifest_over_its_byte_bound_stops_that_study(self, today: World) -> None:
        today.env["IMMSYNC_MANIFEST_MAX_BYTES"] = "1000"
        today.write_manifest("  - accession: SDY1\n")
        result = today.run("plan", str(today.manifest_path))
        assert result.exit_code == ExitCode.REMOTE, result.output
        assert "more than the 1000-byte limit" in result.stderr


class TestDeadline:
    def test_a_reply_that_trickles_in_ends_at_the_deadline(self, serve: Any) -> None:
        base = serve(Trickle)
        client = ImmportClient(
            requests.Session(),
            token_url=base + "/auth/token",
            data_url=base + "/data",
            query_url=base + "/data/query",
            credentials=Credentials(token="a-bearer-token"),
            timeout=5.0,  # each byte comes well within it: only a deadline can stop this
            deadline=1.0,
            sleep=lambda seconds: None,
        )
        started = time.monotonic()
        with pytest.raises(ApiError, match=r"took more than 1 s in all") as caught:
            client.catalog.study("SDY1")
        assert caught.value.transient
        # Four attempts (the default policy), each cut at about a second.
        assert time.monotonic() - started < 4 * 1.0 + 3


class TestRedaction:
    def test_short_values_are_not_hunted_inside_words(self) -> None:
        secrets = Secrets(("Max",))
        assert secrets.redact("Max retries exceeded") == "Max retries exceeded"

    def test_only_whole_occurrences_are_replaced(self) -> None:
        secrets = Secrets(("hunter22",))
        assert secrets.redact("token hunter22 refused") == "token *** refused"
        assert secrets.redact("xhunter22y and hunter22.") == "xhunter22y and ***."
        assert secrets.redact("Invalid access token: hunter22") == "Invalid access token: ***"

    def test_a_server_echoing_a_short_password_does_not_mangle_the_message(
        self, world: World
    ) -> None:
        world.env["IMMPORT_PASSWORD"] = "Max"
        world.emulator.inject(
            "/auth/token",
            status=401,
            times=1,
            body={"error": "invalid_grant", "message": "Bad credentials: Max retries exceeded"},
        )
        world.write_manifest("  - accession: SDY1\n")
        result = world.run("plan", str(world.manifest_path))
        assert result.exit_code == ExitCode.AUTH
        assert "Max retries exceeded" in result.stderr
        assert "*** retries" not in result.stderr
