"""One run, put together: what it covers, its state, its transport, its signals.

``apply_locked`` is the script of an apply once the destination is locked: survey,
choose the transport, apply with signals turned into a cancel, and hand back what
happened. The command line renders it; nothing here prints.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..errors import LockDrift, StateError, UsageError
from ..lockfile import LockFile, PinnedCatalog, compare, lock_path
from ..model import ListingStatus, Manifest, ManifestSelection, Report, StateEntry
from ..ports import Reporter
from ..shard import (
    Shard,
    all_entries,
    all_selections,
    existing_shards,
    merge_shards,
    open_main_with_shards,
    open_shard_state,
    shard_staging,
    share_of,
)
from ..state import StateStore, manifest_label, shown_label, state_path
from ..sync import Applier, Survey, SyncOptions, survey
from ..units import count
from .config import HTTPS_JOBS, Environment
from .listing import ObservedCatalog
from .transport import choose

if TYPE_CHECKING:
    from ..immport import ImmportClient

log = logging.getLogger("immsync")

@dataclass(frozen=True, slots=True)
class Scope:
    """What a run covers: one shard or the whole selection, frozen to a lock or not."""

    shard: Shard | None
    pinned: LockFile | None
    manifest_path: Path
    all_checksums: bool = False
    """Compare upstream MD5s of unchanged files too (``--checksum``, ``--frozen``)."""
    prune: bool = False
    """Plan deletions to carry out (``--prune``), not only to report."""
    observe_listing: Callable[[ListingStatus], None] | None = None
    """Told how far the listing has come, study by study (for progress)."""

    @contextmanager
    def open_state(self, manifest: Manifest, *, create: bool) -> Iterator[StateStore]:
        """The shard's own state, or the main state (which, to plan, shows shards' records)."""
        destination = manifest.destination
        if self.shard is not None:
            store: StateStore = open_shard_state(destination, self.shard, create=create)
        elif create:
            store = StateStore.open(state_path(destination), create=True)
        else:
            store = open_main_with_shards(destination)
        try:
            yield store
        finally:
            store.close()

    def staging(self, manifest: Manifest) -> Path | None:
        return None if self.shard is None else shard_staging(manifest.destination, self.shard)

    def survey(
        self,
        manifest: Manifest,
        client: ImmportClient,
        store: StateStore,
        *,
        record_adopted: bool = False,
        trust_timestamps: bool = False,
    ) -> Survey:
        """Plan this run's share; with a lock, refuse (LockDrift) if it no longer matches."""
        catalog: Any = (
            client.catalog if self.pinned is None else PinnedCatalog(client.catalog, self.pinned)
        )
        if self.observe_listing is not None:
            catalog = ObservedCatalog(catalog, len(manifest.studies), self.observe_listing)
        found = survey(
            manifest,
            catalog,
            store,
            record_adopted=record_adopted,
            trust_timestamps=trust_timestamps,
            share=None if self.shard is None else share_of(self.shard),
            all_checksums=self.all_checksums,
            prune=self.prune,
        )
        if self.pinned is not None:
            drift = [
                d
                for d in compare(
                    self.pinned,
                    manifest,
                    found.remote.selected,
                    listed=found.remote.listed,
                    unlisted=found.remote.is_unlisted,
                )
                if d.blocks_frozen
            ]
            if drift:
                raise LockDrift(
                    f"--frozen: {count(len(drift), 'file')} no longer match the lock file "
                    f"{lock_path(self.manifest_path)}; nothing was fetched:",
                    drift=(*(str(d) for d in drift), *found.remote.problems),
                    hint="if the change is intended, run `immsync lock MANIFEST`, review the "
                    "lock file's diff and commit it",
                )
        return found


@contextmanager
def open_state(manifest: Manifest, *, create: bool) -> Iterator[StateStore]:
    store = StateStore.open(state_path(manifest.destination), create=create)
    try:
        yield store
    finally:
        store.close()


def set_aside_broken_state(path: Path) -> None:
    """Move an unreadable state out of the way (never delete it: it is evidence)."""
    if not path.exists():
        return
    try:
        # create=False reads even where nothing can be written (a full disk), so a
        # healthy state is never mistaken for a broken one and moved away.
        with StateStore.open(path, create=False) as store:
            store.entries()  # every record readable and safe
        return  # readable: nothing to rebuild; missing records are adopted anyway
    except StateError:
        pass
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.rename(part.with_name(f"{part.name}.broken-{stamp}"))
    log.warning("the unreadable state was moved to %s.broken-%s", path, stamp)


def parse_max_delete(text: str) -> tuple[int | None, float | None]:
    """``"10"`` is a count, ``"25%"`` a share of the recorded files."""
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100
            if not 0 <= share <= 1:
                raise ValueError
            return None, share
        count = int(text)
        if count < 0:
            raise ValueError
        return count, None
    except ValueError:
        raise UsageError(
            f"--max-delete takes a count (e.g. 100) or a share (e.g. 25%), not {text!r}"
        ) from None


