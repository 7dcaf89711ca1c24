"""ImmPort's HTTP API, as immsync uses it.

Today's ImmPort (2026): API keys as bearer values, the study file manifest as the
catalog, DRS links for downloads. The legacy world (password sign-in, the
``/data/list`` listing, Aspera tokens) is still spoken where it answers. Every reply
is untrusted input: size-capped, deadline-bound, type-checked, and no path it names
may lead outside the destination.
"""

from __future__ import annotations

from .catalog import ManifestLimits, StudyCatalog
from .client import ImmportClient
from .credentials import (
    API_KEYS_PAGE,
    CREDENTIALS_HINT,
    ApiKey,
    Credentials,
    load_api_key_file,
)
from .listing import MAX_DEPTH, Listing, ListingEntry, ListingLimits
from .wire import MAX_REPLY_BYTES, REQUEST_DEADLINE

__all__ = [
    "API_KEYS_PAGE",
    "CREDENTIALS_HINT",
    "MAX_DEPTH",
    "MAX_REPLY_BYTES",
    "REQUEST_DEADLINE",
    "ApiKey",
    "Credentials",
    "ImmportClient",
    "Listing",
    "ListingEntry",
    "ListingLimits",
    "ManifestLimits",
    "StudyCatalog",
    "load_api_key_file",
]
