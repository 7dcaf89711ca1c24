"""`immsync apply` end to end: real HTTP to the emulator, real stand-in ascp processes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from conftest import PASSWORD, World

from immsync.errors import ExitCode
from immsync.hashing import file_checksum
from immsync.state import StateStore, state_path
from immsync.testing.sampledata import SAMPLE_MTIME, write_file

FLOW = "SDY1/ResultFiles/Flow_cytometry_result"
FCS = f"{FLOW}/02054141.001.52628.fcs"

SDY1_FLOW_AND_STUDY = """\
  - accession: SDY1
    paths:
      - ResultFiles/Flow_cytometry_result
      - StudyFiles/Study_design.txt
"""


def remote_files(world: World, prefix: str) -> list[str]:
    base = world.remote / prefix
    return sorted(p.relative_to(world.remote).as_posix() for p in base.rglob("*") if p.is_file())


def recorded(world: World) -> dict:
    with StateStore.open(state_path(world.dest), create=False) as store:
        return store.entries()


def summary(result) -> dict:
    """The closing event of `apply --json`: the plan and the result, as one document."""
    event = json.loads(result.stdout.splitlines()[-1])
    assert event["type"] == "summary", event
    return event


def replace_upstream(world: World, path: str, data: bytes) -> None:
    # A later mtime, as a new upload upstream would have.
    write_file(world.remote, path, data, mtime=time.time())


class TestFirstSync:
    def test_fetches_exactly_the_selection_and_records_it(self, world: World):
        """Every selected file lands at dest/<path>, byte-identical, recorded with its xxh3."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        result = world.apply()
        assert result.exit_code == 0, result.output
        expected = [*remote_files(world, FLOW), "SDY1/StudyFiles/Study_design.txt"]
        assert world.local_files() == sorted(expected)
        entries = recorded(world)
        assert sorted(entries) == sorted(expected)
        for path in expected:
            assert (world.dest / path).read_bytes() == (world.remote / path).read_bytes()
            assert entries[path].checksum == file_checksum(world.dest / path)
        assert "downloaded" in result.stderr + result.stdout

    def test_many_files_travel_in_one_session(self, world: World):
        """The whole selection moves in a single ascp session with a single token."""
        world.write_manifest("  - accession: SDY1\n")
        assert world.apply("--jobs", "1").exit_code == 0
        assert len(world.sessions()) == 1
        assert world.emulator.count("/data/download/token") == 1

    def test_whole_study_and_filters(self, world: World):
        """No paths means the whole study; include/exclude filter below it."""
        world.write_manifest(
            "  - accession: SDY1\n    include: ['*.fcs', '*.txt']\n    exclude: ['hai_*']\n"
        )
        assert world.apply().exit_code == 0
        wanted = [
            p
            for p in remote_files(world, "SDY1")
            if (p.endswith((".fcs", ".txt"))) and not p.rsplit("/", 1)[-1].startswith("hai_")
        ]
        assert world.local_files() == wanted

    def test_no_staging_leftovers(self, world: World):
        """After a clean run the staging area is empty."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        assert world.apply().exit_code == 0
        staging = world.dest / ".immsync" / "staging"
        assert not staging.exists() or not any(p.is_file() for p in staging.rglob("*"))

    def test_json_output(self, world: World):
        """--json ends its event stream with a summary holding the plan and the result counts."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        result = world.apply("--json")
        assert result.exit_code == 0, result.output
        doc = summary(result)
        n = len(remote_files(world, FLOW)) + 1
        assert doc["plan"]["summary"] == {
            "download": n,
            "update": 0,
            "repair": 0,
            "delete": 0,
            "unchanged": 0,
            "kept": 0,
        }
        assert doc["result"]["counts"]["download"] == n
        assert doc["result"]["failures"] == []


