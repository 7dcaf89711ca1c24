"""An ImmPort API emulator: a real HTTP server on 127.0.0.1 serving a local folder.

It models two worlds, chosen by ``Emulator(docroot, world=...)``:

``"today"`` (the default) is ImmPort as of late 2026: requests carry an API key as
``Authorization: Bearer <api_key>`` (``add_api_key``, ``revoke_api_key``,
``expire_api_key``, ``write_api_key_file``; keys expire and carry the scopes
``browse``/``download``); ``POST /auth/token`` refuses passwords (unless
``allow_password_sign_in``); ``/data/list`` and ``/data/download/token`` answer 404;
the study file manifest ``GET /data/query/api/study/manifest/{SDY}`` is the catalog, in
the real row shapes (``drsObjectCreated`` ``"Y"``, date-only ``dateFileUpdated``, types
``study_file``/``protocol_file``/``result_file``/``release_file``/``archive_file`` by
folder); files download through ImmPort's DRS shortcut
``GET /data/query/drs/download/{s3|stream}/{fileUUID}`` or the GA4GH DRS API
(``/ga4gh/drs/v1/service-info``, ``/objects/{id}``, ``/objects/{id}/access/{access_id}``),
whose presigned links last 7 days.

``"legacy"`` is the Aspera-era service: ``POST /auth/token`` (Jackson pretty-printed),
``POST /data/list``, ``POST /data/download/token`` (Aspera tokens the stand-in ``ascp``
accepts), the study manifest in its older row shapes, the study summary
``GET /data/query/api/study/summary/{SDY}`` (served in both worlds) and the DRS shortcut,
with 5-minute links.

Where the real service is not known precisely, both worlds accept every plausible client
variant (``bearer``/``Bearer``, paths with or without slashes, ``paths`` as a string or
a list).

Tests drive it over real sockets and bend it with plain attributes: in both worlds
``inject`` (faults), ``latency``, ``manifest_available``, ``manifest_extra_rows``,
``md5_overrides``, ``study_releases``, ``drs_link_lifetime``; in the legacy world
``token_reply_keys``, ``listing_overrides`` and ``expire_bearer_tokens``; in today's world
``allow_password_sign_in``, ``manifest_wrap_content``, ``manifest_bool_drs``,
``manifest_datetime_dates``, ``manifest_null_md5``, ``manifest_no_drs``,
``manifest_extra_fields``, ``drs_inline_access_url``, ``drs_md5_overrides`` and
``drs_size_overrides``. ``requests_log`` records what clients sent (never a password or
key; ``count`` totals it by route). The DRS links behave like S3 presigned URLs:
``Range`` requests (206, ``Content-Range``, 416), an ``ETag`` (the content's MD5,
quoted) and ``If-Match`` (412 ``PreconditionFailed`` once the file changed), expiry after
``drs_link_lifetime`` seconds (403 with S3's XML ``AccessDenied`` / ``Request has
expired``), faults from ``inject_blob_fault`` (a connection dropped or a body cut short
after N bytes, a stall, S3 XML errors, per access method), and ``bytes_served`` counts
what each file's downloads really sent. Standard library only, so it also runs as a
program: ``python -m immsync.testing.emulator [--docroot DIR] [--legacy]`` serves (by
default the demo studies), installs a stand-in ``ascp`` and prints the ``export`` lines
that point immsync at both.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shlex
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, ClassVar, Literal, get_args
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape as xml_escape

from immsync.testing import aspera_tokens
from immsync.testing.aspera_config import FakeAsperaConfig
from immsync.testing.fake_ascp import FakeAsperaInstall, install_fake_ascp
from immsync.testing.sampledata import build_sample_tree, build_today_tree

log = logging.getLogger(__name__)

_MAX_REQUEST_BODY = 1 << 20
_UUID_NAMESPACE = uuid.UUID("6f1f3c52-8a0e-4c4e-9d57-2f0b3c1d2e4f")
_FILE_TYPES = ("study_file", "result_file", "protocol_file", "archive_file")
TODAY_FILE_TYPES = ("study_file", "protocol_file", "result_file", "release_file", "archive_file")
"""The ``fileType`` values of today's study file manifest."""
_TODAY_TYPE_BY_FOLDER = {
    "studyfiles": "study_file",
    "protocols": "protocol_file",
    "resultfiles": "result_file",
    "archive": "archive_file",
}
World = Literal["today", "legacy"]
API_KEY_SCOPES = ("browse", "download", "upload")
API_KEY_PAGE = "https://www.immport.org/auth/api/keys"
"""Where ImmPort users create API keys; error messages point there."""
DEFAULT_API_KEY_LIFETIME = timedelta(days=90)
TODAY_LINK_LIFETIME = 7 * 86400.0
"""ImmPort documents its presigned download links as valid for seven days."""
LEGACY_LINK_LIFETIME = 300.0
_DRS_PREFIX = "/ga4gh/drs/v1"
_DRS_ACCESS_METHODS = (("s3", "s3"), ("https", "stream"))
"""``(type, access_id)`` of each DRS access method; the access id names the blob method."""
_SECRET_FIELDS = frozenset({"password", "api_key", "apiKey", "token", "access_token"})
_BLOB_METHODS = ("s3", "stream")
_BLOB_FAULT_KINDS = ("drop", "short", "stall", "error")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An ImmPort API key as the emulator issued it (its value never shows in ``repr``)."""

    id: str
    """A UUID string, the key file's ``id``."""
    api_key: str = field(repr=False)
    """The opaque value sent as ``Authorization: Bearer <api_key>``."""
    expires_at: datetime
    """When the key stops working (aware, UTC)."""
    scopes: tuple[str, ...]
    """Any of ``browse`` (metadata), ``download`` (data files), ``upload``."""


def key_file_expiry(moment: datetime) -> str:
    """*moment* as ImmPort's key file writes ``expires_at``: nanosecond digits and ``Z``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the emulator received it (form bodies are never kept)."""

    method: str
    path: str
    """The URL path, without the query string."""
    json_body: Any | None
    """The parsed JSON body, or None when there was none or it was not JSON."""


@dataclass(frozen=True, slots=True)
class BlobRequest:
    """One GET of a DRS link, as the emulator answered it."""

    method: str
    """``"s3"`` or ``"stream"`` (``""`` for an old-style link without one)."""
    path: str | None
    """The file's docroot-relative path, or None when the link named no known file."""
    range: str | None
    """The ``Range`` header as sent, if any."""
    status: int


@dataclass(slots=True)
class _BlobFault:
    kind: str
    method: str | None
    path: str | None
    remaining: int
    after_bytes: int
    status: int
    code: str
    message: str
    seconds: float


@dataclass(slots=True)
class _BlobBody:
    """A file's bytes to stream after the headers: ``length`` bytes from ``start``."""

    target: Path
    relpath: str
    start: int
    length: int
    fault: _BlobFault | None = None


@dataclass(slots=True)
class _Fault:
    route: str
    status: int
    remaining: int
    body: dict[str, Any] | str | None
    retry_after: float | None
    delay: float
    drop_connection: bool


