"""Plain HTTPS downloads through ImmPort's DRS links: the transport that needs no ascp.

For each file of a batch:

1. its DRS id (``fileUUID``), size and MD5 come from the study's file manifest, fetched
   once per run;
2. the link source (``immsync.immport.drs``) names the routes to a link, in order: the
   GA4GH DRS object's access methods (the object is checked against the manifest's size
   and MD5 first; a mismatch fails the file before any download), then ImmPort's shortcut
   (``s3``, then ``stream``). A route that fails moves the file to the next one;
3. the route's link (kept for the run, so a retry or resume asks for none) is fetched
   with a plain ``GET`` that carries no ImmPort credential, only the headers the access
   method named, and those only to the link's own URL. It writes
   ``staging/<path>.partial``, resuming with ``Range`` from what an earlier HTTPS attempt
   left, and with ``If-Match`` on the ``ETag`` that attempt saw (kept in
   ``<path>.etag``), so that bytes of two versions of a file are never joined: a changed
   file answers 412 and is fetched again whole. A link the server refuses (403, expired)
   is asked for afresh once;
4. once every byte the server announced has arrived, ``.partial`` is renamed to
   ``staging/<path>``, where the caller verifies, places and records it.

Small files are latency-bound (a link request and a download each cost a round trip),
so files download :data:`DEFAULT_JOBS` at a time unless told otherwise.

The link is a credential, like the Aspera token: anyone holding it can fetch the file
until it expires. It is never logged or put in a message whole; only
``scheme://host/path`` is shown.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import queue
import re
import socket
import stat
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from . import errors, model
from .net import NO_DOWNGRADE, RedirectRefused, redirect_guard, transport_reason
from .staging import checkpoint_of, partial_of, staged_name, validator_of
from .units import parse_utc

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
"""Bytes read from the network and written to disk at a time."""
DEFAULT_JOBS = 16
"""Files downloading at once unless told otherwise: small files are latency-bound."""
METHODS = ("s3", "stream")
"""The DRS shortcut's access methods, in the order they are tried."""
_LINK_GUARD = redirect_guard(NO_DOWNGRADE)
_ERROR_BODY_LIMIT = 64 * 1024
_SHOWN_FAILURES = 3
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")
# A strong entity tag (RFC 9110 8.8.3): quoted, printable, not W/ (weak).
_STRONG_ETAG = re.compile(r'"[\x21\x23-\x7e]{1,200}"')
_XML_FIELD = re.compile(r"<(Code|Message)>([^<]*)</\1>")
_MISSING = re.compile(r"NoSuchKey|The specified key does not exist", re.IGNORECASE)
_REFUSED = re.compile(
    r"AccessDenied|Request has expired|ExpiredToken|SignatureDoesNotMatch", re.IGNORECASE
)
_TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed"}
)