class TestRerun:
    def test_noop_rerun_starts_no_session(self, world: World):
        """A second apply with nothing changed starts no ascp and asks for no token."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        assert world.apply().exit_code == 0
        sessions = len(world.sessions())
        tokens = world.emulator.count("/data/download/token")
        result = world.apply("--json")
        assert result.exit_code == 0
        assert len(world.sessions()) == sessions
        assert world.emulator.count("/data/download/token") == tokens
        assert summary(result)["result"]["counts"]["download"] == 0

    def test_each_run_reads_one_manifest_per_study_and_nothing_else(self, world: World):
        """The study file manifest is the catalog: one request a study and run, no listing."""
        route = "/data/query/api/study/manifest/SDY1"
        world.write_manifest(SDY1_FLOW_AND_STUDY)  # two roots of one study
        assert world.apply().exit_code == 0
        assert world.emulator.count(route) == 1
        before = len(world.emulator.requests_log)
        assert world.apply().exit_code == 0
        assert world.run("plan", str(world.manifest_path)).exit_code == 0
        assert world.emulator.count(route) == 3
        after = [r.path for r in world.emulator.requests_log[before:]]
        # This legacy world signs in with a password once per run; with an API key
        # (test_today.py) the manifest is the only request.
        assert after == ["/auth/token", route, "/auth/token", route], after
        assert world.emulator.count("/data/list") == 0

    def test_without_the_manifest_each_folder_is_listed_once(self, world: World):
        """A deployment with only the folder listing: the probe that tells it from a
        missing study is the first level of the study's walk, not a second listing."""
        world.emulator.manifest_route = False
        world.write_manifest("  - accession: SDY1\n")
        assert world.apply().exit_code == 0
        log = world.emulator.requests_log
        listed = [r.json_body["path"] for r in log if r.path == "/data/list"]
        assert listed, "the study was listed folder by folder"
        assert sorted(listed) == sorted(set(listed)), listed
        assert world.local_files() == sorted(
            p.relative_to(world.remote).as_posix()
            for p in (world.remote / "SDY1").rglob("*")
            if p.is_file()
        )

    def test_new_bytes_behind_the_same_size_and_time_are_caught(self, world: World):
        """New bytes upstream, same size and listed second: the manifest's MD5 tells."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        assert world.apply().exit_code == 0
        old = (world.remote / FCS).read_bytes()
        new = bytes(b ^ 0xFF for b in old)
        # Half a second later: the catalog (whole seconds) shows the same time.
        write_file(world.remote, FCS, new, mtime=SAMPLE_MTIME + 0.5)
        actions = world.run("plan", str(world.manifest_path), "--json").json()["actions"]
        assert [(a["action"], a["path"]) for a in actions] == [("update", FCS)]
        assert actions[0]["reason"] == "changed upstream: md5 differs"
        assert world.apply().exit_code == 0
        assert (world.dest / FCS).read_bytes() == new

    def test_noop_plan_says_nothing_to_do(self, world: World):
        """plan after a sync lists no actions and counts everything unchanged."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.apply()
        doc = world.run("plan", str(world.manifest_path), "--json").json()
        assert doc["actions"] == []
        assert doc["summary"]["unchanged"] == len(remote_files(world, FLOW)) + 1

    def test_file_replaced_upstream_is_fetched_again(self, world: World):
        """A file changed upstream is planned as update and fetched; others are not."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.apply()
        replace_upstream(world, FCS, b"new content upstream" * 100)
        plan = world.run("plan", str(world.manifest_path), "--json").json()
        assert [(a["action"], a["path"]) for a in plan["actions"]] == [("update", FCS)]
        assert plan["actions"][0]["reason"].startswith("changed upstream: size")
        result = world.apply("--json")
        assert result.exit_code == 0, result.output
        assert summary(result)["result"]["counts"]["update"] == 1
        assert (world.dest / FCS).read_bytes() == b"new content upstream" * 100
        assert world.sessions()[-1]["sources"] == ["/" + FCS]

    def test_deleted_and_corrupted_files_are_named_by_verify_then_repaired(self, world: World):
        """verify names a deleted and a corrupted file; apply repairs both."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.apply()
        gone = "SDY1/StudyFiles/Study_design.txt"
        (world.dest / gone).unlink()
        target = world.dest / FCS
        data = bytearray(target.read_bytes())
        data[10] ^= 0xFF
        target.write_bytes(bytes(data))
        result = world.run("verify", str(world.manifest_path))
        assert result.exit_code == ExitCode.INTEGRITY
        assert f"missing   {gone}" in result.stderr
        assert f"modified  {FCS}" in result.stderr
        status = world.run("status", str(world.manifest_path), "--json").json()
        states = {f["path"]: f["state"] for f in status["files"]}
        assert states[gone] == "missing"
        assert states[FCS] == "modified"
        plan = world.run("plan", str(world.manifest_path), "--json").json()
        assert sorted((a["action"], a["path"]) for a in plan["actions"]) == [
            ("repair", FCS),
            ("repair", gone),
        ]
        assert world.apply().exit_code == 0
        assert world.run("verify", str(world.manifest_path)).exit_code == 0
        assert target.read_bytes() == (world.remote / FCS).read_bytes()

    def test_touched_file_is_not_refetched(self, world: World):
        """A file whose mtime changed but content did not is re-recorded, not fetched."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.apply()
        os.utime(world.dest / FCS, (1, 1))
        sessions = len(world.sessions())
        assert world.apply().exit_code == 0
        assert len(world.sessions()) == sessions
        assert recorded(world)[FCS].mtime_ns == 1_000_000_000


class TestStaging:
    def test_leftover_of_unknown_version_is_not_resumed(self, world: World):
        """A staged file left by some other run is discarded, not trusted or resumed."""
        world.emulator.manifest_route = False  # legacy listing: no MD5 to catch a wrong file later
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        size = (world.remote / FCS).stat().st_size
        leftover = world.dest / ".immsync" / "staging" / FCS
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"x" * size)  # right size, wrong bytes
        (leftover.parent / (leftover.name + ".partial")).write_bytes(b"y" * 10)
        result = world.apply()
        assert result.exit_code == 0, result.output
        assert (world.dest / FCS).read_bytes() == (world.remote / FCS).read_bytes()
        assert not any(p.is_file() for p in (world.dest / ".immsync" / "staging").rglob("*"))


class TestPrune:
    def test_prune_deletes_only_recorded_files(self, world: World):
        """--prune removes deselected recorded files and keeps the user's own files."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.apply()
        mine = world.dest / "SDY1" / "ResultFiles" / "my-notes.txt"
        mine.write_text("mine")
        world.write_manifest(
            "  - accession: SDY1\n    paths:\n      - StudyFiles/Study_design.txt\n"
        )
        plan = world.run("plan", str(world.manifest_path), "--json").json()
        assert plan["actions"] == [] and len(plan["kept"]) == 3  # what apply would do
        pruning = world.run("plan", str(world.manifest_path), "--json", "--prune")
        assert pruning.exit_code == ExitCode.USAGE  # as apply --prune would refuse
        plan = world.run(
            "plan", str(world.manifest_path), "--json", "--prune", "--max-delete", "3"
        ).json()
        assert {a["action"] for a in plan["actions"]} == {"delete"}
        assert {a["reason"] for a in plan["actions"]} == {"no longer selected by the manifest"}
        without = world.apply()
        assert without.exit_code == 0
        assert "3 files no longer selected are kept; `--prune` removes them" in without.output
        assert (world.dest / FCS).exists()  # not deleted without --prune
        guarded = world.apply("--prune")
        assert guarded.exit_code == ExitCode.USAGE
        assert "would delete 3 of 4 recorded files, more than the limit of 50% of them" in (
            guarded.stderr
        )
        result = world.apply("--prune", "--max-delete", "3")
        assert result.exit_code == 0, result.output
        assert not (world.dest / FCS).exists()
        assert mine.read_text() == "mine"
        assert sorted(recorded(world)) == ["SDY1/StudyFiles/Study_design.txt"]

    def test_max_delete_guard(self, world: World):
        """A prune deleting more than --max-delete changes nothing and says why."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.apply()
        world.write_manifest("  - accession: SDY269\n")
        result = world.apply("--prune", "--max-delete", "1")
        assert result.exit_code == ExitCode.USAGE
        assert "more than the limit of 1; nothing was changed" in result.stderr
        assert (world.dest / FCS).exists()


class TestFailures:
    def test_one_failed_file_leaves_the_others_recorded(self, world: World):
        """An ascp failure for one file keeps and records every other file, exit 5."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.configure_aspera(faults=[{"kind": "partial", "path": "/" + FCS, "times": 99}])
        result = world.apply()
        assert result.exit_code == ExitCode.TRANSFER
        assert FCS in result.stderr
        assert "every other file was kept and recorded" in result.stderr
        entries = recorded(world)
        assert FCS not in entries
        assert len(entries) == len(remote_files(world, FLOW))  # the rest, incl. Study_design
        world.configure_aspera(faults=[])
        assert world.apply().exit_code == 0
        assert FCS in recorded(world)

    def test_missing_remote_path_is_named(self, world: World):
        """A manifest path absent upstream is named; the rest still syncs; exit 4."""
        world.write_manifest(
            "  - accession: SDY1\n    paths:\n      - StudyFiles/Study_design.txt\n"
            "      - ResultFiles/No_such_result\n"
        )
        result = world.apply()
        assert result.exit_code == ExitCode.REMOTE
        missing = "manifest.yaml:7: SDY1/ResultFiles/No_such_result not found on ImmPort"
        assert missing in result.stderr
        assert world.local_files() == ["SDY1/StudyFiles/Study_design.txt"]

    def test_bad_credentials(self, world: World):
        """Wrong password: exit 3, a message naming the variables, no traceback."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.env["IMMPORT_PASSWORD"] = "wrong"
        result = world.apply()
        assert result.exit_code == ExitCode.AUTH
        assert "IMMPORT_PASSWORD" in result.stderr
        assert "Traceback" not in result.output

    def test_missing_ascp_is_a_setup_error(self, world: World, tmp_path: Path):
        """No ascp anywhere with --transport ascp: exit 8 naming IMMSYNC_ASCP."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        world.env["IMMSYNC_ASCP"] = str(tmp_path / "nowhere" / "ascp")
        world.env["HOME"] = str(tmp_path / "empty-home")
        world.env["PATH"] = str(tmp_path / "empty-bin")
        result = world.apply("--transport", "ascp")
        assert result.exit_code == ExitCode.SETUP
        assert "IMMSYNC_ASCP" in result.stderr

    def test_dry_run_changes_nothing(self, world: World):
        """--dry-run plans and prints but writes no file and no state."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        result = world.apply("--dry-run")
        assert result.exit_code == 0
        assert "to download" in result.stdout
        assert not world.dest.exists()
        assert world.sessions() == []


class TestSecrets:
    def test_credentials_and_tokens_never_leak(self, world: World):
        """No password, bearer or Aspera token in any ascp argv, output or state file."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        outputs = [world.apply("--json"), world.run("-vv", "apply", str(world.manifest_path))]
        replace_upstream(world, FCS, b"changed")
        outputs.append(world.run("-vv", "apply", str(world.manifest_path)))
        secrets = [PASSWORD, *world.emulator.issued_tokens()]
        sessions = world.sessions()
        assert sessions, "expected ascp sessions"
        for session in sessions:
            assert session["token_source"] == "env"
            for secret in secrets:
                assert all(secret not in arg for arg in session["argv"])
        for out in outputs:
            for secret in secrets:
                assert secret not in out.output
        state_bytes = b"".join(
            p.read_bytes() for p in (world.dest / ".immsync").rglob("*") if p.is_file()
        )
        for secret in secrets:
            assert secret.encode() not in state_bytes


class TestScratch:
    def test_old_scratch_files_are_removed_fresh_ones_kept(self, world: World):
        """Pair lists a killed run left over a day ago are removed; recent ones are kept."""
        world.write_manifest(SDY1_FLOW_AND_STUDY)
        scratch = world.dest / ".immsync" / "tmp"
        scratch.mkdir(parents=True)
        old, fresh = scratch / "ascp-pairs-old.txt", scratch / "ascp-pairs-fresh.txt"
        old.write_text("x")
        fresh.write_text("y")
        os.utime(old, (time.time() - 2 * 86400,) * 2)
        assert world.apply().exit_code == 0
        assert not old.exists()
        assert fresh.exists()
