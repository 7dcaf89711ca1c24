"""The planner: a pure function from observations to actions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from immsync.model import Action, Observed, RemoteFile, StateEntry
from immsync.plan import make_plan, needs_hash

MTIME = "2017-06-15T13:06:07Z"
CHECKSUM = "xxh3_128:" + "a" * 32


def remote(path: str, size: int = 10, mtime: str = MTIME, md5: str | None = None) -> RemoteFile:
    return RemoteFile(path, size, mtime, md5)


def entry(
    path: str,
    size: int = 10,
    mtime_ns: int = 1,
    checksum: str = CHECKSUM,
    remote_size: int = 10,
    remote_mtime: str = MTIME,
    remote_md5: str | None = None,
) -> StateEntry:
    return StateEntry(path, size, mtime_ns, checksum, remote_size, remote_mtime, remote_md5)


def only(plan, path):
    (item,) = [i for i in plan.items if i.path == path]
    return item


class TestActions:
    def test_new_file_is_downloaded(self):
        """A selected file never fetched and absent locally is a download."""
        plan = make_plan({"SDY1/a": remote("SDY1/a")}, {}, {})
        item = only(plan, "SDY1/a")
        assert (item.action, item.reason, item.size) == (Action.DOWNLOAD, "not present locally", 10)

    def test_untracked_local_file_is_downloaded_with_reason(self):
        """A local file immsync did not record is fetched, and the reason says so."""
        plan = make_plan({"SDY1/a": remote("SDY1/a")}, {}, {"SDY1/a": Observed(10, 5)})
        assert only(plan, "SDY1/a").reason.startswith("present locally but not recorded")

    def test_unchanged_file_is_skipped(self):
        """Recorded, same upstream, same fingerprint: nothing to do."""
        plan = make_plan(
            {"SDY1/a": remote("SDY1/a")}, {"SDY1/a": entry("SDY1/a")}, {"SDY1/a": Observed(10, 1)}
        )
        assert only(plan, "SDY1/a").action is Action.UNCHANGED
        assert not plan

    def test_upstream_size_change_is_update(self):
        """A new size upstream is an update naming the old and new size."""
        plan = make_plan(
            {"SDY1/a": remote("SDY1/a", size=12)},
            {"SDY1/a": entry("SDY1/a")},
            {"SDY1/a": Observed(10, 1)},
        )
        item = only(plan, "SDY1/a")
        assert item.action is Action.UPDATE
        assert item.reason == "changed upstream: size 10 -> 12"

    def test_upstream_mtime_change_is_update(self):
        """A new modification time upstream, same size, is an update."""
        plan = make_plan(
            {"SDY1/a": remote("SDY1/a", mtime="2020-01-01T00:00:00Z")},
            {"SDY1/a": entry("SDY1/a")},
            {"SDY1/a": Observed(10, 1)},
        )
        assert only(plan, "SDY1/a").reason == (
            "changed upstream: modified 2017-06-15T13:06:07Z -> 2020-01-01T00:00:00Z"
        )

    def test_upstream_md5_change_is_update(self):
        """A different upstream MD5 with the same size and time is still an update."""
        plan = make_plan(
            {"SDY1/a": remote("SDY1/a", md5="b" * 32)},
            {"SDY1/a": entry("SDY1/a", remote_md5="c" * 32)},
            {"SDY1/a": Observed(10, 1)},
        )
        assert only(plan, "SDY1/a").reason == "changed upstream: md5 differs"

    def test_missing_local_copy_is_repair(self):
        """A recorded file gone from disk is repaired."""
        plan = make_plan({"SDY1/a": remote("SDY1/a")}, {"SDY1/a": entry("SDY1/a")}, {})
        item = only(plan, "SDY1/a")
        assert (item.action, item.reason) == (Action.REPAIR, "recorded but missing locally")

    def test_modified_local_copy_is_repair(self):
        """A recorded file whose content hashes differently is repaired."""
        plan = make_plan(
            {"SDY1/a": remote("SDY1/a")},
            {"SDY1/a": entry("SDY1/a")},
            {"SDY1/a": Observed(10, 2, "xxh3_128:" + "f" * 32)},
        )
        assert only(plan, "SDY1/a").reason == "local copy modified (checksum differs)"

    def test_resized_local_copy_is_repair(self):
        """A recorded file whose size changed locally is repaired, naming both sizes."""
        plan = make_plan(
            {"SDY1/a": remote("SDY1/a")},
            {"SDY1/a": entry("SDY1/a")},
            {"SDY1/a": Observed(3, 2, "xxh3_128:" + "f" * 32)},
        )
        assert only(plan, "SDY1/a").reason == "local copy modified (size 10 -> 3)"

    def test_touched_but_identical_file_is_unchanged(self):
        """Only the timestamp moved and the content hashes the same: nothing to fetch."""
        plan = make_plan(
            {"SDY1/a": remote("SDY1/a")},
            {"SDY1/a": entry("SDY1/a")},
            {"SDY1/a": Observed(10, 99, CHECKSUM)},
        )
        assert only(plan, "SDY1/a").action is Action.UNCHANGED

    def test_deselected_file_is_delete(self):
        """A recorded file the manifest no longer selects is a delete."""
        plan = make_plan({}, {"SDY1/a": entry("SDY1/a")}, {"SDY1/a": Observed(10, 1)})
        item = only(plan, "SDY1/a")
        assert item.action is Action.DELETE
        assert item.reason == "no longer selected by the manifest"

    def test_a_file_gone_from_a_listed_folder_was_removed_upstream(self):
        plan = make_plan({}, {"SDY1/Study/a": entry("SDY1/Study/a")}, {}, covered=["SDY1/Study"])
        assert only(plan, "SDY1/Study/a").reason == "removed upstream"

    def test_deletions_are_pending_only_when_pruning(self):
        """plan counts what apply with the same flags would do; kept files stay apart."""
        recorded = {"SDY1/a": entry("SDY1/a")}
        keeping = make_plan({}, recorded, {})
        assert (keeping.to_delete, [i.path for i in keeping.kept]) == ((), ["SDY1/a"])
        assert not keeping and keeping.stats()["delete"] == 0 and keeping.stats()["kept"] == 1
        pruning = make_plan({}, recorded, {}, prune=True)
        assert ([i.path for i in pruning.to_delete], pruning.kept) == (["SDY1/a"], ())
        assert pruning and pruning.stats()["delete"] == 1 and pruning.stats()["kept"] == 0

    def test_filtered_file_delete_reason(self):
        """A recorded file still listed upstream but filtered out says so."""
        plan = make_plan({}, {"SDY1/a": entry("SDY1/a")}, {}, listed=["SDY1/a"])
        reason = "filtered out by the manifest's include/exclude/file_types"
        assert only(plan, "SDY1/a").reason == reason

    def test_stats_count_every_action(self):
        """stats() has a count for every action, zero where absent."""
        plan = make_plan({"SDY1/a": remote("SDY1/a")}, {}, {})
        assert plan.stats() == {
            "download": 1,
            "update": 0,
            "repair": 0,
            "delete": 0,
            "unchanged": 0,
            "kept": 0,
        }

    def test_items_are_sorted(self):
        """Items come out in path order whatever the input order."""
        selected = {p: remote(p) for p in ["SDY1/c", "SDY1/a", "SDY1/b"]}
        assert [i.path for i in make_plan(selected, {}, {}).items] == ["SDY1/a", "SDY1/b", "SDY1/c"]


class TestNeedsHash:
    def test_only_recorded_files_with_moved_fingerprint_are_hashed(self):
        """Unrecorded files and unchanged fingerprints never cost a read."""
        e = entry("SDY1/a")
        assert needs_hash(None, 10, 1) is False
        assert needs_hash(e, 10, 1) is False
        assert needs_hash(e, 10, 2) is True
        assert needs_hash(e, 11, 1) is True


# -- properties ----------------------------------------------------------------------------

paths = st.lists(st.sampled_from([f"SDY1/f{i}" for i in range(12)]), unique=True, max_size=12)


@st.composite
def worlds(draw):
    wanted = draw(paths)
    recorded = draw(paths)
    on_disk = draw(paths)
    selected = {p: remote(p, size=draw(st.integers(0, 3))) for p in wanted}
    state = {
        p: entry(
            p,
            size=draw(st.integers(0, 3)),
            mtime_ns=draw(st.integers(0, 2)),
            remote_size=draw(st.integers(0, 3)),
        )
        for p in recorded
    }
    observed = {
        p: Observed(
            draw(st.integers(0, 3)),
            draw(st.integers(0, 2)),
            draw(st.sampled_from([None, CHECKSUM])),
        )
        for p in on_disk
    }
    return selected, state, observed


def carry_out(selected, state, plan):
    """Apply a plan the way apply does: fetched files recorded, deletions forgotten."""
    new_state = dict(state)
    observed = {}
    for item in plan.items:
        if item.action is Action.DELETE:
            new_state.pop(item.path)
            continue
        r = selected[item.path]
        if item.action is not Action.UNCHANGED:
            new_state[item.path] = entry(
                item.path, size=r.size, mtime_ns=7, remote_size=r.size, remote_mtime=r.mtime
            )
        e = new_state[item.path]
        observed[item.path] = Observed(e.size, e.mtime_ns)
    return new_state, observed


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_every_path_appears_in_exactly_one_item(world):
    """Each selected or recorded path gets exactly one item."""
    selected, state, observed = world
    plan = make_plan(selected, state, observed)
    listed = [i.path for i in plan.items]
    assert sorted(listed) == sorted(selected.keys() | state.keys())


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_applying_a_plan_then_replanning_gives_nothing_to_do(world):
    """plan(apply(plan)) is empty: the planner converges in one step."""
    selected, state, observed = world
    plan = make_plan(selected, state, observed)
    new_state, new_observed = carry_out(selected, state, plan)
    assert not make_plan(selected, new_state, new_observed)


class TestContentDecides:
    """Where upstream and the record both have an MD5, the date does not matter."""

    MD5 = "0123456789abcdef0123456789abcdef"

    def test_a_date_written_another_way_is_no_change(self):
        """Recorded from the legacy listing (a time), now read from the manifest (a date)."""
        recorded = {"SDY1/a": entry("SDY1/a", remote_mtime=MTIME, remote_md5=self.MD5)}
        catalog = {"SDY1/a": remote("SDY1/a", mtime="2017-06-15", md5=self.MD5)}
        observed = {"SDY1/a": Observed(10, 1)}
        assert only(make_plan(catalog, recorded, observed), "SDY1/a").action is Action.UNCHANGED

    def test_other_bytes_behind_the_same_date_are_an_update(self):
        recorded = {"SDY1/a": entry("SDY1/a", remote_mtime="2017-06-15", remote_md5=self.MD5)}
        catalog = {"SDY1/a": remote("SDY1/a", mtime="2017-06-15", md5="f" * 32)}
        item = only(make_plan(catalog, recorded, {"SDY1/a": Observed(10, 1)}), "SDY1/a")
        assert (item.action, item.reason) == (Action.UPDATE, "changed upstream: md5 differs")

    def test_without_an_md5_the_date_still_decides(self):
        recorded = {"SDY1/a": entry("SDY1/a", remote_mtime=MTIME)}
        catalog = {"SDY1/a": remote("SDY1/a", mtime="2017-06-16")}
        item = only(make_plan(catalog, recorded, {"SDY1/a": Observed(10, 1)}), "SDY1/a")
        assert item.action is Action.UPDATE
