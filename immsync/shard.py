"""Sharding one manifest over an existing scheduler's job array: ``apply --shard K/N``.

There is no coordinator. Every shard lists the same upstream, so every shard computes
the same split of the selection (``assign``: largest file first, each into the
lightest shard by bytes and then by file count, equal sizes ordered by a SHA-256 of the
path) and takes its own share. Each shard keeps its own state, lock, staging and
scratch folder under ``<destination>/.immsync/shards/K-of-N/``, so shards never wait
for each other; records are written to the shard's state only.

``status`` and ``verify`` read the main state and every shard state (``all_entries``);
``merge_shards`` folds the shard states into the main state once the array is done,
and an unsharded ``apply`` does the same before it starts.

Where two states record the same path (a path that moved between shards because the
selection changed, or a shard that ran before a later unsharded apply), the record
whose size and modification time match the file on disk wins, else the newest layer.

Every shard records its manifest's whole selection (what the shared listing selects,
not only its share; see ``state.StateStore.selections``), so any one shard that ran
knows it. Where shard states record a manifest's selection, the manifest selects the
union of theirs (one shard's listing may have seen more than another's: keeping a file
is the safe side), and that replaces the main state's when they are merged.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import logging
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import LockedError, StateError, UsageError
from .lock import DestinationLock, describe_holder
from .model import ManifestSelection, RemoteFile, StateEntry
from .state import STATE_DIRNAME, STATE_FILENAME, StateStore, state_path
from .statedir import private_folder

log = logging.getLogger(__name__)

SHARDS_DIRNAME = "shards"
MAX_SHARDS = 10_000
_SHARD_TEXT = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
_SHARD_DIR = re.compile(r"(\d+)-of-(\d+)")


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard *index* (1-based, as job arrays count) of *count*."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/8"`` -> ``Shard(2, 8)``; UsageError unless 1 <= K <= N <= MAX_SHARDS."""
        match = _SHARD_TEXT.fullmatch(text)
        if match is None:
            raise UsageError(
                f"--shard takes K/N (this is shard K of N, counting from 1), not {text!r}",
                hint="in a Slurm array (--array=1-N): "
                "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT",
            )
        index, count = int(match[1]), int(match[2])
        if not 1 <= index <= count or count > MAX_SHARDS:
            raise UsageError(
                f"--shard {text}: K must be between 1 and N, and N at most {MAX_SHARDS}",
                hint="shards count from 1: a 4-way split runs --shard 1/4 ... --shard 4/4",
            )
        return cls(index, count)

    @property
    def name(self) -> str:
        """The shard's folder name: ``2-of-8``."""
        return f"{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def assign(sizes: Mapping[str, int], count: int) -> dict[str, int]:
    """Split paths over *count* shards, balancing bytes first and file counts second.

    Deterministic: it depends only on the paths and sizes, never on their order in
    *sizes*, so every shard of an array computes the same split from the same listing.

    Returns:
        path -> shard index (1-based).
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    order = sorted(sizes, key=lambda p: (-sizes[p], _stable_key(p)))
    # (bytes, files, shard): the lightest shard takes the next file; shard number last
    # so that ties are broken the same way everywhere.
    loads = [(0, 0, n) for n in range(1, count + 1)]
    result: dict[str, int] = {}
    for path in order:
        load, files, n = heapq.heappop(loads)
        result[path] = n
        heapq.heappush(loads, (load + sizes[path], files + 1, n))
    return result


def share_of(shard: Shard) -> Callable[[Mapping[str, RemoteFile]], frozenset[str]]:
    """The paths *shard* takes from a selection (for ``sync.survey(share=...)``)."""

    def pick(selected: Mapping[str, RemoteFile]) -> frozenset[str]:
        split = assign({p: f.size for p, f in selected.items()}, shard.count)
        return frozenset(p for p, n in split.items() if n == shard.index)

    return pick


def _stable_key(path: str) -> bytes:
    return hashlib.sha256(path.encode("utf-8", "surrogatepass")).digest()


# -- where a shard keeps its things ---------------------------------------------------


def shards_root(destination: Path) -> Path:
    return destination / STATE_DIRNAME / SHARDS_DIRNAME


def shard_dir(destination: Path, shard: Shard) -> Path:
    """``<destination>/.immsync/shards/K-of-N``: the shard's state, lock and staging."""
    return shards_root(destination) / shard.name


def shard_state_path(destination: Path, shard: Shard) -> Path:
    return shard_dir(destination, shard) / STATE_FILENAME


