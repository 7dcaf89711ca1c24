"""One authenticated JSON call to ImmPort: bearer header, retries, one re-sign-in."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .credentials import Bearer
from .wire import Wire


class Api:
    """The wire and the bearer together: what the catalog, DRS and Aspera parts call."""

    def __init__(self, wire: Wire, bearer: Bearer) -> None:
        self.wire = wire
        self.bearer = bearer

    def call(
        self,
        kind: str,
        method: str,
        url: str,
        endpoint: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        item: Callable[[Any], Any] | None = None,
        max_bytes: int | None = None,
    ) -> Any:
        """The JSON reply of one authenticated call (see ``Wire.parse_json`` for *item*).

        Raises:
            AuthError: the credentials were refused (after one re-sign-in, where that
                can help).
            RemoteNotFound, ApiError: as ``Wire.raise_for_status`` says.
        """
        wire = self.wire
        reauthed = False

        def attempt() -> Any:
            nonlocal reauthed
            while True:
                token = self.bearer.header()
                status, headers, body = wire.exchange(
                    kind,
                    method,
                    url,
                    endpoint,
                    json_body=json_body,
                    params=params,
                    headers={"Authorization": f"Bearer {token}"},
                    max_bytes=max_bytes,
                )
                refused = status == 401 or (status == 403 and self.bearer.uses_api_key)
                if not refused:
                    break
                self.bearer.refused(token, status, endpoint, wire.server_says(body), reauthed)
                reauthed = True
            wire.raise_for_status(status, headers, body, endpoint)
            # Decode, then let the bytes go before the rows are built: a study
            # manifest is tens of megabytes, and both copies at once set the peak.
            text = wire.decode(body, endpoint)
            del body
            return wire.parse_text(text, endpoint, item=item)

        return wire.with_retries(attempt, endpoint)
