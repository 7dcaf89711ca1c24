"""The local record of what immsync fetched and verified, kept in SQLite.

Why SQLite (from the standard library) rather than a JSON file: recording one finished
file is one small transaction, so a 100,000-file mirror costs no more per file than a
10-file one, and a crash at any instant leaves either the old or the new record, never
half of one. A JSON file would have to be rewritten whole for every file.

The database lives at ``<destination>/.immsync/state.sqlite``. It is versioned with
``PRAGMA user_version`` and marked with ``PRAGMA application_id`` so that a foreign or
future file is refused instead of silently replaced: an empty state would mean
re-downloading everything.

Version 2 adds which manifest selects which file, so that several manifests can share
one destination without pruning each other's files: ``manifests`` (one row per
manifest applied here, known by ``manifest_label``) and ``selections`` (manifest,
path). A version-1 state is upgraded in place, in one transaction, the first time it
is opened for writing; opened only to read, it is read as it is (it selects nothing).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from .errors import StateError
from .model import ManifestSelection, StateEntry
from .paths import unsafe_reason
from .statedir import STATE_DIRNAME as STATE_DIRNAME
from .statedir import check_file_or_absent, private_folder

SCHEMA_VERSION = 2
# "IMSY" as a big-endian int: lets us tell our database from any other SQLite file.
APPLICATION_ID = 0x494D5359
_SQLITE_SIDECARS = ("-journal", "-wal", "-shm")
STATE_FILENAME = "state.sqlite"

_REBUILD_HINT = (
    "run `immsync apply --rebuild-state MANIFEST`: it sets {path} aside and records "
    "the files on disk again (re-hashed against upstream, not re-downloaded)"
)

# SQLite error names that mean trouble with the disk or permissions, not a bad file.
_LOCAL_TROUBLE = (
    "SQLITE_CANTOPEN",
    "SQLITE_READONLY",
    "SQLITE_PERM",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
)

_COLUMNS = "path, size, mtime_ns, checksum, remote_size, remote_mtime, remote_md5"

# Which upstream version each file in staging belongs to. A partial download is resumed
# only for the same version; a leftover of another version is discarded first.
_STAGING_TABLE = """CREATE TABLE staging (
    path TEXT PRIMARY KEY,
    remote_size INTEGER NOT NULL,
    remote_mtime TEXT NOT NULL,
    remote_md5 TEXT
) WITHOUT ROWID"""


# Which manifests were applied to the destination, and what each selected (version 2).
_MANIFESTS_TABLE = """CREATE TABLE manifests (
    id INTEGER PRIMARY KEY,
    label TEXT NOT NULL UNIQUE,
    applied_at TEXT
)"""
_SELECTIONS_TABLE = """CREATE TABLE selections (
    manifest INTEGER NOT NULL REFERENCES manifests(id),
    path TEXT NOT NULL,
    PRIMARY KEY (manifest, path)
) WITHOUT ROWID"""


def manifest_label(manifest_file: Path, destination: Path) -> str:
    """How a manifest is known on *destination*, as the state records it.

    Its path relative to the destination's parent folder when it lies below that
    folder (``manifest.yaml`` beside ``data/``): a project folder moved, copied or
    checked out elsewhere with its destination (a CI cache) keeps its manifests'
    identities. Any other manifest is known by its absolute path. Folders are
    resolved (symbolic links, ``..``), so the same file run from any working
    directory gets the same label; the file's own name is kept as given, so a
    manifest that is a link keeps its identity when the link is pointed elsewhere.
    A manifest moved or renamed otherwise is another manifest (``immsync forget``
    retires the old name). ``shown_label`` is the label as users see it.
    """
    absolute = manifest_file.absolute()
    path = absolute.parent.resolve() / absolute.name
    try:
        return path.relative_to(_home(destination)).as_posix()
    except ValueError:
        return str(path)


def shown_label(label: str, destination: Path) -> str:
    """The manifest file a recorded *label* names: an absolute path."""
    return label if Path(label).is_absolute() else str(_home(destination) / label)


def _home(destination: Path) -> Path:
    """The destination's parent folder, resolved (the destination itself need not exist,
    and may be a link: it is named as the manifest names it)."""
    return destination.absolute().parent.resolve()


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def state_path(destination: Path) -> Path:
    return destination / STATE_DIRNAME / STATE_FILENAME


def lock_path(destination: Path) -> Path:
    """The destination's lock file (see ``immsync.lock``)."""
    return destination / STATE_DIRNAME / "lock"


