"""What a run is configured with: environment variables, credentials, the ImmPort client.

Everything immsync takes from the environment is read once, here, into an
``Environment``; credentials are resolved in their documented order (API key, key
file, bearer token, then a username and password from the environment or netrc),
and a key's expiry is checked before any request is sent.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .. import __version__
from ..errors import UsageError

if TYPE_CHECKING:
    from ..immport import Credentials, ImmportClient

log = logging.getLogger("immsync")

DEFAULT_QUERY_URL = "https://www.immport.org/data/query"
DEFAULT_DRS_URL = "https://drs.immport.org"
DEFAULT_TOKEN_URL = "https://www.immport.org/auth/token"  # noqa: S105 - a URL
DEFAULT_DATA_URL = "https://api.immport.org/data"
"""The legacy data API: the folder listing and Aspera tokens, used only where they answer."""
ASCP_JOBS = 2
"""``--jobs`` for ascp: sessions at once (servers refuse bursts of sign-ins)."""
HTTPS_JOBS = 16
"""``--jobs`` over HTTPS: files at once; small files are latency-bound, links are cheap."""


@dataclass(frozen=True, slots=True)
class Environment:
    """Everything immsync takes from environment variables, read once here."""

    username: str | None = None
    password: str | None = None
    token: str | None = None
    api_key: str | None = None
    api_key_file: str | None = None
    token_url: str = DEFAULT_TOKEN_URL
    data_url: str = DEFAULT_DATA_URL
    query_url: str = DEFAULT_QUERY_URL
    drs_url: str = DEFAULT_DRS_URL
    ascp: str | None = None
    aspera_key: str | None = None
    aspera_host: str = "aspera-immport.niaid.nih.gov"
    aspera_user: str = "databrowser"
    aspera_port: int = 33001
    path: str | None = None
    netrc: str | None = None
    home: Path = field(default_factory=Path.home)

    def __repr__(self) -> str:
        # dataclass's repr would print the password.
        return f"Environment(username={self.username!r}, token_url={self.token_url!r})"

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> Environment:
        def get(name: str) -> str | None:
            value = environ.get(name, "").strip()
            return value or None

        port_text = get("IMMSYNC_ASPERA_PORT") or "33001"
        try:
            port = int(port_text)
        except ValueError:
            raise UsageError(
                f"IMMSYNC_ASPERA_PORT must be a port number, not {port_text!r}"
            ) from None
        data_url = (get("IMMPORT_DATA_API_BASE_URL") or DEFAULT_DATA_URL).rstrip("/")
        # A legacy deployment named by its data API serves the query API below it.
        query_default = data_url + "/query" if get("IMMPORT_DATA_API_BASE_URL") else None
        query_url = (
            get("IMMSYNC_QUERY_API_BASE_URL") or query_default or DEFAULT_QUERY_URL
        ).rstrip("/")
        return cls(
            username=get("IMMPORT_USERNAME"),
            password=environ.get("IMMPORT_PASSWORD") or None,
            token=get("IMMPORT_TOKEN"),
            api_key=get("IMMPORT_API_KEY"),
            api_key_file=get("IMMPORT_API_KEY_FILE"),
            token_url=get("IMMPORT_TOKEN_URL") or DEFAULT_TOKEN_URL,
            data_url=data_url,
            query_url=query_url,
            drs_url=(get("IMMSYNC_DRS_BASE_URL") or default_drs_url(query_url)).rstrip("/"),
            ascp=get("IMMSYNC_ASCP"),
            aspera_key=get("IMMSYNC_ASPERA_KEY"),
            aspera_host=get("IMMSYNC_ASPERA_HOST") or "aspera-immport.niaid.nih.gov",
            aspera_user=get("IMMSYNC_ASPERA_USER") or "databrowser",
            aspera_port=port,
            path=environ.get("PATH"),
            netrc=get("NETRC"),
            home=Path(environ.get("HOME") or Path.home()),
        )


def default_drs_url(query_url: str) -> str:
    """ImmPort's DRS service beside ImmPort's query API; beside any other query API, the
    DRS service of the same origin, so that a key for another deployment (a mirror, the
    emulator) is never sent to ImmPort's."""
    if query_url == DEFAULT_QUERY_URL:
        return DEFAULT_DRS_URL
    parts = urlsplit(query_url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else DEFAULT_DRS_URL


def netrc_credentials(env: Environment) -> tuple[str | None, str | None]:
    """The netrc entry for the sign-in host, when the environment gave no credentials."""
    if env.token or env.password:
        return env.username, env.password
    path = Path(env.netrc) if env.netrc else env.home / ".netrc"
    if not path.is_file():
        return env.username, env.password
    # Python checks owner and mode only of a default ~/.netrc it finds itself; a file
    # named explicitly is read as it is. Whichever file it is holds a password: like
    # ssh with a key file, refuse one that is not the user's own and private.
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        problem = (
            f"it belongs to uid {st.st_uid}, not to you (uid {os.getuid()})"
            if st.st_uid != os.getuid()
            else f"its permissions ({st.st_mode & 0o777:o}) let others read or change it"
        )
        raise UsageError(
            f"refusing the netrc file {path}: {problem}",
            hint=f"a netrc file holds passwords: make it yours and private (chmod 600 {path}), "
            "or set IMMPORT_USERNAME and IMMPORT_PASSWORD",
        )
    host = urlsplit(env.token_url).hostname or ""
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError) as exc:
        raise UsageError(
            f"cannot read the netrc file {path}: {getattr(exc, 'msg', exc)}",
            hint="fix the file (it must be readable only by you: chmod 600), or set "
            "IMMPORT_USERNAME and IMMPORT_PASSWORD",
        ) from None
    if entry is None:
        return env.username, env.password
    login, _account, password = entry
    if env.username and login and login != env.username:
        return env.username, env.password  # the netrc entry is someone else's
    return env.username or login or None, password or None


