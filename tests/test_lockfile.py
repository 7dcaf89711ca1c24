"""The lock file: `immsync lock`, drift in `plan`, and `apply --frozen`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import World

from immsync.errors import ExitCode, UsageError
from immsync.lockfile import (
    DriftKind,
    LockFile,
    PinnedFile,
    compare,
    lock_path,
    make_lock,
    parse_lock,
    read_lock,
    render_lock,
)
from immsync.model import Manifest, RemoteFile, StudySelection
from immsync.testing.sampledata import SAMPLE_MTIME, write_file

FLOW = "SDY1/ResultFiles/Flow_cytometry_result"
FCS = f"{FLOW}/02054141.001.52628.fcs"
DESIGN = "SDY1/StudyFiles/Study_design.txt"
HAI = "SDY1/ResultFiles/HAI_result/hai_results.txt"
SDY1_FLOW_AND_STUDY = """\
  - accession: SDY1
    paths:
      - ResultFiles/Flow_cytometry_result
      - StudyFiles/Study_design.txt
  - accession: SDY269
"""


def selected_paths(world: World) -> list[str]:
    flow = sorted(p.relative_to(world.remote).as_posix() for p in (world.remote / FLOW).iterdir())
    sdy269 = sorted(
        p.relative_to(world.remote).as_posix()
        for p in (world.remote / "SDY269").rglob("*")
        if p.is_file()
    )
    return sorted([*flow, DESIGN, *sdy269])


def lock(world: World) -> dict:
    result = world.run("lock", str(world.manifest_path))
    assert result.exit_code == 0, result.output
    return json.loads(lock_path(world.manifest_path).read_text())


def drift_of(world: World) -> list[tuple[str, str]]:
    result = world.run("plan", str(world.manifest_path), "--json")
    assert result.exit_code == 0, result.output
    return [(d["path"], d["kind"]) for d in result.json()["lock_drift"]]


class TestLock:
    def test_lock_pins_every_selected_file_beside_the_manifest(self, world: World):
        """manifest.lock.json lists each selected file with size, mtime, MD5 and data release."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        result = world.run("lock", str(world.manifest_path))
        assert result.exit_code == 0, result.output
        target = world.root / "manifest.lock.json"
        assert f"wrote {target}: {len(selected_paths(world))} files pinned" in result.stdout
        doc = json.loads(target.read_text())
        assert doc["schema"] == "immsync.lock/1"
        assert doc["manifest"] == "manifest.yaml"
        rows = {row["path"]: row for row in doc["files"]}
        assert [row["path"] for row in doc["files"]] == selected_paths(world)
        fcs = rows[FCS]
        assert fcs["size"] == (world.remote / FCS).stat().st_size
        assert fcs["mtime"] == "2017-06-15T13:06:07Z"
        assert len(fcs["md5"]) == 32
        assert fcs["data_release"] == "DR47"  # named by SDY1-DR47_Tab.zip in the emulator
        assert "data_release" not in rows["SDY269/StudyFiles/SDY269_summary.txt"]

    def test_relocking_an_unchanged_upstream_rewrites_the_same_bytes(self, world: World):
        """No time stamp, sorted keys: locking twice gives a byte-identical file."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        lock(world)
        first = lock_path(world.manifest_path).read_bytes()
        result = world.run("lock", str(world.manifest_path))
        assert "(0 changed, 0 added, 0 removed since the previous lock)" in result.stdout
        assert lock_path(world.manifest_path).read_bytes() == first
        assert first.endswith(b"}\n")
        assert render_lock(read_lock(lock_path(world.manifest_path))).encode() == first

    def test_lock_is_not_written_when_a_path_cannot_be_listed(self, world: World):
        """A selected path missing upstream: exit 4 and no lock file (a partial pin would lie)."""
        world.write_manifest("  - accession: SDY1\n    paths: [No_such_folder]\n")
        result = world.run("lock", str(world.manifest_path))
        assert result.exit_code == ExitCode.REMOTE
        assert "the lock file was not written" in result.stderr
        assert not lock_path(world.manifest_path).exists()


class TestDrift:
    def test_no_drift_right_after_locking(self, world: World):
        """plan --json carries an empty lock_drift list when everything matches."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        lock(world)
        assert drift_of(world) == []

    def test_no_lock_means_no_lock_drift_key(self, world: World):
        """Without a lock file, plan --json has no lock_drift (nothing to compare with)."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        doc = world.run("plan", str(world.manifest_path), "--json").json()
        assert "lock_drift" not in doc

    def test_a_file_changed_upstream_is_drift(self, world: World):
        """Upstream replaced a pinned file: 'changed', shown in JSON and as a plan note."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        lock(world)
        write_file(world.remote, FCS, b"new upstream version", mtime=time.time())
        assert drift_of(world) == [(FCS, "changed")]
        text = world.run("plan", str(world.manifest_path))
        assert f"note: lock: {FCS}: changed upstream since the lock: size" in text.stdout

    def test_a_file_gone_upstream_is_drift(self, world: World):
        """A pinned file ImmPort no longer lists, still selected: 'gone_upstream'."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        lock(world)
        (world.remote / FCS).unlink()
        assert drift_of(world) == [(FCS, "gone_upstream")]

    def test_a_new_selection_the_lock_lacks_is_drift(self, world: World):
        """The manifest now selects a file the lock never pinned: 'not_in_lock'."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        lock(world)
        world.write_manifest(SDY1_FLOW_AND_STUDY.replace(
            "      - StudyFiles/Study_design.txt\n",
            "      - StudyFiles/Study_design.txt\n      - ResultFiles/HAI_result\n",
        ))
        assert drift_of(world) == [(HAI, "not_in_lock")]

    def test_a_pin_the_manifest_no_longer_selects_is_drift(self, world: World):
        """The manifest dropped a pinned file: 'not_selected' (not 'gone upstream')."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        lock(world)
        narrower = SDY1_FLOW_AND_STUDY.replace("      - StudyFiles/Study_design.txt\n", "")
        world.write_manifest(narrower)
        assert drift_of(world) == [(DESIGN, "not_selected")]

    def test_a_new_data_release_is_reported(self, world: World):
        """The study's data release moved on: a 'release_changed' entry for the study."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        lock(world)
        world.emulator.study_releases["SDY1"] = "DR48"
        assert drift_of(world) == [("SDY1", "release_changed")]


