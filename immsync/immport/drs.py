"""Download links for single files: the GA4GH DRS API first, ImmPort's shortcut behind it.

Two ways lead to a file's link:

- **GA4GH DRS**, under ``IMMSYNC_DRS_BASE_URL``: ``GET {drs}/ga4gh/drs/v1/objects/{id}``
  answers a DrsObject (``size``, ``checksums``, ``access_methods``); an access method
  carries its link inline (``access_url``) or an ``access_id`` to trade for one at
  ``.../objects/{id}/access/{access_id}``.
- **ImmPort's shortcut**, under the query API: ``GET {query}/drs/download/{s3|stream}/{id}``
  answers ``{"url": ...}``.

GA4GH comes first. Its object states the size and MD5 of the bytes it serves, so an
object that disagrees with the study file manifest is refused before a byte moves
(:class:`~immsync.errors.ChecksumMismatch`); and it is the interface ImmPort names as
Aspera's successor. The shortcut stays behind it: a file the GA4GH service does not know
(404), or cannot describe, still downloads through the shortcut, and when no GA4GH
service answers at the DRS base at all (its ``service-info`` fails too) the rest of the
run skips GA4GH and uses the shortcut alone.

A signed link stays valid for days, so each is kept for the run, per file and per
access method: a retry or a resume in the same run asks for no new link. The transport
asks for a ``fresh`` one when the link's host refuses it (expired), and ``forget``s a
file's links once it arrived.

The API key goes only to the configured query and DRS hosts (through ``Api``). A
``drs://`` URI naming another host is not followed with it; links are fetched by the
transport without it. A link is a credential (anyone holding it can fetch the file
until it expires), so it is never logged whole.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import ApiError, AuthError, ChecksumMismatch, UsageError
from .api import Api
from .wire import check_url, is_loopback, json_type

log = logging.getLogger(__name__)

ACCESS_METHODS = ("s3", "stream")
"""The shortcut's access methods, in the order they are tried."""
GA4GH = "GA4GH"
SHORTCUT = "shortcut"
DRS_API_PATH = "/ga4gh/drs/v1"
_LINK_TYPES = frozenset({"s3", "https", "http"})
"""GA4GH access method types whose links are plain HTTP(S) downloads."""
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
_OWN_HEADERS = frozenset(
    {
        "host", "content-length", "transfer-encoding", "connection", "range", "if-match",
        "accept-encoding", "te", "upgrade", "proxy-authorization",
    }
)
"""Headers the transport sets itself (or that steer the connection): never taken from a reply."""


@dataclass(frozen=True, slots=True)
class Link:
    """A signed download link, and the headers its access method asks to send with it.

    The headers belong to ``url`` alone: they are not sent to a host it redirects to.
    """

    url: str = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class _Access:
    access_id: str | None
    inline: Link | None


@dataclass(frozen=True, slots=True)
class _Described:
    """What a GA4GH object says of one file: its URL and access methods, by route."""

    object_url: str
    accesses: dict[str, _Access]
    expected: tuple[int | None, str | None]
    """The manifest's size and MD5 the object was checked against (a refresh is too)."""


def drs_base_url(text: str) -> str:
    """An http(s) base URL from ``https://host[/prefix]`` or a ``drs://host[:port]`` URI.

    A ``drs://`` URI maps to https, or to http for a loopback host (the emulator).
    """
    text = text.strip()
    parts = urlsplit(text)
    if parts.scheme.lower() != "drs":
        return text.rstrip("/")
    host = parts.hostname or ""
    scheme = "http" if host and is_loopback(host) else "https"
    return f"{scheme}://{parts.netloc}"


def split_drs_uri(text: str) -> tuple[str, str] | None:
    """``(base URL, object id)`` of ``drs://host[:port]/id``; None when *text* is not one.

    Raises:
        ValueError: a ``drs://`` URI without a host or an id (or a compact identifier,
            ``drs://prefix:accession``, which needs a resolver immsync does not use).
    """
    parts = urlsplit(text.strip())
    if parts.scheme.lower() != "drs":
        return None
    object_id = parts.path.lstrip("/")
    try:
        port_ok = parts.port is not None or ":" not in parts.netloc
    except ValueError:
        port_ok = False
    if not parts.hostname or not object_id or not port_ok:
        raise ValueError(f"{text!r} is not a drs://host/id URI")
    return drs_base_url(text), object_id


