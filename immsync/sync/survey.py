"""What a run starts from: the remote selection, the state and the local files, and the plan."""

from __future__ import annotations

import logging
import os
import re
import shlex
import stat
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from .. import manifest as manifest_mod
from ..errors import (
    ApiError,
    AuthError,
    RemoteNotFound,
    UnsafePath,
    UsageError,
)
from ..hashing import file_digests
from ..model import (
    Manifest,
    ManifestSelection,
    Observed,
    Plan,
    RemoteFile,
    SharedWith,
    StateEntry,
    StudySelection,
    file_type_of,
)
from ..paths import resolve_inside, unsafe_reason
from ..plan import make_plan, needs_hash
from ..ports import RemoteCatalog
from ..state import StateStore, manifest_label, shown_label
from ..units import count, format_size, parse_utc

log = logging.getLogger(__name__)

NOT_FOUND_HINT = "check the paths in the manifest against ImmPort"
_UNLISTED_HINT = "run the same command again; the paths that were listed are kept"

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
    hints: tuple[str, ...] = ()
    """What to do about the problems, one per cause, most useful first."""

    def is_unlisted(self, path: str) -> bool:
        return any(path == r or path.startswith(r + "/") for r in self.failed_roots)

    @property
    def hint(self) -> str:
        """What to do about ``problems``: a path not found and an unreachable server
        call for different fixes."""
        return "; and ".join(self.hints) or NOT_FOUND_HINT


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
    hints: dict[str, None] = {}  # ordered and without repeats

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
                hints[NOT_FOUND_HINT] = None
                continue
            except (ApiError, UnsafePath) as exc:
                failed.append(relative_root)
                problems.append(f"{where}{relative_root} could not be listed: {exc.message}")
                hints[exc.hint or _UNLISTED_HINT] = None
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
        hints=tuple(hints),
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
        if not is_regular_mode(st.st_mode):
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
        if not is_regular_mode(st.st_mode) or st.st_size != remote.size:
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


def is_regular_mode(mode: int) -> bool:
    return stat.S_ISREG(mode)


@dataclass(frozen=True, slots=True)
class Survey:
    """Everything ``plan`` and ``apply`` learn before acting."""

    plan: Plan
    remote: RemoteView
    state: dict[str, StateEntry]
    """The records this plan is about: not those left alone (``Plan.left_alone``)."""
    observed: dict[str, Observed | None]
    selection: ManifestSelection | None = None
    """What this manifest selects now, for ``apply`` to record once it goes ahead."""


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
    label = manifest_label(manifest.source, destination)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="immsync-local") as local:
        gathering = local.submit(
            _recorded_and_observed, destination, store, share is None, label
        )
        remote = survey_remote(manifest, catalog, workers=list_workers, checksums=all_checksums)
    recorded, observed, selections = gathering.result()
    others = tuple(
        replace(selections[other], label=shown_label(other, destination))
        for other in sorted(selections)
        if other != label
    )
    previous = None
    if remote.failed_roots and label in selections:
        previous = store.selections(paths_of=label.__eq__)[label]
    selection = _selection_now(label, remote, previous)
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
        made = make_plan(
            selected,
            state,
            observed,
            listed=remote.listed,
            covered=remote.covered,
            notes=remote.notes,
            prune=prune,
            others=others,
        )
        sharing = [_shared_note(shared, destination) for shared in made.shared]
        return replace(made, notes=(*made.notes, *sharing)) if sharing else made

    def surveyed(plan: Plan) -> Survey:
        planned = {p: e for p, e in state.items() if p not in plan.left_alone}
        return Survey(plan, remote, planned, observed, selection)

    plan = plan_now()
    if not plan.to_fetch:
        return surveyed(plan)
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
    return surveyed(plan_now())


def _recorded_and_observed(
    destination: Path, store: StateStore, observe: bool, label: str
) -> tuple[dict[str, StateEntry], dict[str, Observed | None], dict[str, ManifestSelection]]:
    """The records, their files on disk, and what the other manifests select (this
    manifest's own selection is needed only where a listing fails: read then)."""
    recorded = store.entries()
    observed = observe_local(destination, recorded, recorded.keys()) if observe else {}
    return recorded, observed, store.selections(paths_of=label.__ne__)


def _selection_now(
    label: str, remote: RemoteView, previous: ManifestSelection | None
) -> ManifestSelection:
    """What the manifest selects by this listing; below a root that could not be
    listed, what it selected before (its records there are left alone too)."""
    kept = {p for p in previous.paths if remote.is_unlisted(p)} if previous else set()
    return ManifestSelection(label, frozenset(remote.selected.keys() | kept))


def _shared_note(shared: SharedWith, destination: Path) -> str:
    when = f"last applied {shared.last_applied}" if shared.last_applied else "never applied"
    note = (
        f"the destination is shared with {shared.label} ({when}): "
        f"{count(shared.left_alone, 'recorded file')} it selects and this manifest does "
        "not are left alone"
    )
    if not Path(shared.label).is_file():
        note += (
            f"; {shared.label} no longer exists: if it moved or is retired, run `immsync "
            f"forget {shlex.quote(shared.label)} --destination {shlex.quote(str(destination))}` "
            "so that "
            "--prune removes what no manifest selects"
        )
    return note


def _mine(
    selected: dict[str, RemoteFile], mine: Collection[str] | None
) -> dict[str, RemoteFile]:
    return selected if mine is None else {p: f for p, f in selected.items() if p in mine}
