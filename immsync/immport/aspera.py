"""Aspera transfer tokens (legacy): ``POST {data}/download/token`` for a list of paths.

Today's ImmPort has retired its Aspera service; where the endpoint still answers,
``ascp`` stays the fastest way to move many files. A 404 or 410 here means the
service is gone (see ``immsync.transports``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..errors import ApiError
from .api import Api
from .wire import json_type


class AsperaTokens:
    """Mints Aspera download tokens covering ImmPort paths."""

    def __init__(self, api: Api, data_url: str) -> None:
        self._api = api
        self.data_url = data_url

    def download_token(self, paths: Sequence[str]) -> str:
        """An Aspera transfer token covering *paths* (ImmPort paths; folders allowed).

        Raises:
            RemoteNotFound: ImmPort says a path (or the endpoint) does not exist.
            AuthError, ApiError: as for every call.
        """
        if not paths:
            raise ValueError("download_token needs at least one path")
        wire = self._api.wire
        url = f"{self.data_url}/download/token"
        endpoint = f"POST {url}"
        doc = self._api.call(
            "download_token",
            "POST",
            url,
            endpoint,
            # A trailing slash marks a folder for the token endpoint; keep it.
            json_body={"paths": [p if p.startswith("/") else "/" + p for p in paths]},
        )
        if not isinstance(doc, dict):
            wire.malformed(endpoint, f"expected a JSON object, got {json_type(doc)}")
        token = doc.get("token")
        if not isinstance(token, str) or not token.strip():
            if "error" in doc or "message" in doc:
                raise ApiError(
                    f"ImmPort did not issue a download token at {endpoint}"
                    f"{wire.server_says(json.dumps(doc).encode())}"
                )
            wire.malformed(endpoint, "no 'token' string in the reply")
        wire.secrets.add(token.strip())
        return token.strip()