class DownloadLink(Protocol):
    """A signed link, and the headers to send to that URL (and nowhere else)."""

    @property
    def url(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


class DownloadLinks(Protocol):
    """Routes to a file's link and the links themselves (``immsync.immport.drs.DrsLinks``)."""

    def routes(
        self,
        file_id: str,
        *,
        size: int | None,
        md5: str | None,
        shortcut_methods: Sequence[str] = ...,
    ) -> list[str]: ...

    def link(self, file_id: str, route: str, *, fresh: bool = False) -> DownloadLink: ...

    def forget(self, file_id: str) -> None: ...


class LinkSource(Protocol):
    """The part of ``ImmportClient`` this transport needs (it never imports it)."""

    def study_files(self, accession: str) -> Mapping[str, model.StudyFile]: ...

    @property
    def drs(self) -> DownloadLinks: ...


class _LinkRefused(Exception):
    """The server refused the link itself (expired or not valid): a fresh one may work."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Restart(Exception):
    """The partial file cannot be resumed from; it was removed, start from byte 0."""


@dataclass(frozen=True, slots=True)
class _Job:
    file: model.RemoteFile
    staging: Path
    label: str


class HttpsTransfer:
    """A :class:`~immsync.model.Transfer` that downloads each file from its DRS link.

    Files of a batch download in parallel, at most *jobs* at once across every batch
    in flight (``fetch`` may run in several threads). Each download slot keeps its
    own ``requests.Session``, so connections are reused from one file to the next.

    Args:
        links: the ImmPort client (``study_files`` and ``drs``).
        jobs: files downloading at once.
        connect_timeout: seconds to wait for a connection to the link's host.
        read_timeout: seconds without a byte before a download counts as stalled.
        chunk_size: bytes per read and per write.
        methods: the DRS shortcut's access methods to try, in order (after GA4GH's).
        session_factory: makes the sessions for the links (proxies, CA bundle, User-Agent).
    """

    name = "https"

    def __init__(
        self,
        links: LinkSource,
        *,
        jobs: int = DEFAULT_JOBS,
        connect_timeout: float = 30.0,
        read_timeout: float = 60.0,
        chunk_size: int = CHUNK_SIZE,
        methods: tuple[str, ...] = METHODS,
        session_factory: Callable[[], requests.Session] = requests.Session,
    ) -> None:
        self._links = links
        self.jobs = max(1, jobs)
        self._timeout = (connect_timeout, read_timeout)
        self._chunk_size = max(1, chunk_size)
        self._methods = methods
        self._session_factory = session_factory
        self._slots = threading.BoundedSemaphore(self.jobs)
        self._idle: list[requests.Session] = []
        self._all_sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._active: set[requests.Response] = set()
        self._counter = itertools.count(1)

    # -- the Transfer protocol ------------------------------------------------------

    def fetch(self, batch: model.TransferBatch, on_progress: model.ProgressCallback) -> None:
        """Download every file of *batch* into ``batch.staging / file.path``.

        Progress events reach *on_progress* in the calling thread. A file that
        completes stays in staging even when others fail.

        Raises:
            TransferError: one or more files failed; ``kind`` is the most actionable
                of their kinds (``interrupted``, ``disk``, ``transient``, ...), and the
                message names each failed file and why.
            TransportUnavailable: no query URL is configured for DRS links.
            AuthError: ImmPort refused the credentials.
        """
        if not batch.files:
            return
        label = batch.label or f"https-{next(self._counter)}"
        if self._cancel.is_set():
            raise _stopped(batch.files, label)
        stop = threading.Event()
        events: queue.Queue[model.ProgressEvent | None] = queue.Queue()
        failures: list[tuple[model.RemoteFile, errors.TransferError]] = []
        fatal: list[BaseException] = []
        workers = min(self.jobs, len(batch.files))
        with ThreadPoolExecutor(workers, thread_name_prefix="immsync-https") as pool:
            futures: dict[Future[None], model.RemoteFile] = {}
            for file in batch.files:
                job = _Job(file, batch.staging, label)
                future = pool.submit(self._run_job, job, events.put, stop)
                # One sentinel per finished job: the loop below knows when all are done.
                future.add_done_callback(lambda _f: events.put(None))
                futures[future] = file
            try:
                remaining = len(futures)
                while remaining:
                    event = events.get()
                    if event is None:
                        remaining -= 1
                    else:
                        on_progress(event)
            finally:
                if remaining:
                    # on_progress raised: stop the jobs (the pool waits for them).
                    stop.set()
            for future, file in futures.items():
                exc = future.exception()
                if isinstance(exc, errors.TransferError):
                    failures.append((file, exc))
                elif exc is not None:
                    fatal.append(exc)
        if fatal:
            raise fatal[0]
        if self._cancel.is_set():
            raise _stopped(batch.files, label)
        if failures:
            raise _batch_error(label, len(batch.files), failures)

    def terminate(self) -> None:
        """Stop every download now; later ``fetch`` calls fail as ``interrupted``.

        Safe from any thread and from a signal handler. Downloads stop between two
        chunks, or at once when blocked reading (their sockets are shut down).
        Partial files stay in staging and resume next time.
        """
        self._cancel.set()
        with self._lock:
            active = list(self._active)
        for response in active:
            _shut_down(response)

    def close(self) -> None:
        """Close the pooled connections."""
        with self._lock:
            sessions, self._all_sessions, self._idle = self._all_sessions, [], []
        for session in sessions:
            session.close()

    # -- one file -------------------------------------------------------------------

    def _run_job(
        self, job: _Job, emit: Callable[[model.ProgressEvent], None], stop: threading.Event
    ) -> None:
        with self._slot(stop) as session:
            if session is None:
                raise _stopped((job.file,), job.label)
            try:
                self._fetch_file(job, session, emit, stop)
            except errors.TransferError as exc:
                if exc.kind.stops_run:
                    stop.set()  # every other file of the batch would fail the same way
                raise
            except BaseException:
                stop.set()  # refused credentials, no query URL, a bug: end the batch
                raise

    @contextlib.contextmanager
    def _slot(self, stop: threading.Event) -> Iterator[requests.Session | None]:
        """A download slot and its session; None when stopped while waiting for one."""
        while not self._slots.acquire(timeout=0.2):
            if stop.is_set() or self._cancel.is_set():
                yield None
                return
        try:
            with self._lock:
                session = self._idle.pop() if self._idle else None
            if session is None:
                session = self._session_factory()
                with self._lock:
                    self._all_sessions.append(session)
            try:
                yield session
            finally:
                with self._lock:
                    self._idle.append(session)
        finally:
            self._slots.release()

    def _fetch_file(
        self,
        job: _Job,
        session: requests.Session,
        emit: Callable[[model.ProgressEvent], None],
        stop: threading.Event,
    ) -> None:
        file = job.file
        final = _staged_path(job.staging, file.path)
        partial = partial_of(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            if _is_regular(final):
                # Left by an earlier attempt (or by ascp) and not yet verified: let the
                # server confirm its size by resuming from its end.
                os.replace(final, partial)
            elif os.path.lexists(final):
                final.unlink()  # a symlink is never written through
        except OSError as exc:
            raise _local_error(file, final, exc) from None
        study = self._study_file(file)
        routes = self._routes(file, study)
        failures: list[tuple[str, errors.TransferError]] = []
        for route in routes:
            self._check_stop(file, job.label, stop)
            try:
                self._fetch_by_route(route, study.uuid, job, session, partial, emit, stop)
            except errors.TransferError as exc:
                if exc.kind.stops_run or exc.kind is errors.Failure.INTERRUPTED:
                    raise
                failures.append((route, exc))
                if route != routes[-1]:
                    log.info(
                        "%s: the %s link failed (%s); trying the next way",
                        file.path,
                        route,
                        exc.reason,
                    )
                continue
            try:
                _set_mtime(partial, file.mtime)
                os.replace(partial, final)
                validator_of(partial).unlink(missing_ok=True)
            except OSError as exc:
                raise _local_error(file, final, exc) from None
            self._links.drs.forget(study.uuid)
            return
        raise _methods_failed(file, failures)

    def _routes(self, file: model.RemoteFile, study: model.StudyFile) -> list[str]:
        with _api_failures(
            file,
            not_found=f"ImmPort's DRS does not know its id {study.uuid}",
            failed="ImmPort gave no way to download it",
        ):
            try:
                return self._links.drs.routes(
                    study.uuid,
                    size=study.size if study.size is not None else file.size,
                    md5=study.md5 or file.md5,
                    shortcut_methods=self._methods,
                )
            except errors.ChecksumMismatch as exc:
                raise _mismatch(file, exc) from None
        raise AssertionError("unreachable")  # for type checkers: the block returns or raises

    def _study_file(self, file: model.RemoteFile) -> model.StudyFile:
        accession = file.path.split("/", 1)[0]
        with _api_failures(
            file,
            not_found=f"ImmPort has no file manifest for {accession}",
            failed=f"the file manifest of {accession} is not available",
        ):
            found = self._links.study_files(accession).get(file.path)
        if found is None:
            raise _file_error(
                file,
                "not_found",
                "ImmPort's study file manifest does not list it, so it has no DRS id",
                "not in the study file manifest",
            )
        return found

    def _fetch_by_route(
        self,
        route: str,
        file_uuid: str,
        job: _Job,
        session: requests.Session,
        partial: Path,
        emit: Callable[[model.ProgressEvent], None],
        stop: threading.Event,
    ) -> None:
        file = job.file
        link = self._link(file, file_uuid, route)
        try:
            self._download(link, job, session, partial, emit, stop)
            return
        except _LinkRefused as refused:
            log.info(
                "%s: the %s link %s was refused (%s); asking for a fresh one",
                file.path,
                route,
                _show_url(link.url),
                refused.reason,
            )
        link = self._link(file, file_uuid, route, fresh=True)
        try:
            self._download(link, job, session, partial, emit, stop)
        except _LinkRefused as refused:
            raise _file_error(
                file,
                "permanent",
                f"the {route} download link was refused twice, even freshly issued",
                refused.reason,
            ) from None

    def _link(
        self, file: model.RemoteFile, file_uuid: str, route: str, *, fresh: bool = False
    ) -> DownloadLink:
        with _api_failures(
            file,
            not_found=f"ImmPort's DRS does not know its id {file_uuid} ({route})",
            failed=f"ImmPort gave no {route} download link",
        ):
            try:
                return self._links.drs.link(file_uuid, route, fresh=fresh)
            except errors.ChecksumMismatch as exc:
                raise _mismatch(file, exc) from None
        raise AssertionError("unreachable")  # for type checkers: the block returns or raises

    def _download(
        self,
        link: DownloadLink,
        job: _Job,
        session: requests.Session,
        partial: Path,
        emit: Callable[[model.ProgressEvent], None],
        stop: threading.Event,
    ) -> None:
        try:
            self._download_once(link, job, session, partial, emit, stop)
        except _Restart:
            self._download_once(link, job, session, partial, emit, stop, resume=False)

    def _download_once(
        self,
        link: DownloadLink,
        job: _Job,
        session: requests.Session,
        partial: Path,
        emit: Callable[[model.ProgressEvent], None],
        stop: threading.Event,
        *,
        resume: bool = True,
    ) -> None:
        file = job.file
        offset = _size_of(partial) if resume and _is_regular(partial) else 0
        sidecar = checkpoint_of(partial)
        if offset and os.path.lexists(sidecar):
            # ascp's partial file may have holes that only its .aspx checkpoint
            # accounts for: its size is no proof of a whole prefix.
            log.info("%s: not resuming ascp's partial file over HTTPS; starting over", file.path)
            offset = 0
            _discard(file, sidecar)
        if offset > file.size:
            offset = 0
        if offset == 0:
            _discard_partial(file, partial)
        headers = {"Accept-Encoding": "identity"}
        etag = _read_validator(partial) if offset else None
        if offset:
            headers["Range"] = f"bytes={offset}-"
        if etag:
            headers["If-Match"] = etag
        self._check_stop(file, job.label, stop)
        shown = _show_url(link.url)
        log.debug("%s: GET %s%s", file.path, shown, f" from byte {offset}" if offset else "")
        try:
            response = _get_link(session, link, headers, self._timeout)
        except RedirectRefused as exc:
            raise _file_error(
                file, "permanent", f"refused the download link's redirect: {exc}", exc.why
            ) from None
        except requests.RequestException as exc:
            if self._cancel.is_set() or stop.is_set():
                raise _stopped((file,), job.label) from None
            raise _connection_error(file, shown, exc, link.url, done=None) from None
        with self._lock:
            self._active.add(response)
        try:
            with response:
                if response.status_code == 412 and etag:
                    log.info(
                        "%s: changed upstream since its partial download began (ETag %s); "
                        "starting over",
                        file.path,
                        etag,
                    )
                    _discard_partial(file, partial)
                    raise _Restart
                if response.status_code in (200, 206):
                    _keep_validator(file, partial, response.headers.get("ETag"))
                self._receive(response, job, partial, offset, shown, link.url, emit, stop)
        finally:
            with self._lock:
                self._active.discard(response)

    def _receive(
        self,
        response: requests.Response,
        job: _Job,
        partial: Path,
        offset: int,
        shown: str,
        link: str,
        emit: Callable[[model.ProgressEvent], None],
        stop: threading.Event,
    ) -> None:
        file = job.file
        status = response.status_code
        if status == 416 and offset:
            total = _unsatisfied_total(response.headers.get("Content-Range"))
            if total == offset == file.size:
                _progress(emit, job, file.size, resumed_from=file.size)
                return  # the partial file was already whole
            log.info("%s: cannot resume from byte %d (HTTP 416); starting over", file.path, offset)
            _discard_partial(file, partial)
            raise _Restart
        if status not in (200, 206):
            raise self._http_failure(response, file, shown)
        if status == 206 and offset:
            first, announced = _content_range(response.headers.get("Content-Range"))
            if first != offset:
                log.info(
                    "%s: asked to resume at byte %d, the server answered from byte %s; "
                    "starting over",
                    file.path,
                    offset,
                    first,
                )
                _discard_partial(file, partial)
                raise _Restart
        elif status == 206:
            raise _file_error(
                file, "permanent", "the server answered part of a file that was not asked for",
                f"HTTP 206 without a Range request from {shown}",
            )
        else:
            if offset:
                log.info("%s: the server ignores Range; downloading it again whole", file.path)
            offset = 0
            length = response.headers.get("Content-Length", "")
            announced = int(length) if length.isdigit() else None
        if announced is not None and announced != file.size:
            raise _file_error(
                file,
                "permanent",
                f"the server offers {announced} bytes but ImmPort's listing says {file.size}; "
                "the file may have changed upstream, run again to list it afresh",
                f"size {announced} != {file.size}",
            )
        self._write_body(response, job, partial, offset, shown, link, emit, stop)

    def _write_body(
        self,
        response: requests.Response,
        job: _Job,
        partial: Path,
        offset: int,
        shown: str,
        link: str,
        emit: Callable[[model.ProgressEvent], None],
        stop: threading.Event,
    ) -> None:
        file = job.file
        done = offset
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        if not offset:
            flags |= os.O_TRUNC  # a whole body replaces whatever an earlier attempt left
        try:
            # O_NOFOLLOW: a symlink planted in staging must not redirect our writes.
            # Unbuffered: a full disk must fail a write, where it is reported, never the
            # flush on close.
            fh = os.fdopen(os.open(partial, flags, 0o644), "ab", buffering=0)
        except OSError as exc:
            raise _local_error(file, partial, exc) from None
        with fh:
            # Every body announces where it starts: what a partial file saved, or 0
            # after a start over, so the run can tell resumed bytes from fetched ones.
            if file.size:
                _progress(emit, job, done, resumed_from=offset)
            chunks = response.raw.stream(self._chunk_size, decode_content=False)
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
                    self._check_stop(file, job.label, stop)
                    raise _connection_error(file, shown, exc, link, done=done) from None
                self._check_stop(file, job.label, stop)
                room = file.size - done
                try:
                    _write_all(fh, chunk[:room] if len(chunk) > room else chunk)
                except OSError as exc:
                    raise _local_error(file, partial, exc) from None
                if len(chunk) > room:
                    raise _file_error(
                        file,
                        "permanent",
                        f"the server sent more than the {file.size} bytes ImmPort lists",
                        f"more than {file.size} bytes from {shown}",
                    )
                done += len(chunk)
                _progress(emit, job, done)
            try:
                fh.flush()
            except OSError as exc:
                raise _local_error(file, partial, exc) from None
        if done < file.size:
            raise _file_error(
                file,
                "transient",
                f"the download ended early: {done} of {file.size} bytes arrived "
                "(the partial file resumes)",
                f"short body from {shown}",
            )
        _progress(emit, job, done)

    def _http_failure(
        self, response: requests.Response, file: model.RemoteFile, shown: str
    ) -> Exception:
        status = response.status_code
        code, message = _server_error(_read_some(response))
        said = " ".join(p for p in (code, message) if p) or response.reason or ""
        reason = f"HTTP {status}" + (f" {said}" if said else "") + f" from {shown}"
        if status == 404 or _MISSING.search(f"{code} {message}"):
            return _file_error(file, "not_found", "the file is missing at its source", reason)
        if status in (401, 403) or _REFUSED.search(code):
            return _LinkRefused(reason)
        if status in (408, 429) or status >= 500 or code in _TRANSIENT_CODES:
            return _file_error(file, "transient", "the download server failed", reason)
        return _file_error(file, "permanent", "the download server refused it", reason)

    def _check_stop(self, file: model.RemoteFile, label: str, stop: threading.Event) -> None:
        if self._cancel.is_set() or stop.is_set():
            raise _stopped((file,), label)


# -- errors ------------------------------------------------------------------------------

# Most actionable first. "interrupted" here only means "stopped because another file of
# the batch failed" (a terminate() is reported before this order is consulted).
# Which failure a batch of several reports: the one that decides most about what next.
_KIND_ORDER = (
    errors.Failure.DISK,
    errors.Failure.TRANSIENT,
    errors.Failure.UNREACHABLE,
    errors.Failure.TOKEN,
    errors.Failure.AUTH,
    errors.Failure.NOT_FOUND,
    errors.Failure.PERMANENT,
    errors.Failure.INTERRUPTED,
)
_HINTS = {
    "transient": "The connection or the server failed; partial files resume on the retry.",
    "not_found": "ImmPort lists this file but its download source does not have it; try "
    "again later, or report it to ImmPort.",
    "disk": "Check free space and write permission under the destination's .immsync folder.",
    "interrupted": "The transfer was stopped; partial files stay and resume next time.",
}


@contextlib.contextmanager
def _api_failures(file: model.RemoteFile, *, not_found: str, failed: str) -> Iterator[None]:
    """Turn an API failure while preparing *file*'s download into the transfer's terms."""
    try:
        yield
    except errors.RemoteNotFound as exc:
        raise _file_error(file, "not_found", not_found, exc.message) from None
    except errors.UsageError as exc:
        raise errors.TransportUnavailable(exc.message, hint=exc.hint) from None
    except errors.AuthError:
        raise
    except errors.ApiError as exc:
        kind = "transient" if exc.transient else "permanent"
        raise _file_error(file, kind, failed, exc.message) from None


def _file_error(
    file: model.RemoteFile, kind: str, what: str, reason: str
) -> errors.TransferError:
    return errors.TransferError(
        f"{file.path}: {what}", reason=reason, kind=kind, hint=_HINTS.get(kind)
    )


def _mismatch(file: model.RemoteFile, exc: errors.ChecksumMismatch) -> errors.TransferError:
    """The DRS object disagrees with the manifest: permanent, and never downloaded."""
    return errors.TransferError(
        f"{file.path}: {exc.message}", reason="DRS object mismatch", kind="permanent",
        hint=exc.hint,
    )


def _stopped(files: tuple[model.RemoteFile, ...], label: str) -> errors.TransferError:
    count = f"{len(files)} file" + ("" if len(files) == 1 else "s")
    return errors.TransferError(
        f"HTTPS transfer {label} was stopped ({count}: {files[0].path}"
        + (" ..." if len(files) > 1 else "")
        + ")",
        reason="stopped",
        kind="interrupted",
        hint=_HINTS["interrupted"],
    )


def _methods_failed(
    file: model.RemoteFile, failures: list[tuple[str, errors.TransferError]]
) -> errors.TransferError:
    if len(failures) == 1:
        return failures[0][1]
    kinds = [exc.kind for _, exc in failures]
    last = failures[-1][1]
    # A source that says "missing" settles it; otherwise a passing failure on any
    # access method is worth a retry.
    kind = last.kind
    if kind is not errors.Failure.NOT_FOUND and errors.Failure.TRANSIENT in kinds:
        kind = errors.Failure.TRANSIENT
    detail = "; ".join(
        f"{method}: {exc.message.removeprefix(file.path + ': ')}" for method, exc in failures
    )
    return errors.TransferError(
        f"{file.path}: every download link failed ({detail})",
        reason="; ".join(f"{method}: {exc.reason}" for method, exc in failures),
        kind=kind,
        hint=_HINTS.get(kind),
    )


def _batch_error(
    label: str, total: int, failures: list[tuple[model.RemoteFile, errors.TransferError]]
) -> errors.TransferError:
    kind = min((exc.kind for _, exc in failures), key=_kind_rank)
    if len(failures) == 1:
        return failures[0][1]
    shown = "; ".join(exc.message for _, exc in failures[:_SHOWN_FAILURES])
    more = len(failures) - _SHOWN_FAILURES
    return errors.TransferError(
        f"HTTPS transfer {label}: {len(failures)} of {total} files failed: {shown}"
        + (f"; and {more} more" if more > 0 else ""),
        reason="; ".join(exc.reason for _, exc in failures[:_SHOWN_FAILURES]),
        kind=kind,
        hint=_HINTS.get(kind),
    )


def _kind_rank(kind: errors.Failure) -> int:
    return _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)


def _local_error(file: model.RemoteFile, where: Path, exc: OSError) -> errors.TransferError:
    kind = "disk" if exc.errno in errors.DISK_UNUSABLE else "permanent"
    return _file_error(
        file, kind, f"cannot write {where}: {exc.strerror or exc}", exc.strerror or str(exc)
    )


def _connection_error(
    file: model.RemoteFile, shown: str, exc: BaseException, link: str, *, done: int | None
) -> errors.TransferError:
    cause = _redact(transport_reason(exc), link)
    if done is None:
        what = f"could not download it from {shown}"
    else:
        what = f"the connection to {shown} failed after {done} of {file.size} bytes"
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        cause = f"timed out ({cause})"
    return _file_error(file, "transient", f"{what}: {cause}", cause)


# -- helpers -----------------------------------------------------------------------------


def _staged_path(staging: Path, relative: str) -> Path:
    parts = PurePosixPath(staged_name(relative)).parts
    if (
        not relative
        or relative.startswith("/")
        or any(p in ("..", ".", "") for p in relative.split("/"))
        or any(c in relative for c in "\0\r\n\\")
    ):
        raise errors.TransferError(
            f"Cannot download {relative!r}: not a plain relative path",
            kind="permanent",
            reason="unsafe file name",
        )
    return staging.joinpath(*parts)


def _size_of(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _write_all(fh: BinaryIO, data: bytes) -> None:
    # An unbuffered write may take only part of the bytes (a disk filling up).
    view = memoryview(data)
    while view:
        view = view[fh.write(view) :]


def _discard(file: model.RemoteFile, partial: Path) -> None:
    try:
        partial.unlink(missing_ok=True)
    except OSError as exc:
        raise _local_error(file, partial, exc) from None


def _discard_partial(file: model.RemoteFile, partial: Path) -> None:
    """Forget a partial download and the ETag of the version it holds."""
    _discard(file, partial)
    _discard(file, validator_of(partial))


def _read_validator(partial: Path) -> str | None:
    """The strong ETag of the version the partial download holds, if one was given."""
    try:
        text = validator_of(partial).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _STRONG_ETAG.fullmatch(text) else None


def _keep_validator(file: model.RemoteFile, partial: Path, etag: str | None) -> None:
    """Remember the version being written, for a later resume's ``If-Match``.

    Only a strong ETag identifies the bytes (a weak one, ``W/"..."``, may not); without
    one, a resume goes unconditional, as before, and the size and MD5 checks remain.
    """
    target = validator_of(partial)
    try:
        if etag is None or not _STRONG_ETAG.fullmatch(etag.strip()):
            target.unlink(missing_ok=True)
        elif _read_validator(partial) != etag.strip():
            temporary = target.with_name(target.name + ".tmp")
            temporary.write_text(etag.strip() + "\n", encoding="ascii")
            os.replace(temporary, target)
    except OSError as exc:
        raise _local_error(file, target, exc) from None


def _progress(
    emit: Callable[[model.ProgressEvent], None],
    job: _Job,
    done: int,
    *,
    resumed_from: int | None = None,
) -> None:
    """*done* bytes of the file are in staging; *resumed_from* when its body starts."""
    size = job.file.size
    emit(
        model.ProgressEvent(
            session=job.label,
            name=PurePosixPath(staged_name(job.file.path)).name,
            percent=100 if size == 0 else min(100, done * 100 // size),
            bytes_done=done,
            path=job.file.path,
            resumed_from=resumed_from,
        )
    )


def _set_mtime(path: Path, mtime: str) -> None:
    # The catalog's time, as ``ascp -p`` leaves it: --rebuild-state relies on it.
    stamp = parse_utc(mtime)
    if stamp is not None:
        os.utime(path, (stamp.timestamp(), stamp.timestamp()))


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total)`` from ``Content-Range: bytes a-b/total``."""
    match = _CONTENT_RANGE.fullmatch((header or "").strip())
    if match is None:
        return None, None
    total = None if match[3] == "*" else int(match[3])
    return int(match[1]), total