class TestFrozen:
    def test_frozen_fetches_exactly_what_the_lock_pins(self, world: World):
        """With a matching lock, apply --frozen transfers every pinned file and nothing else."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        lock(world)
        result = world.apply("--frozen")
        assert result.exit_code == 0, result.output
        fetched = sorted(s.lstrip("/") for session in world.sessions() for s in session["sources"])
        assert fetched == selected_paths(world)
        assert world.local_files() == selected_paths(world)

    def test_frozen_without_a_lock_says_how_to_make_one(self, world: World):
        """No lock file: exit 2 with a hint naming `immsync lock`."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        result = world.apply("--frozen")
        assert result.exit_code == ExitCode.USAGE
        assert "there is no lock file" in result.stderr
        assert "immsync lock" in result.stderr

    def test_frozen_refuses_upstream_changes_naming_each_file(self, world: World):
        """Two pinned files changed upstream: exit 2, both named, nothing transferred."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        lock(world)
        write_file(world.remote, FCS, b"v2", mtime=time.time())
        gone = f"{FLOW}/02054141.002.52629.fcs"
        (world.remote / gone).unlink()
        (world.remote / DESIGN).unlink()  # a path the manifest names: a listing problem
        result = world.apply("--frozen")
        assert result.exit_code == ExitCode.USAGE
        assert "--frozen: 2 files no longer match the lock file" in result.stderr
        assert f"  {FCS}: changed upstream since the lock: size" in result.stderr
        assert f"  {gone}: pinned by the lock but no longer on ImmPort" in result.stderr
        assert f"manifest.yaml:7: {DESIGN} not found on ImmPort" in result.stderr
        assert world.sessions() == []
        assert world.local_files() == []

    def test_frozen_refuses_a_selection_the_lock_lacks(self, world: World):
        """The manifest selects an unpinned file: exit 2 naming it, nothing transferred."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        lock(world)
        world.write_manifest("  - accession: SDY1\n  - accession: SDY269\n")
        result = world.apply("--frozen")
        assert result.exit_code == ExitCode.USAGE
        for path in (HAI, "SDY1/SDY1-DR47_Tab.zip", "SDY1/StudyFiles/SDY1_protocol.pdf"):
            assert f"  {path}: selected by the manifest but not in the lock" in result.stderr
        assert world.sessions() == []

    def test_frozen_json_ends_with_an_error_event(self, world: World):
        """apply --frozen --json on drift: the stream ends with an error event, exit code 2."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        lock(world)
        write_file(world.remote, FCS, b"v2", mtime=time.time())
        result = world.apply("--frozen", "--json")
        assert result.exit_code == ExitCode.USAGE
        last = json.loads(result.stdout.splitlines()[-1])
        assert (last["type"], last["exit_code"]) == ("error", ExitCode.USAGE)

    def test_frozen_verifies_against_the_pinned_md5(self, world: World):
        """Same size and time upstream but other bytes, MD5 endpoint down: the pin catches it."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        lock(world)
        world.emulator.manifest_route = False
        size = (world.remote / FCS).stat().st_size
        write_file(world.remote, FCS, b"x" * size, mtime=SAMPLE_MTIME)
        result = world.apply("--frozen", "--retries", "0")
        assert result.exit_code == ExitCode.TRANSFER
        assert f"{FCS}: MD5 mismatch" in result.stderr
        assert not (world.dest / FCS).exists()

    def test_a_new_release_alone_does_not_block_frozen(self, world: World):
        """A data release bump with identical files is information, not a frozen failure."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        lock(world)
        world.emulator.study_releases["SDY1"] = "DR48"
        assert world.apply("--frozen").exit_code == 0


class TestPure:
    """compare and the file format, on made-up data."""

    MANIFEST = Manifest(
        source=Path("m.yaml"),
        destination=Path("/data"),
        studies=(StudySelection("SDY1", paths=("A",), exclude=("*.zip",)),),
    )

    def test_each_direction_of_drift(self):
        """changed, gone upstream, not in lock, not selected: each found and worded."""
        pinned = make_lock(
            {
                "SDY1/A/same": RemoteFile("SDY1/A/same", 1, "t1", "a" * 32),
                "SDY1/A/changed": RemoteFile("SDY1/A/changed", 1, "t1", "b" * 32),
                "SDY1/A/gone": RemoteFile("SDY1/A/gone", 1, "t1"),
                "SDY1/A/old.zip": RemoteFile("SDY1/A/old.zip", 1, "t1"),
            },
            {"SDY1": "DR1"},
        )
        now = {
            "SDY1/A/same": RemoteFile("SDY1/A/same", 1, "t1", "a" * 32),
            "SDY1/A/changed": RemoteFile("SDY1/A/changed", 1, "t1", "c" * 32),
            "SDY1/A/new": RemoteFile("SDY1/A/new", 2, "t2"),
        }
        listed = {*now, "SDY1/A/old.zip"}
        drift = compare(pinned, self.MANIFEST, now, listed=listed, releases={"SDY1": "DR2"})
        assert [(d.path, d.kind) for d in drift] == [
            ("SDY1/A/changed", DriftKind.CHANGED),
            ("SDY1/A/gone", DriftKind.GONE),
            ("SDY1/A/new", DriftKind.NOT_IN_LOCK),
            ("SDY1/A/old.zip", DriftKind.NOT_SELECTED),
            ("SDY1", DriftKind.RELEASE),
        ]
        md5_change = f"md5 {'b' * 32} -> {'c' * 32}"
        assert str(drift[0]) == f"SDY1/A/changed: changed upstream since the lock: {md5_change}"
        assert [d.blocks_frozen for d in drift] == [True, True, True, True, False]

    def test_unlisted_folders_are_not_drift(self):
        """Paths below a folder that could not be listed are skipped, not called gone."""
        pinned = LockFile({"SDY1/A/x": PinnedFile("SDY1/A/x", 1, "t")})
        drift = compare(pinned, self.MANIFEST, {}, unlisted=lambda p: p.startswith("SDY1/A"))
        assert drift == []

    def test_round_trip(self):
        """render_lock then parse_lock gives the same lock; unknown optional fields are left out."""
        original = LockFile(
            {
                "SDY1/a": PinnedFile("SDY1/a", 3, "t", "d" * 32, "DR9"),
                "SDY1/b": PinnedFile("SDY1/b", 0, "t"),
            },
            manifest="m.yaml",
        )
        text = render_lock(original)
        assert '"md5"' in text and text.count('"md5"') == 1
        assert parse_lock(text) == original

    @pytest.mark.parametrize(
        ("text", "what"),
        [
            ("not json", "Expecting value"),
            ('{"schema": "other/1", "files": []}', "immsync.lock/1"),
            ('{"schema": "immsync.lock/1", "files": {}}', "'files' is not a list"),
            ('{"schema": "immsync.lock/1", "files": [{"path": "a", "size": -1, "mtime": "t"}]}',
             "files[0].size"),
            ('{"schema": "immsync.lock/1", "files": [{"path": "a", "size": 1, "mtime": "t"},'
             ' {"path": "a", "size": 1, "mtime": "t"}]}', "repeated"),
        ],
    )
    def test_a_damaged_lock_is_refused(self, text: str, what: str):
        """A lock file that is not ours, or is damaged, is a usage error naming the problem."""
        with pytest.raises(UsageError) as info:
            parse_lock(text, source="x.lock.json")
        assert what in info.value.message
        assert "immsync lock" in (info.value.hint or "")
