"""Who immsync is to ImmPort: an API key, a bearer token, or (legacy) a password.

Today's ImmPort takes an API key as ``Authorization: Bearer <key>`` on every request,
with no sign-in step. Keys are created on the web, handed out once as a JSON key file
(``id``, ``api_key``, ``expires_at``) and expire. The username/password exchange is
kept for older deployments only. Nothing here ever prints or writes a secret.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..errors import ApiError, AuthError, UsageError
from .wire import Wire, json_type

log = logging.getLogger(__name__)

API_KEYS_PAGE = "https://www.immport.org/auth/api/keys"
EXPIRY_WARNING = timedelta(days=14)
"""A key expiring sooner than this draws a warning on every run."""

CREDENTIALS_HINT = (
    f"create an API key with the 'download' scope at {API_KEYS_PAGE} and set "
    "IMMPORT_API_KEY_FILE to the key file it gives you (or IMMPORT_API_KEY to the key); "
    "a legacy deployment takes IMMPORT_TOKEN, or IMMPORT_USERNAME and IMMPORT_PASSWORD"
)
_KEY_CAUSES = (
    "the key may have expired or been revoked, or lack the 'download' scope: "
    f"create a new one at {API_KEYS_PAGE}"
)
_MAX_KEY_FILE_BYTES = 64 * 1024


@dataclass(frozen=True, repr=False)
class ApiKey:
    """An ImmPort API key, and where it came from (never its value in any text)."""

    value: str
    origin: str
    """``IMMPORT_API_KEY``, or the key file's path."""
    key_id: str | None = None
    expires_at: datetime | None = None

    def __repr__(self) -> str:
        return f"ApiKey(id={self.key_id!r}, origin={self.origin!r}, expires_at={self.expires_at})"

    def check_expiry(self, now: datetime | None = None) -> str | None:
        """Raise if the key has expired; a warning text if it expires soon, else None.

        Raises:
            AuthError: the key's ``expires_at`` has passed (exit 3).
        """
        if self.expires_at is None:
            return None
        now = now or datetime.now(UTC)
        when = self.expires_at.strftime("%Y-%m-%d %H:%M UTC")
        if self.expires_at <= now:
            raise AuthError(
                f"the ImmPort API key {self._name} expired on {when}",
                hint=f"create a new key at {API_KEYS_PAGE} (scope: download) and save its "
                f"key file in place of {self.origin}",
            )
        if self.expires_at - now <= EXPIRY_WARNING:
            days = max(0, (self.expires_at - now).days)
            return (
                f"the ImmPort API key {self._name} expires on {when} "
                f"(in {days} day{'' if days == 1 else 's'}); create a new one at {API_KEYS_PAGE}"
            )
        return None

    @property
    def _name(self) -> str:
        named = f" {self.key_id}" if self.key_id else ""
        return f"from {self.origin}" if not named else f"{named.strip()} (from {self.origin})"


