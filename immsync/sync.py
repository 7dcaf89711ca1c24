"""The one module that composes the others: survey, observe, plan, transfer, verify, record.

The order of operations is what makes a run safe to interrupt at any instant:

1. a file is transferred into ``<destination>/.immsync/staging/`` (never its final path);
2. its size is checked against the listing and its content hashed (xxh3_128, and MD5
   in the same read when ImmPort published one, which must match);
3. it is flushed to disk and moved to its final path with ``os.replace`` (atomic);
4. only then is it recorded, in one SQLite transaction.

A crash between 3 and 4 leaves a complete, correct but unrecorded file, which the next
run fetches again; nothing is ever recorded that was not verified.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import logging
import os
import random
import re
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import manifest as manifest_mod
from .decide import Step, decide
from .errors import (
    ApiError,
    AuthError,
    ChecksumMismatch,
    Failure,
    ImmsyncError,
    LocalIOError,
    RemoteNotFound,
    StateError,
    TransferError,
    UnsafePath,
    UsageError,
)
from .hashing import Digests, file_digests
from .model import (
    IN_TRANSIT_SUFFIXES,
    STAGING_SUFFIXES,
    Action,
    FileOutcome,
    Manifest,
    Observed,
    Plan,
    PlanItem,
    ProgressEvent,
    RemoteFile,
    Report,
    StateEntry,
    StudySelection,
    TransferBatch,
    file_type_of,
    staged_name,
)
from .paths import resolve_inside, unsafe_reason
from .plan import make_plan, needs_hash
from .ports import RemoteCatalog, Reporter, Transfer
from .retry import RetryPolicy, delays
from .state import STATE_DIRNAME, StateStore
from .statedir import prepare_parents, private_folder, remove_files_below
from .units import format_size, parse_utc

log = logging.getLogger(__name__)

STAGING_DIRNAME = "staging"
_DESTINATION_UNUSABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# What a transport may leave of one file in staging: the file and its suffixed forms.
_STAGED_SUFFIXES = ("", *STAGING_SUFFIXES)


class NullReporter:
    """A ``Reporter`` that shows nothing (``-q`` without ``--json``)."""

    def plan_ready(self, plan: Plan) -> None:
        pass

    def batch_started(self, batch: TransferBatch) -> None:
        pass

    def progress(self, event: ProgressEvent) -> None:
        pass

    def file_done(self, outcome: FileOutcome) -> None:
        pass

    def retrying(self, batch: TransferBatch, error: ImmsyncError, delay: float) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class SyncOptions:
    jobs: int = 2
    """Transfer sessions run at once."""
    prune: bool = False
    dry_run: bool = False
    batch_max_files: int = 500
    batch_max_bytes: int = 20 * 1024**3
    list_workers: int = 8
    max_delete: int | None = None
    """Refuse a prune that would delete more files than this (None: no limit)."""
    max_delete_share: float | None = None
    """Refuse a prune that would delete more than this share of the recorded files."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    session_stagger: float = 1.0
    """Seconds between the starts of two transfer sessions at most: a session starts
    sooner once the one before it has connected (see ``SessionGate``)."""
    split_min_bytes: int = 64 * 1024**2
    """Split work across parallel sessions only in shares of at least this many bytes:
    below it, one more session start costs more than it saves."""


@dataclass(frozen=True, slots=True)
class RemoteView:
    """What the listing found for a manifest."""

    selected: dict[str, RemoteFile]
    listed: frozenset[str]
    """Every remote path seen, before the filters (include, exclude, file_types)."""
    failed_roots: tuple[str, ...]
    """Destination-relative roots that could not be listed: their records are left alone."""
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    covered: tuple[str, ...] = ()
    """Destination-relative roots that were listed: what is not in them is not selected."""

    def is_unlisted(self, path: str) -> bool:
        return any(path == r or path.startswith(r + "/") for r in self.failed_roots)