def shard_lock_path(destination: Path, shard: Shard) -> Path:
    return shard_dir(destination, shard) / "lock"


def shard_staging(destination: Path, shard: Shard) -> Path:
    return shard_dir(destination, shard) / "staging"


def shard_workdir(destination: Path, shard: Shard) -> Path:
    return shard_dir(destination, shard) / "tmp"


def existing_shards(destination: Path) -> list[Shard]:
    """Every shard with a state file under *destination*, in order."""
    root = shards_root(destination)
    if not private_folder(root, create=False):
        return []
    found = []
    for child in root.iterdir():
        match = _SHARD_DIR.fullmatch(child.name)
        if match and private_folder(child, create=False) and (child / STATE_FILENAME).is_file():
            found.append(Shard(int(match[1]), int(match[2])))
    return sorted(found, key=lambda s: (s.count, s.index))


# -- reading several states as one ----------------------------------------------------


def combine(
    destination: Path, layers: Sequence[Mapping[str, StateEntry]]
) -> dict[str, StateEntry]:
    """One view of several states' records; later layers win where records differ.

    A record whose size and modification time match the file now on disk wins over
    one that does not, whatever its layer: that record describes the file there.
    """
    if len(layers) == 1:
        # No shards (the usual case): nothing to reconcile.
        return dict(layers[0])
    candidates: dict[str, list[StateEntry]] = {}
    for layer in layers:
        for path, entry in layer.items():
            candidates.setdefault(path, []).append(entry)
    result: dict[str, StateEntry] = {}
    for path, found in candidates.items():
        if len(found) == 1 or all(e == found[0] for e in found):
            result[path] = found[-1]
            continue
        try:
            st = (destination / path).lstat()
        except OSError:
            result[path] = found[-1]
            continue
        matching = [e for e in found if (e.size, e.mtime_ns) == (st.st_size, st.st_mtime_ns)]
        result[path] = (matching or found)[-1]
    return result


def combine_selections(
    main: Mapping[str, ManifestSelection], shards: Sequence[Mapping[str, ManifestSelection]]
) -> dict[str, ManifestSelection]:
    """What each manifest selects, from the main state's selections and the shards'.

    A manifest some shard state records selects the union of what the shard states
    record for it, last applied when the latest of them ran; any other, what the main
    state records.
    """
    result = dict(main)
    from_shards: dict[str, list[ManifestSelection]] = {}
    for layer in shards:
        for label, selection in layer.items():
            from_shards.setdefault(label, []).append(selection)
    for label, found in from_shards.items():
        stamps = [s.last_applied for s in found if s.last_applied is not None]
        result[label] = ManifestSelection(
            label,
            frozenset().union(*(s.paths for s in found)),
            max(stamps) if stamps else None,
        )
    return result


Layer = tuple[dict[str, StateEntry], dict[str, ManifestSelection]]
"""One state's records and selections."""


def read_layer(path: Path) -> Layer:
    """The records and selections of the state at *path* (none if it does not exist)."""
    with StateStore.open(path, create=False) as store:
        return store.entries(), store.selections()


def read_entries(path: Path) -> dict[str, StateEntry]:
    """The records of the state at *path* (none if it does not exist)."""
    return read_layer(path)[0]


def all_entries(destination: Path, main: Mapping[str, StateEntry]) -> dict[str, StateEntry]:
    """The main state's records (*main*) with every shard state's, combined."""
    shards = existing_shards(destination)
    layers = [main, *(read_entries(shard_state_path(destination, s)) for s in shards)]
    return combine(destination, layers)


def all_selections(
    destination: Path, main: Mapping[str, ManifestSelection]
) -> dict[str, ManifestSelection]:
    """The main state's selections (*main*) with every shard state's, combined."""
    shards = existing_shards(destination)
    return combine_selections(
        main, [read_layer(shard_state_path(destination, s))[1] for s in shards]
    )


class LayeredStateStore(StateStore):
    """A state whose ``entries`` and ``selections`` also show, read-only, other states'.

    Writes (``record``, ``forget``, ``replace_selection``, staging) go to this state's
    own database only. Open it with ``open_layered``.
    """

    destination: Path
    beneath: Mapping[str, StateEntry]
    main_selections: Mapping[str, ManifestSelection] | None
    """The main state's, when this is a shard's state; None when this is the main one."""
    shard_selections: Sequence[Mapping[str, ManifestSelection]]
    """The other shard states'."""

    def entries(self) -> dict[str, StateEntry]:
        return combine(self.destination, [self.beneath, super().entries()])

    def selections(
        self, *, paths_of: Callable[[str], bool] | None = None
    ) -> dict[str, ManifestSelection]:
        own = super().selections(paths_of=paths_of)
        if self.main_selections is None:
            return combine_selections(own, self.shard_selections)
        return combine_selections(self.main_selections, [*self.shard_selections, own])


