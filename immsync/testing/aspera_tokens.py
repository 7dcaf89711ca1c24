"""Aspera transfer tokens as the emulator mints them and the stand-in ``ascp`` checks them.

A real ImmPort ``/data/download/token`` reply carries an opaque token that the Aspera
server accepts only for the paths it was minted for (reference §3.8). The doubles share
this format: ``<base64url(JSON payload)>.<base64url(HMAC-SHA256)>`` where the payload is
``{"paths": [...], "exp": <unix seconds>, "nonce": "..."}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time


class TokenRejected(Exception):
    """The token is malformed, forged, expired, or does not cover a path."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def normalise(path: str) -> str:
    """``SDY1/x/`` and ``/SDY1/x`` name the same thing: leading slash, no trailing one."""
    return "/" + path.strip("/")


def mint(
    secret: str, paths: list[str], *, lifetime: float = 86400.0, now: float | None = None
) -> str:
    issued = time.time() if now is None else now
    payload = {
        "paths": [normalise(p) for p in paths],
        "exp": issued + lifetime,
        "nonce": secrets.token_hex(8),
    }
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    mac = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def check(secret: str, token: str, requested: list[str], *, now: float | None = None) -> None:
    """Raise TokenRejected unless *token* is genuine, unexpired and covers every path.

    A token path covers itself and everything below it (``/SDY1`` covers
    ``/SDY1/StudyFiles/a.txt``), as the ImmPort tool's directory downloads need.
    """
    try:
        body, mac = token.split(".")
        expected = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(mac)):
            raise TokenRejected("token denied by server")
        payload = json.loads(_unb64(body))
        allowed = [str(p) for p in payload["paths"]]
        exp = float(payload["exp"])
    except (ValueError, KeyError, TypeError) as exc:
        raise TokenRejected("token denied by server") from exc
    if (time.time() if now is None else now) > exp:
        raise TokenRejected("token denied by server", expired=True)
    for path in requested:
        want = normalise(path)
        if not any(want == a or want.startswith(a.rstrip("/") + "/") for a in allowed):
            raise TokenRejected("Token doesn't match file-list/file-pair-list")
