"""Records and seams shared by every stage of a sync.

Standard library only, and nothing from immsync: this is a leaf module. Records are
frozen so that a plan, once made, is plain data that nothing can change under us.

Paths inside these records are always *destination-relative POSIX paths* such as
``SDY1/ResultFiles/Flow_cytometry_result/02054141.001.52628.fcs``: the ImmPort path
without its leading slash, and the place below the destination where the file lands.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import NamedTuple

FILE_TYPES = ("study_file", "protocol_file", "result_file", "release_file", "archive_file")
"""ImmPort's kinds of study files, as its study file manifest names them."""

DEFAULT_FILE_TYPES = ("study_file", "protocol_file", "result_file", "release_file")
"""What a study entry selects unless it says otherwise: superseded releases
(``archive_file``) are large and rarely wanted."""


@dataclass(frozen=True, slots=True)
class StudySelection:
    """What the manifest wants from one study."""

    accession: str
    paths: tuple[str, ...] = ()
    """Paths below the study root; empty means the whole study."""
    include: tuple[str, ...] = ()
    """Glob patterns; when given, a file must match one of them."""
    exclude: tuple[str, ...] = ()
    """Glob patterns; a file matching any of them is left out."""
    file_types: tuple[str, ...] = DEFAULT_FILE_TYPES
    """ImmPort's types (``FILE_TYPES``) to take, in ``FILE_TYPES`` order."""

    def takes_type(self, file_type: str | None) -> bool:
        """Whether the type filter keeps a file of *file_type*.

        A file of unknown type (None) is kept: its place alone decides.
        """
        return file_type is None or file_type in self.file_types


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated manifest."""

    source: Path
    """The manifest file itself."""
    destination: Path
    """Absolute destination folder."""
    studies: tuple[StudySelection, ...]
    transport: str | None = None
    """``"ascp"``, ``"https"`` or ``"auto"`` when the manifest names one; None: the default."""
    lines: Mapping[tuple[str, str, str], int] = field(default_factory=dict, compare=False)
    """The line each entry is written on, for messages: ``(accession, key, value)``, where
    key is ``accession`` (value ``""``), ``paths`` (value as in ``StudySelection.paths``),
    ``include`` or ``exclude``."""

    def where(self, accession: str, key: str = "accession", value: str = "") -> str:
        """``manifest.yaml:7: ``: where an entry is written, to start a message with.

        An entry not in ``lines`` (``paths`` of ``""``: the whole study) gives the line
        of its study's accession.
        """
        line = self.lines.get((accession, key, value)) or self.lines.get(
            (accession, "accession", "")
        )
        return f"{self.source}:{line}: " if line is not None else f"{self.source}: "


_TYPE_BY_FOLDER = {
    "StudyFiles": "study_file",
    "Protocols": "protocol_file",
    "ResultFiles": "result_file",
    "archive": "archive_file",
}


def file_type_of(path: str) -> str | None:
    """ImmPort's type for a destination-relative path, from where it lies in its study.

    For listings that carry no type (the legacy API); None for an unknown place.
    """
    parts = path.split("/")
    if len(parts) == 2:
        return "release_file"
    if len(parts) > 2:
        return _TYPE_BY_FOLDER.get(parts[1])
    return None


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One file as ImmPort describes it."""

    path: str
    """Destination-relative POSIX path, e.g. ``SDY1/StudyFiles/x.txt``."""
    size: int
    mtime: str
    """Modification time exactly as the listing gives it (ISO-8601 UTC)."""
    md5: str | None = None
    """Lowercase hex MD5 from ImmPort's study manifest, when it gives one."""
    file_type: str | None = None
    """ImmPort's type for it (``FILE_TYPES``), from the manifest or else its place."""

    @property
    def remote_path(self) -> str:
        """The path as ImmPort and Aspera name it, with a leading slash."""
        return "/" + self.path


@dataclass(frozen=True, slots=True)
class StudyFile:
    """One row of ImmPort's study file manifest: what a DRS download needs."""

    path: str
    """Destination-relative POSIX path, e.g. ``SDY1/StudyFiles/x.txt``."""
    uuid: str
    """The file's DRS id (``fileUUID``)."""
    md5: str | None = None
    size: int | None = None