class _HttpError(Exception):
    """Raised inside a route to answer with an error reply."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        pretty: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body
        self.headers = headers or {}
        self.pretty = pretty


@dataclass(slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json;charset=UTF-8"
    headers: dict[str, str] | None = None
    stream: _BlobBody | None = None
    """When set, the body is streamed from a file instead of ``body``."""


def _compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def jackson(doc: Any) -> bytes:
    """JSON as Jackson's default pretty printer writes it: ``"key" : value``, 2-space indent.

    Old ImmPort clients find the token with ``sed 's/"token" : "//'``, so the spacing
    is part of the interface.
    """
    return json.dumps(doc, indent=2, separators=(",", " : ")).encode("utf-8")


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(int(stamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spring_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+00:00"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _normalise(raw: str) -> str:
    """``SDY1/x/`` -> ``/SDY1/x``; refuses ``..``, ``.`` and NUL (400)."""
    if "\x00" in raw:
        raise _HttpError(400, "Path contains a NUL character")
    parts = [p for p in raw.replace("\\", "/").split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise _HttpError(400, f"Invalid path {raw!r}: relative segments are not allowed")
    return "/" + "/".join(parts)


class Emulator:
    """ImmPort's auth and data API over real HTTP, serving the files under *docroot*.

    Use as a context manager (``with Emulator(root) as emu:``) or call ``start`` and
    ``stop``. *world* is ``"today"`` (API keys, the manifest as catalog, DRS; the
    default) or ``"legacy"`` (passwords, ``/data/list``, Aspera tokens). Attributes tests
    may change at any time are listed in the module docstring; each is documented where
    it is set below.
    """

    def __init__(
        self,
        docroot: Path,
        *,
        world: World = "today",
        username: str = "demo",
        password: str = "demo-password",  # noqa: S107 - the emulator's documented demo account
        host: str = "127.0.0.1",
        port: int = 0,
        aspera_token_lifetime: float = 86400.0,
        bearer_lifetime: float = 3600.0,
    ) -> None:
        if world not in get_args(World):
            raise ValueError(f"unknown world {world!r}; expected one of {get_args(World)}")
        self.docroot = Path(docroot)
        self.world: World = world
        self.username = username
        self._password = password
        self.host = host
        self._requested_port = port
        self.aspera_token_lifetime = aspera_token_lifetime
        self.bearer_lifetime = bearer_lifetime
        self.aspera_secret = secrets.token_hex(32)
        today = world == "today"
        self.token_reply_keys: tuple[str, ...] = (
            ("access_token",) if today else ("token", "access_token")
        )
        """Keys of a sign-in reply that carry the token (today's pages show ``access_token``)."""
        self.allow_password_sign_in = False
        """Today's world only: answer ``POST /auth/token`` as the legacy service did."""
        self.manifest_available = True
        """False: the manifest route answers 503, as a service that is down."""
        self.manifest_route = True
        """False: no manifest route at all (404, as a deployment from before the Shared
        Data API), so clients fall back to the legacy listing."""
        self.md5_overrides: dict[str, str] = {}
        self.manifest_extra_rows: dict[str, list[dict[str, Any]]] = {}
        """Accession -> rows appended as given to that study's manifest: files no disk
        could hold (a hostile or broken server's entries)."""
        self.listing_overrides: dict[str, list[dict[str, Any]]] = {}
        self.study_releases: dict[str, str | None] = {}
        """Accession -> the study summary's ``latestDataReleaseVersion``; by default the
        highest ``<SDY>-DR<n>`` archive at the study root names it (none: null)."""
        self.manifest_wrap_content = False
        """Today's world: reply ``{"content": [...]}`` (a paged Spring shape) instead of a list."""
        self.manifest_bool_drs = False
        """Today's world: ``drsObjectCreated`` as ``true``/``false`` instead of ``"Y"``/``"N"``."""
        self.manifest_datetime_dates = False
        """Today's world: ``dateFileUpdated`` as ``2018-02-01T10:11:12Z`` instead of a date."""
        self.manifest_null_md5: set[str] = set()
        """Today's world: docroot-relative paths whose ``generatedMD5`` is null."""
        self.manifest_no_drs: set[str] = set()
        """Today's world: paths with ``drsObjectCreated`` ``"N"``; their DRS routes answer 404."""
        self.manifest_extra_fields: dict[str, Any] = {}
        """Today's world: fields added to every manifest row (unknown to clients)."""
        self.drs_inline_access_url = False
        """Today's world: DRS objects carry ``access_url`` links instead of ``access_id``."""
        self.drs_md5_overrides: dict[str, str] = {}
        """Today's world: path -> the md5 a DRS object reports instead of the real one."""
        self.drs_size_overrides: dict[str, int] = {}
        """Today's world: path -> the size a DRS object reports instead of the real one."""
        self.latency = 0.0
        self.requests_log: list[RecordedRequest] = []
        self.drs_link_lifetime = TODAY_LINK_LIFETIME if today else LEGACY_LINK_LIFETIME
        """Seconds a DRS link stays valid after it is handed out."""
        self.blob_ignore_range = False
        """Answer every link GET with the whole file (200), as a server without Range does."""
        self.blob_chunk_delay = 0.0
        """Seconds to pause after each 64 KiB of a link's body (a slow network)."""
        self.blob_requests: list[BlobRequest] = []
        self._blob_faults: list[_BlobFault] = []
        self._bytes_served: dict[str, int] = {}
        self._expired_links = 0
        self._lock = threading.Lock()
        self._bearer: dict[str, float] = {}
        self._api_keys: dict[str, ApiKey] = {}
        self._revoked_keys: set[str] = set()
        self._issued: list[str] = []
        self._faults: list[_Fault] = []
        self._md5_cache: dict[tuple[str, int, int, int], str] = {}
        self._details_cache: dict[tuple[Any, ...], tuple[dict[str, Any], bytes]] = {}
        self._uuid_index: dict[str, str] = {}
        self._connections: set[socket.socket] = set()
        self._bound_port: int | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = self.base_url if self._server else "stopped"
        return f"Emulator(docroot={str(self.docroot)!r}, {state})"

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Emulator:
        """Bind and serve in a daemon thread; returns self. Idempotent."""
        if self._server is not None:
            return self
        handler = type("BoundHandler", (_Handler,), {"emulator": self})
        server_cls = _Server6 if ":" in self.host else _Server
        self._server = server_cls((self.host, self._requested_port), handler)
        self._bound_port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"immport-emulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.debug("emulator serving %s at %s", self.docroot, self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        # Kept-alive connections would otherwise go on being served by their threads.
        with self._lock:
            connections, self._connections = set(self._connections), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port; it stays known after ``stop`` so URLs can name a dead server."""
        if self._bound_port is None:
            raise RuntimeError("the emulator has not been started; call start() first")
        return self._bound_port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.base_url + "/auth/token"

    @property
    def data_url(self) -> str:
        return self.base_url + "/data"

    @property
    def query_url(self) -> str:
        return self.base_url + "/data/query"

    @property
    def drs_url(self) -> str:
        """The GA4GH DRS base (``{drs_url}/ga4gh/drs/v1/objects/{id}``): this server."""
        return self.base_url

    def drs_uri(self, object_id: str) -> str:
        """The ``drs://host:port/<id>`` URI of a DRS object, as its ``self_uri`` gives it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"drs://{host}:{self.port}/{object_id}"

    # -- API keys (today's world) ----------------------------------------------------

    def add_api_key(
        self,
        *,
        expires_at: datetime | None = None,
        scopes: tuple[str, ...] | list[str] = ("browse", "download"),
        value: str | None = None,
    ) -> ApiKey:
        """Issue an API key, as a user creating one on ImmPort's web page.

        Keys work in both worlds (a legacy server that already took keys); sessions
        from ``/auth/token`` keep working alongside them.

        Args:
            expires_at: an aware datetime; 90 days from now when None.
            scopes: any of ``browse``, ``download``, ``upload``.
            value: the key's value; a fresh random string when None.
        """
        unknown = [s for s in scopes if s not in API_KEY_SCOPES]
        if unknown:
            raise ValueError(f"unknown API key scopes {unknown}; expected {API_KEY_SCOPES}")
        if expires_at is None:
            expires_at = datetime.now(UTC) + DEFAULT_API_KEY_LIFETIME
        elif expires_at.tzinfo is None:
            raise ValueError("expires_at must be an aware datetime (e.g. datetime.now(UTC))")
        key = ApiKey(
            id=str(uuid.uuid4()),
            api_key=value if value is not None else secrets.token_urlsafe(40),
            expires_at=expires_at.astimezone(UTC),
            scopes=tuple(scopes),
        )
        with self._lock:
            self._api_keys[key.api_key] = key
            self._revoked_keys.discard(key.api_key)
            self._issued.append(key.api_key)
        return key

    def revoke_api_key(self, key: ApiKey | str) -> None:
        """Revoke a key (an ``ApiKey``, its value or its id): it answers 401 from now on."""
        with self._lock:
            self._revoked_keys.add(self._key_value(key))

    def expire_api_key(self, key: ApiKey | str) -> ApiKey:
        """Make a key expire now (as if its date had passed mid-run); returns it updated."""
        with self._lock:
            value = self._key_value(key)
            expired = dataclasses.replace(self._api_keys[value], expires_at=datetime.now(UTC))
            self._api_keys[value] = expired
        return expired

    def api_keys(self) -> list[ApiKey]:
        """Every key issued so far, revoked or not."""
        with self._lock:
            return list(self._api_keys.values())

    def write_api_key_file(self, path: Path, key: ApiKey) -> Path:
        """Save *key* as the JSON file ImmPort's web page hands out, readable by its owner only.

        ``{"id": ..., "api_key": ..., "expires_at": "2026-05-21T20:55:24.654328000Z"}``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"id": key.id, "api_key": key.api_key, "expires_at": key_file_expiry(key.expires_at)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            # A file that existed before keeps its mode through O_CREAT; the key must not.
            os.fchmod(fh.fileno(), 0o600)
            json.dump(doc, fh, indent=2)
            fh.write("\n")
        return path

    def _key_value(self, key: ApiKey | str) -> str:
        if isinstance(key, ApiKey):
            return key.api_key
        if key in self._api_keys:
            return key
        for value, known in self._api_keys.items():
            if known.id == key:
                return value
        raise KeyError("no such API key")

    # -- test controls ---------------------------------------------------------------

    def inject(
        self,
        route: str,
        *,
        status: int,
        times: int = 1,
        body: dict[str, Any] | str | None = None,
        retry_after: float | None = None,
        delay: float = 0.0,
        drop_connection: bool = False,
    ) -> None:
        """Make the next *times* requests whose path starts with *route* fail.

        Args:
            route: URL path prefix, e.g. ``"/data/list"`` or ``"/auth/token"``.
            status: HTTP status to answer with (200 is allowed, for malformed bodies).
            body: a dict (sent as JSON), a string (sent verbatim; ``text/html`` when it
                starts with ``<``) or None for a Spring error body.
            retry_after: sent as the ``Retry-After`` header (seconds) when given.
            delay: seconds to wait before answering.
            drop_connection: close the socket without any reply instead.
        """
        fault = _Fault(route, status, times, body, retry_after, delay, drop_connection)
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._blob_faults.clear()

    def inject_blob_fault(
        self,
        kind: str,
        *,
        method: str | None = None,
        path: str | None = None,
        times: int = 1,
        after_bytes: int = 0,
        status: int = 500,
        code: str = "InternalError",
        message: str = "We encountered an internal error. Please try again.",
        seconds: float = 5.0,
    ) -> None:
        """Make the next *times* DRS link downloads that match misbehave.

        Args:
            kind: ``"drop"``: the connection is reset after *after_bytes* bytes of the
                body; ``"short"``: the headers announce the whole body but the
                connection closes cleanly after *after_bytes* bytes; ``"stall"``: the
                body pauses *seconds* after *after_bytes* bytes, then goes on;
                ``"error"``: answer *status* with an S3 XML error (*code*, *message*)
                instead of the file.
            method: only links of this access method (``"s3"`` or ``"stream"``).
            path: only this file (docroot-relative, e.g. ``SDY1/StudyFiles/a.txt``).
        """
        if kind not in _BLOB_FAULT_KINDS:
            raise ValueError(f"unknown blob fault {kind!r}; expected one of {_BLOB_FAULT_KINDS}")
        fault = _BlobFault(
            kind, method, path.strip("/") if path else None, times, after_bytes, status,
            code, message, seconds,
        )
        with self._lock:
            self._blob_faults.append(fault)

    def issue_expired_links(self, times: int = 1) -> None:
        """Hand out the next *times* DRS links already expired."""
        with self._lock:
            self._expired_links += times

    def bytes_served(self, path: str | None = None) -> int:
        """Body bytes sent by DRS link downloads: of one file (docroot-relative), or all."""
        with self._lock:
            if path is None:
                return sum(self._bytes_served.values())
            return self._bytes_served.get(path.strip("/"), 0)

    def expire_bearer_tokens(self) -> None:
        """Make every bearer token issued so far invalid (as if they had expired)."""
        with self._lock:
            for token in self._bearer:
                self._bearer[token] = 0.0

    def issued_tokens(self) -> list[str]:
        """Every secret handed out so far (bearer and Aspera tokens), for leak checks."""
        with self._lock:
            return list(self._issued)

    def count(self, route_prefix: str) -> int:
        """How many requests so far had a path starting with *route_prefix*."""
        with self._lock:
            return sum(1 for r in self.requests_log if r.path.startswith(route_prefix))

    def write_aspera_config(self, path: Path, **overrides: Any) -> Path:
        """Save the config through which the stand-in ``ascp`` serves this docroot."""
        config = FakeAsperaConfig(docroot=str(self.docroot), secret=self.aspera_secret, **overrides)
        return config.save(path)

    # -- request handling (called from handler threads) ------------------------------

    def _record(self, method: str, path: str, json_body: Any | None) -> None:
        # Sign-in bodies hold passwords; anything else named like a secret is masked.
        kept = None if path == "/auth/token" else _scrub(json_body)
        with self._lock:
            self.requests_log.append(RecordedRequest(method, path, kept))

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and path.startswith(fault.route):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _fault_reply(self, fault: _Fault, path: str) -> _Reply:
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = _format_seconds(fault.retry_after)
        if isinstance(fault.body, str):
            kind = "text/html;charset=UTF-8" if fault.body.lstrip().startswith("<") else None
            return _Reply(
                fault.status,
                fault.body.encode("utf-8"),
                kind or "application/json;charset=UTF-8",
                headers,
            )
        doc = (
            fault.body
            if fault.body is not None
            else _spring_body(fault.status, "Injected fault", path)
        )
        return _Reply(fault.status, _compact(doc), headers=headers)

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes, headers: Any
    ) -> _Reply:
        if path == "/auth/token":
            _require_method(method, "POST")
            return self._auth_token(body, headers.get("Content-Type", ""))
        if path.startswith("/_blob/"):
            _require_method(method, "GET")
            return self._blob(
                path[len("/_blob/") :], query, headers.get("Range"), headers.get("If-Match")
            )
        today = self.world == "today"
        if today and (path == _DRS_PREFIX or path.startswith(_DRS_PREFIX + "/")):
            return self._ga4gh(method, path[len(_DRS_PREFIX) :], headers.get("Authorization"))
        if today and path.rstrip("/") in ("/data/list", "/data/download/token"):
            # Retired with Aspera: today's service no longer maps these routes.
            raise _HttpError(404, f"No static resource {path.strip('/')}.")
        if path == "/data" or path.startswith("/data/"):
            scopes = self._authenticate(headers.get("Authorization"))
            if path == "/data/list":
                _require_method(method, "POST", "GET")
                _require_scope(scopes, "browse", "list folders")
                return self._list(
                    _json_object(body)
                    if method == "POST"
                    else {"path": (query.get("path") or ["/"])[0]}
                )
            if path == "/data/download/token":
                _require_method(method, "POST")
                _require_scope(scopes, "download", "download files")
                return self._download_token(_json_object(body))
            prefix = "/data/query/api/study/manifest/"
            if path.startswith(prefix):
                _require_method(method, "GET")
                _require_scope(scopes, "browse", "read a study's file manifest")
                return self._manifest(path[len(prefix) :], query)
            prefix = "/data/query/api/study/summary/"
            if path.startswith(prefix):
                _require_method(method, "GET")
                _require_scope(scopes, "browse", "read a study's summary")
                return self._study_summary(path[len(prefix) :])
            prefix = "/data/query/drs/download/"
            if path.startswith(prefix):
                _require_method(method, "GET")
                _require_scope(scopes, "download", "download files")
                return self._drs(path[len(prefix) :])
        raise _HttpError(404, "No message available")

    def _auth_token(self, body: bytes, content_type: str) -> _Reply:
        if self.world == "today" and not self.allow_password_sign_in:
            raise _HttpError(
                400,
                "The legacy username/password token exchange is no longer supported: "
                f"create an API key at {API_KEY_PAGE} and send it on every request as "
                "'Authorization: Bearer <api_key>'",
            )
        fields: dict[str, Any]
        if "json" in content_type.lower():
            fields = _json_object(body)
        else:
            parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            fields = {k: v[0] for k, v in parsed.items()}
        username, password = fields.get("username"), fields.get("password")
        if not isinstance(username, str) or not isinstance(password, str) or not username:
            raise _HttpError(
                400,
                "Missing username or password",
                body=_oauth_error("invalid_request", "Missing username or password", 400),
                pretty=True,
            )
        good_user = hmac.compare_digest(username.encode(), self.username.encode())
        good_pass = hmac.compare_digest(password.encode(), self._password.encode())
        if not (good_user and good_pass):
            raise _HttpError(
                401,
                "Bad credentials",
                body=_oauth_error("invalid_grant", "Bad credentials", 401),
                pretty=True,
            )
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._bearer[token] = time.time() + self.bearer_lifetime
            self._issued.append(token)
        doc: dict[str, Any] = {"status": 200}
        for key in self.token_reply_keys:
            doc[key] = token
        return _Reply(200, jackson(doc))

    def _authenticate(self, header: str | None) -> frozenset[str]:
        """The scopes of the key or session token in *header*; 401 when there is none.

        A session token from ``/auth/token`` may do everything, as it did before keys.
        Today's world answers in Spring's error shape, the legacy one in OAuth's.
        """
        today = self.world == "today"

        def refuse(description: str) -> _HttpError:
            challenge = f'Bearer error="invalid_token", error_description="{description}"'
            return _HttpError(
                401,
                description,
                body=None if today else _oauth_error("invalid_token", description, 401),
                headers={"WWW-Authenticate": challenge},
            )

        scheme, _, token = (header or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            if today:
                raise refuse(
                    "Full authentication is required to access this resource: "
                    "send your ImmPort API key as 'Authorization: Bearer <api_key>'"
                )
            raise refuse("Full authentication is required to access this resource")
        with self._lock:
            key = self._api_keys.get(token)
            revoked = token in self._revoked_keys
            expiry = self._bearer.get(token)
        if key is not None:
            if revoked:
                raise refuse(
                    f"API key {key.id} has been revoked; create a new one at {API_KEY_PAGE}"
                )
            if key.expires_at <= datetime.now(UTC):
                stamp = key.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
                raise refuse(
                    f"API key {key.id} expired at {stamp}; create a new one at {API_KEY_PAGE}"
                )
            return frozenset(key.scopes)
        if expiry is None:
            raise refuse("Invalid API key" if today else "Invalid access token")
        if expiry <= time.time():
            raise refuse("Access token expired")
        return frozenset(API_KEY_SCOPES)

    def _resolve(self, norm: str) -> Path:
        """The file or folder for a normalised remote path; 404 unless it is served."""
        parts = [p for p in norm.split("/") if p]
        if any(p.startswith(".") for p in parts):
            raise _HttpError(404, f"{norm} not found")
        target = self.docroot.joinpath(*parts)
        try:
            resolved = target.resolve(strict=True)
        except OSError:
            raise _HttpError(404, f"{norm} not found") from None
        root = self.docroot.resolve()
        if resolved != root and not resolved.is_relative_to(root):
            raise _HttpError(404, f"{norm} not found")
        if not (resolved.is_dir() or resolved.is_file()):
            raise _HttpError(404, f"{norm} not found")
        return target

    def _visible(self, folder: str) -> list[tuple[str, str, os.stat_result]]:
        """``(name, path, stat)`` of each visible child of *folder*, sorted by name.

        *folder* is already known to lie inside the docroot, so only a symlink child
        needs resolving (``realpath`` costs an ``lstat`` per path component, which
        made listing 100,000 files take seconds). A symlink's ``stat`` follows it.
        Plain strings, not ``Path`` objects: building one per file cost more than the
        system calls.
        """
        kept: list[tuple[str, str, os.stat_result]] = []
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return kept
        root: Path | None = None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_symlink():
                    root = root or self.docroot.resolve()
                    resolved = Path(entry.path).resolve(strict=True)
                    if not resolved.is_relative_to(root):
                        continue
                    st = resolved.stat()
                else:
                    st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                kept.append((entry.name, entry.path, st))
        return kept

    def _scan(self, folder: Path) -> list[tuple[Path, os.stat_result]]:
        """The visible children of *folder*, sorted by name, each with its ``stat``."""
        return [(folder / name, st) for name, _, st in self._visible(str(folder))]

    def _children(self, folder: Path) -> list[Path]:
        return [child for child, _ in self._scan(folder)]

    def _files_below(self, folder: Path) -> Iterator[Path]:
        for _, path, _ in self._walk_files(folder):
            yield Path(path)

    def _stat_files_below(self, folder: Path) -> Iterator[tuple[Path, os.stat_result]]:
        for _, path, st in self._walk_files(folder):
            yield Path(path), st

    def _walk_files(self, folder: Path) -> Iterator[tuple[str, str, os.stat_result]]:
        """``(docroot-relative path, path, stat)`` of every visible file below *folder*."""
        yield from self._walk_below(str(folder), self._relative(folder))

    def _walk_below(self, folder: str, rel: str) -> Iterator[tuple[str, str, os.stat_result]]:
        for name, path, st in self._visible(folder):
            child = f"{rel}/{name}" if rel else name
            if stat.S_ISDIR(st.st_mode):
                yield from self._walk_below(path, child)
            else:
                yield child, path, st

    def _entry(
        self, remote: str, target: Path, *, listed: bool, st: os.stat_result | None = None
    ) -> dict[str, Any]:
        st = st or target.stat()
        is_dir = stat.S_ISDIR(st.st_mode)
        entry: dict[str, Any] = {
            "path": remote,
            "basename": remote.rsplit("/", 1)[-1],
            "type": "directory" if is_dir else "file",
            "size": st.st_size,
            "mtime": _iso(st.st_mtime),
            "permissions": [{"name": "view"}],
        }
        if is_dir:
            count = total = 0
            if not listed:
                for _, _, file_st in self._walk_files(target):
                    count += 1
                    total += file_st.st_size
            entry["size"] = 0 if listed else total
            if not listed:
                entry["fileCount"] = count
        return entry

    def _list(self, body: dict[str, Any]) -> _Reply:
        raw = body.get("path")
        if isinstance(raw, list) and len(raw) == 1:
            raw = raw[0]
        if not isinstance(raw, str) or not raw:
            raise _HttpError(400, "Required property 'path' is missing")
        norm = _normalise(raw)
        override = self.listing_overrides.get(norm)
        if override is not None:
            try:
                target: Path | None = self._resolve(norm)
            except _HttpError:
                target = None
            self_entry = (
                self._entry(norm, target, listed=True)
                if target is not None
                else {
                    "path": norm,
                    "basename": norm.rsplit("/", 1)[-1],
                    "type": "directory",
                    "size": 0,
                    "mtime": _iso(0),
                    "permissions": [{"name": "view"}],
                }
            )
            items = list(override)
        else:
            target = self._resolve(norm)
            self_entry = self._entry(norm, target, listed=True)
            items = []
            if target.is_dir():
                base = norm.rstrip("/")
                items = [
                    self._entry(f"{base}/{c.name}", c, listed=False, st=st)
                    for c, st in self._scan(target)
                ]
        doc = {
            "self": self_entry,
            "items": items,
            "item_count": len(items),
            "total_count": len(items),
            "parameters": {"path": norm},
        }
        return _Reply(200, _compact(doc))

    def _download_token(self, body: dict[str, Any]) -> _Reply:
        paths = body.get("paths")
        # R's jsonlite auto_unbox turns a one-element vector into a bare string.
        if isinstance(paths, str):
            paths = [paths]
        if (
            not isinstance(paths, list)
            or not paths
            or not all(isinstance(p, str) and p.strip("/") for p in paths)
        ):
            raise _HttpError(400, "Required property 'paths' must be a non-empty list of paths")
        for raw in paths:
            self._resolve(_normalise(raw))
        token = aspera_tokens.mint(
            self.aspera_secret, list(paths), lifetime=self.aspera_token_lifetime
        )
        with self._lock:
            self._issued.append(token)
        return _Reply(200, _compact({"token": token}))

    def _md5(self, target: Path, st: os.stat_result | None = None) -> str:
        st = st or target.stat()
        # ctime too: a file rewritten with its old mtime put back has new bytes.
        key = (str(target), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            cached = self._md5_cache.get(key)
        if cached is not None:
            return cached
        digest = hashlib.md5(usedforsecurity=False)
        with target.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        value = digest.hexdigest()
        with self._lock:
            self._md5_cache[key] = value
        return value

    def _file_details(
        self, accession: str, target: Path, st: os.stat_result | None = None
    ) -> dict[str, Any]:
        rel = self._relative(target)
        st = st or target.stat()
        md5 = self.md5_overrides.get(rel, self.md5_overrides.get("/" + rel))
        parts = rel.split("/")
        crc = zlib.crc32(rel.encode("utf-8"))
        return {
            "fileDetailsId": crc % 10_000_000,
            "reportedMD5": None,
            "generatedMD5": md5 if md5 is not None else self._md5(target, st),
            "studyAccession": accession,
            "filesizeBytes": st.st_size,
            "fileType": _file_type(parts),
            "fileAccession": f"FILE{crc % 10_000_000:07d}",
            "fileName": parts[-1],
            "path": rel,
            "dateFileUpdated": datetime.fromtimestamp(int(st.st_mtime), UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.000+00:00"
            ),
            "fileUUID": str(file_uuid(rel)),
            "drsObjectCreated": True,
            "workspaceId": 1,
            "aigeneratedKeywords": None,
            "aigeneratedSummary": None,
        }

    def _today_row(
        self, accession: str, rel: str, path: str, st: os.stat_result, style: _RowStyle
    ) -> dict[str, Any]:
        """A row of today's manifest, field for field as the real service writes it."""
        parts = rel.split("/")
        crc = zlib.crc32(rel.encode("utf-8"))
        file_type = _today_file_type(parts)
        if file_type == "study_file":
            accession_text = f"SFL{crc % 100_000}"
        elif file_type == "protocol_file":
            accession_text = f"PTL{crc % 100_000}"
        elif file_type == "result_file":
            accession_text = str(crc % 1_000_000)
        else:
            accession_text = parts[-1]
        md5: str | None = None
        if rel not in style.null_md5:
            override = self.md5_overrides.get(rel, self.md5_overrides.get("/" + rel))
            md5 = override if override is not None else self._md5(Path(path), st)
        updated = datetime.fromtimestamp(int(st.st_mtime), UTC)
        has_drs = rel not in style.no_drs
        row: dict[str, Any] = {
            "fileDetailsId": crc % 10_000_000,
            "workspaceId": zlib.crc32(accession.encode("utf-8")) % 10_000,
            "reportedMD5": None,
            "generatedMD5": md5,
            "studyAccession": accession,
            "filesizeBytes": st.st_size,
            "fileType": file_type,
            "fileAccession": accession_text,
            "fileName": parts[-1],
            "path": rel,
            "dateFileUpdated": updated.strftime(
                "%Y-%m-%dT%H:%M:%SZ" if style.datetime_dates else "%Y-%m-%d"
            ),
            "fileUUID": str(file_uuid(rel)),
            "drsObjectCreated": has_drs if style.bool_drs else ("Y" if has_drs else "N"),
            "aigeneratedKeywords": None,
            "aigeneratedSummary": None,
        }
        row.update(style.extra_fields)
        return row

    def _row_style(self) -> _RowStyle:
        return _RowStyle(
            world=self.world,
            bool_drs=self.manifest_bool_drs,
            datetime_dates=self.manifest_datetime_dates,
            null_md5=frozenset(p.strip("/") for p in self.manifest_null_md5),
            no_drs=frozenset(p.strip("/") for p in self.manifest_no_drs),
            extra_fields=dict(self.manifest_extra_fields),
            extra_key=json.dumps(self.manifest_extra_fields, sort_keys=True, default=str),
        )

    def _cached_details(
        self, accession: str, rel: str, path: str, st: os.stat_result, style: _RowStyle
    ) -> tuple[dict[str, Any], bytes]:
        """A manifest row and its compact JSON, remembered while the file is unchanged.

        A 100,000-file manifest took seconds of the emulator's CPU to rebuild on every
        request, time a real server spends on its own hardware, not the client's.
        """
        md5 = self.md5_overrides.get(rel, self.md5_overrides.get("/" + rel))
        key: tuple[Any, ...]
        if style.world == "legacy":
            key = (accession, rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, md5)
        else:
            key = (
                accession, rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, md5, style.bool_drs,
                style.datetime_dates, rel in style.null_md5, rel in style.no_drs, style.extra_key,
            )  # fmt: skip
        with self._lock:
            hit = self._details_cache.get(key)
        if hit is None:
            if style.world == "legacy":
                row = self._file_details(accession, Path(path), st)
            else:
                row = self._today_row(accession, rel, path, st, style)
            hit = (row, _compact(row))
            with self._lock:
                self._details_cache[key] = hit
        return hit

    def _relative(self, target: Path) -> str:
        """*target*'s docroot-relative POSIX path (``""`` for the docroot itself)."""
        text, base = str(target), str(self.docroot)
        if text == base:
            return ""
        if text.startswith(base + os.sep):
            return text[len(base) + 1 :].replace(os.sep, "/")
        return target.relative_to(self.docroot).as_posix()

    def _manifest(self, accession: str, query: dict[str, list[str]]) -> _Reply:
        if not self.manifest_route:
            raise _HttpError(404, "No handler found for this path")
        if not self.manifest_available:
            raise _HttpError(503, "Service temporarily unavailable")
        accession = accession.strip("/")
        if not accession or "/" in accession or accession.startswith("."):
            raise _HttpError(404, f"Study {accession} not found")
        study = self.docroot / accession
        if not study.is_dir():
            raise _HttpError(404, f"Study {accession} not found")
        today = self.world == "today"
        wanted = (query.get("fileType") or ["all"])[0]
        known = TODAY_FILE_TYPES if today else (*_FILE_TYPES, "release_file")
        if wanted != "all" and wanted not in known:
            raise _HttpError(400, f"Unknown fileType {wanted!r}; expected 'all' or one of {known}")
        style = self._row_style()
        files = list(self._walk_files(study))
        details = [self._cached_details(accession, rel, path, st, style) for rel, path, st in files]
        # The rows name every file's DRS id: remember them so DRS lookups need no walk.
        index = {row["fileUUID"]: rel for (rel, _, _), (row, _) in zip(files, details, strict=True)}
        with self._lock:
            self._uuid_index.update(index)
        if wanted != "all":
            details = [d for d in details if d[0]["fileType"] == wanted]
        rows = [row for row, _ in details]
        extra = self.manifest_extra_rows.get(accession, [])
        rows += extra
        if (query.get("format") or ["json"])[0] == "tsv":
            keys = list(rows[0]) if rows else ["path"]
            lines = ["\t".join(keys)]
            lines += ["\t".join("" if r[k] is None else str(r[k]) for k in keys) for r in rows]
            return _Reply(200, ("\n".join(lines) + "\n").encode(), "text/tab-separated-values")
        # The same bytes as _compact(rows), from each row's cached JSON.
        blobs = [*(blob for _, blob in details), *(_compact(row) for row in extra)]
        listed = b"[" + b",".join(blobs) + b"]"
        if today and self.manifest_wrap_content:
            listed = b'{"content":' + listed + b"}"
        return _Reply(200, listed)

    def _study_summary(self, accession: str) -> _Reply:
        accession = accession.strip("/")
        study = self.docroot / accession
        if not accession or "/" in accession or accession.startswith(".") or not study.is_dir():
            raise _HttpError(404, f"Study {accession} not found")
        if accession in self.study_releases:
            release = self.study_releases[accession]
        else:
            numbers = [
                int(m[1])
                for child in self._children(study)
                if (m := re.match(rf"{re.escape(accession)}-DR(\d+)_", child.name))
            ]
            release = f"DR{max(numbers)}" if numbers else None
        doc = {
            "studyAccession": accession,
            "briefTitle": f"Emulated study {accession}",
            "initialDataReleaseVersion": release,
            "latestDataReleaseVersion": release,
            "latestDataReleaseDate": None,
        }
        return _Reply(200, _compact(doc))

    def _find_uuid(self, wanted: str) -> Path | None:
        """The served file whose DRS id is *wanted*, or None.

        Looked up in an index of ids seen so far, checked against the disk; a miss walks
        the docroot once and rebuilds the index (one walk of 100,000 files per DRS
        request would dominate every benchmark that downloads).
        """
        with self._lock:
            rel = self._uuid_index.get(wanted)
        if rel is not None:
            try:
                target = self._resolve("/" + rel)
            except _HttpError:
                target = None
            if target is not None and target.is_file():
                return target
        index = {str(file_uuid(rel)): rel for rel, _, _ in self._walk_files(self.docroot)}
        with self._lock:
            self._uuid_index = index
        rel = index.get(wanted)
        return None if rel is None else self.docroot.joinpath(*rel.split("/"))

    def _has_drs_object(self, target: Path) -> bool:
        if self.world != "today":
            return True
        return self._relative(target) not in {p.strip("/") for p in self.manifest_no_drs}

    def _blob_signature(self, file_id: str, expires: int) -> str:
        message = f"{file_id}:{expires}".encode()
        return hmac.new(self.aspera_secret.encode(), message, hashlib.sha256).hexdigest()

    def _presign(self, method: str, file_id: str) -> str:
        """A presigned link to one file by one access method, valid ``drs_link_lifetime``."""
        with self._lock:
            expired = self._expired_links > 0
            self._expired_links -= 1 if expired else 0
        lifetime = -1.0 if expired else self.drs_link_lifetime
        expires = int(time.time() + lifetime)
        signed = f"{method}/{file_id}"
        return (
            f"{self.base_url}/_blob/{method}/{quote(file_id)}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Expires={max(0, int(lifetime))}&expires={expires}"
            f"&sig={self._blob_signature(signed, expires)}"
        )

    def _drs(self, rest: str) -> _Reply:
        method, _, file_id = rest.partition("/")
        if method not in _BLOB_METHODS or not file_id:
            raise _HttpError(400, f"Unknown access method {method!r}")
        target = self._find_uuid(file_id)
        if target is None or not self._has_drs_object(target):
            raise _HttpError(404, f"File {file_id} not found")
        url = self._presign(method, file_id)
        return _Reply(200, _compact({"message": "Success", "url": url, "status": 200}))

    # -- GA4GH DRS (today's world) ---------------------------------------------------

    def _ga4gh(self, method: str, rest: str, authorization: str | None) -> _Reply:
        parts = [unquote(p) for p in rest.split("/") if p]
        if parts == ["service-info"]:
            _require_method(method, "GET")
            return _Reply(200, _compact(self._service_info()))
        is_object = len(parts) == 2 and parts[0] == "objects"
        is_access = len(parts) == 4 and parts[0] == "objects" and parts[2] == "access"
        if not (is_object or is_access):
            raise _HttpError(404, f"No static resource {_DRS_PREFIX.strip('/')}{rest}.")
        _require_method(method, "GET")
        scopes = self._authenticate(authorization)
        object_id = parts[1]
        if is_access:
            _require_scope(scopes, "download", "download files")
        elif not scopes & {"browse", "download"}:
            # An object is metadata, but it is also the first step of every download.
            _require_scope(scopes, "browse", "read DRS objects")
        target = self._find_uuid(object_id)
        if target is None or not self._has_drs_object(target):
            raise _drs_error(404, f"Object {object_id} not found")
        if is_object:
            return _Reply(200, _compact(self._drs_object(object_id, target, scopes)))
        access_id = parts[3]
        if access_id not in {aid for _, aid in _DRS_ACCESS_METHODS}:
            raise _drs_error(404, f"Access id {access_id!r} not found for object {object_id}")
        url = self._presign(access_id, object_id)
        return _Reply(200, _compact({"url": url, "headers": []}))

    def _drs_object(
        self, object_id: str, target: Path, scopes: frozenset[str]
    ) -> dict[str, Any]:
        st = target.stat()
        rel = self._relative(target)
        md5 = self.drs_md5_overrides.get(rel)
        if md5 is None:
            md5 = self._md5(target, st)
        # Links are handed out inline only to a key that may download.
        inline = self.drs_inline_access_url and "download" in scopes
        access_methods: list[dict[str, Any]] = []
        for kind, access_id in _DRS_ACCESS_METHODS:
            if inline:
                access_methods.append(
                    {"type": kind, "access_url": {"url": self._presign(access_id, object_id)}}
                )
            else:
                access_methods.append({"type": kind, "access_id": access_id})
        return {
            "id": object_id,
            "name": target.name,
            "self_uri": self.drs_uri(object_id),
            "size": self.drs_size_overrides.get(rel, st.st_size),
            "created_time": _iso(st.st_mtime),
            "checksums": [{"type": "md5", "checksum": md5}],
            "access_methods": access_methods,
        }

    def _service_info(self) -> dict[str, Any]:
        return {
            "id": "org.immport.drs",
            "name": "ImmPort DRS (emulated)",
            "type": {"group": "org.ga4gh", "artifact": "drs", "version": "1.4.0"},
            "description": "GA4GH Data Repository Service over the emulator's docroot",
            "organization": {"name": "ImmPort", "url": "https://www.immport.org"},
            "version": "1.0.0",
            "environment": "test",
        }

    def _blob(
        self,
        rest: str,
        query: dict[str, list[str]],
        range_header: str | None,
        if_match: str | None = None,
    ) -> _Reply:
        method, _, file_id = rest.partition("/")
        signed = rest
        if method not in _BLOB_METHODS or not file_id:
            method, file_id, signed = "", rest, rest  # a link from before access methods
        try:
            expires = int((query.get("expires") or ["0"])[0])
        except ValueError:
            expires = 0
        sig = (query.get("sig") or [""])[0]

        def answer(reply: _Reply, relpath: str | None) -> _Reply:
            with self._lock:
                self.blob_requests.append(BlobRequest(method, relpath, range_header, reply.status))
            return reply

        if not hmac.compare_digest(sig, self._blob_signature(signed, expires)):
            return answer(
                _s3_error(
                    403,
                    "SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you "
                    "provided.",
                ),
                None,
            )
        if expires < time.time():
            return answer(_s3_error(403, "AccessDenied", "Request has expired"), None)
        target = self._find_uuid(file_id)
        if target is None:
            if method == "stream":
                # ImmPort's streaming endpoint reports a missing source as a 500.
                doc = _spring_body(500, "The specified key does not exist.", "/_blob/" + rest)
                return answer(_Reply(500, _compact(doc)), None)
            return answer(
                _s3_error(404, "NoSuchKey", "The specified key does not exist."), None
            )
        relpath = self._relative(target)
        fault = self._take_blob_fault(method, relpath)
        if fault is not None and fault.kind == "error":
            return answer(_s3_error(fault.status, fault.code, fault.message), relpath)
        st = target.stat()
        total = st.st_size
        # S3's ETag of a single-part upload: the content's MD5, quoted.
        etag = f'"{self._md5(target, st)}"'
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Last-Modified": datetime.fromtimestamp(int(st.st_mtime), UTC).strftime(
                "%a, %d %b %Y %H:%M:%S GMT"
            ),
        }
        if if_match is not None and if_match.strip() not in ("*", etag):
            reply = _s3_error(
                412,
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
            )
            reply.headers = {**(reply.headers or {}), "ETag": etag}
            return answer(reply, relpath)
        wanted = None if self.blob_ignore_range else _byte_range(range_header, total)
        if wanted == "unsatisfiable":
            headers["Content-Range"] = f"bytes */{total}"
            reply = _s3_error(416, "InvalidRange", "The requested range is not satisfiable")
            reply.headers = {**(reply.headers or {}), **headers}
            return answer(reply, relpath)
        status, start, length = 200, 0, total
        if isinstance(wanted, tuple):
            start, end = wanted
            status, length = 206, end - start + 1
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        body = _BlobBody(target, relpath, start, length, fault)
        return answer(
            _Reply(status, b"", "application/octet-stream", headers, stream=body), relpath
        )

    def _take_blob_fault(self, method: str, relpath: str) -> _BlobFault | None:
        with self._lock:
            for fault in self._blob_faults:
                if fault.method is not None and fault.method != method:
                    continue
                if fault.path is not None and fault.path != relpath:
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._blob_faults.remove(fault)
                return fault
        return None

    def _count_served(self, relpath: str, sent: int) -> None:
        with self._lock:
            self._bytes_served[relpath] = self._bytes_served.get(relpath, 0) + sent