def load_api_key_file(path: Path) -> tuple[ApiKey, list[str]]:
    """The key in an ImmPort key file, and warnings about it (group or world readable).

    Raises:
        UsageError: the file cannot be read or is not an ImmPort key file (exit 2).
    """
    warnings = []
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"the API key file {path} is not a regular file")
        if st.st_size > _MAX_KEY_FILE_BYTES:
            raise UsageError(f"the API key file {path} is too large to be an ImmPort key file")
        text = path.read_text(encoding="utf-8")
    except UsageError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(
            f"cannot read the API key file {path}: {reason}",
            hint="check IMMPORT_API_KEY_FILE or --api-key-file",
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(
            f"the API key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise _not_a_key_file(path, "it is not JSON") from None
    if not isinstance(doc, dict):
        raise _not_a_key_file(path, f"it holds a JSON {json_type(doc)}, not an object")
    value = doc.get("api_key")
    if not isinstance(value, str) or not value.strip():
        raise _not_a_key_file(path, "it has no 'api_key' string")
    key_id = doc.get("id") if isinstance(doc.get("id"), str) else None
    expires_raw = doc.get("expires_at")
    expires = None
    if expires_raw is not None:
        expires = parse_expiry(expires_raw)
        if expires is None:
            raise _not_a_key_file(path, f"its 'expires_at' ({str(expires_raw)[:40]!r}) is no date")
    return ApiKey(value.strip(), str(path), key_id, expires), warnings


def parse_expiry(value: object) -> datetime | None:
    """``2026-05-21T20:55:24.654328038Z`` (nanosecond digits allowed) as an aware datetime."""
    if not isinstance(value, str):
        return None
    match = re.fullmatch(
        r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?",
        value.strip(),
    )
    if match is None:
        return None
    day, clock, fraction, zone = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        return datetime.fromisoformat(f"{day}T{clock}.{micro}{zone}").astimezone(UTC)
    except ValueError:
        return None


def _not_a_key_file(path: Path, why: str) -> UsageError:
    return UsageError(
        f"{path} is not an ImmPort API key file: {why}",
        hint="use the JSON file the ImmPort web site gave you when you created the key "
        f"({API_KEYS_PAGE})",
    )


@dataclass(frozen=True, repr=False)
class Credentials:
    """How to prove who we are: an API key, a bearer token, a username and password.

    Precedence: the API key alone when there is one; otherwise the token, and the
    password (legacy sign-in) only when the token is missing or refused.
    """

    username: str | None = None
    password: str | None = None
    token: str | None = None
    api_key: ApiKey | None = None

    def __repr__(self) -> str:
        password = "***" if self.password else None
        token = "***" if self.token else None
        return (
            f"Credentials(username={self.username!r}, password={password}, token={token}, "
            f"api_key={self.api_key!r})"
        )

    @property
    def can_sign_in(self) -> bool:
        return self.api_key is None and bool(self.username and self.password)

    @property
    def secrets(self) -> tuple[str | None, ...]:
        return (self.password, self.token, self.api_key.value if self.api_key else None)


class Bearer:
    """The ``Authorization`` value for API calls, signing in (legacy) when needed.

    Thread-safe: many listing and download threads share one.
    """

    def __init__(self, wire: Wire, credentials: Credentials, token_url: str) -> None:
        self._wire = wire
        self._credentials = credentials
        self.token_url = token_url
        self._lock = threading.Lock()
        self._token: str | None = (
            credentials.api_key.value if credentials.api_key else credentials.token or None
        )

    @property
    def uses_api_key(self) -> bool:
        return self._credentials.api_key is not None

    def header(self) -> str:
        """The bearer value for the next call (signing in first if there is none yet).

        Raises:
            AuthError: no credentials, or ImmPort refused them.
            ApiError: the sign-in endpoint failed (its retries are spent already).
        """
        with self._lock:
            if self._token is None:
                try:
                    self._token = self._sign_in()
                except ApiError as exc:
                    # The sign-in spent its own retries; a data call retrying it again
                    # would square the number of attempts.
                    if exc.transient:
                        raise ApiError(exc.message, status=exc.status, hint=exc.hint) from exc
                    raise
            return self._token

    def refused(self, token: str, status: int, endpoint: str, says: str, reauthed: bool) -> bool:
        """ImmPort answered 401 (or 403 to a key) to *token*: True to sign in again and retry.

        Raises:
            AuthError: retrying cannot help; the message names the likely causes.
        """
        if self.uses_api_key:
            raise AuthError(
                f"ImmPort refused the API key {self._key_origin()} at {endpoint} "
                f"(HTTP {status}){says}",
                hint=_KEY_CAUSES,
            )
        if reauthed or not self._credentials.can_sign_in:
            hint = (
                "signing in again did not help; the account may lack access"
                if reauthed
                else "the bearer token may have expired: " + CREDENTIALS_HINT
            )
            raise AuthError(f"ImmPort refused the bearer token at {endpoint}{says}", hint=hint)
        log.info("ImmPort refused the bearer token at %s; signing in again", endpoint)
        with self._lock:
            # Another thread may already have replaced the token this call was refused with.
            if self._token == token:
                self._token = None
        return True

    def _key_origin(self) -> str:
        key = self._credentials.api_key
        return f"from {key.origin}" if key else ""

    def _sign_in(self) -> str:
        creds = self._credentials
        if not creds.can_sign_in:
            raise AuthError("no ImmPort API key or credentials were given", hint=CREDENTIALS_HINT)
        wire = self._wire
        endpoint = f"POST {self.token_url}"
        form = {"username": creds.username or "", "password": creds.password or ""}

        def attempt() -> str:
            status, headers, body = wire.exchange(
                "auth", "POST", self.token_url, endpoint, data=form
            )
            if status in (400, 401, 403):
                raise AuthError(
                    f"ImmPort refused the sign-in at {self.token_url} (HTTP {status})"
                    f"{wire.server_says(body)}",
                    hint="check the username and password; password sign-in is retired on "
                    "today's ImmPort: " + CREDENTIALS_HINT,
                )
            wire.raise_for_status(status, headers, body, endpoint)
            doc = wire.parse_json(body, endpoint)
            if not isinstance(doc, dict):
                wire.malformed(endpoint, f"expected a JSON object, got {json_type(doc)}")
            for key in ("access_token", "token"):
                value = doc.get(key)
                if isinstance(value, str) and value.strip():
                    return value.strip()
            if "error" in doc or doc.get("status") not in (None, 200):
                raise AuthError(
                    f"ImmPort refused the sign-in at {self.token_url}{wire.server_says(body)}",
                    hint=CREDENTIALS_HINT,
                )
            wire.malformed(endpoint, "no 'token' or 'access_token' string in the reply")

        token = wire.with_retries(attempt, endpoint)
        wire.secrets.add(token)
        log.debug("signed in to ImmPort at %s", self.token_url)
        return token