class StateStore:
    """Open with ``StateStore.open(path)``; use as a context manager to close it."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._write_lock = threading.Lock()
        # False for a version-1 state opened only to read: it selects nothing.
        self._has_selections = True

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> StateStore:
        """Open (and if *create*, create) the state at *path*.

        Raises:
            StateError: the file is not an immsync state, is corrupt, or is newer.
        """
        # SQLite opens its files by name and follows links: check them first, so that a
        # link planted in the state folder cannot have it write somewhere else.
        if not private_folder(path.parent, create=create):
            return cls._empty(path)
        for name in (path, *(path.with_name(path.name + s) for s in _SQLITE_SIDECARS)):
            check_file_or_absent(name)
        if not path.exists() and not create:
            return cls._empty(path)
        try:
            # check_same_thread=False: transfer threads record through the store, which
            # serialises them with its own lock.
            db = sqlite3.connect(
                path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            store = cls(db, path)
            if not store._prepare(create=create):
                # Created a moment ago by a run that has not written its tables yet:
                # nothing is recorded, and a reader must not write them itself.
                db.close()
                return cls._empty(path)
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", "").startswith(_LOCAL_TROUBLE):
                # Not corruption: never advise setting a healthy state aside.
                if not create:
                    return cls._open_unwritable(path, exc)
                raise StateError(
                    f"cannot open the state file {path}: {exc}",
                    hint=f"check free space and that you may write in {path.parent} "
                    "(SQLite creates files beside the state, even to read it)",
                ) from exc
            raise StateError(
                f"the state file {path} is unreadable or corrupt: {exc}",
                hint=_REBUILD_HINT.format(path=path),
            ) from exc
        return store

    @classmethod
    def _empty(cls, path: Path) -> StateStore:
        """Nothing recorded yet: an empty in-memory state, and no file created."""
        memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        empty = cls(memory, path)
        empty._initialise()
        return empty

    @classmethod
    def _open_unwritable(cls, path: Path, first: sqlite3.DatabaseError) -> StateStore:
        """Read a state where nothing can be written: a read-only mount, a full disk.

        SQLite cannot open a WAL database without creating its ``-shm`` file, unless
        told the file is immutable; that nothing can be written here is what makes
        this true enough to read it for ``status``, ``verify`` and ``plan``.
        """
        uri = path.absolute().as_uri() + "?mode=ro&immutable=1"
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            store = cls(db, path)
            if not store._prepare(create=False):
                db.close()
                return cls._empty(path)
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"cannot open the state file {path}: {first}",
                hint=f"check that you may read {path} and write in {path.parent}",
            ) from exc
        return store

    def _prepare(self, *, create: bool) -> bool:
        """Check (and with *create*, initialise) the state; False if it is blank."""
        (app_id,) = self._db.execute("PRAGMA application_id").fetchone()
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id == 0 and version == 0 and tables == 0:
            if not create:
                return False
            self._initialise()
            return True
        if app_id != APPLICATION_ID:
            raise StateError(
                f"{self.path} is not an immsync state file",
                hint=_REBUILD_HINT.format(path=self.path),
            )
        if version > SCHEMA_VERSION:
            raise StateError(
                f"the state file {self.path} was written by a newer immsync "
                f"(state version {version}; this immsync reads version {SCHEMA_VERSION})",
                hint="upgrade immsync, or " + _REBUILD_HINT.format(path=self.path),
            )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        if version < 2:
            if create:
                self._upgrade_to_2()
            else:
                self._has_selections = False
        # Touch the tables so that a damaged page surfaces here, as a StateError.
        self._db.execute("SELECT count(*) FROM files").fetchone()
        if self._has_selections:
            self._db.execute("SELECT count(*) FROM selections").fetchone()
        has_staging = self._db.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='staging'"
        ).fetchone()[0]
        if has_staging:
            self._db.execute("SELECT count(*) FROM staging").fetchone()
        else:
            # Early version-1 states had no staging table; it holds nothing durable,
            # and a read-only open simply goes without it.
            with contextlib.suppress(sqlite3.OperationalError):
                self._db.execute(_STAGING_TABLE)
        return True

    def _upgrade_to_2(self) -> None:
        """Add the manifests and their selections to a version-1 state, in one go.

        One transaction: a crash leaves version 1, whole. The version is read again
        inside it, since another run may have upgraded the file meanwhile.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version < 2:
                self._db.execute(_MANIFESTS_TABLE)
                self._db.execute(_SELECTIONS_TABLE)
                self._db.execute("PRAGMA user_version=2")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _initialise(self) -> None:
        # WAL: readers (status, verify) never block the writer (apply), and a commit
        # survives the process being killed. NORMAL sync is durable against process
        # crashes; a power cut may lose the last records, never corrupt them.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute(
            """CREATE TABLE files (
                path TEXT PRIMARY KEY,
                size INTEGER NOT NULL,
                mtime_ns INTEGER NOT NULL,
                checksum TEXT NOT NULL,
                remote_size INTEGER NOT NULL,
                remote_mtime TEXT NOT NULL,
                remote_md5 TEXT
            ) WITHOUT ROWID"""
        )
        self._db.execute(_STAGING_TABLE)
        self._db.execute(_MANIFESTS_TABLE)
        self._db.execute(_SELECTIONS_TABLE)
        self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db.execute("COMMIT")

    def entries(self) -> dict[str, StateEntry]:
        """Every recorded file, by path.

        Raises:
            StateError: the state is corrupt, or records a path that would lead outside
                the destination (see ``paths.unsafe_reason``).
        """
        try:
            # Straight from the cursor: a fetchall() list of 100,000 row tuples would
            # only add to the peak memory of planning.
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM files")  # noqa: S608 - constant
            entries = {row[0]: StateEntry._make(row) for row in rows}
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"the state file {self.path} is corrupt: {exc}",
                hint=_REBUILD_HINT.format(path=self.path),
            ) from exc
        # The state is a file anyone who can write the destination can edit: a recorded
        # path is trusted no more than one from the server. Every reader (plan, apply,
        # prune, status, verify, shards) gets its records here, so this is the one check.
        for path in entries:
            reason = unsafe_reason(path) if isinstance(path, str) else "it is not text"
            if reason is not None:
                raise StateError(
                    f"the state file {self.path} is corrupt: it records the path {path!r}, "
                    f"which is unsafe: {reason}",
                    hint=_REBUILD_HINT.format(path=self.path),
                )
        return entries

    def record(self, entries: Iterable[StateEntry]) -> None:
        """Record *entries* in one transaction: all of them, or (on a crash) none."""
        rows = [
            (
                e.path,
                e.size,
                e.mtime_ns,
                e.checksum,
                e.remote_size,
                e.remote_mtime,
                e.remote_md5,
            )
            for e in entries
        ]
        if rows:
            self._write(
                f"INSERT OR REPLACE INTO files ({_COLUMNS}) VALUES (?,?,?,?,?,?,?)",  # noqa: S608
                rows,
                ("DELETE FROM staging WHERE path = ?", [(row[0],) for row in rows]),
            )

    def forget(self, paths: Iterable[str]) -> None:
        """Drop the records of *paths* (after their files were deleted)."""
        rows = [(p,) for p in paths]
        if rows:
            self._write("DELETE FROM files WHERE path = ?", rows)

    def selections(
        self, *, paths_of: Callable[[str], bool] | None = None
    ) -> dict[str, ManifestSelection]:
        """What each manifest applied to this destination selects, by label.

        Args:
            paths_of: which labels to read the paths of (default: all); the others
                come with no paths, which saves reading 100,000 rows a manifest
                whose paths the caller does not need.

        Raises:
            StateError: the state is corrupt.
        """
        if not self._has_selections:
            return {}
        found: dict[str, ManifestSelection] = {}
        try:
            manifests = self._db.execute("SELECT id, label, applied_at FROM manifests")
            for manifest_id, label, applied_at in manifests.fetchall():
                paths: frozenset[str] = frozenset()
                if paths_of is None or paths_of(label):
                    rows = self._db.execute(
                        "SELECT path FROM selections WHERE manifest = ?", (manifest_id,)
                    )
                    paths = frozenset(row[0] for row in rows)
                found[label] = ManifestSelection(label, paths, applied_at)
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"the state file {self.path} is corrupt: {exc}",
                hint=_REBUILD_HINT.format(path=self.path),
            ) from exc
        return found

    def replace_selection(self, selection: ManifestSelection) -> None:
        """Make *selection* what its manifest selects here, stamped with its
        ``last_applied`` (now, if None). Rows are changed only where they differ, so a
        no-op run over 100,000 selected files writes almost nothing."""
        applied_at = selection.last_applied or utc_now()
        with self._write_lock, self._transaction():
            self._db.execute(
                "INSERT INTO manifests (label, applied_at) VALUES (?, ?) "
                "ON CONFLICT (label) DO UPDATE SET applied_at = excluded.applied_at",
                (selection.label, applied_at),
            )
            (manifest_id,) = self._db.execute(
                "SELECT id FROM manifests WHERE label = ?", (selection.label,)
            ).fetchone()
            current = {
                row[0]
                for row in self._db.execute(
                    "SELECT path FROM selections WHERE manifest = ?", (manifest_id,)
                )
            }
            self._db.executemany(
                "DELETE FROM selections WHERE manifest = ? AND path = ?",
                [(manifest_id, p) for p in current - selection.paths],
            )
            self._db.executemany(
                "INSERT INTO selections (manifest, path) VALUES (?, ?)",
                [(manifest_id, p) for p in selection.paths - current],
            )

    def forget_manifests(self, labels: Collection[str]) -> None:
        """Drop the manifests named *labels* and everything they selected."""
        if not labels or not self._has_selections:
            return
        with self._write_lock, self._transaction():
            for label in labels:
                row = self._db.execute(
                    "SELECT id FROM manifests WHERE label = ?", (label,)
                ).fetchone()
                if row is not None:
                    self._db.execute("DELETE FROM selections WHERE manifest = ?", row)
                    self._db.execute("DELETE FROM manifests WHERE id = ?", row)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction (the caller holds ``_write_lock``)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise StateError(
                f"cannot write the state file {self.path}: {exc}",
                hint="check free space and permissions on the destination",
            ) from exc

    def claim_staging(self, files: Sequence[tuple[str, int, str, str | None]]) -> list[str]:
        """Note which upstream version of each file is about to be staged.

        Args:
            files: (path, remote size, remote mtime, remote md5) per file.

        Returns:
            The paths whose staged leftovers, if any, belong to another version (or to
            none we know of) and must be discarded before the transfer.
        """
        wanted = {f[0]: f[1:] for f in files}
        known: dict[str, tuple[object, ...]] = {}
        with self._write_lock:
            for chunk in _chunks(list(wanted), 500):
                marks = ",".join("?" * len(chunk))
                query = (
                    "SELECT path, remote_size, remote_mtime, remote_md5 FROM staging "  # noqa: S608
                    f"WHERE path IN ({marks})"
                )
                for path, *identity in self._db.execute(query, chunk):
                    known[path] = tuple(identity)
        stale = [p for p, identity in wanted.items() if known.get(p) != identity]
        if stale:
            self._write(
                "INSERT OR REPLACE INTO staging VALUES (?,?,?,?)",
                [(p, *wanted[p]) for p in stale],
            )
        return stale

    def release_staging(self, keep: Iterable[str] = ()) -> None:
        """Forget staged versions, except those of *keep* (partials kept for resume)."""
        kept = set(keep)
        with self._write_lock:
            paths = [row[0] for row in self._db.execute("SELECT path FROM staging")]
        self._write("DELETE FROM staging WHERE path = ?", [(p,) for p in paths if p not in kept])

    def _write(
        self,
        sql: str,
        rows: Sequence[tuple[object, ...]],
        *also: tuple[str, Sequence[tuple[object, ...]]],
    ) -> None:
        with self._write_lock, self._transaction():
            self._db.executemany(sql, rows)
            for extra_sql, extra_rows in also:
                self._db.executemany(extra_sql, extra_rows)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