def file_uuid(relpath: str) -> uuid.UUID:
    """The emulator's stable DRS id (``fileUUID``) of a destination-relative path."""
    return uuid.uuid5(_UUID_NAMESPACE, relpath.strip("/"))


def _file_type(parts: list[str]) -> str:
    folders = [p.lower() for p in parts[1:-1]]
    if any("protocol" in f for f in folders):
        return "protocol_file"
    if folders and folders[0] == "resultfiles":
        return "result_file"
    if folders and folders[0] == "studyfiles":
        return "study_file"
    # The study root holds the current data release; earlier ones are under archive/.
    if not folders:
        return "release_file"
    if folders[0] == "archive":
        return "archive_file"
    return "study_file"


@dataclass(frozen=True, slots=True)
class _RowStyle:
    """The knobs that shape manifest rows, read once per request."""

    world: World
    bool_drs: bool
    datetime_dates: bool
    null_md5: frozenset[str]
    no_drs: frozenset[str]
    extra_fields: dict[str, Any]
    extra_key: str


def _today_file_type(parts: list[str]) -> str:
    """Today's ``fileType`` of ``SDYn/<folder>/...``: by the top folder; the study root
    holds the current release."""
    if len(parts) <= 2:
        return "release_file"
    return _TODAY_TYPE_BY_FOLDER.get(parts[1].lower(), "study_file")


