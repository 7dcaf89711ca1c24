"""The HTTP exchange with ImmPort: one request in, a checked status and capped body out.

Every reply is untrusted input: its body is read against a byte cap and a total
deadline, its JSON is parsed defensively, and error bodies are quoted only after
every known secret is redacted from them. Redirects are checked hop by hop (see
``immsync.net``). Transport failures become ``ApiError`` with their own wording,
``transient`` when trying again may help.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import requests
import urllib3

from ..errors import ApiError, RemoteNotFound, UsageError
from ..net import (
    NO_REDIRECTS,
    SAME_ORIGIN,
    RedirectRefused,
    connection_failure,
    redirect_guard,
)
from ..retry import RetryPolicy, call_with_retries

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 64 * 1024 * 1024
"""Largest reply body read from ImmPort; anything bigger is refused, not buffered."""

REQUEST_DEADLINE = 300.0
"""Seconds one API request may take in all, however slowly its reply trickles in."""

MIN_SECRET_LENGTH = 4
# Idle connections kept per host: more than a run's threads calling the API at once
# (--jobs is at most 16, a listing uses 8 workers).
API_CONNECTIONS = 32
"""Shorter values are not redacted: hiding ``Max`` inside words would reveal it."""

_SIGN_IN_GUARD = redirect_guard(NO_REDIRECTS)
_API_GUARD = redirect_guard(SAME_ORIGIN)


class Secrets:
    """The secret values of one client (password, API key, tokens), for redaction."""

    def __init__(self, values: Iterator[str | None] | tuple[str | None, ...] = ()) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        for value in values:
            self.add(value)

    def add(self, value: str | None) -> None:
        if value and len(value) >= MIN_SECRET_LENGTH:
            with self._lock:
                self._values.add(value)

    def redact(self, text: str) -> str:
        """*text* with every whole occurrence of a secret replaced by ``***``.

        Whole occurrences only: a secret that is also part of a longer word is left
        in that word, where replacing it would point at the secret instead.
        """
        with self._lock:
            known = sorted(self._values, key=len, reverse=True)
        for secret in known:
            # Token characters (JWTs and keys use . - _ ~ + / =) on either side mean the
            # value is part of something longer; a full stop ending a sentence does not.
            text = re.sub(
                rf"(?<![A-Za-z0-9_\-.~+/=]){re.escape(secret)}(?![A-Za-z0-9_\-~+/=]|\.\w)",
                "***",
                text,
            )
        return text


class Wire:
    """Sends requests for one client and reads their replies safely.

    Args:
        session: the HTTP session (connection pool, proxies, CA bundle). Threads other
            than the main one use copies sharing its connection pools.
        timeout: seconds for connecting and for each read.
        deadline: seconds a whole request may take, body included.
        retry: how transient failures (5xx, 429, resets, timeouts) are retried.
        sleep: waits between retries; tests pass a recorder.
    """

    max_reply_bytes: int = MAX_REPLY_BYTES

    def __init__(
        self,
        session: requests.Session,
        *,
        timeout: float = 30.0,
        deadline: float = REQUEST_DEADLINE,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing it is safe
        sleep: Callable[[float], None] = time.sleep,
        secrets: Secrets | None = None,
    ) -> None:
        self.session = session
        self.timeout = timeout
        self.deadline = deadline
        self.retry = retry
        self.sleep = sleep
        self.secrets = secrets or Secrets()
        self.counters: dict[str, int] = {}
        """HTTP requests sent, by kind (retries included), for reports."""
        self._counter_lock = threading.Lock()
        self._rng = random.Random()
        self._local = threading.local()

    # -- sending -----------------------------------------------------------------------

    def exchange(
        self,
        kind: str,
        method: str,
        url: str,
        endpoint: str,
        *,
        data: Mapping[str, str] | None = None,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Send one request and read its capped body; transport failures become ApiError.

        *kind* names the request in ``counters``; ``"auth"`` follows no redirect at all.
        *max_bytes* overrides ``max_reply_bytes`` for replies known to be large.
        """
        self._count(kind)
        sent = {"Accept": "application/json", **(headers or {})}
        started = time.monotonic()
        try:
            with self.thread_session().request(
                method,
                url,
                data=data,
                json=json_body,
                params=params,
                headers=sent,
                # An explicit auth keeps requests from consulting ~/.netrc, which would
                # replace our bearer header with Basic auth (and send the password along).
                auth=_headers_as_given,
                timeout=self.timeout,
                stream=True,
                hooks={"response": [_SIGN_IN_GUARD if kind == "auth" else _API_GUARD]},
            ) as response:
                body = self._read_capped(
                    response, endpoint, started, max_bytes or self.max_reply_bytes
                )
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
                f"TLS failed for {endpoint}: {self.secrets.redact(_first_line(exc))}",
                hint="check the system clock and the CA bundle (REQUESTS_CA_BUNDLE)",
            ) from None
        except (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError):
            raise ApiError(
                f"{endpoint} timed out after {self.timeout:g} s", transient=True
            ) from None
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
            # The body is read straight from urllib3, whose errors requests never wraps.
            urllib3.exceptions.ProtocolError,
            urllib3.exceptions.DecodeError,
        ) as exc:
            what, hint, transient = connection_failure(exc, url)
            raise ApiError(f"{endpoint} failed: {what}", hint=hint, transient=transient) from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise ApiError(f"{endpoint} failed: {self.secrets.redact(_first_line(exc))}") from None

    def with_retries(self, attempt: Callable[[], T], endpoint: str) -> T:
        """*attempt*, retried on transient failures as this client's policy says."""
        return call_with_retries(
            attempt,
            policy=self.retry,
            is_transient=_is_transient,
            retry_after=_retry_after_of,
            describe=endpoint,
            sleep=self.sleep,
            rng=self._rng,
        )

    def thread_session(self) -> requests.Session:
        """The given session in the main thread; elsewhere a per-thread copy sharing its pools."""
        if threading.current_thread() is threading.main_thread():
            return self.session
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = clone_session(self.session)
        return session

    # -- replies -----------------------------------------------------------------------

    def raise_for_status(
        self, status: int, headers: Mapping[str, str], body: bytes, endpoint: str
    ) -> None:
        if 200 <= status < 300:
            return
        says = self.server_says(body)
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

    def parse_json(
        self, body: bytes, endpoint: str, *, item: Callable[[Any], Any] | None = None
    ) -> Any:
        """The reply as JSON. With *item*, a top-level array (or one wrapped as
        ``{"content": [...]}``) is decoded one element at a time, each replaced by
        ``item(element)``, so a large reply never exists as a whole list of dicts."""
        return self.parse_text(self.decode(body, endpoint), endpoint, item=item)

    def decode(self, body: bytes, endpoint: str) -> str:
        """The reply's text (UTF-8, a byte-order mark allowed)."""
        try:
            return body.decode("utf-8-sig")
        except UnicodeDecodeError:
            self.malformed(endpoint, "the reply is not UTF-8 text")

    def parse_text(
        self, text: str, endpoint: str, *, item: Callable[[Any], Any] | None = None
    ) -> Any:
        """``parse_json`` of a reply already decoded (see there)."""
        stripped = text.lstrip()
        if not stripped:
            self.malformed(endpoint, "the reply is empty")
        if stripped.startswith("<"):
            self.malformed(
                endpoint,
                "got an HTML page instead of JSON "
                "(is the URL right, or is a proxy or login page in the way?)",
            )
        if item is not None and stripped.startswith("["):
            try:
                return [item(element) for element in iter_json_array(text)]
            except (json.JSONDecodeError, RecursionError, ValueError):
                pass  # the whole-document parse below names what is wrong
        try:
            doc = json.loads(text)
        except RecursionError:
            # json's parser recurses once per nesting level; hostile input can exhaust it.
            self.malformed(endpoint, "the JSON is nested too deeply")
        except json.JSONDecodeError as exc:
            # An unterminated string can only mean the text ended inside it.
            if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
                why = "the JSON is truncated (it ends early)"
            else:
                why = f"the reply is not valid JSON ({exc.msg} at character {exc.pos})"
            self.malformed(endpoint, why)
        if item is not None and isinstance(doc, list):
            return [item(element) for element in doc]
        return doc

    def malformed(self, endpoint: str, what: str) -> NoReturn:
        raise ApiError(
            f"unexpected reply from {endpoint}: {what}",
            hint="the ImmPort API may have changed or be misbehaving; try again later, "
            "and report it if it persists",
        )

    def server_says(self, body: bytes) -> str:
        """``': "<message>"'`` quoting the server's error message, or ``''``."""
        try:
            doc = json.loads(body.decode("utf-8", "replace"))
        except (json.JSONDecodeError, ValueError, RecursionError):
            return ": the reply was an HTML page" if body.lstrip().startswith(b"<") else ""
        if not isinstance(doc, dict):
            return ""
        for key in ("message", "error_description", "error", "msg"):
            value = doc.get(key)
            if isinstance(value, str) and value.strip():
                text = " ".join(value.split())[:300]
                return f': "{self.secrets.redact(text)}"'
        return ""

    # -- plumbing ----------------------------------------------------------------------

    def _count(self, kind: str) -> None:
        with self._counter_lock:
            self.counters[kind] = self.counters.get(kind, 0) + 1

    def _read_capped(
        self, response: requests.Response, endpoint: str, started: float, limit: int
    ) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(
                f"{endpoint} sent a reply of {int(declared)} bytes, "
                f"more than the {limit}-byte limit"
            )
        buffer = bytearray()
        # read1 returns whatever has arrived, so a reply that trickles in a byte at a
        # time still comes back here to be held to the deadline.
        while True:
            if time.monotonic() - started > self.deadline:
                raise ApiError(
                    f"{endpoint} took more than {self.deadline:g} s in all "
                    f"({len(buffer)} bytes had arrived)",
                    transient=True,
                )
            chunk = response.raw.read1(65536, decode_content=True)
            if not chunk:
                break
            buffer += chunk
            if len(buffer) > limit:
                raise ApiError(f"{endpoint} sent a reply larger than the {limit}-byte limit")
        return bytes(buffer)