def survey_remote(
    manifest: Manifest, catalog: RemoteCatalog, *, workers: int = 8, checksums: bool = True
) -> RemoteView:
    """List every root the manifest names and keep the files its filters select.

    A file is kept when its place is (paths, include, exclude) and its type is one of
    the study's ``file_types``; a file of unknown type is kept by its place alone.
    Archived releases that only the type filter left out are counted, per study, in a
    note saying how to take them.

    A root that does not exist or cannot be listed becomes a *problem*, not an
    exception, so that the rest of the manifest still syncs; one that is not found
    names its manifest line and a path differing only in case, when ImmPort has one.
    A study entry, path or include pattern that selects no file is a note naming its
    manifest line. Refused credentials stop everything (raised), since no other root
    could succeed either.

    With *checksums*, each study's upstream MD5s are attached (``with_checksums``);
    without, the view holds what the listing says: sizes and times.
    """
    selected: dict[str, RemoteFile] = {}
    listed: set[str] = set()
    failed: list[str] = []
    problems: list[str] = []
    notes: list[str] = []

    def refuse(path: str, reason: str) -> None:
        problems.append(f"refused remote entry {path!r}: {reason}")

    for study in manifest.studies:
        # The size of each archived release only the type filter left out, by path (two
        # overlapping paths of the manifest may list a file twice).
        archived: dict[str, int] = {}
        # Per root listed, the files below the study it holds; and those selected.
        walked: list[tuple[str, list[str]]] = []
        taken: set[str] = set()
        prefix = study.accession + "/"
        for root in manifest_mod.study_roots(study):
            relative_root = root.strip("/")
            entry = relative_root[len(prefix) :]
            where = manifest.where(study.accession, "paths", entry)
            try:
                files = catalog.walk(root, workers=workers, on_unsafe=refuse)
            except AuthError:
                raise
            except RemoteNotFound:
                failed.append(relative_root)
                hint = _case_hint(entry, [*catalog.paths_near(root), *listed], prefix)
                problems.append(f"{where}{relative_root} not found on ImmPort{hint}")
                continue
            except (ApiError, UnsafePath) as exc:
                failed.append(relative_root)
                problems.append(f"{where}{relative_root} could not be listed: {exc.message}")
                continue
            below: list[str] = []
            walked.append((entry, below))
            for remote in files:
                reason = unsafe_reason(remote.path)
                if reason is None and not remote.path.startswith(prefix):
                    reason = f"it is outside the study {study.accession}"
                if reason is not None:
                    refuse(remote.path, reason)
                    continue
                listed.add(remote.path)
                below.append(remote.path[len(prefix) :])
                if not manifest_mod.selects(study, remote.path[len(prefix) :]):
                    continue
                # The legacy listing names no types: a file's place in the study does.
                kind = remote.file_type or file_type_of(remote.path)
                if study.takes_type(kind):
                    selected[remote.path] = remote
                    taken.add(remote.path[len(prefix) :])
                elif kind == "archive_file":
                    archived[remote.path] = remote.size
        notes.extend(_selecting_nothing(manifest, study, walked, taken))
        if archived:
            total = sum(archived.values())
            notes.append(_archives_left_out(study.accession, len(archived), total))
        caveats = catalog.caveats(study.accession)
        for path, why in sorted(caveats.unavailable.items()):
            if selected.pop(path, None) is not None:
                # Like an unlisted root: its record, if any, is left alone.
                failed.append(path)
                problems.append(f"{path}: {why}")
        unchecked = sum(1 for path in caveats.without_md5 if path in selected)
        if unchecked:
            how_many = "1 file has" if unchecked == 1 else f"{unchecked} files have"
            notes.append(
                f"{study.accession}: {how_many} no MD5 in ImmPort's study manifest; "
                "checked by size only, and recorded with xxh3_128"
            )
    view = RemoteView(
        selected=selected,
        listed=frozenset(listed),
        failed_roots=tuple(failed),
        problems=tuple(problems),
        notes=tuple(notes),
        covered=tuple(
            root.strip("/")
            for study in manifest.studies
            for root in manifest_mod.study_roots(study)
            if root.strip("/") not in failed
        ),
    )
    if checksums:
        view = with_checksums(view, catalog, [s.accession for s in manifest.studies])
    return view


def _case_hint(entry: str, near: Iterable[str], prefix: str) -> str:
    """``; did you mean ResultFiles?`` for a path ImmPort has in another case."""
    depth = entry.count("/") + 1
    for path in near:
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        candidate = "/".join(parts[:depth])
        if len(parts) >= depth and candidate.casefold() == entry.casefold() != candidate:
            return f"; did you mean {candidate}?" if unsafe_reason(path) is None else ""
    return ""


def _selecting_nothing(
    manifest: Manifest,
    study: StudySelection,
    walked: Sequence[tuple[str, Sequence[str]]],
    taken: Collection[str],
) -> list[str]:
    """A note for each listed root of *study*, and each include pattern, that selects no
    file; *walked* holds each root with its files, *taken* the files selected."""
    notes = []
    accession = study.accession
    for entry, files in walked:
        if any(path in taken for path in files):
            continue
        where = manifest.where(accession, "paths", entry)
        what = f"{accession} path {entry!r}" if entry else accession
        notes.append(f"{where}{what} selects nothing: {_left_out(study, files)}")
    listed = [path for _entry, files in walked for path in files]
    for pattern in study.include if listed else ():
        if any(manifest_mod.pattern_matches(pattern, path) for path in taken):
            continue
        matched = [path for path in listed if manifest_mod.pattern_matches(pattern, path)]
        where = manifest.where(accession, "include", pattern)
        note = f"{where}{accession} include pattern {pattern!r} selects nothing"
        if matched:
            by = "file_types" if any(manifest_mod.selects(study, p) for p in matched) else "exclude"
            them = "the file it matches" if len(matched) == 1 else f"the {len(matched)} it matches"
            note += f": {by} leaves out {them}"
        elif (fixed := manifest_mod.case_fixed_pattern(pattern, listed)) is not None:
            note += f" (patterns are case-sensitive; did you mean {fixed!r}?)"
        elif (folder := _folder_named(pattern, listed)) is not None:
            note += f" (it names a folder; did you mean {folder + '/*'!r}?)"
        notes.append(note)
    return notes


def _left_out(study: StudySelection, files: Sequence[str]) -> str:
    if not files:
        return "ImmPort lists no files below it"
    count = len(files)
    its = "its only file" if count == 1 else f"all {count} of its files"
    if any(manifest_mod.selects(study, path) for path in files):
        return f"file_types leaves out {its}"
    filters = [name for name in ("include", "exclude") if getattr(study, name)]
    verb = "leaves" if len(filters) == 1 else "leave"
    return f"{' and '.join(filters)} {verb} out {its}"


def _folder_named(pattern: str, paths: Iterable[str]) -> str | None:
    """The folder a pattern without wildcards names (below the study, as ImmPort spells
    it): the folder at that path, or for a bare name, a folder of that name anywhere."""
    if re.search(r"[*?[]", pattern):
        return None
    wanted = pattern.casefold()
    for path in paths:
        folders = path.split("/")[:-1]
        if "/" in pattern:
            depth = pattern.count("/") + 1
            if "/".join(folders[:depth]).casefold() == wanted and len(folders) >= depth:
                return "/".join(folders[:depth])
            continue
        for depth, name in enumerate(folders, 1):
            if name.casefold() == wanted:
                return "/".join(folders[:depth])
    return None


