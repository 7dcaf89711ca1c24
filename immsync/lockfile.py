"""Pinned data: the lock file that records exactly which upstream files a manifest meant.

``immsync lock manifest.yaml`` writes ``manifest.lock.json`` beside the manifest: for
every selected file its upstream size, modification time, MD5 (when ImmPort publishes
one) and the study's data release (when the API says), sorted, with stable formatting
and no time stamp, so that locking an unchanged upstream rewrites the same bytes and
the file diffs well under version control. It is meant to be committed.

``compare`` finds *drift* in each direction: a pinned file changed or gone upstream, a
selected file the lock lacks, a pinned file the manifest no longer selects.
``apply --frozen`` refuses to run on any of them; ``plan`` reports them.

Not to be confused with ``lock.py``, the advisory lock that keeps two runs apart.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from . import manifest as manifest_mod
from .errors import LocalIOError, UsageError
from .model import Caveats, Manifest, RemoteFile
from .ports import RemoteCatalog

log = logging.getLogger(__name__)

LOCK_SCHEMA = "immsync.lock/1"
LOCK_SUFFIX = ".lock.json"


@dataclass(frozen=True, slots=True)
class PinnedFile:
    """One file as the lock pins it."""

    path: str
    """Destination-relative POSIX path, e.g. ``SDY1/StudyFiles/a.txt``."""
    size: int
    mtime: str
    """Upstream modification time exactly as the listing gave it."""
    md5: str | None = None
    data_release: str | None = None
    """The study's latest data release when locked (e.g. ``DR47``), if ImmPort said."""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"path": self.path, "size": self.size, "mtime": self.mtime}
        if self.md5 is not None:
            doc["md5"] = self.md5
        if self.data_release is not None:
            doc["data_release"] = self.data_release
        return doc


@dataclass(frozen=True, slots=True)
class LockFile:
    """The pinned files of one manifest, by path."""

    files: Mapping[str, PinnedFile]
    manifest: str = ""
    """The manifest's file name, for people reading the lock."""

    def releases(self) -> dict[str, str]:
        """The data release pinned for each study that has one."""
        found: dict[str, str] = {}
        for pin in self.files.values():
            if pin.data_release is not None:
                found.setdefault(pin.path.split("/", 1)[0], pin.data_release)
        return found


class DriftKind(Enum):
    CHANGED = "changed"
    """Pinned and still selected, but upstream's size, time or MD5 differ."""
    GONE = "gone_upstream"
    """Pinned, the manifest still selects it, but ImmPort no longer lists it."""
    NOT_IN_LOCK = "not_in_lock"
    """Selected by the manifest, not pinned."""
    NOT_SELECTED = "not_selected"
    """Pinned, but the manifest no longer selects it."""
    RELEASE = "release_changed"
    """A study's data release moved on since the lock (information: files may not differ)."""


@dataclass(frozen=True, slots=True)
class Drift:
    """One difference between the lock and what the manifest now selects upstream."""

    path: str
    """The file, or for RELEASE the study accession."""
    kind: DriftKind
    detail: str

    @property
    def blocks_frozen(self) -> bool:
        """Whether ``apply --frozen`` must refuse to run because of it."""
        return self.kind is not DriftKind.RELEASE

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind.value, "detail": self.detail}

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


def lock_path(manifest_path: Path) -> Path:
    """``<folder>/<manifest stem>.lock.json``: ``data.yaml`` -> ``data.lock.json``."""
    return manifest_path.with_name(manifest_path.stem + LOCK_SUFFIX)


def make_lock(
    selected: Mapping[str, RemoteFile],
    releases: Mapping[str, str | None] | None = None,
    *,
    manifest_name: str = "",
) -> LockFile:
    """Pin every selected file; *releases* maps an accession to its data release."""
    releases = releases or {}
    files = {
        path: PinnedFile(
            path,
            remote.size,
            remote.mtime,
            remote.md5,
            releases.get(path.split("/", 1)[0]),
        )
        for path, remote in sorted(selected.items())
    }
    return LockFile(files=files, manifest=manifest_name)