# -- helpers ---------------------------------------------------------------------------


def iter_json_array(text: str) -> Iterator[Any]:
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


def json_type(value: Any) -> str:
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


def api_session(user_agent: str | None = None) -> requests.Session:
    """A session for the ImmPort API, its connection pools sized for a whole run.

    Every thread of a run (the listing's workers, and up to ``--jobs`` transfers
    resolving links or asking for tokens) shares these pools. requests keeps 10 idle
    connections a host; past that each call would open, and then drop, a connection of
    its own: a new TCP and TLS handshake per request.
    """
    session = requests.Session()
    if user_agent is not None:
        session.headers["User-Agent"] = user_agent
    for prefix in ("https://", "http://"):
        session.mount(prefix, requests.adapters.HTTPAdapter(pool_maxsize=API_CONNECTIONS))
    return session


def clone_session(base: requests.Session) -> requests.Session:
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


def check_url(url: str, what: str, allow_insecure_http: bool) -> str:
    """*url* without a trailing slash, once it is a plain-credential-free http(s) URL.

    Raises:
        UsageError: not http(s), carries credentials, or plain http to a remote host
            without *allow_insecure_http*.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"the ImmPort {what} {url!r} is not an http(s) URL",
            hint="give a full URL such as https://www.immport.org/data/query",
        )
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            f"the ImmPort {what} must not contain a username or password",
            hint="pass credentials through IMMPORT_API_KEY or IMMPORT_API_KEY_FILE instead",
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        if not allow_insecure_http:
            raise UsageError(
                f"refusing the plain-http ImmPort {what} {url}: credentials and tokens "
                "would cross the network unencrypted",
                hint="use an https:// URL (plain http is accepted only for a loopback "
                "host such as 127.0.0.1, e.g. the emulator)",
            )
        log.warning(
            "using plain http to %s: credentials and tokens travel unencrypted", parts.hostname
        )
    return url.strip().rstrip("/")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
