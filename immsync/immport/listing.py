"""The legacy listing, ``POST {data}/list``: one folder at a time, walked concurrently.

Today's ImmPort describes a study in one study-file-manifest request (see
``catalog``); this walk serves deployments that still have the Aspera-era listing
and no manifest. Every entry must sit directly inside the folder it was listed in,
and the work a listing may cause is bounded, so no reply can steer a download outside
the destination or make a run list forever.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, NoReturn

from ..errors import ApiError, RemoteNotFound, UnsafePath, UsageError
from ..model import RemoteFile
from .api import Api
from .wire import json_type

log = logging.getLogger(__name__)

MAX_DEPTH = 64
"""Deepest folder nesting ``walk`` follows below its root."""


@dataclass(frozen=True, slots=True)
class ListingLimits:
    """How much work one walk may cause before it stops (exit 4, naming the bound).

    A real study lists a few hundred folders; a misbehaving or hostile server could
    otherwise have a walk run for hours and fill memory.
    """

    max_entries: int = 1_000_000
    """Entries (files and folders) one walk may collect."""
    max_requests: int = 50_000
    """Folders one walk may list."""
    max_queued: int = 20_000
    """Folders waiting to be listed at once."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> ListingLimits:
        """``IMMSYNC_LIST_MAX_ENTRIES``, ``..._MAX_REQUESTS``, ``..._MAX_QUEUED`` override."""
        default = cls()
        return cls(
            **{
                name: positive_setting(environ, variable, getattr(default, name))
                for name, variable in _LIMIT_VARIABLES.items()
            }
        )