def _archives_left_out(accession: str, count: int, size: int) -> str:
    releases = "archived data release" if count == 1 else "archived data releases"
    return (
        f"{accession}: {count} {releases} (archive/, {format_size(size)}) left out; "
        "add archive_file to file_types to include them"
    )


def with_checksums(
    view: RemoteView, catalog: RemoteCatalog, accessions: Sequence[str]
) -> RemoteView:
    """*view* with ImmPort's MD5 on the selected files of *accessions*.

    One file-manifest request per study. A study without usable checksums gets a note
    instead: its files are then verified by size and recorded with xxh3_128.
    """
    notes = list(view.notes)
    by_study: dict[str, Mapping[str, tuple[str, int]]] = {}
    for accession in dict.fromkeys(accessions):
        fetched = catalog.study_checksums(accession)
        if fetched:
            by_study[accession] = fetched
        else:
            # An empty manifest (every row unusable) verifies nothing either: say so.
            notes.append(
                f"{accession}: upstream checksums not available; "
                "files are verified by size and recorded with xxh3_128"
            )
    selected = {}
    for path, remote in view.selected.items():
        checksums = by_study.get(path.partition("/")[0])
        selected[path] = _with_checksum(remote, checksums, notes) if checksums else remote
    return replace(view, selected=selected, notes=tuple(notes))


def drop_case_collisions(remote: RemoteView) -> RemoteView:
    """Leave out selected paths that differ only in case, naming them as a problem.

    On a case-insensitive filesystem such files would share one local name and the
    second would silently replace the first; fetching neither is the honest answer.
    """
    by_folded: dict[str, list[str]] = {}
    for path in remote.selected:
        by_folded.setdefault(path.casefold(), []).append(path)
    clashes = [sorted(paths) for paths in by_folded.values() if len(paths) > 1]
    if not clashes:
        return remote
    selected = dict(remote.selected)
    problems = list(remote.problems)
    for paths in clashes:
        for path in paths:
            del selected[path]
        problems.append(
            f"{' and '.join(paths)} differ only in case and the destination's filesystem "
            "is case-insensitive; none of them was fetched"
        )
    return replace(remote, selected=selected, problems=tuple(problems))


def is_case_insensitive(folder: Path) -> bool:
    """Whether *folder* (or its nearest existing ancestor) ignores case in names.

    Decided without writing anything: an existing component with letters is looked
    up again with its case swapped.
    """
    probe = folder.absolute()
    while True:
        if probe.exists() and probe.name.swapcase() != probe.name:
            twin = probe.with_name(probe.name.swapcase())
            try:
                return twin.exists() and os.path.samefile(probe, twin)
            except OSError:
                return False
        if probe.parent == probe:
            return False
        probe = probe.parent


def _with_checksum(
    remote: RemoteFile, checksums: Mapping[str, tuple[str, int]] | None, notes: list[str]
) -> RemoteFile:
    if not checksums or remote.path not in checksums:
        return remote
    md5, size = checksums[remote.path]
    if size != remote.size:
        # The two endpoints disagree: the MD5 may describe another version of the file.
        notes.append(
            f"{remote.path}: the study manifest says {size} bytes but the listing says "
            f"{remote.size}; its MD5 is not used"
        )
        return remote
    return replace(remote, md5=md5)


def observe_local(
    destination: Path, state: Mapping[str, StateEntry], paths: Iterable[str]
) -> dict[str, Observed | None]:
    """Stat each path under *destination*; hash only recorded files whose fingerprint moved."""
    observed: dict[str, Observed | None] = {}
    # Plain strings: a Path per file cost more than the lstat itself at 100,000 files.
    base = os.fspath(destination) + "/"
    for path in paths:
        # A file that cannot be examined (no permission, a path too long for this
        # destination) is treated as missing: its fetch then fails, or replaces it,
        # on its own, and names it; the rest of the plan stands.
        try:
            st = os.lstat(base + path)
        except OSError:
            observed[path] = None
            continue
        if not _is_regular(st.st_mode):
            # A directory or symlink where a file belongs is treated as missing: the
            # fetch replaces it (os.replace swaps a symlink itself, never its target).
            observed[path] = None
            continue
        checksum = None
        if needs_hash(state.get(path), st.st_size, st.st_mtime_ns):
            try:
                checksum = file_digests(destination / path).checksum
            except OSError:
                observed[path] = None
                continue
        observed[path] = Observed(st.st_size, st.st_mtime_ns, checksum)
    return observed


def adopt_local_files(
    destination: Path,
    selected: Mapping[str, RemoteFile],
    state: Mapping[str, StateEntry],
    *,
    trust_timestamps: bool = False,
) -> list[StateEntry]:
    """State entries for unrecorded local files that provably are the upstream file.

    Proof is the upstream MD5, checked over the local content. With
    *trust_timestamps* (``--rebuild-state``), a file with the listing's size and
    modification time is accepted too: that is what ``ascp -p`` leaves, and the
    alternative after a lost state is re-downloading the whole mirror.
    """
    adopted = []
    for path, remote in selected.items():
        if path in state:
            continue
        target = destination / path
        try:
            st = target.lstat()
        except OSError:  # missing, or not ours to examine: fetched as usual
            continue
        if not _is_regular(st.st_mode) or st.st_size != remote.size:
            continue
        if remote.md5 is None and not (
            trust_timestamps and _same_second(st.st_mtime, remote.mtime)
        ):
            continue
        try:
            # Reached through a symlink that leaves the destination: not ours to record.
            resolve_inside(destination, path)
        except UnsafePath:
            continue
        try:
            digests = file_digests(target, md5=remote.md5 is not None)
        except OSError:
            continue
        if remote.md5 is not None and digests.md5 != remote.md5:
            continue
        adopted.append(
            StateEntry(
                path,
                st.st_size,
                st.st_mtime_ns,
                digests.checksum,
                remote.size,
                remote.mtime,
                remote.md5,
            )
        )
    return adopted