def _require_scope(scopes: frozenset[str], scope: str, action: str) -> None:
    if scope not in scopes:
        raise _HttpError(
            403,
            f"This API key lacks the '{scope}' scope needed to {action}; "
            f"create a key with it at {API_KEY_PAGE}",
        )


def _drs_error(status: int, message: str) -> _HttpError:
    """An error in the GA4GH DRS shape: ``{"msg": ..., "status_code": ...}``."""
    return _HttpError(status, message, body={"msg": message, "status_code": status})


def _scrub(doc: Any) -> Any:
    """*doc* with the value of every secret-looking field masked."""
    if isinstance(doc, dict):
        return {k: "<hidden>" if k in _SECRET_FIELDS else _scrub(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_scrub(v) for v in doc]
    return doc


def _byte_range(header: str | None, total: int) -> tuple[int, int] | str | None:
    """``(first, last)`` byte of a single-range ``Range`` header, ``"unsatisfiable"``, or
    None to send the whole file (no header, several ranges, or one we do not parse)."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or (not match[1] and not match[2]):
        return None
    if not match[1]:
        suffix = int(match[2])
        if suffix == 0 or total == 0:
            return "unsatisfiable"
        return max(0, total - suffix), total - 1
    first = int(match[1])
    last = int(match[2]) if match[2] else None
    if last is not None and last < first:
        return None  # not a valid range: ignored, as RFC 9110 says
    if first >= total:
        return "unsatisfiable"
    return first, total - 1 if last is None else min(last, total - 1)


def _s3_error(status: int, code: str, message: str) -> _Reply:
    """An error as S3 writes it: XML with ``Code`` and ``Message``."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{xml_escape(code)}</Code><Message>{xml_escape(message)}</Message>"
        f"<RequestId>{secrets.token_hex(8).upper()}</RequestId>"
        f"<HostId>{secrets.token_urlsafe(24)}</HostId></Error>"
    )
    return _Reply(status, body.encode("utf-8"), "application/xml", {})


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _oauth_error(error: str, description: str, status: int) -> dict[str, Any]:
    return {
        "error": error,
        "error_description": description,
        "status": status,
        "message": description,
    }


