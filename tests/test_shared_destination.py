"""Two manifests applying to one destination: neither prunes the other's files.

The state records which manifest selected which file (state version 2); a recorded
file another manifest still selects is left alone by plan, apply and --prune.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import CliResult, World

from immsync.errors import ExitCode
from immsync.state import StateStore, manifest_label, shown_label, state_path

HEAD = "version: 1\ndestination: data\nstudies:\n"
SDY1_STUDYFILES = "  - accession: SDY1\n    paths: [StudyFiles]\n"
SDY269 = "  - accession: SDY269\n"
SDY1_HAI = "  - accession: SDY1\n    paths: [ResultFiles/HAI_result]\n"

STUDYFILES = {"SDY1/StudyFiles/SDY1_protocol.pdf", "SDY1/StudyFiles/Study_design.txt"}
HAI = "SDY1/ResultFiles/HAI_result/hai_results.txt"


def write(world: World, name: str, studies: str) -> Path:
    path = world.root / name
    path.write_text(HEAD + studies)
    return path


def run(world: World, command: str, manifest: Path, *extra: str) -> CliResult:
    return world.run(command, str(manifest), *extra)


def apply(world: World, manifest: Path, *extra: str) -> CliResult:
    result = world.run("apply", str(manifest), "--retry-wait", "0.01", *extra)
    return result


def plan_json(world: World, manifest: Path, *extra: str) -> dict[str, Any]:
    result = run(world, "plan", manifest, "--json", *extra)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = result.json()
    return data


def selections(world: World) -> dict[str, frozenset[str]]:
    """What each manifest selects, by its file's absolute path."""
    with StateStore.open(state_path(world.dest), create=False) as store:
        found = store.selections().items()
    return {shown_label(label, world.dest): s.paths for label, s in found}


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


def sdy269_files(world: World) -> set[str]:
    """SDY269's files a whole-study entry takes (every kind but the archive)."""
    below = (world.remote / "SDY269").rglob("*")
    return {
        p.relative_to(world.remote).as_posix()
        for p in below
        if p.is_file() and "archive" not in p.relative_to(world.remote).parts
    }


@pytest.fixture(name="pair")
def _pair(today: World) -> tuple[World, Path, Path]:
    """a.yaml (SDY1's StudyFiles) and b.yaml (SDY269), both applied to ``data``."""
    a = write(today, "a.yaml", SDY1_STUDYFILES)
    b = write(today, "b.yaml", SDY269)
    assert apply(today, a).exit_code == 0
    assert apply(today, b).exit_code == 0
    return today, a, b