@dataclass(frozen=True, slots=True)
class LocalFile:
    """What ``stat`` says of a file on disk: the cheap fingerprint."""

    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Observed:
    """A local file as observed before planning.

    ``checksum`` is filled in only when the fingerprint differs from the recorded one,
    so that an unchanged tree is never re-read.
    """

    size: int
    mtime_ns: int
    checksum: str | None = None


class StateEntry(NamedTuple):
    """What immsync recorded about a file it fetched and verified.

    A named tuple rather than a frozen dataclass, though just as immutable: a
    100,000-file state is loaded on every run, and a tuple is built from a database
    row at a third of the cost.
    """

    path: str
    size: int
    mtime_ns: int
    checksum: str
    """``xxh3_128:<32 lowercase hex>`` of the local file."""
    remote_size: int
    remote_mtime: str
    remote_md5: str | None = None

    @property
    def fingerprint(self) -> LocalFile:
        return LocalFile(self.size, self.mtime_ns)

    def matches_remote(self, remote: RemoteFile) -> bool:
        """True when *remote* describes the same upstream version we fetched.

        Where both sides have an MD5 the content decides: ImmPort's dates are
        day-granular, can lag a change, and are written differently by the legacy
        listing and the study manifest, so a date alone must not cost a download.
        """
        if remote.size != self.remote_size:
            return False
        if remote.md5 and self.remote_md5:
            return remote.md5 == self.remote_md5
        return remote.mtime == self.remote_mtime


class Action(Enum):
    """What the plan does with one path."""

    DOWNLOAD = "download"
    """Selected, never fetched."""
    UPDATE = "update"
    """Changed upstream since it was fetched."""
    REPAIR = "repair"
    """Recorded, but the local copy is missing or no longer matches."""
    DELETE = "delete"
    """Recorded, but no longer selected (or gone upstream); done only with prune."""
    UNCHANGED = "unchanged"


FETCH_ACTIONS = frozenset({Action.DOWNLOAD, Action.UPDATE, Action.REPAIR})


@dataclass(frozen=True, slots=True)
class ManifestSelection:
    """The files one manifest selects on a destination, as its last apply recorded them."""

    label: str
    """How the manifest is known on the destination (``state.manifest_label``), or
    where shown to users, its file's absolute path (``state.shown_label``)."""
    paths: frozenset[str]
    """Destination-relative paths it selected, recorded or not yet fetched."""
    last_applied: str | None = None
    """When an apply of it last recorded this selection (``2026-05-01T10:00:00Z``)."""


@dataclass(frozen=True, slots=True)
class SharedWith:
    """Another manifest applied to the same destination, as one plan sees it."""

    label: str
    last_applied: str | None
    left_alone: int
    """Recorded files it selects that this plan's manifest does not: neither deleted nor
    counted, whatever ``--prune`` says."""


@dataclass(frozen=True, slots=True)
class PlanItem:
    action: Action
    path: str
    size: int
    reason: str
    remote: RemoteFile | None = None
    """The upstream file to fetch; None for DELETE."""


