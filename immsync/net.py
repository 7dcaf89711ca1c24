"""Plain words for network failures, shared by the HTTP API client and the HTTPS transport.

A leaf module: it imports nothing from immsync.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit


def transport_reason(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 transport error, in plain words."""
    inner: BaseException = exc
    for _ in range(8):
        reason = getattr(inner, "reason", None)
        if isinstance(reason, BaseException):
            inner = reason
        elif inner.args and isinstance(inner.args[-1], BaseException):
            inner = inner.args[-1]
        else:
            break
    # urllib3 prefixes messages with the repr of its connection object.
    text = re.sub(r"<[^>]*>:\s*", "", str(inner)).strip()
    return (text or type(inner).__name__).splitlines()[0][:200]


class RedirectRefused(Exception):
    """A redirect that would carry a request (and its credentials) somewhere it must not go."""

    def __init__(self, source: str, target: str, why: str) -> None:
        super().__init__(f"{source} redirected to {target}: {why}")
        self.source = source
        self.target = target
        self.why = why


NO_REDIRECTS = "none"
"""Sign-in: a password must reach only the URL it was configured for."""
SAME_ORIGIN = "same-origin"
"""API calls: the bearer key may follow a redirect only within the same scheme, host and port."""
NO_DOWNGRADE = "no-downgrade"
"""Download links (S3 redirects): anywhere, but never from https to http."""


def redirect_guard(rule: str) -> Callable[..., Any]:
    """A ``requests`` response hook enforcing *rule* on every hop of a redirect chain.

    ``requests`` calls response hooks on each response before it follows the next
    hop, so raising here stops the request (and its body and headers) from ever
    being re-sent to the refused target.
    """
    if rule not in (NO_REDIRECTS, SAME_ORIGIN, NO_DOWNGRADE):
        raise ValueError(f"unknown redirect rule {rule!r}")

    def check(response: Any, *args: Any, **kwargs: Any) -> Any:
        if not response.is_redirect:
            return response
        source = response.url
        target = urljoin(source, response.headers.get("Location", ""))
        why = _refusal(rule, urlsplit(source), urlsplit(target))
        if why is not None:
            response.close()
            raise RedirectRefused(_origin_and_path(source), _origin_and_path(target), why)
        return response

    return check


def _refusal(rule: str, source: SplitResult, target: SplitResult) -> str | None:
    if rule == NO_REDIRECTS:
        return "immsync never follows a redirect with a password"
    if rule == SAME_ORIGIN and (
        source.scheme != target.scheme
        or (source.hostname or "").lower() != (target.hostname or "").lower()
        or _port(source) != _port(target)
    ):
        return "immsync sends credentials only to the host they were configured for"
    if source.scheme == "https" and target.scheme != "https":
        return "immsync never moves from https to an unencrypted link"
    return None


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None


def _origin_and_path(url: str) -> str:
    """A URL without its query string: a presigned link's query is its signature."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


_DNS_WORDS = (
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
    "getaddrinfo failed",
    "no address associated with hostname",
    "failed to resolve",
    "nameresolutionerror",
)
_REFUSED_WORDS = ("connection refused", "actively refused")


def connection_failure(exc: BaseException, url: str) -> tuple[str, str, bool]:
    """Plain words for a failure to reach *url*: ``(what happened, what to do, transient)``.

    A name that does not resolve, a connection refused and a connection lost call for
    different fixes, so each gets its own wording.
    """
    host = urlsplit(url).hostname or url
    reason = transport_reason(exc)
    lowered = f"{reason} {type(exc).__name__} {exc}".lower()
    if any(word in lowered for word in _DNS_WORDS):
        temporary = "temporary failure" in lowered
        return (
            f"cannot resolve the host name {host} ({reason})",
            "check the host name in the URL, and this machine's network and DNS",
            temporary,
        )
    if any(word in lowered for word in _REFUSED_WORDS):
        return (
            f"{host} refused the connection ({reason})",
            "check the URL and its port, that the service is up, and any proxy "
            "(HTTPS_PROXY) between here and there",
            True,
        )
    return (
        f"the connection to {host} was lost ({reason})",
        "a network fault or an overloaded server; run the same command again",
        True,
    )