def _spring_body(status: int, message: str, path: str) -> dict[str, Any]:
    return {
        "timestamp": _spring_time(),
        "status": status,
        "error": _phrase(status),
        "message": message,
        "path": path,
    }


def _require_method(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise _HttpError(
            405, f"Request method '{method}' not supported", headers={"Allow": ", ".join(allowed)}
        )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _HttpError(400, "JSON parse error: malformed request body") from None
    if not isinstance(doc, dict):
        raise _HttpError(400, "Required request body is missing or not a JSON object")
    return doc


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Tests start and stop many emulators; a lingering TIME_WAIT must not block a port.
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    emulator: ClassVar[Emulator]
    protocol_version = "HTTP/1.1"
    server_version = "ImmPortEmulator/1.0"
    # Idle keep-alive connections give their thread back after this long.
    timeout = 30
    # Headers and body go out in separate writes; with Nagle on, delayed ACKs would
    # add ~40 ms to every reply on a kept-alive connection.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        with self.emulator._lock:
            self.emulator._connections.add(self.connection)

    def finish(self) -> None:
        with self.emulator._lock:
            self.emulator._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > _MAX_REQUEST_BODY:
            self.close_connection = True
            raise _HttpError(413 if length > 0 else 400, "Request body too large or unreadable")
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        emu = self.emulator
        split = urlsplit(self.path)
        path = split.path
        try:
            body = self._read_body()
        except _HttpError as err:
            self._send(_Reply(err.status, _compact(_spring_body(err.status, err.message, path))))
            return
        json_body: Any | None = None
        if "json" in (self.headers.get("Content-Type") or "").lower() and body:
            try:
                json_body = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                json_body = None
        emu._record(self.command, path, json_body)
        if emu.latency > 0:
            time.sleep(emu.latency)
        fault = emu._take_fault(path)
        if fault is not None:
            if fault.delay > 0:
                time.sleep(fault.delay)
            if fault.drop_connection:
                # No status line at all: the client sees the connection die mid-request.
                self.close_connection = True
                return
            self._send(emu._fault_reply(fault, path))
            return
        try:
            reply = emu._route(self.command, path, parse_qs(split.query), body, self.headers)
        except _HttpError as err:
            doc = err.body if err.body is not None else _spring_body(err.status, err.message, path)
            reply = _Reply(
                err.status, jackson(doc) if err.pretty else _compact(doc), headers=err.headers
            )
        except Exception:
            log.exception("emulator failed on %s %s", self.command, path)
            reply = _Reply(500, _compact(_spring_body(500, "Internal emulator error", path)))
        self._send(reply)

    def _send(self, reply: _Reply) -> None:
        if reply.stream is not None:
            self._send_stream(reply, reply.stream)
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for key, value in (reply.headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


    def _send_stream(self, reply: _Reply, body: _BlobBody) -> None:
        """Send a file range with ``sendfile``, applying the body's fault, counting bytes."""
        emu = self.emulator
        fault = body.fault
        limit = body.length
        if fault is not None and fault.kind in ("drop", "short"):
            limit = min(limit, fault.after_bytes)
        sent = 0
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(body.length))
            for key, value in (reply.headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            chunk = 65536 if emu.blob_chunk_delay > 0 else 1 << 20
            stall_at = fault.after_bytes if fault is not None and fault.kind == "stall" else None
            with body.target.open("rb") as fh:
                while sent < limit:
                    step = min(chunk, limit - sent)
                    if stall_at is not None and fault is not None:
                        if sent >= stall_at:
                            time.sleep(fault.seconds)
                            stall_at = None
                        else:
                            step = min(step, stall_at - sent)
                    count = self.connection.sendfile(fh, body.start + sent, step)
                    if count <= 0:
                        break
                    sent += count
                    emu._count_served(body.relpath, count)
                    if emu.blob_chunk_delay > 0:
                        time.sleep(emu.blob_chunk_delay)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
            return
        if sent < body.length:
            self.close_connection = True
            if fault is not None and fault.kind == "drop":
                # Linger 0: closing sends a reset, not an orderly end of stream.
                with contextlib.suppress(OSError):
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()


def main(argv: list[str] | None = None) -> int:
    """Serve a docroot until SIGINT/SIGTERM, with a stand-in ``ascp`` beside it.

    Prints the URLs as one JSON line first, then (for people) the ``export`` lines that
    point immsync at this server and at the stand-in ``ascp``. Today's world issues an
    API key at start and writes its key file; the legacy world writes a netrc file with
    the demo account. Neither the key nor the password is ever printed. Whatever was
    made in the temporary folder (key file, netrc, ``ascp``, the demo studies) is
    removed on exit.
    """
    parser = _argument_parser()
    args = parser.parse_args(argv)

    if args.docroot is not None and not args.docroot.is_dir():
        parser.error(f"--docroot {args.docroot} is not a folder")
    if args.legacy and (args.api_key_file or args.allow_password_sign_in):
        parser.error("--api-key-file and --allow-password-sign-in are for today's world")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="emulator: %(message)s",
    )
    password = args.password or os.environ.get("IMMPORT_PASSWORD") or "demo-password"
    world: World = "legacy" if args.legacy else "today"
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with contextlib.ExitStack() as cleanup:
        scratch = _Scratch(cleanup)
        docroot = args.docroot
        if docroot is None:
            docroot = _build_demo_studies(scratch.path / "immport", world)
        emulator = Emulator(
            docroot,
            world=world,
            username=args.username,
            password=password,
            host=args.host,
            port=args.port,
        )
        emulator.latency = args.latency
        emulator.allow_password_sign_in = args.allow_password_sign_in
        cleanup.enter_context(emulator)
        line: dict[str, str] = {
            "world": world,
            "base_url": emulator.base_url,
            "token_url": emulator.token_url,
            "data_url": emulator.data_url,
            "query_url": emulator.query_url,
            "drs_url": emulator.drs_url,
            "docroot": str(docroot),
        }
        exports = {
            "IMMSYNC_QUERY_API_BASE_URL": emulator.query_url,
            "IMMSYNC_DRS_BASE_URL": emulator.drs_url,
            "IMMPORT_DATA_API_BASE_URL": emulator.data_url,
            "IMMPORT_TOKEN_URL": emulator.token_url,
        }
        if world == "today":
            key_file = args.api_key_file or scratch.path / "immport-api-key.json"
            emulator.write_api_key_file(key_file, emulator.add_api_key())
            line["api_key_file"] = str(key_file)
            exports = {"IMMPORT_API_KEY_FILE": str(key_file), **exports}
            # The one credential that would outrank the key file.
            unset = ["IMMPORT_API_KEY"]
        else:
            netrc_file = _write_netrc(
                args.netrc or scratch.path / "netrc", emulator.host, args.username, password
            )
            line["netrc"] = str(netrc_file)
            exports |= {"IMMPORT_USERNAME": args.username, "NETRC": str(netrc_file)}
            # Everything immsync would use before a netrc entry.
            unset = ["IMMPORT_API_KEY", "IMMPORT_API_KEY_FILE", "IMMPORT_TOKEN", "IMMPORT_PASSWORD"]
        aspera = _install_stand_in_ascp(
            emulator, args.aspera_dir or scratch.path / "aspera", args.aspera_config
        )
        line |= {"ascp": str(aspera.ascp), "aspera_key": str(aspera.key)}
        exports |= {"IMMSYNC_ASCP": str(aspera.ascp), "IMMSYNC_ASPERA_KEY": str(aspera.key)}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.write(_banner(emulator, args, docroot_is_demo=args.docroot is None) + "\n")
        for name, value in exports.items():
            sys.stdout.write(f"export {name}={shlex.quote(value)}\n")
        sys.stdout.write(f"unset {' '.join(unset)}\n")
        sys.stdout.write(_next_steps(emulator, scratch.made) + "\n")
        sys.stdout.flush()
        while not stop.wait(0.2):
            pass
    return 0


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m immsync.testing.emulator",
        description="Serve a folder through an emulated ImmPort API on 127.0.0.1: today's "
        "ImmPort (API keys, the study file manifest, DRS) by default, or --legacy "
        "(passwords, /data/list, Aspera tokens). Installs a stand-in ascp for it and "
        "prints the export lines that point immsync at both.",
    )
    parser.add_argument(
        "--docroot",
        type=Path,
        help="folder to serve (default: the demo studies SDY1 and SDY269, built in a "
        "temporary folder removed on exit)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--legacy", action="store_true", help="serve the legacy Aspera-era API instead"
    )
    parser.add_argument(
        "--api-key-file",
        type=Path,
        help="today's world: write the API key file here (default: a temporary folder "
        "removed on exit)",
    )
    parser.add_argument(
        "--allow-password-sign-in",
        action="store_true",
        help="today's world: still answer POST /auth/token with a session token",
    )
    parser.add_argument("--username", default=os.environ.get("IMMPORT_USERNAME", "demo"))
    parser.add_argument(
        "--password",
        default=None,
        help="demo account password (default: $IMMPORT_PASSWORD, else demo-password); "
        "prefer the environment variable, argv is visible to other users",
    )
    parser.add_argument(
        "--netrc",
        type=Path,
        help="legacy world: write the demo account's netrc file here, readable by you only "
        "(default: a temporary folder removed on exit)",
    )
    parser.add_argument(
        "--aspera-dir",
        type=Path,
        help="install the stand-in Aspera CLI here, kept on exit: bin/ascp and "
        "etc/asperaweb_id_dsa.openssh (default: a temporary folder removed on exit)",
    )
    parser.add_argument(
        "--aspera-config",
        type=Path,
        help="where the stand-in ascp reads what to serve (default: etc/aspera-config.json "
        "in the Aspera folder)",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each reply")
    parser.add_argument("--verbose", action="store_true", help="log each request to stderr")
    return parser


class _Scratch:
    """A temporary folder made on first use and removed when *cleanup* closes."""

    def __init__(self, cleanup: contextlib.ExitStack) -> None:
        self._cleanup = cleanup
        self._path: Path | None = None

    @property
    def made(self) -> Path | None:
        return self._path

    @property
    def path(self) -> Path:
        if self._path is None:
            folder = tempfile.TemporaryDirectory(prefix="immport-emu-")
            self._path = Path(self._cleanup.enter_context(folder))
        return self._path


def _build_demo_studies(root: Path, world: World) -> Path:
    """The demo's studies: today's tree (release files, archive) or the legacy one."""
    if world == "today":
        build_today_tree(root)
    else:
        build_sample_tree(root)
    return root


def _write_netrc(path: Path, host: str, username: str, password: str) -> Path:
    """The demo account as a netrc entry for *host*, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(f"machine {host} login {username} password {password}\n")
    return path


def _install_stand_in_ascp(
    emulator: Emulator, folder: Path, config: Path | None
) -> FakeAsperaInstall:
    """The stand-in Aspera CLI under *folder*, serving *emulator*'s docroot and tokens."""
    config_path = emulator.write_aspera_config(config or folder / "etc" / "aspera-config.json")
    return install_fake_ascp(folder, config_path)


def _banner(emulator: Emulator, args: argparse.Namespace, *, docroot_is_demo: bool) -> str:
    served = "the demo studies" if docroot_is_demo else str(emulator.docroot)
    if emulator.world == "today":
        return (
            f"# today's ImmPort at {emulator.base_url}, serving {served}, with an API key "
            "(browse, download) in the key file. Paste into your shell:"
        )
    return (
        f"# legacy ImmPort at {emulator.base_url}, serving {served}: sign-in as "
        f"{args.username!r} (the netrc file holds the password), Aspera tokens for the "
        "stand-in ascp. Paste into your shell:"
    )


def _next_steps(emulator: Emulator, scratch: Path | None) -> str:
    studies = sorted(
        (p.name for p in emulator.docroot.iterdir() if re.fullmatch(r"SDY\d+", p.name)),
        key=lambda name: int(name[3:]),
    )
    transports = "https" if emulator.world == "today" else "https (or ascp)"
    lines = [
        f"# Then: immsync init {' '.join(studies[:3]) or 'SDY1'} > manifest.yaml; "
        f"immsync plan manifest.yaml; immsync apply manifest.yaml --transport {transports}"
    ]
    if emulator.world == "today":
        lines.append(
            "# Aspera is retired here (its token service answers 404): with the stand-in "
            "ascp, `apply` moves to https and `--transport ascp` stops with exit 8; "
            "--legacy serves Aspera."
        )
    ending = f" and removes {scratch}" if scratch is not None else ""
    lines.append(f"# Ctrl-C stops the emulator{ending}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