def apply_locked(
    loaded: Manifest,
    store: StateStore,
    client: ImmportClient,
    env: Environment,
    options: SyncOptions,
    rebuild_state: bool,
    scope: Scope,
    *,
    transport: str | None = None,
    https_jobs: int = HTTPS_JOBS,
    hold_fds: tuple[int, ...] = (),
    say: Callable[[str], None],
    make_reporter: Callable[[tuple[str, ...]], Reporter],
) -> tuple[Survey, Report, list[int]]:
    found = scope.survey(
        loaded, client, store, record_adopted=True, trust_timestamps=rebuild_state
    )
    choice = choose(
        transport,
        loaded,
        env,
        client,
        options,
        https_jobs=https_jobs,
        hold_fds=hold_fds,
        notice=lambda line: say(f"transport: {line}"),
    )
    if found.plan.to_fetch:
        say(f"transport: {choice.reason}")
    transfer = choice.transfer
    cancel = threading.Event()
    reporter = make_reporter(found.remote.problems)
    applier = Applier(
        loaded,
        store,
        transfer,
        options=options,
        reporter=reporter,
        cancel=cancel,
        staging=scope.staging(loaded),
    )
    with signals_cancel(cancel, transfer) as received:
        try:
            report = applier.run(found)
        finally:
            reporter.close()
            transfer.close()
    report.token_requests = client.counters.get("download_token", 0)
    return found, report, received


@contextmanager
def signals_cancel(cancel: threading.Event, transfer: Any) -> Iterator[list[int]]:
    """On SIGINT/SIGTERM: stop the transfers, let the run record what finished."""
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not received:
            received.append(signum)
        cancel.set()
        transfer.terminate()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def recorded_for(loaded: Manifest, manifest: Path) -> dict[str, StateEntry]:
    """What the state records for this manifest (every shard's too): the files of its
    studies that its last apply selected, or every file of its studies where no apply
    recorded its selection (a state from before selections were recorded).

    Raises:
        StateError: the destination is not a folder.
        ChecksumMismatch: nothing is recorded for the manifest: a check of nothing
            must not read as success.
    """
    destination = loaded.destination
    if destination.exists() and not destination.is_dir():
        raise StateError(
            f"the destination {destination} is not a folder",
            hint=f"check `destination:` in {manifest}",
        )
    with open_state(loaded, create=False) as store:
        entries = all_entries(destination, store.entries())
        label = manifest_label(loaded.source, destination)
        selection = all_selections(destination, store.selections(paths_of=label.__eq__)).get(
            label
        )
    # The studies too: a manifest edited since its last apply checks only what it
    # still names.
    studies = tuple(study.accession + "/" for study in loaded.studies)
    mine = {
        path: entry
        for path, entry in entries.items()
        if path.startswith(studies) and (selection is None or path in selection.paths)
    }
    if not mine:
        from ..errors import ChecksumMismatch

        raise ChecksumMismatch(
            f"nothing is recorded for {manifest} in {destination}: it has not been "
            "applied there yet, so there is nothing to check",
            hint=f"run `immsync apply {manifest}` first",
        )
    return mine


@dataclass(frozen=True, slots=True)
class Forgotten:
    """A manifest retired from a destination (``immsync forget``)."""

    selection: ManifestSelection
    """What it selected there."""
    unclaimed: int
    """Recorded files no remaining manifest selects: ``--prune`` may now remove them."""
    remaining: tuple[str, ...]
    """The manifests still applied to the destination."""


def forget_manifest(destination: Path, name: str) -> Forgotten:
    """Retire the manifest called *name* on *destination*: what it selected no longer
    keeps files from other manifests' ``--prune``. Its files stay, and stay recorded.

    *name* is the label ``plan`` shows, or a path to the manifest file. Shard states
    are merged first, so that none of them still holds its selection. The caller holds
    the destination's lock.

    Raises:
        UsageError: no manifest of that name is recorded there.
        LockedError: a shard still runs.
    """
    with StateStore.open(state_path(destination), create=True) as store:
        if existing_shards(destination):
            merge_shards(destination, store)
        selections = store.selections()
        wanted = {name, manifest_label(Path(name), destination)}
        found = [label for label in sorted(selections) if label in wanted]
        if not found:
            known = ", ".join(sorted(shown_label(s, destination) for s in selections))
            raise UsageError(
                f"no manifest called {name} is recorded in {destination} "
                f"(recorded: {known or 'none'})",
                hint="name it as `immsync plan` of another manifest there shows it",
            )
        store.forget_manifests(found[:1])
        forgotten = replace(selections.pop(found[0]), label=shown_label(found[0], destination))
        claimed = frozenset().union(*(s.paths for s in selections.values()))
        unclaimed = sum(1 for p in store.entries() if p not in claimed)
    remaining = tuple(sorted(shown_label(label, destination) for label in selections))
    return Forgotten(forgotten, unclaimed, remaining)