def _same_second(local_mtime: float, remote_mtime: str) -> bool:
    parsed = parse_utc(remote_mtime)
    return parsed is not None and int(local_mtime) == int(parsed.timestamp())


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


@dataclass(frozen=True, slots=True)
class Survey:
    """Everything ``plan`` and ``apply`` learn before acting."""

    plan: Plan
    remote: RemoteView
    state: dict[str, StateEntry]
    observed: dict[str, Observed | None]


def check_prune(
    deletions: int, recorded: int, *, max_count: int | None, max_share: float | None
) -> None:
    """Refuse a prune larger than ``--max-delete`` allows (a count or a share).

    Raises:
        UsageError: too many deletions; nothing is changed.
    """
    limit_text = None
    if max_count is not None and deletions > max_count:
        limit_text = f"the limit of {max_count}"
    elif max_share is not None and deletions > max_share * recorded:
        limit_text = f"the limit of {max_share:.0%} of them"
    if limit_text is not None:
        raise UsageError(
            f"--prune would delete {deletions} of {recorded} recorded files, "
            f"more than {limit_text}; nothing was changed",
            hint="check the manifest (a truncated manifest looks like this); if the "
            "deletions are intended, raise --max-delete",
        )


def survey(
    manifest: Manifest,
    catalog: RemoteCatalog,
    store: StateStore,
    *,
    list_workers: int = 8,
    record_adopted: bool = False,
    trust_timestamps: bool = False,
    share: Callable[[Mapping[str, RemoteFile]], Collection[str]] | None = None,
    all_checksums: bool = False,
    prune: bool = False,
) -> Survey:
    """Gather the facts and make the plan.

    Upstream MD5s (one file-manifest request per study, 45 MB for a 100,000-file
    study) are fetched only for studies with something to download, where they verify
    the download, unless *all_checksums*: then every study's are, so that a file
    changed upstream without a change of size or time is caught too. Otherwise the
    listing's size and time decide whether a recorded file is current.

    Local files immsync did not record but that provably match upstream are adopted
    (see ``adopt_local_files``); they are written to the state only when
    *record_adopted*, so that ``plan`` stays read-only and still shows the truth.

    With *share* (``apply --shard``), only the paths it picks from the whole selection
    are planned, and records of other paths are left out (another shard owns them);
    ``Survey.remote`` is still the whole selection.
    """
    destination = manifest.destination
    # The local side (the state, one lstat per recorded file) needs nothing from the
    # listing, which spends most of its time waiting on the network: gather it
    # meanwhile. On a large mirror both take seconds. A shard observes only its share,
    # which it knows once the listing is in.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="immsync-local") as local:
        gathering = local.submit(_recorded_and_observed, destination, store, share is None)
        remote = survey_remote(manifest, catalog, workers=list_workers, checksums=all_checksums)
    recorded, observed = gathering.result()
    if is_case_insensitive(destination):
        remote = drop_case_collisions(remote)
    mine: Collection[str] | None = None
    if share is not None:
        mine = frozenset(share(remote.selected))
    # Records below a folder we could not list are left out of the plan entirely:
    # we know nothing about them, so neither fetching nor deleting them is justified.
    state = {
        p: e
        for p, e in recorded.items()
        if not remote.is_unlisted(p) and (mine is None or p in mine)
    }
    selected = _mine(remote.selected, mine)
    # Local observation does not depend on checksums (an unrecorded file is never
    # hashed here), so it serves both plans below.
    unobserved = (selected.keys() | state.keys()) - observed.keys()
    observed.update(observe_local(destination, state, unobserved))
    def plan_now() -> Plan:
        return make_plan(
            selected,
            state,
            observed,
            listed=remote.listed,
            covered=remote.covered,
            notes=remote.notes,
            prune=prune,
        )

    plan = plan_now()
    if not plan.to_fetch:
        return Survey(plan=plan, remote=remote, state=state, observed=observed)
    if not all_checksums:
        studies = sorted({item.path.partition("/")[0] for item in plan.to_fetch})
        # Let the draft plan and the listing's records go before the MD5s come in: at
        # 100,000 files they would all be held at once.
        del plan, selected
        remote = with_checksums(remote, catalog, studies)
        selected = _mine(remote.selected, mine)
    adopted = adopt_local_files(destination, selected, state, trust_timestamps=trust_timestamps)
    if adopted:
        if record_adopted:
            store.record(adopted)
        state.update((e.path, e) for e in adopted)
        log.info("adopted %d local file(s) that match upstream", len(adopted))
    # Again, with the MD5s: they may turn up more changes, and verify what is fetched.
    plan = plan_now()
    return Survey(plan=plan, remote=remote, state=state, observed=observed)


def _recorded_and_observed(
    destination: Path, store: StateStore, observe: bool
) -> tuple[dict[str, StateEntry], dict[str, Observed | None]]:
    recorded = store.entries()
    return recorded, observe_local(destination, recorded, recorded.keys()) if observe else {}


def _mine(
    selected: dict[str, RemoteFile], mine: Collection[str] | None
) -> dict[str, RemoteFile]:
    return selected if mine is None else {p: f for p, f in selected.items() if p in mine}