def _unsatisfied_total(header: str | None) -> int | None:
    match = _UNSATISFIED_RANGE.fullmatch((header or "").strip())
    return int(match[1]) if match else None


def _read_some(response: requests.Response) -> bytes:
    buffer = bytearray()
    with contextlib.suppress(urllib3.exceptions.HTTPError, requests.RequestException, OSError):
        for chunk in response.raw.stream(8192, decode_content=True):
            buffer += chunk
            if len(buffer) >= _ERROR_BODY_LIMIT:
                break
    return bytes(buffer[:_ERROR_BODY_LIMIT])


def _server_error(body: bytes) -> tuple[str, str]:
    """``(code, message)`` from an S3 XML error or a JSON error body ('' when absent)."""
    text = body.decode("utf-8", "replace")
    fields = {name: value.strip() for name, value in _XML_FIELD.findall(text)}
    if fields:
        return fields.get("Code", "")[:100], " ".join(fields.get("Message", "").split())[:300]
    with contextlib.suppress(ValueError):
        doc: Any = json.loads(text)
        if isinstance(doc, dict):
            for key in ("message", "error_description", "error"):
                value = doc.get(key)
                if isinstance(value, str) and value.strip():
                    return "", " ".join(value.split())[:300]
    return "", ""


def _show_url(link: str) -> str:
    """``scheme://host[:port]/path`` of a link: its query (the signature) is secret."""
    parts = urlsplit(link)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _redact(text: str, link: str) -> str:
    query = urlsplit(link).query
    if query:
        text = text.replace(query, "<redacted>")
    return re.sub(r"\?\S*", "?<redacted>", text)