def open_layered(
    path: Path,
    *,
    destination: Path,
    beneath: Sequence[Layer],
    create: bool,
    main: Layer | None = None,
) -> LayeredStateStore:
    """Open the state at *path* over the shard states *beneath* (lowest first) and,
    when *path* is a shard's, the *main* state (lowest of all)."""
    store = LayeredStateStore.open(path, create=create)
    assert isinstance(store, LayeredStateStore)
    layers = list(beneath) if main is None else [main, *beneath]
    store.destination = destination
    store.beneath = combine(destination, [entries for entries, _ in layers])
    store.main_selections = None if main is None else main[1]
    store.shard_selections = [selections for _, selections in beneath]
    return store


def open_shard_state(destination: Path, shard: Shard, *, create: bool = True) -> LayeredStateStore:
    """A shard's own state, over the main state and the other shards' states.

    Seeing the others' records keeps a file that moved into this shard's share (the
    selection changed between two arrays) from being fetched again. Those are only
    read, and a state another shard is creating at this very moment may not be
    readable yet: it is skipped, which costs at worst a transfer, never a wrong record.
    """
    return open_layered(
        shard_state_path(destination, shard),
        destination=destination,
        beneath=_other_shards(destination, shard),
        create=create,
        main=read_layer(state_path(destination)),
    )


def open_main_with_shards(destination: Path) -> LayeredStateStore:
    """The main state (created only when written) over every shard state: for ``plan``."""
    beneath = list(_other_shards(destination, None))
    return open_layered(
        state_path(destination), destination=destination, beneath=beneath, create=False
    )


def _other_shards(destination: Path, shard: Shard | None) -> list[Layer]:
    """The states of every shard but *shard*, skipping a state not readable (yet)."""
    found = []
    for other in existing_shards(destination):
        if other == shard:
            continue
        try:
            found.append(read_layer(shard_state_path(destination, other)))
        except StateError as exc:
            log.warning("not reading the state of shard %s: %s", other, exc.message)
    return found


# -- folding shards into the main state -----------------------------------------------


@dataclass(frozen=True, slots=True)
class MergeResult:
    shards: tuple[Shard, ...]
    """The shard states folded (and removed)."""
    recorded: int
    """Records written to the main state (new or changed)."""
    total: int
    """Records in the main state afterwards."""


def merge_shards(destination: Path, main: StateStore) -> MergeResult:
    """Fold every shard state into *main*, then remove the shards' folders.

    Idempotent: a second call finds no shard and changes nothing; a call interrupted
    after recording and before removing records the same again. The caller holds the
    destination's lock; each shard's lock is taken here, so a shard still running
    makes this fail (LockedError naming it) before anything changes.

    Partial downloads in a shard's staging are removed with it.
    """
    shards = existing_shards(destination)
    with contextlib.ExitStack() as held:
        for shard in shards:
            lock_file = shard_lock_path(destination, shard)
            try:
                held.enter_context(DestinationLock(lock_file))
            except LockedError:
                raise LockedError(
                    f"shard {shard} is still running ({describe_holder(lock_file)})",
                    hint="merge the shards once every task of the array has finished",
                ) from None
        current = main.entries()
        shard_layers = [read_layer(shard_state_path(destination, s)) for s in shards]
        combined = combine(destination, [current, *(entries for entries, _ in shard_layers)])
        changed = [combined[p] for p in sorted(combined) if current.get(p) != combined[p]]
        main.record(changed)
        folded = combine_selections({}, [selections for _, selections in shard_layers])
        for selection in folded.values():
            main.replace_selection(selection)
        for shard in shards:
            folder = shard_dir(destination, shard)
            for name in (STATE_FILENAME, STATE_FILENAME + "-wal", STATE_FILENAME + "-shm"):
                (folder / name).unlink(missing_ok=True)
            for name in ("staging", "tmp"):
                shutil.rmtree(folder / name, ignore_errors=True)
    # Each shard's lock file stays (as the destination's does): unlinking a lock file
    # races with a run that has just opened it and would let two runs hold it at once.
    if shards:
        log.info(
            "merged %d shard state(s): %d record(s) written", len(shards), len(changed)
        )
    return MergeResult(shards=tuple(shards), recorded=len(changed), total=len(combined))