def positive_setting(environ: Mapping[str, str], variable: str, default: int) -> int:
    """A positive whole number from the environment, or *default* when unset.

    Raises:
        UsageError: the variable is set to anything else.
    """
    text = (environ.get(variable) or "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"{variable} must be a positive whole number, not {text!r}")
    return int(text)


_LIMIT_VARIABLES = {
    "max_entries": "IMMSYNC_LIST_MAX_ENTRIES",
    "max_requests": "IMMSYNC_LIST_MAX_REQUESTS",
    "max_queued": "IMMSYNC_LIST_MAX_QUEUED",
}


@dataclass(frozen=True, slots=True)
class ListingEntry:
    """One node of a ``/data/list`` reply, as ImmPort wrote it."""

    path: str
    """ImmPort path, normally with a leading slash (``/SDY1/StudyFiles``)."""
    type: str
    """``"file"`` or ``"directory"`` (other values are passed through)."""
    size: int
    """Bytes; for a directory item the recursive total, for the listed folder 0."""
    mtime: str
    """ISO-8601 UTC as given, e.g. ``2017-06-15T13:06:07Z``; empty if absent."""


@dataclass(frozen=True, slots=True)
class Listing:
    """A one-level listing: the node asked about and what is directly inside it."""

    self_entry: ListingEntry
    items: tuple[ListingEntry, ...]


class LegacyListing:
    """Lists ImmPort folders through ``POST {data_url}/list``."""

    def __init__(self, api: Api, data_url: str, limits: ListingLimits | None = None) -> None:
        self._api = api
        self.data_url = data_url
        self.limits = limits or ListingLimits()
        self._kept: dict[str, Listing] = {}
        self._kept_lock = threading.Lock()

    def list_path(self, path: str, *, keep: bool = False) -> Listing:
        """List one level of an ImmPort folder, or describe one file.

        With *keep*, the next ``walk`` from *path* starts from this listing instead of
        asking again: a probe of a study's folder is then the first level of its walk.

        Raises:
            RemoteNotFound: ImmPort has no such path (or no listing endpoint).
            AuthError, ApiError: as for every call.
        """
        path = remote_form(path)
        listing = self._list(path)
        if keep:
            with self._kept_lock:
                self._kept[path] = listing
        return listing

    def _list(self, path: str) -> Listing:
        endpoint = f"POST {self.data_url}/list"
        try:
            doc = self._api.call(
                "list", "POST", f"{self.data_url}/list", endpoint, json_body={"path": path}
            )
        except RemoteNotFound as exc:
            raise RemoteNotFound(
                f"ImmPort path {path} does not exist ({exc.message})",
                status=exc.status,
                hint="check the study accession and the paths in the manifest",
            ) from None
        return _parse_listing(doc, endpoint, path)

    def walk(
        self,
        root: str,
        *,
        workers: int = 8,
        on_unsafe: Callable[[str, str], None] | None = None,
    ) -> list[RemoteFile]:
        """Every file at or below *root*, listing folders concurrently.

        Each entry must sit directly inside the folder it was listed in (a non-empty
        name without ``/``, ``\\``, NUL, CR or LF that is not ``.`` or ``..``).

        Args:
            root: an ImmPort folder or file, with or without the leading slash.
            workers: folders listed at once (at least 1).
            on_unsafe: called as ``on_unsafe(path, reason)`` for a refused entry,
                which is then skipped; when None, a refused entry raises.

        Returns:
            The files, sorted by path; ``RemoteFile.path`` has no leading slash.

        Raises:
            UnsafePath: *root* or an entry is unsafe and *on_unsafe* is None.
            RemoteNotFound: *root* does not exist.
            ApiError: a bound of ``limits`` was reached (not transient), or a call failed.
            AuthError: as for every call.
        """
        start = remote_form(root)
        reason = _root_problem(start)
        if reason is not None:
            raise UnsafePath(f"refusing to list ImmPort path {root!r}: {reason}")

        def refuse(path: str, why: str, parent: str) -> None:
            if on_unsafe is not None:
                log.warning("skipping ImmPort entry %r listed in %s: %s", path, parent, why)
                on_unsafe(path, why)
                return
            raise UnsafePath(
                f"ImmPort listing of {parent} has an unsafe entry {path!r}: {why}",
                hint="immsync refuses remote paths that could land outside the destination; "
                "exclude this folder in the manifest or report it to ImmPort",
            )

        with self._kept_lock:
            kept = self._kept.pop(start, None)
        top = kept if kept is not None else self.list_path(start)
        if top.self_entry.type == "file":
            if remote_form(top.self_entry.path) != start:
                refuse(top.self_entry.path, f"a listing of {start} describes another path", start)
                return []
            return [RemoteFile(start[1:], top.self_entry.size, top.self_entry.mtime)]

        files: dict[str, RemoteFile] = {}
        seen: set[str] = set()
        limits = self.limits

        def accept(listing: Listing, parent: str) -> list[str]:
            depth = parent.count("/")
            folders = []
            for item in listing.items:
                path, why = _child_path(item, parent)
                if why is None and path in seen:
                    why = "it is listed more than once"
                if why is None and item.type == "directory" and depth >= MAX_DEPTH:
                    why = f"it is nested more than {MAX_DEPTH} folders deep"
                if why is not None:
                    refuse(item.path, why, parent)
                    continue
                seen.add(path)
                if len(seen) > limits.max_entries:
                    _over_limit(start, f"more than {limits.max_entries} entries", "ENTRIES")
                if item.type == "directory":
                    folders.append(path)
                elif item.type == "file":
                    files[path] = RemoteFile(path[1:], item.size, item.mtime)
                else:
                    log.warning("skipping ImmPort entry %s of unknown type %r", path, item.type)
            return folders

        pending_roots = accept(top, start)
        if pending_roots:
            self._walk_folders(start, pending_roots, accept, workers)
        return sorted(files.values(), key=lambda f: f.path)

    def _walk_folders(
        self,
        start: str,
        roots: list[str],
        accept: Callable[[Listing, str], list[str]],
        workers: int,
    ) -> None:
        limits = self.limits
        listed = 1  # the root itself
        queue = list(roots)
        # Replies are checked in this thread only, so on_unsafe never runs concurrently.
        with ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="immsync-list"
        ) as pool:
            running: dict[Future[Listing], str] = {}
            try:
                while queue or running:
                    while queue and len(running) < max(1, workers):
                        if listed >= limits.max_requests:
                            _over_limit(
                                start, f"more than {limits.max_requests} folders", "REQUESTS"
                            )
                        folder = queue.pop()
                        listed += 1
                        running[pool.submit(self.list_path, folder)] = folder
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        parent = running.pop(future)
                        queue.extend(accept(future.result(), parent))
                        if len(queue) > limits.max_queued:
                            _over_limit(
                                start,
                                f"more than {limits.max_queued} folders waiting to be listed",
                                "QUEUED",
                            )
            finally:
                for future in running:
                    future.cancel()


