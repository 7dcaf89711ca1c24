"""What a study holds: ImmPort's study file manifest, one request per study.

``GET {query}/api/study/manifest/{SDY}?fileType=all&format=json`` lists every file of
a study with its path, size, MD5, type, date and DRS id. Rows are read one at a time
into compact tuples (a 100,000-file study is a 45 MB reply). Every plausible shape is
accepted: a bare array or ``{"content": [...]}``, ``drsObjectCreated`` as ``"Y"``,
``"N"`` or a boolean, ``dateFileUpdated`` as a date, a datetime or epoch milliseconds,
paths with or without a leading slash, and any extra fields.

Only where the manifest endpoint does not exist (a 404 before any study was found
through it) does the catalog fall back to the legacy folder-by-folder listing.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import quote

from ..errors import ApiError, AuthError, ImmsyncError, RemoteNotFound, UsageError
from ..model import FILE_TYPES, NO_CAVEATS, Caveats, RemoteFile, StudyFile, file_type_of
from ..paths import unsafe_reason
from .api import Api
from .listing import LegacyListing, positive_setting, remote_form
from .wire import json_type

log = logging.getLogger(__name__)

_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_ACCESSION = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True, slots=True)
class ManifestLimits:
    """The most a study manifest may hold; more ends the study's listing (exit 4).

    A 100,000-file study's manifest is about 45 MB.
    """

    max_rows: int = 1_000_000
    max_bytes: int = 512 * 1024 * 1024

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> ManifestLimits:
        """``IMMSYNC_MANIFEST_MAX_ROWS`` and ``IMMSYNC_MANIFEST_MAX_BYTES`` override."""
        default = cls()
        return cls(
            max_rows=positive_setting(environ, "IMMSYNC_MANIFEST_MAX_ROWS", default.max_rows),
            max_bytes=positive_setting(environ, "IMMSYNC_MANIFEST_MAX_BYTES", default.max_bytes),
        )


class ManifestRow(NamedTuple):
    """What immsync keeps of one manifest row, normalised once.

    A flat tuple: a 100,000-row manifest is held while a plan is made.
    """

    path: str | None
    """Without its leading "/"; None when missing or empty."""
    md5: str | None
    """Lowercase hex; None unless well-formed."""
    size: int | None
    uuid: str | None
    """The DRS id (``fileUUID``)."""
    mtime: str
    """``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM:SSZ``; empty when absent."""
    file_type: str | None
    drs: bool
    """False only where ImmPort says no DRS object was created (``"N"``)."""


@dataclass(frozen=True, slots=True)
class StudyContents:
    """Every file of one study, and how immsync learned it."""

    rows: tuple[ManifestRow, ...]
    source: str
    """``"manifest"`` or ``"listing"`` (the legacy API)."""


class StudyCatalog:
    """What each study holds, from its file manifest (or the legacy listing).

    One manifest request per study and run, shared by planning (paths, sizes, MD5s)
    and the HTTPS transport (DRS ids), whichever asks first.
    """

    def __init__(
        self,
        api: Api,
        query_url: str | None,
        listing: LegacyListing,
        limits: ManifestLimits | None = None,
    ) -> None:
        self._api = api
        self.query_url = query_url
        self._listing = listing
        self.limits = limits or ManifestLimits()
        self._contents: dict[str, StudyContents] = {}
        self._study_files: dict[str, dict[str, StudyFile]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._manifest_seen = False
        """A manifest came back once: the endpoint exists, so a 404 means "no such study"."""

    # -- the RemoteCatalog protocol ------------------------------------------------------

    def walk(
        self,
        root: str,
        *,
        workers: int = 8,
        on_unsafe: Callable[[str, str], None] | None = None,
    ) -> list[RemoteFile]:
        """Every file at or below the ImmPort path *root* (``/SDY1/StudyFiles``).

        Raises:
            RemoteNotFound: the study or the path below it does not exist.
            ApiError, AuthError: the catalog could not be read.
        """
        start = remote_form(root)[1:]
        accession = start.partition("/")[0]
        contents = self.study(accession, workers=workers, on_unsafe=on_unsafe)
        if contents.source == "listing":
            return self._listing.walk(root, workers=workers, on_unsafe=on_unsafe)
        prefix = start + "/"
        found = []
        for row in contents.rows:
            path = row.path
            if path is None or (path != start and not path.startswith(prefix)):
                continue
            if row.size is None:
                _refuse(on_unsafe, path, "the study manifest gives no size for it")
                continue
            found.append(RemoteFile(path, row.size, row.mtime, row.md5, row.file_type))
        if not found:
            raise RemoteNotFound(
                f"ImmPort's file manifest of {accession} has nothing at {start}",
                hint="check the path in the manifest (paths are case-sensitive)",
            )
        return sorted(found, key=lambda f: f.path)

    def study_checksums(self, accession: str) -> dict[str, tuple[str, int]] | None:
        """Upstream MD5 and size of every file of a study, or None where there are none.

        Raises:
            AuthError: ImmPort refused the credentials.
        """
        try:
            contents = self.study(accession)
        except AuthError:
            raise
        except ApiError as exc:
            log.info(
                "ImmPort file manifest of %s unavailable, so no upstream checksums: %s",
                accession,
                exc.message,
            )
            return None
        if contents.source != "manifest":
            return None
        result: dict[str, tuple[str, int]] = {}
        for row in contents.rows:
            if row.path is not None and row.md5 is not None and row.size is not None:
                result.setdefault(row.path, (row.md5, row.size))
        return result

    def top_level(self, accession: str) -> list[tuple[str, bool, int]]:
        """``(name, is_folder, bytes below it)`` for each entry at the study's top level.

        Raises:
            RemoteNotFound: ImmPort has no such study.
            ApiError, AuthError: the catalog could not be read.
        """
        contents = self.study(accession)
        if contents.source == "listing":
            listing = self._listing.list_path(f"/{accession}")
            prefix = f"/{accession}/"
            found = []
            for item in listing.items:
                path = remote_form(item.path)
                if path.startswith(prefix) and item.type in ("file", "directory"):
                    found.append((path[len(prefix) :], item.type == "directory", item.size))
            return sorted(found)
        totals: dict[tuple[str, bool], int] = {}
        for row in contents.rows:
            if row.path is None:
                continue
            below = row.path[len(accession) + 1 :]
            name, slash, _rest = below.partition("/")
            key = (name, bool(slash))
            totals[key] = totals.get(key, 0) + (row.size or 0)
        return sorted((name, folder, size) for (name, folder), size in totals.items())

    def caveats(self, accession: str) -> Caveats:
        """Rows ImmPort says have no DRS object, and rows without an MD5 (manifest only)."""
        contents = self._contents.get(accession)
        if contents is None or contents.source != "manifest":
            return NO_CAVEATS
        unavailable = {
            row.path: "ImmPort lists it but has not made it downloadable yet "
            "(drsObjectCreated is N); it was not fetched"
            for row in contents.rows
            if row.path is not None and not row.drs
        }
        without_md5 = frozenset(
            row.path for row in contents.rows if row.path is not None and row.md5 is None
        )
        return Caveats(unavailable, without_md5)

    def paths_near(self, root: str) -> list[str]:
        """Paths near *root*, which ImmPort does not have (see ``RemoteCatalog``)."""
        start = remote_form(root)[1:]
        contents = self._contents.get(start.partition("/")[0])
        if contents is None:
            return []
        if contents.source == "manifest":
            return [row.path for row in contents.rows if row.path is not None]
        parent = start.rpartition("/")[0]
        try:
            listing = self._listing.list_path("/" + parent) if parent else None
        except ImmsyncError:
            return []  # a suggestion is a courtesy: without the listing, none is made
        return [remote_form(item.path)[1:] for item in listing.items] if listing else []

    def source_of(self, accession: str) -> str | None:
        """``"manifest"`` or ``"listing"`` for a study already read, else None."""
        contents = self._contents.get(accession)
        return None if contents is None else contents.source

    def study_files(self, accession: str) -> Mapping[str, StudyFile]:
        """Every downloadable file of a study (with a DRS id), by destination-relative path.

        Cached (read-only: do not modify it).

        Raises:
            UsageError: no query URL is configured, or *accession* is not one.
            RemoteNotFound: ImmPort has no such study.
            ApiError: the manifest could not be fetched or is unusable.
            AuthError: ImmPort refused the credentials.
        """
        if self.query_url is None:
            raise UsageError(
                "HTTPS downloads need ImmPort's query API (study file manifests and DRS "
                "links), and no query URL is configured",
                hint="set IMMSYNC_QUERY_API_BASE_URL, e.g. https://www.immport.org/data/query",
            )
        cached = self._study_files.get(accession)
        if cached is not None:
            return cached  # asked once per file downloaded: must not re-read every row
        contents = self.study(accession)
        if contents.source != "manifest":
            raise ApiError(
                f"ImmPort has no study file manifest for {accession}, so no DRS ids to "
                "download it over HTTPS",
                hint="this deployment serves files only through Aspera: use --transport ascp",
            )
        result: dict[str, StudyFile] = {}
        for row in contents.rows:
            if row.path is not None and row.uuid is not None and row.drs:
                result.setdefault(row.path, StudyFile(row.path, row.uuid, row.md5, row.size))
        self._study_files[accession] = result
        return result

    # -- reading a study -----------------------------------------------------------------

    def study(
        self,
        accession: str,
        *,
        workers: int = 8,
        on_unsafe: Callable[[str, str], None] | None = None,
    ) -> StudyContents:
        """The study's rows, fetched at most once per run (once even when threads race)."""
        if not _ACCESSION.fullmatch(accession):
            raise UsageError(f"not a study accession: {accession!r}")
        with self._locks_lock:
            lock = self._locks.setdefault(accession, threading.Lock())
        with lock:
            cached = self._contents.get(accession)
            if cached is not None:
                return cached
            contents = self._fetch(accession, workers, on_unsafe)
            self._contents[accession] = contents
            return contents

    def _fetch(
        self, accession: str, workers: int, on_unsafe: Callable[[str, str], None] | None
    ) -> StudyContents:
        if self.query_url is None:
            # Raises RemoteNotFound if absent; a walk of the study starts from it.
            self._listing.list_path(f"/{accession}", keep=True)
            return StudyContents((), "listing")
        try:
            rows = self._manifest_rows(accession, on_unsafe)
        except RemoteNotFound:
            if self._manifest_seen:
                raise RemoteNotFound(
                    f"{accession}: ImmPort has no such study",
                    hint="check the accession in the manifest",
                ) from None
            return self._legacy_or_not_found(accession)
        self._manifest_seen = True
        if not rows:
            raise RemoteNotFound(
                f"{accession}: ImmPort's file manifest lists no files for it",
                hint="check the accession in the manifest",
            )
        return StudyContents(rows, "manifest")

    def _legacy_or_not_found(self, accession: str) -> StudyContents:
        # The manifest endpoint answered 404 and has never answered otherwise: either
        # the study does not exist, or this deployment predates the manifest.
        try:
            self._listing.list_path(f"/{accession}", keep=True)
        except RemoteNotFound:
            raise RemoteNotFound(
                f"{accession}: not found on ImmPort (neither its study file manifest nor "
                "the legacy listing knows it)",
                hint="check the accession in the manifest",
            ) from None
        log.info("%s: no study file manifest here; listing it folder by folder", accession)
        return StudyContents((), "listing")

    def _manifest_rows(
        self, accession: str, on_unsafe: Callable[[str, str], None] | None
    ) -> tuple[ManifestRow, ...]:
        url = f"{self.query_url}/api/study/manifest/{quote(accession, safe='')}"
        endpoint = f"GET {url}"
        counted = [0]
        limit = self.limits.max_rows

        def row_of(raw: Any) -> Any:
            counted[0] += 1
            if counted[0] > limit:
                raise ApiError(
                    f"ImmPort's file manifest of {accession} has more than {limit} rows "
                    "(the bound IMMSYNC_MANIFEST_MAX_ROWS; raise it if the study is that large)"
                )
            return compact_row(raw)

        doc = self._api.call(
            "manifest",
            "GET",
            url,
            endpoint,
            params={"fileType": "all", "format": "json"},
            item=row_of,
            max_bytes=self.limits.max_bytes,
        )
        if isinstance(doc, dict) and isinstance(doc.get("content"), list):
            doc = [row_of(raw) for raw in doc["content"]]
        if not isinstance(doc, list):
            self._api.wire.malformed(endpoint, f"a JSON {json_type(doc)}, not a list of files")
        kept = []
        prefix = accession + "/"
        if doc and not any(isinstance(r, ManifestRow) and r.path for r in doc):
            self._api.wire.malformed(
                endpoint, f"none of its {len(doc)} rows names a file's path"
            )
        for row in doc:
            if not isinstance(row, ManifestRow) or row.path is None:
                _refuse(on_unsafe, f"{accession} manifest row", "it has no usable path")
                continue
            why = unsafe_reason(row.path)
            if why is None and not row.path.startswith(prefix):
                why = f"it is outside the study {accession}"
            if why is not None:
                _refuse(on_unsafe, row.path, why)
                continue
            kept.append(row)
        return tuple(kept)