def connect(
    env: Environment, api_key_file: Path | None, *, allow_insecure_http: bool
) -> ImmportClient:
    """The ImmPort client for this run, its credentials checked before any request."""
    from ..immport import ImmportClient, ListingLimits, ManifestLimits
    from ..immport.wire import api_session

    return ImmportClient(
        api_session(f"immsync/{__version__}"),
        token_url=env.token_url,
        data_url=env.data_url,
        query_url=env.query_url,
        drs_url=env.drs_url,
        credentials=credentials(env, api_key_file),
        allow_insecure_http=allow_insecure_http,
        listing_limits=ListingLimits.from_environment(os.environ),
        manifest_limits=ManifestLimits.from_environment(os.environ),
    )


def credentials(env: Environment, api_key_file: Path | None) -> Credentials:
    """API key, then key file, then bearer token, then username and password.

    A key file's expiry is checked here, before any request: an expired key ends the
    run (exit 3), one close to expiry draws a warning.
    """
    from ..immport import ApiKey, Credentials, load_api_key_file

    key: ApiKey | None = None
    if env.api_key:
        key = ApiKey(env.api_key, "IMMPORT_API_KEY")
    elif api_key_file is not None or env.api_key_file:
        key, warnings = load_api_key_file(api_key_file or Path(env.api_key_file or ""))
        for warning in warnings:
            log.warning("%s", warning)
    if key is not None:
        soon = key.check_expiry()
        if soon:
            log.warning("%s", soon)
        return Credentials(api_key=key)
    username, password = netrc_credentials(env)
    return Credentials(username=username, password=password, token=env.token)


def child_environment() -> dict[str, str]:
    # ascp gets the caller's environment (proxies, locale), minus ImmPort secrets it
    # has no use for: a child process's environment is readable by its owner in /proc.
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("IMMPORT_PASSWORD", "IMMPORT_TOKEN", "IMMPORT_USERNAME", "IMMPORT_API_KEY")
    }
