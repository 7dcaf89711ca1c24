"""``ImmportClient``: one object composing the parts of ImmPort's API immsync uses.

Each part owns one responsibility: ``wire`` the HTTP exchange, ``credentials`` who we
are, ``catalog`` what a study holds, ``listing`` the legacy folder listing, ``drs``
download links and ``aspera`` legacy transfer tokens. This module knows nothing about
``ascp``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import requests

from ..model import RemoteFile, StudyFile
from ..retry import RetryPolicy
from .api import Api
from .aspera import AsperaTokens
from .catalog import ManifestLimits, StudyCatalog, StudySummaries
from .credentials import Bearer, Credentials
from .drs import DrsLinks
from .listing import LegacyListing, Listing, ListingLimits
from .wire import REQUEST_DEADLINE, Secrets, Wire, check_url


class ImmportClient:
    """A typed, retrying, defensive client of the ImmPort API.

    Args:
        session: the HTTP session (connection pool, proxies, CA bundle).
        token_url: ``POST`` sign-in endpoint of the legacy password exchange.
        data_url: base of the legacy ``/list`` and ``/download/token``.
        query_url: base of the Shared Data API (study file manifests, DRS links), or
            None on a deployment without it.
        drs_url: base of the GA4GH DRS service (``https://host`` or ``drs://host``), tried
            before the query API's DRS shortcut; None for the shortcut alone.
        credentials: an API key, a token, or a username and password.
        timeout: seconds for connecting and for each read of every request.
        deadline: seconds one request may take in all.
        retry: how transient failures (5xx, 429, resets, timeouts) are retried.
        sleep: waits between retries; tests pass a recorder.
        allow_insecure_http: permit ``http://`` to a non-loopback host (logged).
        listing_limits, manifest_limits: bounds on what one study's catalog may hold.

    Raises:
        UsageError: a URL is not http(s), carries credentials, or is plain http to a
            remote host without ``allow_insecure_http``.
    """

    def __init__(
        self,
        session: requests.Session,
        *,
        token_url: str,
        data_url: str,
        query_url: str | None,
        credentials: Credentials,
        drs_url: str | None = None,
        timeout: float = 30.0,
        deadline: float = REQUEST_DEADLINE,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing it is safe
        sleep: Callable[[float], None] = time.sleep,
        allow_insecure_http: bool = False,
        listing_limits: ListingLimits | None = None,
        manifest_limits: ManifestLimits | None = None,
    ) -> None:
        self.token_url = check_url(token_url, "token URL", allow_insecure_http)
        self.data_url = check_url(data_url, "data URL", allow_insecure_http)
        self.query_url = (
            None if query_url is None else check_url(query_url, "query URL", allow_insecure_http)
        )
        self._credentials = credentials
        self.wire = Wire(
            session,
            timeout=timeout,
            deadline=deadline,
            retry=retry,
            sleep=sleep,
            secrets=Secrets(credentials.secrets),
        )
        self.wire.counters.update({"auth": 0, "list": 0, "download_token": 0, "manifest": 0})
        self.bearer = Bearer(self.wire, credentials, self.token_url)
        api = Api(self.wire, self.bearer)
        self.listing = LegacyListing(api, self.data_url, listing_limits)
        self.catalog = StudyCatalog(api, self.query_url, self.listing, manifest_limits)
        self.drs = DrsLinks(
            api, self.query_url, drs_url, allow_insecure_http=allow_insecure_http
        )
        self.aspera = AsperaTokens(api, self.data_url)
        self._summaries = StudySummaries(api, self.query_url)

    def __repr__(self) -> str:
        return f"ImmportClient(query_url={self.query_url!r}, credentials={self._credentials!r})"

    @property
    def counters(self) -> dict[str, int]:
        """HTTP requests sent, by kind (retries included), for reports."""
        return self.wire.counters

    @property
    def max_reply_bytes(self) -> int:
        return self.wire.max_reply_bytes

    @max_reply_bytes.setter
    def max_reply_bytes(self, value: int) -> None:
        self.wire.max_reply_bytes = value

    def bearer_token(self) -> str:
        """The bearer value for API calls: the API key, the token, or one from signing in."""
        return self.bearer.header()

    # -- the parts, by their old names ---------------------------------------------------

    def list_path(self, path: str) -> Listing:
        return self.listing.list_path(path)

    def walk(
        self,
        root: str,
        *,
        workers: int = 8,
        on_unsafe: Callable[[str, str], None] | None = None,
    ) -> list[RemoteFile]:
        """The legacy folder-by-folder walk (``catalog.walk`` is what planning uses)."""
        return self.listing.walk(root, workers=workers, on_unsafe=on_unsafe)

    def study_checksums(self, accession: str) -> dict[str, tuple[str, int]] | None:
        return self.catalog.study_checksums(accession)

    def study_files(self, accession: str) -> Mapping[str, StudyFile]:
        return self.catalog.study_files(accession)

    def drs_url(self, file_uuid: str, method: str) -> str:
        return self.drs.drs_url(file_uuid, method)

    def download_token(self, paths: Sequence[str]) -> str:
        return self.aspera.download_token(paths)

    def top_level(self, accession: str) -> list[tuple[str, bool, int]]:
        return self.catalog.top_level(accession)

    def latest_data_release(self, accession: str) -> str | None:
        return self._summaries.latest_data_release(accession)