class TestDisjointManifests:
    def test_plan_of_one_leaves_the_other_s_files_alone_and_says_so(
        self, pair: tuple[World, Path, Path]
    ) -> None:
        world, a, b = pair
        for extra in ((), ("--prune",)):
            result = run(world, "plan", b, "--detailed-exitcode", *extra)
            assert result.exit_code == 0, result.output
            assert "delete" not in result.stdout.replace("0 to delete", "")
            assert "keep " not in result.stdout and "no longer selected" not in result.stdout
            assert f"note: the destination is shared with {a} (last applied 20" in result.stdout
            assert "2 recorded files it selects and this manifest does not are left alone" in (
                result.stdout
            )
        data = plan_json(world, b, "--prune")
        assert data["actions"] == [] and data["kept"] == []
        assert data["summary"]["delete"] == 0 and data["summary"]["kept"] == 0
        assert data["summary"]["unchanged"] == len(sdy269_files(world))
        [shared] = data["shared_with"]
        assert shared["manifest"] == str(a) and shared["left_alone"] == 2
        assert shared["last_applied"].endswith("Z")
        assert any(note.startswith(f"the destination is shared with {a}") for note in data["notes"])

    def test_apply_prune_of_one_never_removes_the_other_s_files(
        self, pair: tuple[World, Path, Path]
    ) -> None:
        world, a, b = pair
        result = apply(world, b, "--prune")
        assert result.exit_code == 0, result.output
        assert "deleted" not in result.output.replace("0 deleted", "")
        assert set(world.local_files()) >= STUDYFILES
        assert run(world, "verify", a).exit_code == 0

    def test_a_destination_used_by_one_manifest_is_not_shared(self, today: World) -> None:
        a = write(today, "a.yaml", SDY1_STUDYFILES)
        assert apply(today, a).exit_code == 0
        data = plan_json(today, a)
        assert data["shared_with"] == []
        assert not any("shared" in note for note in data["notes"])

    def test_the_identity_is_the_file_whichever_way_it_is_named(
        self, pair: tuple[World, Path, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world, a, b = pair
        monkeypatch.chdir(world.root / "data")
        assert apply(world, Path("../b.yaml")).exit_code == 0
        assert set(selections(world)) == {str(a), str(b)}
        assert [s["manifest"] for s in plan_json(world, Path("../a.yaml"))["shared_with"]] == [
            str(b)
        ]


class TestOverlappingManifests:
    def test_a_file_leaves_only_when_no_manifest_selects_it(self, today: World) -> None:
        a = write(today, "a.yaml", SDY1_STUDYFILES)
        b = write(
            today,
            "b.yaml",
            "  - accession: SDY1\n    paths: [StudyFiles, ResultFiles/HAI_result]\n",
        )
        assert apply(today, a).exit_code == 0
        assert apply(today, b).exit_code == 0
        # b drops StudyFiles: a still selects them, so b's prune leaves them.
        write(today, "b.yaml", SDY1_HAI)
        assert run(today, "plan", b, "--prune", "--detailed-exitcode").exit_code == 0
        assert apply(today, b, "--prune").exit_code == 0
        assert set(today.local_files()) >= STUDYFILES
        # a drops them too: now no manifest selects them, and a's prune removes them.
        write(today, "a.yaml", SDY1_HAI)
        everything = ("--prune", "--max-delete", "100%")
        data = plan_json(today, a, *everything)
        assert {i["path"] for i in data["actions"] if i["action"] == "delete"} == STUDYFILES
        assert data["shared_with"][0]["left_alone"] == 0
        assert run(today, "plan", a, *everything, "--detailed-exitcode").exit_code == (
            ExitCode.CHANGES_PENDING
        )
        assert apply(today, a, *everything).exit_code == 0
        assert not STUDYFILES & set(today.local_files())
        assert HAI in today.local_files()
        assert run(today, "plan", b, "--prune", "--detailed-exitcode").exit_code == 0

    def test_status_and_verify_report_only_that_manifest_s_files(self, today: World) -> None:
        a = write(today, "a.yaml", SDY1_STUDYFILES)
        b = write(today, "b.yaml", SDY1_HAI)
        assert apply(today, a).exit_code == 0
        assert apply(today, b).exit_code == 0
        for command in ("status", "verify"):
            for manifest, expected in ((a, STUDYFILES), (b, {HAI})):
                result = run(today, command, manifest, "--json")
                assert result.exit_code == 0, result.output
                assert {f["path"] for f in result.json()["files"]} == expected


class TestMaxDelete:
    def test_only_true_candidates_count_against_the_limit(
        self, pair: tuple[World, Path, Path]
    ) -> None:
        world, a, _b = pair
        # a keeps one of its two files: one true candidate, of two records a answers for
        # (b's files are not a's to count, in the number nor in the share).
        write(world, "a.yaml", "  - accession: SDY1\n    paths: [StudyFiles/Study_design.txt]\n")
        assert run(world, "plan", a, "--prune", "--max-delete", "1").exit_code == 0
        refused = run(world, "plan", a, "--prune", "--max-delete", "40%")
        assert refused.exit_code == ExitCode.USAGE, refused.output
        assert "would delete 1 of 2 recorded files" in refused.stderr
        assert apply(world, a, "--prune", "--max-delete", "40%").exit_code == ExitCode.USAGE
        assert set(world.local_files()) >= STUDYFILES
        done = apply(world, a, "--prune", "--max-delete", "1")
        assert done.exit_code == 0, done.output
        assert "SDY1/StudyFiles/SDY1_protocol.pdf" not in world.local_files()
        assert sdy269_files(world) <= set(world.local_files())

    def test_a_refused_prune_records_no_new_selection(self, pair: tuple[World, Path, Path]) -> None:
        world, a, _b = pair
        before = selections(world)
        write(world, "a.yaml", "  - accession: SDY1\n    paths: [StudyFiles/Study_design.txt]\n")
        assert apply(world, a, "--prune", "--max-delete", "0").exit_code == ExitCode.USAGE
        assert selections(world) == before


class TestListingFailures:
    def test_selections_below_a_root_that_failed_to_list_are_kept(
        self, pair: tuple[World, Path, Path]
    ) -> None:
        world, a, b = pair
        write(world, "b.yaml", SDY269 + SDY1_HAI)
        world.emulator.inject("/data/query/api/study/manifest/SDY269", status=503, times=50)
        assert apply(world, b).exit_code == ExitCode.REMOTE
        world.emulator.clear_faults()
        assert selections(world)[str(b)] == {*sdy269_files(world), HAI}
        # a's prune still leaves SDY269 alone: b selects it, as far as anyone knows.
        write(world, "a.yaml", SDY1_STUDYFILES)
        assert run(world, "plan", a, "--prune", "--detailed-exitcode").exit_code == 0


class TestForget:
    def test_a_retired_manifest_s_files_become_prunable(
        self, pair: tuple[World, Path, Path]
    ) -> None:
        world, a, b = pair
        a.unlink()
        note = run(world, "plan", b).stdout
        assert f"{a} no longer exists: if it moved or is retired, run `immsync forget {a} " in (
            note.replace("\n", " ")
        )
        result = world.run("forget", str(a), "--destination", str(world.dest))
        assert result.exit_code == 0, result.output
        assert f"forgot {a} in {world.dest}: 2 recorded files no manifest selects now" in (
            result.stdout
        )
        assert set(selections(world)) == {str(b)}
        data = plan_json(world, b, "--prune")
        assert data["shared_with"] == []
        assert {i["path"] for i in data["actions"] if i["action"] == "delete"} == STUDYFILES
        assert apply(world, b, "--prune").exit_code == 0
        assert not STUDYFILES & set(world.local_files())

    def test_forget_by_manifest_file(self, pair: tuple[World, Path, Path]) -> None:
        world, a, b = pair
        assert world.run("forget", str(a)).exit_code == 0
        assert set(selections(world)) == {str(b)}
        # Applied again, it is back.
        assert apply(world, a).exit_code == 0
        assert set(selections(world)) == {str(a), str(b)}

    def test_forget_errors_are_short_with_a_hint(self, pair: tuple[World, Path, Path]) -> None:
        world, a, _b = pair
        unknown = world.run("forget", "/nowhere/x.yaml", "--destination", str(world.dest))
        assert unknown.exit_code == ExitCode.USAGE
        assert f"no manifest called /nowhere/x.yaml is recorded in {world.dest}" in unknown.stderr
        assert str(a) in unknown.stderr and "hint:" in unknown.stderr
        missing = world.run("forget", str(world.root / "gone.yaml"))
        assert missing.exit_code == ExitCode.USAGE
        assert "--destination DIR" in missing.stderr
        empty = world.root / "empty"
        empty.mkdir()
        nothing = world.run("forget", str(a), "--destination", str(empty))
        assert nothing.exit_code == ExitCode.USAGE
        assert f"nothing is recorded in {empty}" in nothing.stderr
        assert not (empty / ".immsync").exists()
        assert "Traceback" not in unknown.output + missing.output + nothing.output


def make_version_1(path: Path, rows: list[tuple[Any, ...]]) -> None:
    """A state as immsync wrote it before it recorded selections (version 1)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("BEGIN IMMEDIATE")
    db.execute(
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
    db.execute(
        """CREATE TABLE staging (
            path TEXT PRIMARY KEY,
            remote_size INTEGER NOT NULL,
            remote_mtime TEXT NOT NULL,
            remote_md5 TEXT
        ) WITHOUT ROWID"""
    )
    db.executemany("INSERT INTO files VALUES (?,?,?,?,?,?,?)", rows)
    db.execute(f"PRAGMA application_id={0x494D5359}")
    db.execute("PRAGMA user_version=1")
    db.execute("COMMIT")
    db.close()


class TestVersion1States:
    def rows(self, world: World) -> list[tuple[Any, ...]]:
        with sqlite3.connect(state_path(world.dest)) as db:
            return list(db.execute("SELECT * FROM files"))

    def test_a_version_1_state_is_read_as_it_is_and_upgraded_on_apply(
        self, pair: tuple[World, Path, Path]
    ) -> None:
        world, a, b = pair
        rows = self.rows(world)
        state = state_path(world.dest)
        for suffix in ("", "-wal", "-shm"):
            state.with_name(state.name + suffix).unlink(missing_ok=True)
        make_version_1(state, rows)
        # Read-only commands read it and leave it at version 1.
        assert run(world, "status", a).exit_code == 0
        assert run(world, "verify", b).exit_code == 0
        # Nothing says who selected what: as before, b's prune would remove a's files.
        data = plan_json(world, b, "--prune")
        assert {i["path"] for i in data["actions"]} == STUDYFILES
        assert data["shared_with"] == []
        assert user_version(state) == 1
        # An apply upgrades it in place, keeps every record and fetches nothing.
        result = apply(world, a, "--json")
        assert result.exit_code == 0, result.output
        assert user_version(state) == 2
        assert self.rows(world) == rows
        summary = json.loads(result.stdout.splitlines()[-1])
        assert summary["result"]["counts"]["download"] == 0
        assert set(selections(world)) == {str(a)}
        # From then on, a's files are a's.
        assert plan_json(world, b, "--prune")["actions"] == []

    def test_an_upgrade_that_fails_leaves_version_1_whole(
        self, pair: tuple[World, Path, Path]
    ) -> None:
        world, a, _b = pair
        rows = self.rows(world)
        state = state_path(world.dest)
        for suffix in ("", "-wal", "-shm"):
            state.with_name(state.name + suffix).unlink(missing_ok=True)
        make_version_1(state, rows)
        with sqlite3.connect(state) as db:
            # Makes the upgrade's second step fail, after its first.
            db.execute("CREATE TABLE selections (x)")
        result = apply(world, a)
        assert result.exit_code == ExitCode.LOCAL, result.output
        assert "Traceback" not in result.output and "hint:" in result.stderr
        assert user_version(state) == 1
        with sqlite3.connect(state) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert "manifests" not in tables
        assert self.rows(world) == rows


class TestShards:
    def shards(self, world: World, manifest: Path, *which: int) -> None:
        for k in which:
            result = apply(world, manifest, "--shard", f"{k}/2")
            assert result.exit_code == 0, result.output

    def test_shards_selections_count_before_and_after_merging(self, today: World) -> None:
        a = write(today, "a.yaml", SDY1_STUDYFILES)
        b = write(today, "b.yaml", SDY269)
        assert apply(today, a).exit_code == 0
        self.shards(today, b, 1, 2)
        # Not merged yet: the shard states say what b selects.
        assert run(today, "plan", a, "--prune", "--detailed-exitcode").exit_code == 0
        [shared] = plan_json(today, a)["shared_with"]
        assert shared["manifest"] == str(b)
        assert shared["left_alone"] == len(sdy269_files(today))
        status = run(today, "status", b, "--json")
        assert {f["path"] for f in status.json()["files"]} == sdy269_files(today)
        assert today.run("merge-shards", str(b)).exit_code == 0
        assert selections(today)[str(b)] == sdy269_files(today)
        assert run(today, "plan", a, "--prune", "--detailed-exitcode").exit_code == 0
        # A sharded run that selects less replaces b's selection when merged.
        write(today, "b.yaml", "  - accession: SDY269\n    paths: [StudyFiles]\n")
        self.shards(today, b, 1, 2)
        assert today.run("merge-shards", str(b)).exit_code == 0
        assert selections(today)[str(b)] == {"SDY269/StudyFiles/SDY269_summary.txt"}

    def test_one_shard_alone_keeps_the_whole_selection(
        self, pair: tuple[World, Path, Path]
    ) -> None:
        world, a, b = pair
        # Each shard records b's whole selection, not its share: merging shard 1 alone
        # leaves no file of shard 2's share unclaimed, for a's prune to take.
        self.shards(world, b, 1)
        assert world.run("merge-shards", str(b)).exit_code == 0
        assert selections(world)[str(b)] == sdy269_files(world)
        assert run(world, "plan", a, "--prune", "--detailed-exitcode").exit_code == 0

    def test_a_shard_reads_a_version_1_main_state_and_the_merge_upgrades_it(
        self, pair: tuple[World, Path, Path]
    ) -> None:
        world, _a, b = pair
        state = state_path(world.dest)
        with sqlite3.connect(state) as db:
            rows = list(db.execute("SELECT * FROM files"))
        for suffix in ("", "-wal", "-shm"):
            state.with_name(state.name + suffix).unlink(missing_ok=True)
        make_version_1(state, rows)
        result = apply(world, b, "--shard", "1/2", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout.splitlines()[-1])["result"]["counts"]["download"] == 0
        assert user_version(state) == 1
        assert world.run("merge-shards", str(b)).exit_code == 0
        assert user_version(state) == 2
        assert set(selections(world)) == {str(b)}
        assert run(world, "plan", b, "--prune", "--detailed-exitcode").exit_code == (
            ExitCode.CHANGES_PENDING
        ), "a's files are still claimed by no manifest, as in a version-1 state"


def test_a_label_names_the_file_whichever_way_it_is_reached(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real)
    (real / "target.yaml").write_text("")
    (real / "m.yaml").symlink_to(real / "target.yaml")
    elsewhere = tmp_path / "elsewhere" / "data"
    for name in (tmp_path / "via" / "m.yaml", tmp_path / "via" / ".." / "real" / "m.yaml"):
        # Beside its destination: relative to the destination's folder, the link kept.
        assert manifest_label(name, real / "data") == "m.yaml"
        assert manifest_label(name, tmp_path / "via" / "data") == "m.yaml"
        assert manifest_label(name, tmp_path / "data") == "real/m.yaml"
        # Anywhere else: its absolute path.
        assert manifest_label(name, elsewhere) == str(real / "m.yaml")
    assert shown_label("m.yaml", tmp_path / "via" / "data") == str(real / "m.yaml")
    assert shown_label(str(real / "m.yaml"), elsewhere) == str(real / "m.yaml")


def test_a_project_moved_with_its_destination_keeps_its_manifests(
    pair: tuple[World, Path, Path],
) -> None:
    world, _a, _b = pair
    moved = world.root.parent / "moved"
    world.root.rename(moved)
    result = world.run("plan", str(moved / "b.yaml"), "--json", "--prune", "--detailed-exitcode")
    assert result.exit_code == 0, result.output
    [shared] = result.json()["shared_with"]
    assert shared["manifest"] == str(moved / "a.yaml") and shared["left_alone"] == 2
    assert not any("no longer exists" in note for note in result.json()["notes"])