def object_id_of(file_id: str) -> str:
    """The bare DRS id (what the shortcut takes) of an id or a ``drs://`` URI."""
    try:
        split = split_drs_uri(file_id)
    except ValueError:
        return file_id
    return file_id if split is None else split[1]


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        port = parts.port or default
    except ValueError:
        port = None
    return parts.scheme, (parts.hostname or "").lower(), port


class DrsLinks:
    """Hands out download links for DRS ids, GA4GH first, and keeps them for the run.

    Args:
        api: authenticated calls (the bearer goes to *query_url* and *drs_url* only).
        query_url: base of ImmPort's query API (the shortcut), or None.
        drs_url: base of the GA4GH DRS service (``https://host`` or ``drs://host``),
            or None for the shortcut alone.
        allow_insecure_http: permit plain-http links to a non-loopback host.

    Thread-safe: the transport asks from several download threads at once.
    """

    def __init__(
        self,
        api: Api,
        query_url: str | None,
        drs_url: str | None = None,
        *,
        allow_insecure_http: bool,
    ) -> None:
        self._api = api
        self.query_url = query_url
        self.drs_base = (
            None
            if drs_url is None
            else check_url(drs_base_url(drs_url), "DRS URL", allow_insecure_http)
        )
        self._allow_insecure_http = allow_insecure_http
        self._lock = threading.Lock()
        self._described: dict[str, _Described | ChecksumMismatch | None] = {}
        """By id: the object, a mismatch to repeat, or None when GA4GH cannot serve it."""
        self._links: dict[str, dict[str, Link]] = {}
        self._service_lock = threading.Lock()
        self._service_checked = False
        self.ga4gh_off: str | None = None
        """Why GA4GH is skipped for the rest of the run, once no service answered."""

    # -- what the transport calls ------------------------------------------------------

    def routes(
        self,
        file_id: str,
        *,
        size: int | None,
        md5: str | None,
        shortcut_methods: Sequence[str] = ACCESS_METHODS,
    ) -> list[str]:
        """The ways to *file_id*'s bytes, in the order to try them: GA4GH's access
        methods (``"GA4GH s3"``, ...), then the shortcut's (``"shortcut s3"``, ...).

        The GA4GH object is fetched once per run and checked against *size* and *md5*
        (the study file manifest's; None skips that check).

        Raises:
            ChecksumMismatch: the DRS object's size or MD5 differs from the manifest's.
            UsageError: neither a DRS base nor a query URL is configured.
            AuthError: ImmPort refused the credentials.
        """
        found: list[str] = []
        if self.drs_base is not None and self.ga4gh_off is None:
            described = self._describe(file_id, size=size, md5=md5)
            if described is not None:
                found += list(described.accesses)
        if self.query_url is not None:
            found += [f"{SHORTCUT} {method}" for method in shortcut_methods]
        if not found and self.drs_base is None:
            raise UsageError(
                "HTTPS downloads need ImmPort's query API or a DRS service, and neither "
                "URL is configured",
                hint="set IMMSYNC_QUERY_API_BASE_URL, e.g. https://www.immport.org/data/query",
            )
        if not found:
            raise ApiError(
                f"GA4GH DRS cannot serve {file_id}, and without ImmPort's query API there is "
                "no DRS shortcut to try",
                hint="set IMMSYNC_QUERY_API_BASE_URL, e.g. https://www.immport.org/data/query",
            )
        return found

    def link(self, file_id: str, route: str, *, fresh: bool = False) -> Link:
        """The download link for *file_id* by *route* (one of ``routes``' answers).

        The link is kept for the run; *fresh* asks again and replaces it (the link's host
        refused the old one).

        Raises:
            RemoteNotFound: ImmPort does not know the id or the access method (HTTP 404).
            ChecksumMismatch: a refreshed GA4GH object now disagrees with the manifest.
            ApiError: the call failed or the reply holds no usable link.
            AuthError: ImmPort refused the credentials.
        """
        if not fresh:
            with self._lock:
                kept = self._links.get(file_id, {}).get(route)
            if kept is not None:
                return kept
        api, _, method = route.partition(" ")
        if api == SHORTCUT:
            link = Link(self.shortcut_link(object_id_of(file_id), method))
        elif api == GA4GH:
            link = self._ga4gh_link(file_id, route, fresh=fresh)
        else:
            raise ValueError(f"unknown download route {route!r}")
        with self._lock:
            self._links.setdefault(file_id, {})[route] = link
        return link

    def kept(self) -> int:
        """How many files have links kept (those in flight or failed this run)."""
        with self._lock:
            return len(self._links)

    def forget(self, file_id: str) -> None:
        """Drop what is kept for *file_id* (it arrived): the cache holds files in flight."""
        with self._lock:
            self._links.pop(file_id, None)
            if isinstance(self._described.get(file_id), _Described):
                del self._described[file_id]

    # -- ImmPort's shortcut --------------------------------------------------------------

    def drs_url(self, file_uuid: str, method: str) -> str:
        """A fresh shortcut link for one file (not kept); see :meth:`shortcut_link`."""
        return self.shortcut_link(object_id_of(file_uuid), method)

    def shortcut_link(self, file_uuid: str, method: str) -> str:
        """A download link for one file through ImmPort's shortcut.

        Args:
            file_uuid: the file's DRS id (the manifest's ``fileUUID``).
            method: ``"s3"`` (an S3 presigned URL) or ``"stream"`` (streamed by ImmPort).

        Raises:
            RemoteNotFound: ImmPort does not know the id (HTTP 404).
            ApiError: the call failed or the reply holds no usable ``url``; a plain-http
                link to a non-loopback host is refused unless ``allow_insecure_http``.
            AuthError: ImmPort refused the credentials.
        """
        if method not in ACCESS_METHODS:
            raise ValueError(f"unknown DRS access method {method!r}")
        if self.query_url is None:
            raise UsageError(
                "HTTPS downloads need ImmPort's query API, and no query URL is configured",
                hint="set IMMSYNC_QUERY_API_BASE_URL, e.g. https://www.immport.org/data/query",
            )
        wire = self._api.wire
        url = f"{self.query_url}/drs/download/{method}/{quote(file_uuid, safe='')}"
        endpoint = f"GET {url}"
        doc = self._api.call("drs", "GET", url, endpoint)
        if not isinstance(doc, dict):
            wire.malformed(endpoint, f"expected a JSON object, got {json_type(doc)}")
        link = doc.get("url")
        if not isinstance(link, str) or not link.strip():
            status = doc.get("status")
            if "error" in doc or "message" in doc:
                code = status if isinstance(status, int) and not isinstance(status, bool) else None
                raise ApiError(
                    f"ImmPort gave no download link at {endpoint}"
                    f"{wire.server_says(json.dumps(doc).encode())}",
                    status=code,
                    transient=code is not None and code >= 500,
                )
            wire.malformed(endpoint, "no 'url' string in the reply")
        return self.checked_link(link.strip(), endpoint)

    def checked_link(self, link: str, endpoint: str) -> str:
        """*link* once it is an http(s) URL, and https unless on loopback or allowed."""
        parts = urlsplit(link)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self._api.wire.malformed(
                endpoint, f"the download link is not an http(s) URL ({parts.scheme}:)"
            )
        if (
            parts.scheme == "http"
            and not is_loopback(parts.hostname)
            and not self._allow_insecure_http
        ):
            raise ApiError(
                f"ImmPort gave a plain-http download link at {endpoint} (host "
                f"{parts.hostname}); refusing to fetch it unencrypted",
                hint="use --allow-insecure-http only on a network you trust",
            )
        return link

    # -- GA4GH DRS -----------------------------------------------------------------------

    def object_url(self, file_id: str) -> str:
        """``{drs}/ga4gh/drs/v1/objects/{id}`` for an id or a ``drs://host/id`` URI.

        Raises:
            UsageError: no DRS base is configured, or the URI is malformed or names a host
                other than the configured DRS service (the API key goes nowhere else).
        """
        if self.drs_base is None:
            raise UsageError("no GA4GH DRS service is configured (IMMSYNC_DRS_BASE_URL)")
        try:
            split = split_drs_uri(file_id)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        base, object_id = (self.drs_base, file_id) if split is None else split
        if split is not None and _origin(base) != _origin(self.drs_base):
            raise UsageError(
                f"{file_id} names the DRS service at {base}, not the configured "
                f"{self.drs_base}; the API key is sent only to the configured one",
                hint=f"set IMMSYNC_DRS_BASE_URL={base} if that service is ImmPort's",
            )
        return f"{self.drs_base}{DRS_API_PATH}/objects/{quote(object_id, safe='')}"

    def _describe(
        self, file_id: str, *, size: int | None, md5: str | None, refresh: bool = False
    ) -> _Described | None:
        """The GA4GH object of *file_id*, checked; None when GA4GH cannot serve it."""
        if not refresh:
            with self._lock:
                if file_id in self._described:
                    kept = self._described[file_id]
                    if isinstance(kept, ChecksumMismatch):
                        raise kept
                    return kept
        try:
            url = self.object_url(file_id)
        except UsageError as exc:
            log.info("%s: not asking GA4GH DRS: %s", file_id, exc.message)
            return self._remember(file_id, None)
        endpoint = f"GET {url}"
        try:
            doc = self._api.call("drs_object", "GET", url, endpoint)
            described = self._parse_object(doc, url, endpoint, (size, md5))
        except AuthError:
            raise
        except ApiError as exc:
            self._check_service(exc)
            log.info(
                "%s: GA4GH DRS cannot serve it (%s); trying ImmPort's DRS shortcut",
                file_id,
                exc.message,
            )
            # A 404 will not change within the run; a passing failure may.
            return self._remember(file_id, None) if exc.status == 404 else None
        try:
            _check_against_manifest(doc, object_id_of(file_id), size=size, md5=md5)
        except ChecksumMismatch as exc:
            self._remember(file_id, exc)
            raise
        if not described.accesses:
            log.info(
                "%s: the GA4GH DRS object offers no http(s) access method; "
                "trying ImmPort's DRS shortcut",
                file_id,
            )
            return self._remember(file_id, None)
        return self._remember(file_id, described)

    def _remember(
        self, file_id: str, what: _Described | ChecksumMismatch | None
    ) -> _Described | None:
        with self._lock:
            self._described[file_id] = what
        return None if isinstance(what, ChecksumMismatch) else what

    def _parse_object(
        self, doc: Any, url: str, endpoint: str, expected: tuple[int | None, str | None]
    ) -> _Described:
        wire = self._api.wire
        if not isinstance(doc, dict):
            wire.malformed(endpoint, f"expected a DRS object, got {json_type(doc)}")
        methods = doc.get("access_methods")
        if not isinstance(methods, list):
            wire.malformed(endpoint, "the DRS object has no 'access_methods' list")
        accesses: dict[str, _Access] = {}
        for number, method in enumerate(methods, 1):
            if not isinstance(method, dict):
                wire.malformed(endpoint, f"access method {number} is {json_type(method)}")
            kind = method.get("type")
            if not isinstance(kind, str) or kind.lower() not in _LINK_TYPES:
                continue
            route = f"{GA4GH} {kind}"
            if route in accesses:
                route = f"{route} #{number}"
            inline = method.get("access_url")
            access_id = method.get("access_id")
            if inline is not None:
                link = self._parse_link(inline, endpoint)
                if link is not None:
                    accesses[route] = _Access(None, link)
            elif isinstance(access_id, str) and access_id.strip():
                accesses[route] = _Access(access_id.strip(), None)
        return _Described(url, accesses, expected)

    def _parse_link(self, value: Any, endpoint: str) -> Link | None:
        """A Link from an AccessURL (``{"url", "headers"}``); None for a non-http(s) one."""
        if isinstance(value, str):
            value = {"url": value}
        if not isinstance(value, dict) or not isinstance(value.get("url"), str):
            self._api.wire.malformed(endpoint, "an access URL without a 'url' string")
        url = value["url"].strip()
        if urlsplit(url).scheme not in ("http", "https"):
            return None  # s3://, gs://...: not something a plain GET can fetch
        return Link(self.checked_link(url, endpoint), _headers(value.get("headers"), endpoint))

    def _ga4gh_link(self, file_id: str, route: str, *, fresh: bool) -> Link:
        with self._lock:
            described = self._described.get(file_id)
        if not isinstance(described, _Described) or route not in described.accesses:
            raise ValueError(f"{route!r} is not a route of {file_id} (ask routes() first)")
        access = described.accesses[route]
        if access.inline is not None:
            if not fresh:
                return access.inline
            # An inline link is renewed by describing the object again.
            size, md5 = described.expected
            renewed = self._describe(file_id, size=size, md5=md5, refresh=True)
            if renewed is None or route not in renewed.accesses:
                raise ApiError(f"GA4GH DRS no longer offers {route} for {file_id}")
            again = renewed.accesses[route].inline
            if again is None:
                raise ApiError(f"GA4GH DRS no longer offers an inline {route} link")
            return again
        assert access.access_id is not None
        url = f"{described.object_url}/access/{quote(access.access_id, safe='')}"
        endpoint = f"GET {url}"
        doc = self._api.call("drs_access", "GET", url, endpoint)
        if not isinstance(doc, dict):
            self._api.wire.malformed(endpoint, f"expected an access URL, got {json_type(doc)}")
        link = self._parse_link(doc, endpoint)
        if link is None:
            self._api.wire.malformed(endpoint, "the access URL is not an http(s) URL")
        return link

    def _check_service(self, failure: ApiError) -> None:
        """After a GA4GH failure, ask once per run whether a DRS service answers at all."""
        with self._service_lock:
            if self._service_checked:
                return
            self._service_checked = True
            assert self.drs_base is not None
            url = f"{self.drs_base}{DRS_API_PATH}/service-info"
            why: str | None = None
            try:
                doc = self._api.call("drs_service", "GET", url, f"GET {url}")
            except (ApiError, AuthError) as exc:
                why = exc.message
            else:
                if not isinstance(doc, dict) or not doc.get("id"):
                    why = f"GET {url} did not describe a DRS service"
            if why is None:
                return
            self.ga4gh_off = why
        log.info(
            "no GA4GH DRS service answers at %s (%s; first failure: %s); using ImmPort's DRS "
            "shortcut for the rest of this run",
            self.drs_base,
            why,
            failure.message,
        )


