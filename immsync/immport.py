"""ImmPort's HTTP API, as immsync uses it: sign in, list, mint Aspera tokens, read checksums.

Facts about the service come from the reference (``immport-and-ascp.md`` §1); where it
is unsure this client accepts every plausible variant (``token`` or ``access_token``,
items with or without a leading slash). Every reply is treated as untrusted input:
it is size-capped, type-checked, and a listing entry that would escape the folder it
was listed in is refused. This module knows nothing about ``ascp``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple, NoReturn, TypeVar
from urllib.parse import quote, urlsplit

import requests

from .errors import ApiError, AuthError, RemoteNotFound, UnsafePath, UsageError
from .model import RemoteFile, StudyFile
from .net import NO_REDIRECTS, SAME_ORIGIN, RedirectRefused, redirect_guard, transport_reason
from .retry import RetryPolicy, call_with_retries

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 64 * 1024 * 1024
"""Largest reply body read from ImmPort; anything bigger is refused, not buffered."""

MAX_DEPTH = 64
"""Deepest folder nesting ``walk`` follows below its root."""

CREDENTIALS_HINT = (
    "set IMMPORT_USERNAME and IMMPORT_PASSWORD to your ImmPort account "
    "(or IMMPORT_TOKEN to a bearer token)"
)
_SIGN_IN_GUARD = redirect_guard(NO_REDIRECTS)
_API_GUARD = redirect_guard(SAME_ORIGIN)
_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_ACCESSION = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, repr=False)
class Credentials:
    """How to sign in to ImmPort: a username and password, a bearer token, or both.

    With both, the token is used first and the password only when ImmPort refuses it.
    """

    username: str | None = None
    password: str | None = None
    token: str | None = None

    def __repr__(self) -> str:
        password = "***" if self.password else None
        token = "***" if self.token else None
        return f"Credentials(username={self.username!r}, password={password}, token={token})"

    @property
    def can_sign_in(self) -> bool:
        return bool(self.username and self.password)


@dataclass(frozen=True, slots=True)
class ListingEntry:
    """One node of a ``/data/list`` reply, as ImmPort wrote it."""

    path: str
    """ImmPort path, normally with a leading slash (``/SDY1/StudyFiles``)."""
    type: str
    """``"file"`` or ``"directory"`` (other values are passed through)."""
    size: int
    """Bytes; for a directory item the recursive total, for the listed folder 0."""
    mtime: str
    """ISO-8601 UTC as given, e.g. ``2017-06-15T13:06:07Z``; empty if absent."""


@dataclass(frozen=True, slots=True)
class Listing:
    """A one-level listing: the node asked about and what is directly inside it."""

    self_entry: ListingEntry
    items: tuple[ListingEntry, ...]


class _UnusableManifest(ApiError):
    """The study manifest endpoint answered, but not with a list of rows."""


class _Unauthorized(Exception):
    """A 401 on a data call; turned into a re-sign-in or an AuthError."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ImmportClient:
    """A typed, retrying, defensive client of the ImmPort API.

    Args:
        session: the HTTP session (connection pool, proxies, CA bundle). Worker
            threads of ``walk`` use copies of its settings sharing its connection pools.
        token_url: ``POST`` sign-in endpoint, e.g. ``https://auth.immport.org/auth/token``.
        data_url: base of ``/list`` and ``/download/token``, e.g. ``https://api.immport.org/data``.
        query_url: base of the Shared Data API (``/api/study/manifest/...``), or None
            when checksums are not wanted.
        credentials: what to sign in with.
        timeout: seconds for connecting and for each read of every request.
        retry: how transient failures (5xx, 429, resets, timeouts) are retried.
        sleep: waits between retries; tests pass a recorder.
        allow_insecure_http: permit ``http://`` to a non-loopback host (logged as a warning).

    Raises:
        UsageError: a URL is not http(s), carries credentials, or is plain http to a
            remote host without ``allow_insecure_http``.
    """

    max_reply_bytes: int = MAX_REPLY_BYTES

    def __init__(
        self,
        session: requests.Session,
        *,
        token_url: str,
        data_url: str,
        query_url: str | None,
        credentials: Credentials,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing it is safe
        sleep: Callable[[float], None] = time.sleep,
        allow_insecure_http: bool = False,
    ) -> None:
        self._session = session
        self.token_url = _check_url(token_url, "token URL", allow_insecure_http)
        self.data_url = _check_url(data_url, "data URL", allow_insecure_http)
        self.query_url = (
            None if query_url is None else _check_url(query_url, "query URL", allow_insecure_http)
        )
        self._credentials = credentials
        self._timeout = timeout
        self._retry = retry
        self._sleep = sleep
        self._rng = random.Random()
        self._token: str | None = credentials.token or None
        self._token_lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self._secrets: set[str] = {s for s in (credentials.password, credentials.token) if s}
        self.counters: dict[str, int] = {"auth": 0, "list": 0, "download_token": 0, "manifest": 0}
        self._allow_insecure_http = allow_insecure_http
        # Study file manifests, fetched once per run: planning reads their MD5s, the
        # HTTPS transport their fileUUIDs.
        self._manifests: dict[str, list[Any]] = {}
        self._study_files: dict[str, dict[str, StudyFile]] = {}
        self._manifest_locks: dict[str, threading.Lock] = {}
        self._local = threading.local()
        """HTTP requests sent, by kind (retries included), for reports."""

    def __repr__(self) -> str:
        return f"ImmportClient(data_url={self.data_url!r}, credentials={self._credentials!r})"

    # -- authentication --------------------------------------------------------------

    def bearer_token(self) -> str:
        """The bearer token for data calls: the given one, or one from signing in (cached).

        Raises:
            AuthError: no credentials, or ImmPort refused them.
            ApiError: the token endpoint failed or answered something unusable.
        """
        with self._token_lock:
            if self._token is None:
                self._token = self._sign_in()
            return self._token

    def _renew_token(self, stale: str) -> None:
        with self._token_lock:
            # Another thread may already have replaced the token this call was refused with.
            if self._token == stale:
                self._token = None

    def _sign_in(self) -> str:
        creds = self._credentials
        if not creds.can_sign_in:
            raise AuthError(
                f"no ImmPort username and password to sign in at {self.token_url}",
                hint=CREDENTIALS_HINT,
            )
        endpoint = f"POST {self.token_url}"
        form = {"username": creds.username or "", "password": creds.password or ""}

        def attempt() -> str:
            status, headers, body = self._exchange(
                self._session, "auth", "POST", self.token_url, endpoint, data=form
            )
            if status in (400, 401, 403):
                raise AuthError(
                    f"ImmPort refused the sign-in at {self.token_url} (HTTP {status})"
                    f"{self._server_says(body)}",
                    hint=f"check your credentials: {CREDENTIALS_HINT}",
                )
            self._raise_for_status(status, headers, body, endpoint)
            doc = self._parse_json(body, endpoint)
            if not isinstance(doc, dict):
                self._malformed(endpoint, f"expected a JSON object, got {_json_type(doc)}")
            for key in ("access_token", "token"):
                value = doc.get(key)
                if isinstance(value, str) and value.strip():
                    return value.strip()
            if "error" in doc or doc.get("status") not in (None, 200):
                raise AuthError(
                    f"ImmPort refused the sign-in at {self.token_url}{self._server_says(body)}",
                    hint=f"check your credentials: {CREDENTIALS_HINT}",
                )
            self._malformed(endpoint, "no 'token' or 'access_token' string in the reply")

        token = self._with_retries(attempt, endpoint)
        self._add_secret(token)
        log.debug("signed in to ImmPort at %s", self.token_url)
        return token

    # -- the API ---------------------------------------------------------------------

    def list_path(self, path: str) -> Listing:
        """List one level of an ImmPort folder, or describe one file.

        Args:
            path: ImmPort path with or without its leading slash (``/SDY1/StudyFiles``).

        Raises:
            RemoteNotFound: ImmPort has no such path.
            AuthError, ApiError: as for every call.
        """
        return self._list(self._session, _remote(path))

    def _list(self, session: requests.Session, path: str) -> Listing:
        endpoint = f"POST {self.data_url}/list"
        try:
            doc = self._call(
                session, "list", "POST", f"{self.data_url}/list", endpoint, json_body={"path": path}
            )
        except RemoteNotFound as exc:
            raise RemoteNotFound(
                f"ImmPort path {path} does not exist ({exc.message})",
                status=exc.status,
                hint="check the study accession and the paths in the manifest",
            ) from None
        return _parse_listing(doc, endpoint, path)

    def walk(
        self,
        root: str,
        *,
        workers: int = 8,
        on_unsafe: Callable[[str, str], None] | None = None,
    ) -> list[RemoteFile]:
        """Every file at or below *root*, listing folders concurrently.

        Each entry must sit directly inside the folder it was listed in (a non-empty
        name without ``/``, ``\\``, NUL, CR or LF that is not ``.`` or ``..``), so no
        reply can steer a download outside the destination.

        Args:
            root: an ImmPort folder or file, with or without the leading slash.
            workers: folders listed at once (at least 1).
            on_unsafe: called as ``on_unsafe(path, reason)`` for a refused entry,
                which is then skipped; when None, a refused entry raises.

        Returns:
            The files, sorted by path; ``RemoteFile.path`` has no leading slash.

        Raises:
            UnsafePath: *root* or an entry is unsafe and *on_unsafe* is None.
            RemoteNotFound: *root* does not exist.
            AuthError, ApiError: as for every call.
        """
        start = _remote(root)
        reason = _root_problem(start)
        if reason is not None:
            raise UnsafePath(f"refusing to list ImmPort path {root!r}: {reason}")

        def refuse(path: str, why: str, parent: str) -> None:
            if on_unsafe is not None:
                log.warning("skipping ImmPort entry %r listed in %s: %s", path, parent, why)
                on_unsafe(path, why)
                return
            raise UnsafePath(
                f"ImmPort listing of {parent} has an unsafe entry {path!r}: {why}",
                hint="immsync refuses remote paths that could land outside the destination; "
                "exclude this folder in the manifest or report it to ImmPort",
            )

        top = self._list(self._session, start)
        if top.self_entry.type == "file":
            if _remote(top.self_entry.path) != start:
                refuse(top.self_entry.path, f"a listing of {start} describes another path", start)
                return []
            return [RemoteFile(start[1:], top.self_entry.size, top.self_entry.mtime)]

        files: dict[str, RemoteFile] = {}
        seen: set[str] = set()

        def accept(listing: Listing, parent: str) -> list[str]:
            depth = parent.count("/")
            folders = []
            for item in listing.items:
                path, why = _child_path(item, parent)
                if why is None and path in seen:
                    why = "it is listed more than once"
                if why is None and item.type == "directory" and depth >= MAX_DEPTH:
                    why = f"it is nested more than {MAX_DEPTH} folders deep"
                if why is not None:
                    refuse(item.path, why, parent)
                    continue
                seen.add(path)
                if item.type == "directory":
                    folders.append(path)
                elif item.type == "file":
                    files[path] = RemoteFile(path[1:], item.size, item.mtime)
                else:
                    log.warning("skipping ImmPort entry %s of unknown type %r", path, item.type)
            return folders

        pending_roots = accept(top, start)
        if pending_roots:
            self._walk_folders(pending_roots, accept, workers)
        return sorted(files.values(), key=lambda f: f.path)

    def _walk_folders(
        self,
        roots: list[str],
        accept: Callable[[Listing, str], list[str]],
        workers: int,
    ) -> None:
        local = threading.local()

        def list_in_worker(path: str) -> Listing:
            session = getattr(local, "session", None)
            if session is None:
                session = local.session = _clone_session(self._session)
            return self._list(session, path)

        # Replies are checked in this thread only, so on_unsafe never runs concurrently.
        with ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="immsync-list"
        ) as pool:
            running: dict[Future[Listing], str] = {pool.submit(list_in_worker, p): p for p in roots}
            try:
                while running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        parent = running.pop(future)
                        for folder in accept(future.result(), parent):
                            running[pool.submit(list_in_worker, folder)] = folder
            finally:
                for future in running:
                    future.cancel()

    def download_token(self, paths: Sequence[str]) -> str:
        """An Aspera transfer token covering *paths* (ImmPort paths; folders allowed).

        Raises:
            RemoteNotFound: ImmPort says a path does not exist.
            AuthError, ApiError: as for every call.
        """
        if not paths:
            raise ValueError("download_token needs at least one path")
        url = f"{self.data_url}/download/token"
        endpoint = f"POST {url}"
        doc = self._call(
            self._session,
            "download_token",
            "POST",
            url,
            endpoint,
            json_body={"paths": [_remote_keep_slash(p) for p in paths]},
        )
        if not isinstance(doc, dict):
            self._malformed(endpoint, f"expected a JSON object, got {_json_type(doc)}")
        token = doc.get("token")
        if not isinstance(token, str) or not token.strip():
            if "error" in doc or "message" in doc:
                raise ApiError(
                    f"ImmPort did not issue a download token at {endpoint}"
                    f"{self._server_says(json.dumps(doc).encode())}"
                )
            self._malformed(endpoint, "no 'token' string in the reply")
        self._add_secret(token.strip())
        return token.strip()

    def study_checksums(self, accession: str) -> dict[str, tuple[str, int]] | None:
        """Upstream MD5 and size of every file of a study, from its file manifest.

        Returns:
            ``{"SDY1/StudyFiles/a.txt": ("<md5 lowercase hex>", size), ...}``, or None
            when there is no query URL or the manifest is unavailable (404, 403, 5xx
            or a dead connection after retries, or an unusable reply). Entries
            without a well-formed MD5 or size are left out.

        Raises:
            AuthError: ImmPort refused the credentials (that would fail everything else).
        """
        if self.query_url is None:
            log.info("no ImmPort query URL configured: upstream checksums not available")
            return None
        # Signing in is not part of the manifest: its failure must not pass for
        # "checksums not available" (and quietly lose the MD5 check).
        self.bearer_token()
        try:
            rows = self._manifest_rows(accession)
        except AuthError:
            raise
        except _UnusableManifest as exc:
            log.warning("%s; no upstream checksums", exc.message)
            return None
        except ApiError as exc:
            log.info(
                "ImmPort file manifest of %s unavailable, so no upstream checksums: %s",
                accession,
                exc.message,
            )
            return None
        result: dict[str, tuple[str, int]] = {}
        skipped = 0
        for row in rows:
            parsed = _checksum_row(row)
            if parsed is None:
                skipped += 1
                continue
            path, md5, size = parsed
            result.setdefault(path, (md5, size))
        if skipped:
            log.info(
                "ImmPort file manifest of %s: %d entr%s without a usable MD5 or size",
                accession,
                skipped,
                "y" if skipped == 1 else "ies",
            )
        return result

    def study_files(self, accession: str) -> Mapping[str, StudyFile]:
        """Every file of a study that has a DRS id (``fileUUID``), by destination-relative path.

        The manifest is fetched once per client and shared with ``study_checksums``;
        the result is cached too (read-only: do not modify it). Rows without a path or
        a ``fileUUID`` are left out; MD5 and size are kept when well-formed, else None.

        Raises:
            UsageError: no query URL is configured, or *accession* is not one.
            RemoteNotFound: ImmPort has no such study (HTTP 404).
            ApiError: the manifest could not be fetched or is unusable (``transient``
                tells whether trying again later may help).
            AuthError: ImmPort refused the credentials.
        """
        if self.query_url is None:
            raise UsageError(
                "HTTPS downloads need ImmPort's query API (study file manifests and DRS "
                "links), and no query URL is configured",
                hint="set IMMSYNC_QUERY_API_BASE_URL, e.g. https://www.immport.org/data/query",
            )
        cached = self._study_files.get(accession)
        if cached is not None:
            return cached  # asked once per file downloaded: must not re-parse every row
        result: dict[str, StudyFile] = {}
        for row in self._manifest_rows(accession):
            parsed = _study_file_row(row)
            if parsed is not None:
                result.setdefault(parsed.path, parsed)
        self._study_files[accession] = result
        return result

    def drs_url(self, file_uuid: str, method: str) -> str:
        """A short-lived download link for one file: ``GET {query}/drs/download/{method}/{uuid}``.

        The link is a credential (anyone holding it can fetch the file until it
        expires): callers must not log it whole.

        Args:
            file_uuid: the file's DRS id, from :meth:`study_files`.
            method: ``"s3"`` (an S3 presigned URL) or ``"stream"`` (streamed by ImmPort).

        Raises:
            RemoteNotFound: ImmPort does not know the id (HTTP 404).
            ApiError: the call failed or the reply holds no usable ``url``; a plain-http
                link to a non-loopback host is refused unless ``allow_insecure_http``.
            AuthError: ImmPort refused the credentials.
        """
        if method not in ("s3", "stream"):
            raise ValueError(f"unknown DRS access method {method!r}")
        if self.query_url is None:
            raise UsageError(
                "HTTPS downloads need ImmPort's query API, and no query URL is configured",
                hint="set IMMSYNC_QUERY_API_BASE_URL, e.g. https://www.immport.org/data/query",
            )
        url = f"{self.query_url}/drs/download/{method}/{quote(file_uuid, safe='')}"
        endpoint = f"GET {url}"
        doc = self._call(self._thread_session(), "drs", "GET", url, endpoint)
        if not isinstance(doc, dict):
            self._malformed(endpoint, f"expected a JSON object, got {_json_type(doc)}")
        link = doc.get("url")
        if not isinstance(link, str) or not link.strip():
            status = doc.get("status")
            if "error" in doc or "message" in doc:
                code = status if isinstance(status, int) and not isinstance(status, bool) else None
                raise ApiError(
                    f"ImmPort gave no download link at {endpoint}"
                    f"{self._server_says(json.dumps(doc).encode())}",
                    status=code,
                    transient=code is not None and code >= 500,
                )
            self._malformed(endpoint, "no 'url' string in the reply")
        link = link.strip()
        parts = urlsplit(link)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self._malformed(endpoint, f"the download link is not an http(s) URL ({parts.scheme}:)")
        if (
            parts.scheme == "http"
            and not _is_loopback(parts.hostname)
            and not self._allow_insecure_http
        ):
            raise ApiError(
                f"ImmPort gave a plain-http download link at {endpoint} (host "
                f"{parts.hostname}); refusing to fetch it unencrypted",
                hint="use --allow-insecure-http only on a network you trust",
            )
        return link

    def _manifest_rows(self, accession: str) -> list[Any]:
        """The study's file manifest as a JSON list, fetched at most once successfully."""
        if not _ACCESSION.fullmatch(accession):
            raise UsageError(f"not a study accession: {accession!r}")
        with self._counter_lock:
            lock = self._manifest_locks.setdefault(accession, threading.Lock())
        # One fetch per study even when several download threads ask at once.
        with lock:
            cached = self._manifests.get(accession)
            if cached is not None:
                return cached
            url = f"{self.query_url}/api/study/manifest/{quote(accession, safe='')}"
            endpoint = f"GET {url}"
            doc = self._call(
                self._thread_session(),
                "manifest",
                "GET",
                url,
                endpoint,
                params={"fileType": "all", "format": "json"},
                item=_compact_manifest_row,
            )
            if not isinstance(doc, list):
                raise _UnusableManifest(
                    f"ImmPort file manifest of {accession} is unusable "
                    f"(a JSON {_json_type(doc)}, not a list)"
                )
            self._manifests[accession] = doc
            return doc

    def _thread_session(self) -> requests.Session:
        """The given session in the main thread; elsewhere a per-thread copy sharing its pools."""
        if threading.current_thread() is threading.main_thread():
            return self._session
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = _clone_session(self._session)
        return session

    def latest_data_release(self, accession: str) -> str | None:
        """The study's latest data release (e.g. ``"DR47"``), from its study summary.

        ``GET {query}/api/study/summary/{SDY}``, field ``latestDataReleaseVersion``.
        Informational (the lock file records it), so any failure gives None.

        Raises:
            AuthError: ImmPort refused the credentials (that would fail everything else).
        """
        if self.query_url is None or not _ACCESSION.fullmatch(accession):
            return None
        url = f"{self.query_url}/api/study/summary/{quote(accession, safe='')}"
        endpoint = f"GET {url}"
        try:
            doc = self._call(self._session, "summary", "GET", url, endpoint)
        except AuthError:
            raise
        except ApiError as exc:
            log.info("ImmPort study summary of %s unavailable: %s", accession, exc.message)
            return None
        # Some ImmPort query replies wrap the one object in a list (ImmPortR takes [[1]]).
        if isinstance(doc, list) and doc:
            doc = doc[0]
        value = doc.get("latestDataReleaseVersion") if isinstance(doc, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip() or len(value) > 64:
            return None
        return value.strip()

    # -- plumbing --------------------------------------------------------------------

    def _count(self, kind: str) -> None:
        with self._counter_lock:
            self.counters[kind] = self.counters.get(kind, 0) + 1

    def _call(
        self,
        session: requests.Session,
        kind: str,
        method: str,
        url: str,
        endpoint: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        item: Callable[[Any], Any] | None = None,
    ) -> Any:
        """One authenticated JSON call with retries and at most one re-sign-in.

        With *item*, a top-level JSON array is parsed one element at a time and each
        element replaced by ``item(element)``, so a large reply never exists as a
        whole list of dicts (a study manifest of 100,000 rows would be ~1.2 million
        Python objects at once).
        """
        reauthed = False

        def attempt() -> Any:
            nonlocal reauthed
            while True:
                token = self._token_for_call()
                status, headers, body = self._exchange(
                    session,
                    kind,
                    method,
                    url,
                    endpoint,
                    json_body=json_body,
                    params=params,
                    headers={"Authorization": f"bearer {token}"},
                )
                if status != 401:
                    break
                if reauthed or not self._credentials.can_sign_in:
                    hint = (
                        "signing in again did not help; the account may lack access"
                        if reauthed
                        else "the bearer token may have expired: set a fresh IMMPORT_TOKEN, "
                        "or IMMPORT_USERNAME and IMMPORT_PASSWORD so immsync can sign in"
                    )
                    raise AuthError(
                        f"ImmPort refused the bearer token at {endpoint}{self._server_says(body)}",
                        hint=hint,
                    )
                reauthed = True
                log.info("ImmPort refused the bearer token at %s; signing in again", endpoint)
                self._renew_token(token)
            self._raise_for_status(status, headers, body, endpoint)
            return self._parse_json(body, endpoint, item=item)

        return self._with_retries(attempt, endpoint)

    def _with_retries(self, attempt: Callable[[], T], endpoint: str) -> T:
        """*attempt*, retried on transient failures as this client's policy says."""
        return call_with_retries(
            attempt,
            policy=self._retry,
            is_transient=_is_transient,
            retry_after=_retry_after_of,
            describe=endpoint,
            sleep=self._sleep,
            rng=self._rng,
        )

    def _token_for_call(self) -> str:
        try:
            return self.bearer_token()
        except ApiError as exc:
            # The sign-in already spent its own retries; retrying it again from the
            # data call would square the number of attempts.
            if not exc.transient:
                raise
            raise ApiError(exc.message, status=exc.status, hint=exc.hint) from exc

    def _exchange(
        self,
        session: requests.Session,
        kind: str,
        method: str,
        url: str,
        endpoint: str,
        *,
        data: Mapping[str, str] | None = None,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Send one request and read its capped body; transport failures become ApiError."""
        self._count(kind)
        sent = {"Accept": "application/json", **(headers or {})}
        try:
            with session.request(
                method,
                url,
                data=data,
                json=json_body,
                params=params,
                headers=sent,
                # An explicit auth keeps requests from consulting ~/.netrc, which would
                # replace our bearer header with Basic auth (and send the password along).
                auth=_headers_as_given,
                timeout=self._timeout,
                stream=True,
                hooks={"response": [_SIGN_IN_GUARD if kind == "auth" else _API_GUARD]},
            ) as response:
                body = self._read_capped(response, endpoint)
                log.debug("%s -> HTTP %d (%d bytes)", endpoint, response.status_code, len(body))
                return response.status_code, response.headers, body
        except RedirectRefused as exc:
            setting = "IMMPORT_TOKEN_URL" if kind == "auth" else "the API URL"
            raise ApiError(
                f"{endpoint}: {exc.source} redirected to {exc.target}, which immsync refused: "
                f"{exc.why}",
                hint=f"if {exc.target} is ImmPort's real address, set {setting} to it",
            ) from None
        except requests.exceptions.SSLError as exc:
            raise ApiError(
                f"TLS failed for {endpoint}: {self._redact(_first_line(exc))}",
                hint="check the system clock and the CA bundle (REQUESTS_CA_BUNDLE)",
            ) from None
        except requests.exceptions.Timeout:
            raise ApiError(
                f"{endpoint} timed out after {self._timeout:g} s", transient=True
            ) from None
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            raise ApiError(
                f"{endpoint} failed: connection lost or refused ({transport_reason(exc)})",
                transient=True,
            ) from None
        except requests.exceptions.RequestException as exc:
            raise ApiError(f"{endpoint} failed: {self._redact(_first_line(exc))}") from None

    def _read_capped(self, response: requests.Response, endpoint: str) -> bytes:
        limit = self.max_reply_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(
                f"{endpoint} sent a reply of {int(declared)} bytes, "
                f"more than the {limit}-byte limit"
            )
        buffer = bytearray()
        for chunk in response.iter_content(chunk_size=65536):
            buffer += chunk
            if len(buffer) > limit:
                raise ApiError(f"{endpoint} sent a reply larger than the {limit}-byte limit")
        return bytes(buffer)

    def _raise_for_status(
        self, status: int, headers: Mapping[str, str], body: bytes, endpoint: str
    ) -> None:
        if 200 <= status < 300:
            return
        says = self._server_says(body)
        if status == 404:
            raise RemoteNotFound(f"{endpoint} answered HTTP 404{says}", status=404)
        if status == 403:
            raise ApiError(
                f"ImmPort denied access at {endpoint} (HTTP 403){says}",
                status=403,
                hint="the account may not have access to this data",
            )
        transient = status in (408, 429) or status >= 500
        raise ApiError(
            f"{endpoint} failed with HTTP {status}{says}",
            status=status,
            transient=transient,
            retry_after=_parse_retry_after(headers.get("Retry-After")) if transient else None,
        )

    def _parse_json(
        self, body: bytes, endpoint: str, *, item: Callable[[Any], Any] | None = None
    ) -> Any:
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            self._malformed(endpoint, "the reply is not UTF-8 text")
        stripped = text.lstrip()
        if not stripped:
            self._malformed(endpoint, "the reply is empty")
        if stripped.startswith("<"):
            self._malformed(
                endpoint,
                "got an HTML page instead of JSON "
                "(is the URL right, or is a proxy or login page in the way?)",
            )
        if item is not None and stripped.startswith("["):
            try:
                return [item(element) for element in _iter_json_array(text)]
            except (json.JSONDecodeError, RecursionError, ValueError):
                pass  # the whole-document parse below names what is wrong
        try:
            return json.loads(text)
        except RecursionError:
            # json's parser recurses once per nesting level; hostile input can exhaust it.
            self._malformed(endpoint, "the JSON is nested too deeply")
        except json.JSONDecodeError as exc:
            # An unterminated string can only mean the text ended inside it.
            if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
                why = "the JSON is truncated (it ends early)"
            else:
                why = f"the reply is not valid JSON ({exc.msg} at character {exc.pos})"
            self._malformed(endpoint, why)

    def _malformed(self, endpoint: str, what: str) -> NoReturn:
        raise ApiError(
            f"unexpected reply from {endpoint}: {what}",
            hint="the ImmPort API may have changed or be misbehaving; try again later, "
            "and report it if it persists",
        )

    def _server_says(self, body: bytes) -> str:
        """``': "<message>"'`` quoting the server's error message, or ``''``."""
        try:
            doc = json.loads(body.decode("utf-8", "replace"))
        except (json.JSONDecodeError, ValueError, RecursionError):
            return ": the reply was an HTML page" if body.lstrip().startswith(b"<") else ""
        if not isinstance(doc, dict):
            return ""
        for key in ("message", "error_description", "error"):
            value = doc.get(key)
            if isinstance(value, str) and value.strip():
                text = " ".join(value.split())[:300]
                return f': "{self._redact(text)}"'
        return ""

    def _add_secret(self, secret: str) -> None:
        with self._counter_lock:
            self._secrets.add(secret)

    def _redact(self, text: str) -> str:
        # Servers echo tokens in some error messages (Spring: "Invalid access token: <t>").
        with self._counter_lock:
            known = sorted(self._secrets, key=len, reverse=True)
        for secret in known:
            text = text.replace(secret, "***")
        return text


# -- replies ---------------------------------------------------------------------------


def _parse_listing(doc: Any, endpoint: str, path: str) -> Listing:
    def bad(what: str) -> NoReturn:
        raise ApiError(
            f"unexpected reply from {endpoint} for {path}: {what}",
            hint="the ImmPort API may have changed or be misbehaving",
        )

    if not isinstance(doc, dict):
        bad(f"expected a JSON object, got {_json_type(doc)}")
    if "self" not in doc and ("error" in doc or "message" in doc):
        message = doc.get("message") or doc.get("error")
        text = " ".join(str(message).split())[:300]
        if "not found" in text.lower():
            raise RemoteNotFound(
                f"ImmPort path {path} does not exist: {text!r}",
                hint="check the study accession and the paths in the manifest",
            )
        raise ApiError(f"{endpoint} failed for {path}: {text!r}")
    if "self" not in doc:
        bad("the 'self' entry is missing")
    own = _parse_entry(doc["self"], "self", bad)
    raw_items = doc.get("items")
    if raw_items is None and own.type == "file":
        raw_items = []
    if not isinstance(raw_items, list):
        bad(
            "'items' is missing"
            if raw_items is None
            else f"'items' is a JSON {_json_type(raw_items)}, not a list"
        )
    items = tuple(_parse_entry(raw, f"items[{i}]", bad) for i, raw in enumerate(raw_items))
    return Listing(own, items)


def _parse_entry(raw: Any, where: str, bad: Callable[[str], NoReturn]) -> ListingEntry:
    if not isinstance(raw, dict):
        bad(f"{where} is a JSON {_json_type(raw)}, not an object")
    path = raw.get("path")
    kind = raw.get("type")
    if not isinstance(path, str) or not path:
        bad(f"{where}.path is missing or not a string")
    if not isinstance(kind, str) or not kind:
        bad(f"{where}.type is missing or not a string")
    size = raw.get("size")
    mtime = raw.get("mtime")
    is_file = kind == "file"
    if size is None and not is_file:
        size = 0
    if isinstance(size, float) and size.is_integer():
        size = int(size)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        bad(f"{where}.size is missing or not a non-negative integer")
    if mtime is None and not is_file:
        mtime = ""
    if not isinstance(mtime, str):
        bad(f"{where}.mtime is missing or not a string")
    return ListingEntry(path, kind, size, mtime)


def _iter_json_array(text: str) -> Iterator[Any]:
    """The elements of the JSON array *text*, decoded one at a time."""
    decoder = json.JSONDecoder()
    end = len(text)
    index = _skip_space(text, 0)
    if index >= end or text[index] != "[":
        raise ValueError("not a JSON array")
    index = _skip_space(text, index + 1)
    if index < end and text[index] == "]":
        if _skip_space(text, index + 1) != end:
            raise ValueError("text after the array")
        return
    while True:
        element, index = decoder.raw_decode(text, index)
        yield element
        index = _skip_space(text, index)
        if index < end and text[index] == ",":
            index = _skip_space(text, index + 1)
            continue
        if index < end and text[index] == "]" and _skip_space(text, index + 1) == end:
            return
        raise ValueError("malformed JSON array")


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\n\r":
        index += 1
    return index


class _ManifestRow(NamedTuple):
    """What immsync keeps of one study manifest row: four fields, normalised once.

    One flat tuple a row: a 100,000-file manifest is held while a plan is made, and
    separate checksum and DRS records per row had cost 30 MB more.
    """

    path: str | None
    """Without its leading "/"; None when missing or empty."""
    md5: str | None
    """Lowercase hex; None unless well-formed."""
    size: int | None
    uuid: str | None
    """The DRS id (``fileUUID``)."""


def _compact_manifest_row(row: Any) -> Any:
    if not isinstance(row, dict):
        return row  # kept as is: the shape check after parsing reports it
    path, md5, size, uuid = (
        row.get("path"),
        row.get("generatedMD5"),
        row.get("filesizeBytes"),
        row.get("fileUUID"),
    )
    clean = path.strip().lstrip("/") if isinstance(path, str) else ""
    return _ManifestRow(
        clean or None,
        md5.strip().lower() if isinstance(md5, str) and _MD5.fullmatch(md5.strip()) else None,
        size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        uuid.strip() if isinstance(uuid, str) and uuid.strip() else None,
    )


def _checksum_row(row: Any) -> tuple[str, str, int] | None:
    """``(path, md5, size)`` of a row that has all three well-formed, else None."""
    if isinstance(row, dict):
        row = _compact_manifest_row(row)
    if not isinstance(row, _ManifestRow):
        return None
    if row.path is None or row.md5 is None or row.size is None:
        return None
    return row.path, row.md5, row.size


def _study_file_row(row: Any) -> StudyFile | None:
    """The DRS record of a row with a path and a ``fileUUID``, else None."""
    if isinstance(row, dict):
        row = _compact_manifest_row(row)
    if not isinstance(row, _ManifestRow) or row.path is None or row.uuid is None:
        return None
    return StudyFile(path=row.path, uuid=row.uuid, md5=row.md5, size=row.size)


def _child_path(item: ListingEntry, parent: str) -> tuple[str, str | None]:
    """The item's normalised path, and why it is refused (None when it is fine)."""
    raw = item.path
    for char, name in (
        ("\x00", "a NUL byte"),
        ("\n", "a line break"),
        ("\r", "a carriage return"),
        ("\\", "a backslash"),
    ):
        if char in raw:
            return raw, f"it contains {name}"
    path = raw if raw.startswith("/") else "/" + raw
    if item.type == "directory" and len(path) > 1:
        path = path.rstrip("/") or "/"
    prefix = parent.rstrip("/") + "/"
    if not path.startswith(prefix):
        return path, f"it is not inside {parent}"
    name = path[len(prefix) :]
    if not name:
        return path, "its name is empty"
    if "/" in name:
        return path, f"it is not directly inside {parent}"
    if name in (".", ".."):
        return path, f"its name is {name!r}"
    return path, None


def _root_problem(root: str) -> str | None:
    for char in ("\x00", "\n", "\r", "\\"):
        if char in root:
            return "it contains a control character or backslash"
    if any(part in (".", "..") for part in root.split("/")):
        return "it contains a '.' or '..' segment"
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# -- helpers -----------------------------------------------------------------------------


def _remote(path: str) -> str:
    """``SDY1/x/`` -> ``/SDY1/x`` (``/`` stays ``/``)."""
    return "/" + path.strip().strip("/")


def _remote_keep_slash(path: str) -> str:
    # A trailing slash marks a folder for the token endpoint; keep it.
    return path if path.startswith("/") else "/" + path


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.transient


def _retry_after_of(exc: BaseException) -> float | None:
    return exc.retry_after if isinstance(exc, ApiError) else None


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _headers_as_given(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def _clone_session(base: requests.Session) -> requests.Session:
    """A session with *base*'s settings that shares its (thread-safe) connection pools.

    Never closed: closing it would close the adapters it shares with *base*.
    """
    clone = requests.Session()
    clone.headers.update(base.headers)
    clone.auth = base.auth
    clone.proxies = dict(base.proxies)
    clone.verify = base.verify
    clone.cert = base.cert
    clone.trust_env = base.trust_env
    clone.max_redirects = base.max_redirects
    for prefix, adapter in base.adapters.items():
        clone.mount(prefix, adapter)
    return clone


def _check_url(url: str, what: str, allow_insecure_http: bool) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"the ImmPort {what} {url!r} is not an http(s) URL",
            hint="give a full URL such as https://api.immport.org/data",
        )
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            f"the ImmPort {what} must not contain a username or password",
            hint="pass credentials through IMMPORT_USERNAME / IMMPORT_PASSWORD instead",
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        if not allow_insecure_http:
            raise UsageError(
                f"refusing the plain-http ImmPort {what} {url}: the password and tokens "
                "would cross the network unencrypted",
                hint="use an https:// URL (plain http is accepted only for a loopback "
                "host such as 127.0.0.1, e.g. the emulator)",
            )
        log.warning(
            "using plain http to %s: credentials and tokens travel unencrypted", parts.hostname
        )
    return url.strip().rstrip("/")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