@dataclass(frozen=True, slots=True)
class Plan:
    """The pure result of comparing what is wanted, what is upstream and what is here."""

    items: tuple[PlanItem, ...]
    notes: tuple[str, ...] = ()
    """Facts the user should know about how the plan was made."""
    prune: bool = False
    """Whether DELETE items are carried out (``--prune``) or only kept and reported."""
    shared: tuple[SharedWith, ...] = ()
    """The other manifests applied to this destination, if any."""
    left_alone: frozenset[str] = frozenset()
    """Recorded files this manifest does not select that another one still does: not
    items of this plan at all."""

    @property
    def pending(self) -> tuple[PlanItem, ...]:
        """What ``apply`` with the same flags would do: fetches, and deletions if pruning."""
        return tuple(
            i
            for i in self.items
            if i.action in FETCH_ACTIONS or (self.prune and i.action is Action.DELETE)
        )

    @property
    def to_fetch(self) -> tuple[PlanItem, ...]:
        return tuple(i for i in self.items if i.action in FETCH_ACTIONS)

    @property
    def to_delete(self) -> tuple[PlanItem, ...]:
        """The deletions ``apply`` carries out: none without ``prune``."""
        return self._deletions() if self.prune else ()

    @property
    def kept(self) -> tuple[PlanItem, ...]:
        """Recorded files no longer selected that stay, since ``prune`` is off."""
        return () if self.prune else self._deletions()

    def _deletions(self) -> tuple[PlanItem, ...]:
        return tuple(i for i in self.items if i.action is Action.DELETE)

    def stats(self) -> dict[str, int]:
        """Counts per action (``delete``: carried out; ``kept``: left without --prune)."""
        counts = Counter(i.action for i in self.items)
        stats = {a.value: counts.get(a, 0) for a in Action}
        stats["kept"] = 0 if self.prune else stats["delete"]
        stats["delete"] = stats["delete"] if self.prune else 0
        return stats

    def __bool__(self) -> bool:
        return bool(self.pending)


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """A transport's report on one file in flight."""

    session: str
    """Identifies the transfer session (one ``ascp`` process) it came from."""
    name: str
    """The file name the transport printed (``ascp`` prints the base name)."""
    percent: int | None = None
    bytes_done: int | None = None
    rate: str | None = None
    path: str | None = None
    """The file's ImmPort path, when the transport can tell it apart from its base name."""
    resumed_from: int | None = None
    """Set when the file's bytes begin to flow: the offset they start at, reusing what
    staging already held (0: from the start). A later event may start lower, when the
    transport had to discard the partial file and start over."""


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True, slots=True)
class ListingStatus:
    """How far a listing has come."""

    study: str
    """The study being listed, or last listed."""
    studies_started: int
    """Studies whose listing began, this one included."""
    studies_total: int
    files_seen: int
    """Files listed so far, in every study (before the manifest's selection)."""
    listed: bool
    """Whether *study*'s path just listed (False: it is starting)."""


MAX_NAME_BYTES = 255
"""The longest file or folder name most file systems take (NAME_MAX), in UTF-8 bytes."""
MAX_PATH_BYTES = 4096
"""The longest path the kernel takes (PATH_MAX), in UTF-8 bytes."""


@dataclass(frozen=True, slots=True)
class TransferBatch:
    """Files to move in one transfer session, each into ``staging/<staged_name(path)>``."""

    files: tuple[RemoteFile, ...]
    staging: Path
    label: str = ""
    """Short name for logs and progress (e.g. ``batch 3/12``)."""

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class Caveats(NamedTuple):
    """What a catalog knows about a study's files beyond their paths and sizes."""

    unavailable: Mapping[str, str]
    """Listed files that cannot be downloaded, with why (e.g. no DRS object yet)."""
    without_md5: frozenset[str]
    """Listed files for which upstream publishes no MD5: checked by size only."""


NO_CAVEATS = Caveats({}, frozenset())


@dataclass(frozen=True, slots=True)
class FileOutcome:
    """What happened to one planned item during apply."""

    path: str
    action: Action
    ok: bool
    size: int = 0
    error: str | None = None


@dataclass(slots=True)
class Report:
    """The result of ``apply``: built up as the run goes, then rendered."""

    plan: Plan
    outcomes: list[FileOutcome] = field(default_factory=list)
    sessions: int = 0
    token_requests: int = 0
    elapsed: float = 0.0
    dry_run: bool = False

    @property
    def failures(self) -> list[FileOutcome]:
        return [o for o in self.outcomes if not o.ok]

    def counts(self) -> dict[str, int]:
        done = Counter(o.action.value for o in self.outcomes if o.ok)
        result = {a.value: done.get(a.value, 0) for a in Action if a is not Action.UNCHANGED}
        result["unchanged"] = self.plan.stats()["unchanged"]
        result["failed"] = len(self.failures)
        return result

    @property
    def bytes_transferred(self) -> int:
        return sum(o.size for o in self.outcomes if o.ok and o.action is not Action.DELETE)


def batch_paths(files: Sequence[RemoteFile]) -> list[str]:
    """The ImmPort paths of *files*, in order (what a token request names)."""
    return [f.remote_path for f in files]