def _check_against_manifest(
    doc: Mapping[str, Any], object_id: str, *, size: int | None, md5: str | None
) -> None:
    """Raise ChecksumMismatch when the DRS object's size or MD5 differs from the manifest's."""
    said: list[str] = []
    drs_size = doc.get("size")
    if (
        size is not None
        and isinstance(drs_size, int)
        and not isinstance(drs_size, bool)
        and drs_size != size
    ):
        said.append(f"size {drs_size} bytes where the study file manifest says {size}")
    drs_md5 = _md5_of(doc.get("checksums"))
    if md5 is not None and drs_md5 is not None and drs_md5 != md5.lower():
        said.append(f"MD5 {drs_md5} where the study file manifest says {md5.lower()}")
    if said:
        raise ChecksumMismatch(
            f"ImmPort's DRS object {object_id} disagrees with the study file manifest: "
            + "; ".join(said)
            + "; the file was not downloaded",
            hint="ImmPort's catalog and its DRS service describe different bytes; try again "
            "later, and report it to ImmPort if it persists",
        )


def _md5_of(checksums: Any) -> str | None:
    if not isinstance(checksums, list):
        return None
    for entry in checksums:
        if (
            isinstance(entry, dict)
            and str(entry.get("type", "")).lower() == "md5"
            and isinstance(entry.get("checksum"), str)
        ):
            return str(entry["checksum"]).strip().lower()
    return None


def _headers(value: Any, endpoint: str) -> dict[str, str]:
    """An access URL's ``headers``: a list of ``"Name: value"`` strings (the spec) or an
    object; headers the transport sets itself are left out."""
    if value is None:
        return {}
    if isinstance(value, dict):
        pairs = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        pairs = []
        for line in value:
            if not isinstance(line, str) or ":" not in line:
                raise ApiError(
                    f"unexpected reply from {endpoint}: an access header is not 'Name: value'"
                )
            name, _, text = line.partition(":")
            pairs.append((name.strip(), text.strip()))
    else:
        raise ApiError(f"unexpected reply from {endpoint}: 'headers' is {json_type(value)}")
    headers: dict[str, str] = {}
    for name, text in pairs:
        if (
            not isinstance(text, str)
            or not _HEADER_NAME.fullmatch(name)
            or any(c in text for c in "\r\n\0")
        ):
            raise ApiError(f"unexpected reply from {endpoint}: a malformed access header")
        if name.lower() not in _OWN_HEADERS:
            headers[name] = text
    return headers