def render_lock(lock: LockFile) -> str:
    """The lock file's text: sorted keys and files, two-space indent, final newline."""
    doc = {
        "schema": LOCK_SCHEMA,
        "manifest": lock.manifest,
        "files": [lock.files[p].to_json() for p in sorted(lock.files)],
    }
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_lock(path: Path, lock: LockFile) -> None:
    """Write the lock file atomically (a reader sees the old file or the new one)."""
    write_text_atomic(path, render_lock(lock))


def read_lock(path: Path) -> LockFile:
    """Read and check a lock file.

    Raises:
        UsageError: it is missing, unreadable or not an immsync lock file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"there is no lock file {path}",
            hint=f"create it with `immsync lock {path.name.removesuffix(LOCK_SUFFIX)}.yaml` "
            "(beside the manifest) and commit it",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the lock file {path}: {exc}") from None
    return parse_lock(text, source=str(path))


def find_lock(path: Path) -> LockFile | None:
    """The lock file at *path*, or None when there is none."""
    if not path.exists():
        return None
    return read_lock(path)


def parse_lock(text: str, *, source: str = "lock file") -> LockFile:
    """A lock file from its text; UsageError naming *source* if it is not one."""

    def bad(what: str) -> UsageError:
        return UsageError(
            f"{source} is not a valid immsync lock file: {what}",
            hint="re-create it with `immsync lock MANIFEST`",
        )

    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(f"{exc.msg} at line {exc.lineno}") from None
    if not isinstance(doc, dict) or doc.get("schema") != LOCK_SCHEMA:
        raise bad(f"expected an object with \"schema\": \"{LOCK_SCHEMA}\"")
    rows = doc.get("files")
    if not isinstance(rows, list):
        raise bad("'files' is not a list")
    files: dict[str, PinnedFile] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise bad(f"files[{i}] is not an object")
        path, size, mtime = row.get("path"), row.get("size"), row.get("mtime")
        md5, release = row.get("md5"), row.get("data_release")
        if not isinstance(path, str) or not path or path in files:
            raise bad(f"files[{i}].path is missing, not a string, or repeated")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad(f"files[{i}].size is not a non-negative integer")
        if not isinstance(mtime, str):
            raise bad(f"files[{i}].mtime is not a string")
        if md5 is not None and not isinstance(md5, str):
            raise bad(f"files[{i}].md5 is not a string")
        if release is not None and not isinstance(release, str):
            raise bad(f"files[{i}].data_release is not a string")
        files[path] = PinnedFile(path, size, mtime, md5, release)
    manifest = doc.get("manifest")
    return LockFile(files=files, manifest=manifest if isinstance(manifest, str) else "")


def compare(
    lock: LockFile,
    manifest: Manifest,
    selected: Mapping[str, RemoteFile],
    *,
    listed: Collection[str] = (),
    unlisted: Callable[[str], bool] = lambda path: False,
    releases: Mapping[str, str | None] | None = None,
) -> list[Drift]:
    """Every difference between *lock* and what *manifest* selects upstream now.

    Args:
        lock: the pins.
        manifest: the manifest now (to tell a deselected file from one gone upstream).
        selected: the files the manifest selects upstream now, by path.
        listed: every path the listing saw, before include/exclude filters.
        unlisted: true for a path below a folder that could not be listed; such paths
            are skipped (the listing problem is reported on its own).
        releases: each study's data release now, when known; a study whose release
            differs from the pinned one gives a RELEASE drift.

    Returns:
        Drifts sorted by path, file drifts first then release drifts.
    """
    listed_set = frozenset(listed)
    drifts: list[Drift] = []
    for path in sorted(lock.files.keys() | selected.keys()):
        if unlisted(path):
            continue
        pin, now = lock.files.get(path), selected.get(path)
        if pin is not None and now is not None:
            changes = _changes(pin, now)
            if changes:
                drifts.append(
                    Drift(path, DriftKind.CHANGED, "changed upstream since the lock: " + changes)
                )
        elif now is not None:
            drifts.append(
                Drift(path, DriftKind.NOT_IN_LOCK, "selected by the manifest but not in the lock")
            )
        elif pin is not None:
            if path not in listed_set and would_select(manifest, path):
                drifts.append(
                    Drift(path, DriftKind.GONE, "pinned by the lock but no longer on ImmPort")
                )
            else:
                drifts.append(
                    Drift(
                        path,
                        DriftKind.NOT_SELECTED,
                        "pinned by the lock but no longer selected by the manifest",
                    )
                )
    if releases:
        pinned = lock.releases()
        for accession in sorted(pinned):
            current = releases.get(accession)
            if current is not None and current != pinned[accession]:
                drifts.append(
                    Drift(
                        accession,
                        DriftKind.RELEASE,
                        f"data release {pinned[accession]} in the lock, {current} on ImmPort now",
                    )
                )
    return drifts


def would_select(manifest: Manifest, path: str) -> bool:
    """Whether *manifest* selects *path* if ImmPort lists it (roots and filters)."""
    accession, _, below = path.partition("/")
    for study in manifest.studies:
        if study.accession != accession:
            continue
        under_root = not study.paths or any(
            below == p or below.startswith(p + "/") for p in study.paths
        )
        return under_root and manifest_mod.selects(study, below)
    return False


def _changes(pin: PinnedFile, now: RemoteFile) -> str:
    changes = []
    if now.size != pin.size:
        changes.append(f"size {pin.size} -> {now.size}")
    if now.mtime != pin.mtime:
        changes.append(f"modified {pin.mtime} -> {now.mtime}")
    if now.md5 and pin.md5 and now.md5 != pin.md5:
        changes.append(f"md5 {pin.md5} -> {now.md5}")
    return ", ".join(changes)


class PinnedCatalog:
    """A remote catalog that vouches for the lock's MD5s where ImmPort publishes none.

    ``apply --frozen`` plans through it, so each download is verified against the MD5
    the lock pinned even when the study manifest endpoint is down today. Where ImmPort
    does publish an MD5, ImmPort's is used (and a difference shows as drift).
    """

    def __init__(self, catalog: RemoteCatalog, lock: LockFile) -> None:
        self._catalog = catalog
        self._lock = lock

    def walk(
        self,
        root: str,
        *,
        workers: int = 8,
        on_unsafe: Callable[[str, str], None] | None = None,
    ) -> list[RemoteFile]:
        return self._catalog.walk(root, workers=workers, on_unsafe=on_unsafe)

    def caveats(self, accession: str) -> Caveats:
        caveats = self._catalog.caveats(accession)
        pinned = {p for p, pin in self._lock.files.items() if pin.md5 is not None}
        return caveats._replace(without_md5=caveats.without_md5 - pinned)

    def paths_near(self, root: str) -> Sequence[str]:
        return self._catalog.paths_near(root)

    def study_checksums(self, accession: str) -> dict[str, tuple[str, int]] | None:
        upstream = self._catalog.study_checksums(accession)
        prefix = accession + "/"
        pins = {
            path: (pin.md5, pin.size)
            for path, pin in self._lock.files.items()
            if pin.md5 is not None and path.startswith(prefix)
        }
        if upstream is None and not pins:
            return None
        return {**pins, **(upstream or {})}


def write_text_atomic(path: Path, text: str) -> None:
    """Replace *path* with *text*: written beside it, flushed, then renamed over it.

    Raises:
        LocalIOError: the folder is not writable, the disk is full, ...
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise LocalIOError(f"cannot write {path}: {exc.strerror or exc}") from exc
    temporary = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file 0600; a lock or summary is meant to be shared.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException as exc:
        temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise LocalIOError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise


def drift_lines(drifts: Iterable[Drift]) -> tuple[str, ...]:
    return tuple(str(d) for d in drifts)