def _over_limit(start: str, what: str, variable: str) -> NoReturn:
    # The bound's name goes in the message itself: it is shown as a per-root problem.
    raise ApiError(
        f"the listing of {start} stopped: it reached {what} (the bound "
        f"IMMSYNC_LIST_MAX_{variable}; raise it if the study is really that large)"
    )


def _parse_listing(doc: Any, endpoint: str, path: str) -> Listing:
    def bad(what: str) -> NoReturn:
        raise ApiError(
            f"unexpected reply from {endpoint} for {path}: {what}",
            hint="the ImmPort API may have changed or be misbehaving",
        )

    if not isinstance(doc, dict):
        bad(f"expected a JSON object, got {json_type(doc)}")
    if "self" not in doc and ("error" in doc or "message" in doc):
        message = doc.get("message") or doc.get("error")
        text = " ".join(str(message).split())[:300]
        if "not found" in text.lower():
            raise RemoteNotFound(
                f"ImmPort path {path} does not exist: {text!r}",
                hint="check the study accession and the paths in the manifest",
            )
        raise ApiError(f"{endpoint} failed for {path}: {text!r}")
    if "self" not in doc:
        bad("the 'self' entry is missing")
    own = _parse_entry(doc["self"], "self", bad)
    raw_items = doc.get("items")
    if raw_items is None and own.type == "file":
        raw_items = []
    if not isinstance(raw_items, list):
        bad(
            "'items' is missing"
            if raw_items is None
            else f"'items' is a JSON {json_type(raw_items)}, not a list"
        )
    items = tuple(_parse_entry(raw, f"items[{i}]", bad) for i, raw in enumerate(raw_items))
    return Listing(own, items)


def _parse_entry(raw: Any, where: str, bad: Callable[[str], NoReturn]) -> ListingEntry:
    if not isinstance(raw, dict):
        bad(f"{where} is a JSON {json_type(raw)}, not an object")
    path = raw.get("path")
    kind = raw.get("type")
    if not isinstance(path, str) or not path:
        bad(f"{where}.path is missing or not a string")
    if not isinstance(kind, str) or not kind:
        bad(f"{where}.type is missing or not a string")
    size = raw.get("size")
    mtime = raw.get("mtime")
    is_file = kind == "file"
    if size is None and not is_file:
        size = 0
    if isinstance(size, float) and size.is_integer():
        size = int(size)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        bad(f"{where}.size is missing or not a non-negative integer")
    if mtime is None and not is_file:
        mtime = ""
    if not isinstance(mtime, str):
        bad(f"{where}.mtime is missing or not a string")
    return ListingEntry(path, kind, size, mtime)




def _child_path(item: ListingEntry, parent: str) -> tuple[str, str | None]:
    """The item's normalised path, and why it is refused (None when it is fine)."""
    raw = item.path
    for char, name in (
        ("\x00", "a NUL byte"),
        ("\n", "a line break"),
        ("\r", "a carriage return"),
        ("\\", "a backslash"),
    ):
        if char in raw:
            return raw, f"it contains {name}"
    path = raw if raw.startswith("/") else "/" + raw
    if item.type == "directory" and len(path) > 1:
        path = path.rstrip("/") or "/"
    prefix = parent.rstrip("/") + "/"
    if not path.startswith(prefix):
        return path, f"it is not inside {parent}"
    name = path[len(prefix) :]
    if not name:
        return path, "its name is empty"
    if "/" in name:
        return path, f"it is not directly inside {parent}"
    if name in (".", ".."):
        return path, f"its name is {name!r}"
    return path, None


def _root_problem(root: str) -> str | None:
    for char in ("\x00", "\n", "\r", "\\"):
        if char in root:
            return "it contains a control character or backslash"
    if any(part in (".", "..") for part in root.split("/")):
        return "it contains a '.' or '..' segment"
    return None


def remote_form(path: str) -> str:
    """``SDY1/x/`` -> ``/SDY1/x`` (``/`` stays ``/``)."""
    return "/" + path.strip().strip("/")