def compact_row(raw: Any) -> Any:
    """One manifest row as a ``ManifestRow`` (anything not an object is kept as is)."""
    if not isinstance(raw, dict):
        return raw
    path = raw.get("path")
    clean = path.strip().lstrip("/") if isinstance(path, str) else ""
    md5 = None
    for key in ("generatedMD5", "reportedMD5"):
        value = raw.get(key)
        if isinstance(value, str) and _MD5.fullmatch(value.strip()):
            md5 = value.strip().lower()
            break
    uuid = raw.get("fileUUID")
    kind = raw.get("fileType")
    drs = raw.get("drsObjectCreated")
    return ManifestRow(
        clean or None,
        md5,
        _size(raw.get("filesizeBytes")),
        uuid.strip() if isinstance(uuid, str) and uuid.strip() else None,
        _date(raw.get("dateFileUpdated")),
        sys.intern(kind) if isinstance(kind, str) and kind in FILE_TYPES else file_type_of(clean),
        not (drs is False or (isinstance(drs, str) and drs.strip().upper() in ("N", "NO"))),
    )


def _size(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return value if isinstance(value, int) and value >= 0 else None


def _date(value: Any) -> str:
    """``2018-02-01`` stays; a datetime becomes ``YYYY-MM-DDTHH:MM:SSZ`` (UTC)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:  # Jackson's default for dates: epoch milliseconds
            return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        except (OverflowError, OSError, ValueError):
            return ""
    if not isinstance(value, str):
        return ""
    text = value.strip()
    if _DATE.fullmatch(text):
        return sys.intern(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text[:40]
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _refuse(on_unsafe: Callable[[str, str], None] | None, path: str, why: str) -> None:
    log.warning("skipping ImmPort manifest entry %r: %s", path, why)
    if on_unsafe is not None:
        on_unsafe(path, why)


class StudySummaries:
    """``GET {query}/api/study/summary/{SDY}``: informational, for the lock file."""

    def __init__(self, api: Api, query_url: str | None) -> None:
        self._api = api
        self.query_url = query_url

    def latest_data_release(self, accession: str) -> str | None:
        """The study's latest data release (``"DR47"``), or None on any failure.

        Raises:
            AuthError: ImmPort refused the credentials (that would fail everything else).
        """
        if self.query_url is None or not _ACCESSION.fullmatch(accession):
            return None
        url = f"{self.query_url}/api/study/summary/{quote(accession, safe='')}"
        try:
            doc = self._api.call("summary", "GET", url, f"GET {url}")
        except AuthError:
            raise
        except ApiError as exc:
            log.info("ImmPort study summary of %s unavailable: %s", accession, exc.message)
            return None
        # Some ImmPort query replies wrap the one object in a list (ImmPortR takes [[1]]).
        if isinstance(doc, list) and doc:
            doc = doc[0]
        value = doc.get("latestDataReleaseVersion") if isinstance(doc, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip() or len(value) > 64:
            return None
        return value.strip()
