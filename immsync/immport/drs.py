"""Download links for single files, through ImmPort's DRS shortcut.

``GET {query}/drs/download/{s3|stream}/{fileUUID}`` answers ``{"url": ...}``: an S3
presigned link (``s3``) or one that ImmPort streams from the source (``stream``).
A link is a credential (anyone holding it can fetch the file until it expires), so
it is never logged whole.
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlsplit

from ..errors import ApiError, UsageError
from .api import Api
from .wire import is_loopback, json_type

ACCESS_METHODS = ("s3", "stream")


class DrsLinks:
    """Hands out download links for DRS ids."""

    def __init__(self, api: Api, query_url: str | None, *, allow_insecure_http: bool) -> None:
        self._api = api
        self.query_url = query_url
        self._allow_insecure_http = allow_insecure_http

    def drs_url(self, file_uuid: str, method: str) -> str:
        """A download link for one file.

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
