"""Plain words for network failures, shared by the HTTP API client and the HTTPS transport.

A leaf module: it imports nothing from immsync.
"""

from __future__ import annotations

import re


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