def make_batches(
    items: Sequence[PlanItem], *, max_files: int, max_bytes: int, min_batches: int = 1
) -> list[list[PlanItem]]:
    """Group items into transfer sessions bounded by file count and (softly) by bytes.

    There are as few sessions as the bounds allow, since each costs a token request
    and an ``ascp`` start, but at least *min_batches* (the parallel sessions) when
    there are that many files, so that ``--jobs`` has work to share. Bytes are
    balanced greedily: largest file first, into the lightest batch with room. Within
    a batch files are in path order. A file larger than *max_bytes* still travels.
    """
    if not items:
        return []
    total = sum(i.size for i in items)
    count = max(
        -(-len(items) // max_files),
        -(-total // max_bytes) if max_bytes > 0 else 1,
        min(min_batches, len(items)),
    )
    count = min(count, len(items))
    batches: list[list[PlanItem]] = [[] for _ in range(count)]
    # (bytes, files, batch): ties on bytes go to the batch with fewer files, so that
    # empty files too are shared out instead of all landing in the first batch.
    heap = [(0, 0, n) for n in range(count)]
    for item in sorted(items, key=lambda i: (-i.size, i.path)):
        # A full batch is never pushed back, and count leaves room for every item.
        load, files, n = heapq.heappop(heap)
        batches[n].append(item)
        if files + 1 < max_files:
            heapq.heappush(heap, (load + item.size, files + 1, n))
    for batch in batches:
        batch.sort(key=lambda i: i.path)
    return sorted((b for b in batches if b), key=lambda b: b[0].path)


class SessionSlot:
    """A session admitted by a ``SessionGate``; tell it when the session has connected."""

    __slots__ = ("_connected", "_gate")

    def __init__(self, gate: SessionGate) -> None:
        self._gate = gate
        self._connected = False

    def connected(self) -> None:
        """The server accepted this session (its first progress arrived). Cheap to repeat."""
        if not self._connected:
            self._connected = True
            self._gate._connected(self)


class SessionGate:
    """Admits at most *limit* transfer sessions at once, their starts spaced out.

    Aspera servers refuse authentication when many sessions start together (the
    sra-tools fix was to space starts ~2 s apart). So a session starts only once the
    one started before it has connected (its first progress line: the server accepted
    it), or *stagger* seconds after that one's start, whichever comes first: starts
    never overlap a sign-in, and a fast server is not kept waiting. After a refusal
    (``reduce``) the limit drops by one and every start waits the whole *stagger*, so
    the run slows down instead of failing.
    """

    def __init__(
        self,
        limit: int,
        *,
        stagger: float,
        cancel: threading.Event,
        clock: Callable[[], float],
        wait: Callable[[float], None] | None = None,
    ) -> None:
        """*wait(seconds)* waits that long at most, or until the gate is notified.

        It is called with the gate's lock held; the default waits on the gate's
        condition, which releases it. Tests pass a fake that moves *clock* instead.
        """
        self.limit = max(1, limit)
        self._stagger = stagger
        self._cancel = cancel
        self._clock = clock
        self._active = 0
        self._next_start = float("-inf")
        self._latest: SessionSlot | None = None
        self._patient = False
        self._cond = threading.Condition()
        self._wait = wait or self._wait_on_condition

    @contextlib.contextmanager
    def session(self) -> Iterator[SessionSlot | None]:
        """Yield a slot once admitted, or None if the run was cancelled while waiting."""
        slot: SessionSlot | None = None
        with self._cond:
            while self._active >= self.limit and not self._cancel.is_set():
                self._cond.wait(timeout=0.2)
            if not self._cancel.is_set():
                self._active += 1
                slot = self._await_turn()
                if slot is None:
                    self._release()
        if slot is None:
            yield None
            return
        try:
            yield slot
        finally:
            with self._cond:
                self._release()

    def _await_turn(self) -> SessionSlot | None:
        while not self._cancel.is_set():
            now = self._clock()
            if now >= self._next_start:
                slot = SessionSlot(self)
                self._latest = slot
                self._next_start = now + self._stagger
                return slot
            self._wait(self._next_start - now)
        return None

    def _release(self) -> None:
        self._active -= 1
        self._cond.notify_all()

    def _connected(self, slot: SessionSlot) -> None:
        with self._cond:
            # Only the latest start's connection frees the next start; after a refusal,
            # starts wait the whole stagger again.
            if slot is self._latest and not self._patient:
                self._next_start = min(self._next_start, self._clock())
                self._cond.notify_all()

    def _wait_on_condition(self, seconds: float) -> None:
        # A bounded wait, so that a cancel (an Event, not this condition) is seen soon.
        self._cond.wait(timeout=min(seconds, 0.2))

    @property
    def concurrent(self) -> int:
        with self._cond:
            return self._active

    def reduce(self) -> int:
        """Lower the limit by one (not below one); return the new limit.

        Called when the server refused a session while others ran: from now on every
        start waits the whole stagger, connected or not.
        """
        with self._cond:
            self.limit = max(1, self.limit - 1)
            self._patient = True
            return self.limit


class Applier:
    """Carries out a plan. One instance per run; ``run`` may be called once."""

    def __init__(
        self,
        manifest: Manifest,
        store: StateStore,
        transfer: Transfer,
        *,
        options: SyncOptions,
        reporter: Reporter | None = None,
        cancel: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        staging: Path | None = None,
    ) -> None:
        """*sleep* defaults to a wait that a cancel or fatal error cuts short.

        *staging* defaults to ``<destination>/.immsync/staging``; each shard has its own.
        """
        self.manifest = manifest
        self.destination = manifest.destination
        self.store = store
        self.transfer = transfer
        self.options = options
        self.reporter: Reporter = reporter or NullReporter()
        self.cancel = cancel or threading.Event()
        # A retry delay can last a minute: an interrupted run must not sit it out.
        self._sleep = sleep or self._wait_unless_stopped
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        # One event ends the run early, whether the user cancelled or an error is fatal.
        self._stop = self.cancel
        self._fatal: ImmsyncError | None = None
        self.staging = staging or self.destination / STATE_DIRNAME / STAGING_DIRNAME
        self._staging_had_files = private_folder(self.staging, create=False) and any(
            self.staging.iterdir()
        )

    def run(self, found: Survey) -> Report:
        started = self._clock()
        plan = found.plan
        report = Report(plan=plan, dry_run=self.options.dry_run)
        self.reporter.plan_ready(plan)
        if self.options.dry_run:
            return report
        deletions = plan.to_delete
        self._check_delete_guard(deletions, len(found.state))
        self._refresh_fingerprints(plan, found)
        fetches = plan.to_fetch
        if fetches:
            self._fetch_all(fetches, report)
        if deletions and not self.cancel.is_set():
            self._delete(deletions, report)
        self._tidy_staging(keep={o.path for o in report.failures})
        report.elapsed = self._clock() - started
        if self._fatal is not None:
            done = sum(1 for o in report.outcomes if o.ok)
            stopped = (
                f"stopped: {self._fatal.message}; {done} file(s) were completed and recorded "
                "before it"
            )
            fatal = self._fatal
            if isinstance(fatal, TransferError) and not fatal.kind.stops_run:
                raise TransferError(
                    stopped, reason=fatal.reason, kind=fatal.kind, hint=fatal.hint
                )
            raise LocalIOError(
                stopped,
                hint="free some space on the destination (partial downloads are kept in "
                f"{self.staging} and resume), then run the same command again",
            )
        return report

    def _check_delete_guard(self, deletions: Sequence[PlanItem], recorded: int) -> None:
        check_prune(
            len(deletions),
            recorded,
            max_count=self.options.max_delete,
            max_share=self.options.max_delete_share,
        )

    def _refresh_fingerprints(self, plan: Plan, found: Survey) -> None:
        """Re-record files whose timestamp moved but whose content hashed the same."""
        # Only a file whose fingerprint moved was hashed (has a checksum) while observing.
        hashed = {p: o for p, o in found.observed.items() if o is not None and o.checksum}
        if not hashed:
            return
        refreshed = []
        for item in plan.items:
            local = hashed.get(item.path)
            if local is None or item.action is not Action.UNCHANGED:
                continue
            entry = found.state.get(item.path)
            if entry and (local.size, local.mtime_ns) != (entry.size, entry.mtime_ns):
                refreshed.append(
                    StateEntry(
                        entry.path,
                        local.size,
                        local.mtime_ns,
                        entry.checksum,
                        entry.remote_size,
                        entry.remote_mtime,
                        entry.remote_md5,
                    )
                )
        with self._lock:
            self.store.record(refreshed)

    # -- transfers --------------------------------------------------------------------

    def _fetch_all(self, items: Sequence[PlanItem], report: Report) -> None:
        batches = make_batches(
            items,
            max_files=self.options.batch_max_files,
            max_bytes=self.options.batch_max_bytes,
            min_batches=min(
                self.options.jobs,
                max(1, sum(i.size for i in items) // max(1, self.options.split_min_bytes)),
            ),
        )
        total = len(batches)
        jobs = max(1, min(self.options.jobs, total))
        gate = SessionGate(
            jobs,
            stagger=self.options.session_stagger,
            cancel=self._stop,
            clock=self._clock,
        )
        with (
            ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="immsync-transfer") as pool,
            ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="immsync-hash") as hasher,
        ):
            futures = [
                pool.submit(self._run_batch, batch, f"batch {n}/{total}", report, gate, hasher)
                for n, batch in enumerate(batches, 1)
            ]
            for future in futures:
                future.result()

    def _run_batch(
        self,
        items: list[PlanItem],
        label: str,
        report: Report,
        gate: SessionGate,
        hasher: ThreadPoolExecutor,
    ) -> None:
        try:
            self._run_batch_attempts(items, label, report, gate, hasher)
        except BaseException:
            # Anything unexpected (say the state became unwritable) stops every other
            # batch too: carrying on would only pile up unrecorded transfers.
            self._abort()
            raise

    def _run_batch_attempts(
        self,
        items: list[PlanItem],
        label: str,
        report: Report,
        gate: SessionGate,
        hasher: ThreadPoolExecutor,
    ) -> None:
        pending = {item.path: item for item in items}
        # Transfers write only into folders checked to be ours, never through a link.
        prepare_parents(self.staging, map(staged_name, pending))
        stuck = self._discard_stale_staging(
            [item.remote for item in items if item.remote is not None]
        )
        for path, problem in stuck.items():
            self._fail(pending.pop(path), report, problem)
        backoff = delays(self.options.retry, self._rng)
        checksum_retries: set[str] = set()
        attempt = 0
        while pending and not self._stop.is_set():
            attempt += 1
            files = tuple(item.remote for item in pending.values() if item.remote is not None)
            batch = TransferBatch(files=files, staging=self.staging, label=label)
            session = self._session(batch, report, gate, hasher)
            if session is None:
                return  # the run was stopped before this session could start
            error, concurrent, hashed = session
            # Whatever arrived complete is verified and kept, even if the session failed.
            for path in list(pending):
                collected = self._collect(
                    pending[path],
                    report,
                    checksum_retries,
                    finished=error is None,
                    hashed=hashed.get(path),
                )
                if collected is not None:
                    del pending[path]
            if not pending or self._stop.is_set():
                return
            failure = error or TransferError(
                f"the transfer reported success but {len(pending)} file(s) did not arrive "
                "complete",
                kind=Failure.TRANSIENT,
            )
            step = decide(failure.kind, concurrent=concurrent, session_limit=gate.limit)
            if step is Step.STOP_RUN:
                # Every other session would fail alike (no space left; a key the server
                # refuses even to a lone session): stop now, keep what is done.
                self._fatal = failure
                self._abort()
                for item in pending.values():
                    self._fail(item, report, failure.message)
                return
            if step is Step.RETRY_WITH_FEWER_SESSIONS:
                limit = gate.reduce()
                log.warning(
                    "%s: the Aspera server refused a session while %d ran; "
                    "lowering parallel sessions to %d",
                    label,
                    concurrent,
                    limit,
                )
            delay = next(backoff, None) if step is not Step.GIVE_UP else None
            if delay is None:
                for item in pending.values():
                    self._fail(item, report, failure.message)
                return
            retry_error = failure
            remaining = tuple(i.remote for i in pending.values() if i.remote is not None)
            self.reporter.retrying(
                TransferBatch(files=remaining, staging=batch.staging, label=label),
                retry_error,
                delay,
            )
            # INFO, not WARNING: the reporter already shows the retry to the user; the
            # log line carries the attempt count for -v and for log files.
            log.info(
                "%s: retrying %d file(s) in %.1f s (attempt %d of %d) after: %s",
                label,
                len(pending),
                delay,
                attempt + 1,
                self.options.retry.attempts,
                retry_error.message,
            )
            self._sleep(delay)

    def _session(
        self,
        batch: TransferBatch,
        report: Report,
        gate: SessionGate,
        hasher: ThreadPoolExecutor,
    ) -> tuple[TransferError | None, int, dict[str, _Hashed]] | None:
        """One transfer session: ``(its failure or None, sessions beside it, early hashes)``.

        None when the gate is closed (the run was stopped) before it could start.
        """
        error: TransferError | None = None
        early = _EarlyHashes(self.staging, batch.files, hasher)
        with gate.session() as slot:
            if slot is None:
                return None
            concurrent = gate.concurrent
            self.reporter.batch_started(batch)
            with self._lock:
                report.sessions += 1

            def on_progress(event: ProgressEvent) -> None:
                slot.connected()
                self.reporter.progress(event)
                if event.percent == 100:
                    early.file_done(event.name)

            try:
                self.transfer.fetch(batch, on_progress)
            except TransferError as exc:
                error = exc
                # Sessions started after this one ran beside it too: a refusal is
                # "alone" only if none ran when it started nor when it failed.
                concurrent = max(concurrent, gate.concurrent)
        return error, concurrent, early.results()

    def _discard_stale_staging(self, files: Sequence[RemoteFile]) -> dict[str, str]:
        """Never resume a partial download of another upstream version of a file.

        Returns:
            The paths whose leftovers could not be removed, with why: they are not
            fetched, since a transport would resume the other version's bytes.
        """
        stale = self.store.claim_staging([(f.path, f.size, f.mtime, f.md5) for f in files])
        stuck: dict[str, str] = {}
        if not self._staging_had_files:
            return stuck
        for path in stale:
            base = self.staging / staged_name(path)
            for suffix in _STAGED_SUFFIXES:
                leftover = base.with_name(base.name + suffix)
                try:
                    leftover.unlink(missing_ok=True)
                except OSError as exc:
                    stuck[path] = (
                        f"cannot remove the download of another version, {leftover}: "
                        f"{exc.strerror or exc}"
                    )
        return stuck

    def _wait_unless_stopped(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _abort(self) -> None:
        self._stop.set()
        self.transfer.terminate()

    def _collect(
        self,
        item: PlanItem,
        report: Report,
        checksum_retries: set[str],
        *,
        finished: bool,
        hashed: _Hashed | None = None,
    ) -> FileOutcome | None:
        """Verify, place and record one staged file; None if it has not arrived complete.

        *finished*: the session reported success, so a short file is not a partial
        still arriving but a truncated one: a size mismatch. *hashed*: its digests,
        taken while the session still ran, used if the staged file is still that one.
        """
        remote = item.remote
        assert remote is not None
        staged = self.staging / staged_name(remote.path)
        try:
            st = staged.lstat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            return self._fail(item, report, f"cannot examine {staged}: {exc.strerror or exc}")
        if not _is_regular(st.st_mode):
            return self._fail(item, report, f"the transfer left a non-file at {staged}")
        if st.st_size < remote.size and not finished:
            return None  # partial: kept in staging so the next attempt resumes it
        try:
            outcome = self._verify_and_place(
                item, remote, staged, hashed if hashed and hashed.describes(st) else None
            )
        except ChecksumMismatch as exc:
            with contextlib.suppress(OSError):  # else overwritten, or fails once more
                staged.unlink(missing_ok=True)
            if remote.path not in checksum_retries:
                checksum_retries.add(remote.path)
                log.warning("%s; fetching it once more", exc.message)
                return None
            return self._fail(item, report, _without_path(exc.message, remote.path))
        except (LocalIOError, UnsafePath) as exc:
            return self._fail(item, report, _without_path(exc.message, remote.path))
        except OSError as exc:
            # Unexpected, and about this file alone (no run-wide cause is known): the
            # file fails, the run goes on.
            return self._fail(item, report, f"cannot place it: {exc.strerror or exc}")
        with self._lock:
            report.outcomes.append(outcome)
        self.reporter.file_done(outcome)
        return outcome

    def _verify_and_place(
        self, item: PlanItem, remote: RemoteFile, staged: Path, hashed: _Hashed | None
    ) -> FileOutcome:
        if hashed is not None:
            digests = hashed.digests
        else:
            try:
                digests = file_digests(staged, md5=remote.md5 is not None)
            except OSError as exc:
                raise LocalIOError(
                    f"{remote.path}: cannot read the download {staged}: {exc.strerror or exc}"
                ) from exc
        if digests.size != remote.size:
            raise ChecksumMismatch(
                f"{remote.path}: size mismatch: expected {remote.size} bytes, "
                f"received {digests.size}; the download was deleted"
            )
        if remote.md5 is not None and digests.md5 != remote.md5:
            raise ChecksumMismatch(
                f"{remote.path}: MD5 mismatch: expected {remote.md5}, got {digests.md5}; "
                "the download was deleted"
            )
        final = resolve_inside(self.destination, remote.path)
        try:
            if hashed is None:  # hashed early: flushed to disk then too
                _fsync_file(staged)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
            st = final.stat()
        except OSError as exc:
            error = LocalIOError(
                f"{remote.path}: cannot place the verified file at {final}: "
                f"{exc.strerror or exc}"
            )
            if exc.errno in _DESTINATION_UNUSABLE:
                # Every other file would fail the same way: stop now, keep what is done.
                self._fatal = error
                self._abort()
            raise error from exc
        entry = StateEntry(
            path=remote.path,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            checksum=digests.checksum,
            remote_size=remote.size,
            remote_mtime=remote.mtime,
            remote_md5=remote.md5,
        )
        with self._lock:
            try:
                self.store.record([entry])
            except StateError:
                # On a full disk the partial download that filled it leaves no room for
                # the record of a file already verified and placed. Recording what is
                # done matters more than resuming a partial: free them and try once more.
                if not self._drop_partials():
                    raise
                log.warning("the destination is full: partial downloads were deleted")
                self.store.record([entry])
        return FileOutcome(remote.path, item.action, ok=True, size=remote.size)

    def _drop_partials(self) -> bool:
        """Delete the incomplete downloads in staging; True if there were any."""
        dropped = False
        for partial in [*self.staging.rglob("*.partial"), *self.staging.rglob("*.aspx")]:
            with contextlib.suppress(OSError):
                partial.unlink()
                dropped = True
        return dropped

    def _fail(self, item: PlanItem, report: Report, error: str) -> FileOutcome:
        outcome = FileOutcome(item.path, item.action, ok=False, size=item.size, error=error)
        with self._lock:
            report.outcomes.append(outcome)
        self.reporter.file_done(outcome)
        return outcome

    # -- deletions and tidying --------------------------------------------------------

    def _delete(self, items: Sequence[PlanItem], report: Report) -> None:
        for item in items:
            target = resolve_inside(self.destination, item.path)
            try:
                target.unlink(missing_ok=True)
            except OSError as exc:
                self._fail(item, report, f"cannot delete {target}: {exc.strerror or exc}")
                continue
            with self._lock:
                self.store.forget([item.path])
            _remove_empty_parents(target.parent, stop=self.destination)
            outcome = FileOutcome(item.path, Action.DELETE, ok=True, size=item.size)
            with self._lock:
                report.outcomes.append(outcome)
            self.reporter.file_done(outcome)

    def _tidy_staging(self, keep: set[str]) -> None:
        """Drop staged leftovers nobody will resume; keep partials of failed files."""
        if self.cancel.is_set():
            return  # an interrupted run keeps everything for the next one to resume
        self.store.release_staging(keep)
        kept = {staged_name(path) for path in keep}
        remove_files_below(
            self.staging, keep=lambda relative: any(relative.startswith(k) for k in kept)
        )


@dataclass(frozen=True, slots=True)
class _Hashed:
    """A staged file's digests, taken (and the file fsynced) while its session ran."""

    inode: int
    size: int
    digests: Digests

    def describes(self, st: os.stat_result) -> bool:
        # ascp writes <name>.partial and renames it when done, so a file re-sent after
        # the hash is a new inode; only its time may change (ascp -p), not its bytes.
        return (st.st_ino, st.st_size) == (self.inode, self.size)


class _EarlyHashes:
    """Hashes each file of a session as soon as the transport reports it complete.

    Hashing (xxh3_128, and MD5 where ImmPort has one) and the fsync are most of the
    work after a transfer. Done while the session still moves the next files, only the
    last file's remain when it ends. The file is only read here: placing and recording
    it wait for the end of the session, so a transport still finishing it (setting its
    time, removing its checkpoint) is never disturbed.
    """

    def __init__(
        self, staging: Path, files: Sequence[RemoteFile], pool: ThreadPoolExecutor
    ) -> None:
        self._staging = staging
        self._pool = pool
        self._by_name: dict[str, list[RemoteFile]] = {}
        for file in files:
            self._by_name.setdefault(staged_name(file.path).rpartition("/")[2], []).append(file)
        self._futures: dict[str, Future[_Hashed | None]] = {}

    def file_done(self, name: str) -> None:
        """The transport reports *name* (a base name, as ``ascp`` prints it) complete."""
        for file in self._by_name.get(name, ()):
            if file.path not in self._futures:
                self._futures[file.path] = self._pool.submit(self._hash, file)

    def results(self) -> dict[str, _Hashed]:
        """What could be hashed (waits for hashes still running)."""
        done = {path: future.result() for path, future in self._futures.items()}
        return {path: hashed for path, hashed in done.items() if hashed is not None}

    def _hash(self, file: RemoteFile) -> _Hashed | None:
        staged = self._staging / staged_name(file.path)
        try:
            st = staged.lstat()
            if not stat.S_ISREG(st.st_mode) or st.st_size != file.size:
                return None
            for suffix in IN_TRANSIT_SUFFIXES:
                if os.path.lexists(f"{staged}{suffix}"):
                    return None  # the transport is not done with it after all
            digests = file_digests(staged, md5=file.md5 is not None)
            _fsync_file(staged)
        except OSError:
            return None  # judged again, with errors reported, when the session ends
        return _Hashed(st.st_ino, st.st_size, digests)


def _without_path(message: str, path: str) -> str:
    # A failure is shown as "<path>: <error>": an error naming the path itself would
    # print it twice.
    return message.removeprefix(f"{path}: ")


def _fsync_file(path: Path) -> None:
    # The rename must never publish a file whose bytes are still only in the page
    # cache: after a power cut the name could survive and the content not.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_empty_parents(folder: Path, *, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