def _shut_down(response: requests.Response) -> None:
    """Wake a thread blocked reading *response*: shut its socket down (not close it)."""
    connection = getattr(response.raw, "connection", None) or getattr(
        response.raw, "_connection", None
    )
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


def _get_link(
    session: requests.Session,
    link: DownloadLink,
    headers: Mapping[str, str],
    timeout: tuple[float, float],
) -> requests.Response:
    """``GET`` a link: no ImmPort credential, the access method's headers to its URL only.

    An explicit auth keeps requests from adding ~/.netrc credentials: the link carries
    its own authorisation, and S3 refuses a second one.
    """
    extra = {k: v for k, v in link.headers.items() if k.lower() not in _lower(headers)}
    response = session.get(
        link.url,
        headers={**extra, **headers},
        stream=True,
        timeout=timeout,
        # With headers of its own, the first hop is followed here, without them.
        allow_redirects=not extra,
        hooks={"response": [_LINK_GUARD]},
        auth=_no_auth,
    )
    if not (extra and response.is_redirect):
        return response
    target = urljoin(link.url, response.headers.get("Location", ""))
    response.close()
    return session.get(
        target,
        headers=dict(headers),
        stream=True,
        timeout=timeout,
        allow_redirects=True,
        hooks={"response": [_LINK_GUARD]},
        auth=_no_auth,
    )


def _lower(headers: Mapping[str, str]) -> set[str]:
    return {name.lower() for name in headers}
