"""Deciding what to do with every path: a pure function of what was observed.

Nothing here reads a file, calls the network or looks at a clock. The caller gathers
the facts (remote listing, state, local fingerprints and, only where a fingerprint
changed, local checksums) and passes them in; the plan that comes back is plain data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from .model import (
    Action,
    ManifestSelection,
    Observed,
    Plan,
    PlanItem,
    RemoteFile,
    SharedWith,
    StateEntry,
)


def make_plan(
    selected: Mapping[str, RemoteFile],
    state: Mapping[str, StateEntry],
    observed: Mapping[str, Observed | None],
    *,
    listed: Iterable[str] = (),
    covered: Iterable[str] = (),
    notes: Iterable[str] = (),
    prune: bool = False,
    others: Sequence[ManifestSelection] = (),
) -> Plan:
    """Compare what the manifest selects upstream with what is recorded and on disk.

    Args:
        selected: the remote files the manifest selects, by destination-relative path.
        state: what immsync recorded, by path. Leave out entries that must not be
            touched this run (for example below a folder whose listing failed).
        observed: local files by path; None or absent means missing. ``checksum`` is
            expected wherever the fingerprint differs from the recorded one.
        listed: every remote path seen before the manifest's filters (include, exclude,
            file_types), so a DELETE can say whether the file was filtered out or removed
            upstream.
        covered: the destination-relative roots that were listed: a recorded file below
            one of them that was not listed has been removed upstream; one below none
            of them is no longer selected by the manifest.
        notes: facts to carry into the plan for the user.
        prune: whether DELETE items are carried out (see ``Plan.prune``).
        others: what the other manifests applied to this destination select. A
            recorded file one of them selects is theirs to keep: it is no item of this
            plan (``Plan.left_alone``), and each is counted in ``Plan.shared``.

    Returns:
        One item per path in ``selected`` or ``state`` (but those left alone), sorted
        by path.
    """
    listed_set = frozenset(listed)
    roots = tuple(covered)
    items: list[PlanItem] = []
    left_alone: set[str] = set()
    kept_for: Counter[str] = Counter()
    for path in sorted(selected.keys() | state.keys()):
        remote = selected.get(path)
        entry = state.get(path)
        local = observed.get(path)
        if remote is None:
            assert entry is not None
            holders = [other.label for other in others if path in other.paths]
            if holders:
                left_alone.add(path)
                kept_for.update(holders)
                continue
            if path in listed_set:
                reason = "filtered out by the manifest's include/exclude/file_types"
            elif any(path == r or path.startswith(r + "/") for r in roots):
                reason = "removed upstream"
            else:
                reason = "no longer selected by the manifest"
            items.append(PlanItem(Action.DELETE, path, entry.size, reason))
        elif entry is None:
            items.append(_download(remote, local))
        else:
            items.append(_compare(remote, entry, local))
    shared = tuple(
        SharedWith(other.label, other.last_applied, kept_for[other.label]) for other in others
    )
    return Plan(
        items=tuple(items),
        notes=tuple(notes),
        prune=prune,
        shared=shared,
        left_alone=frozenset(left_alone),
    )


def _download(remote: RemoteFile, local: Observed | None) -> PlanItem:
    if local is None:
        reason = "not present locally"
    else:
        reason = "present locally but not recorded by immsync; fetched and verified"
    return PlanItem(Action.DOWNLOAD, remote.path, remote.size, reason, remote)


def _compare(remote: RemoteFile, entry: StateEntry, local: Observed | None) -> PlanItem:
    if not entry.matches_remote(remote):
        return PlanItem(
            Action.UPDATE, remote.path, remote.size, _upstream_change(entry, remote), remote
        )
    if local is None:
        return PlanItem(
            Action.REPAIR, remote.path, remote.size, "recorded but missing locally", remote
        )
    if (local.size, local.mtime_ns) == (entry.size, entry.mtime_ns):
        return PlanItem(Action.UNCHANGED, remote.path, remote.size, "up to date", remote)
    if local.checksum == entry.checksum:
        return PlanItem(
            Action.UNCHANGED, remote.path, remote.size, "up to date (timestamp only)", remote
        )
    if local.size != entry.size:
        reason = f"local copy modified (size {entry.size} -> {local.size})"
    else:
        reason = "local copy modified (checksum differs)"
    return PlanItem(Action.REPAIR, remote.path, remote.size, reason, remote)


def _upstream_change(entry: StateEntry, remote: RemoteFile) -> str:
    changes = []
    if remote.size != entry.remote_size:
        changes.append(f"size {entry.remote_size} -> {remote.size}")
    if remote.mtime != entry.remote_mtime:
        changes.append(f"modified {entry.remote_mtime} -> {remote.mtime}")
    if remote.md5 and entry.remote_md5 and remote.md5 != entry.remote_md5:
        changes.append("md5 differs")
    return "changed upstream: " + ", ".join(changes)


def needs_hash(entry: StateEntry | None, size: int, mtime_ns: int) -> bool:
    """Whether an observer must hash a local file before planning.

    Only a recorded file whose cheap fingerprint changed needs its content read: an
    unrecorded file will be fetched anyway, an unchanged one is trusted.
    """
    return entry is not None and (size, mtime_ns) != (entry.size, entry.mtime_ns)
