"""Today's ImmPort, end to end: a user with only an API key, as a new user would try it.

The emulator runs as ImmPort does since 2026 (API keys, the study file manifest,
DRS links; no password sign-in, no ``/data/list``, no Aspera tokens). Every command
is run through the command line: plan, apply, status, verify, lock, init, shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import World

from immsync.errors import ExitCode
from immsync.state import StateStore, state_path
from immsync.testing.sampledata import write_file

ROUTE = "/data/query/api/study/manifest/"
WANTED = """\
  - accession: SDY1
    paths: [StudyFiles, Protocols, ResultFiles]
  - accession: SDY269
    paths: [StudyFiles, ResultFiles]
"""
DESIGN = "SDY1/StudyFiles/Study_design.txt"
FCS = "SDY1/ResultFiles/Flow_cytometry_result/02054141.001.52628.fcs"


def upstream(world: World, prefixes: tuple[str, ...]) -> dict[str, str]:
    """MD5 of every file below *prefixes* in the emulator's tree, by path."""
    found = {}
    for path in world.remote.rglob("*"):
        rel = path.relative_to(world.remote).as_posix()
        if path.is_file() and rel.startswith(prefixes):
            found[rel] = hashlib.md5(path.read_bytes()).hexdigest()
    return found


def recorded(world: World) -> dict[str, Any]:
    with StateStore.open(state_path(world.dest), create=False) as store:
        return store.entries()


def paths_since(world: World, before: int) -> list[str]:
    return [r.path for r in world.emulator.requests_log[before:]]


WANTED_PREFIXES = (
    "SDY1/StudyFiles/",
    "SDY1/Protocols/",
    "SDY1/ResultFiles/",
    "SDY269/StudyFiles/",
    "SDY269/ResultFiles/",
)


class TestAUserWithOnlyAnApiKey:
    def test_plan_apply_status_verify(self, today: World) -> None:
        today.write_manifest(WANTED)
        wanted = upstream(today, WANTED_PREFIXES)
        plan = today.run("plan", str(today.manifest_path), "--json")
        assert plan.exit_code == 0, plan.output
        assert sorted(a["path"] for a in plan.json()["actions"]) == sorted(wanted)

        result = today.apply("--transport", "https")
        assert result.exit_code == 0, result.output
        assert sorted(today.local_files()) == sorted(wanted)
        for path, md5 in wanted.items():
            assert hashlib.md5((today.dest / path).read_bytes()).hexdigest() == md5
        # Every file was verified against, and recorded with, the manifest's MD5.
        assert {p: e.remote_md5 for p, e in recorded(today).items()} == wanted
        assert today.emulator.count("/data/list") == 0
        assert today.emulator.count("/auth/token") == 0
        assert today.emulator.count("/data/download/token") == 0

        for command in ("status", "verify"):
            checked = today.run(command, str(today.manifest_path))
            assert checked.exit_code == 0, checked.output
            assert f"{len(wanted)} ok, 0 modified, 0 missing" in checked.stdout

    def test_a_no_op_run_sends_one_request_per_study_and_no_other(self, today: World) -> None:
        today.write_manifest(WANTED)
        assert today.apply("--transport", "https").exit_code == 0
        for command in (("apply",), ("apply", "--transport", "https"), ("plan",)):
            before = len(today.emulator.requests_log)
            again = today.run(command[0], str(today.manifest_path), *command[1:])
            assert again.exit_code == 0, again.output
            assert paths_since(today, before) == [ROUTE + "SDY1", ROUTE + "SDY269"]

    def test_the_key_value_alone_works_and_comes_first(self, today: World, tmp_path: Path) -> None:
        key = today.emulator.add_api_key()
        broken = tmp_path / "broken.json"
        broken.write_text("not a key file")
        today.env["IMMPORT_API_KEY"] = key.api_key
        today.env["IMMPORT_API_KEY_FILE"] = str(broken)
        today.write_manifest(WANTED)
        result = today.apply("--transport", "https")
        assert result.exit_code == 0, result.output
        assert key.api_key not in result.output

    def test_api_key_file_option_overrides_the_environment(
        self, today: World, tmp_path: Path
    ) -> None:
        good = Path(today.env["IMMPORT_API_KEY_FILE"])
        today.env["IMMPORT_API_KEY_FILE"] = str(tmp_path / "missing.json")
        today.write_manifest(WANTED)
        result = today.run("plan", str(today.manifest_path), "--api-key-file", str(good))
        assert result.exit_code == 0, result.output

    def test_lock_then_frozen_apply(self, today: World) -> None:
        today.write_manifest(WANTED)
        locked = today.run("lock", str(today.manifest_path))
        assert locked.exit_code == 0, locked.output
        pinned = json.loads((today.root / "manifest.lock.json").read_text())
        assert FCS in json.dumps(pinned)
        result = today.apply("--frozen", "--transport", "https")
        assert result.exit_code == 0, result.output
        assert FCS in today.local_files()

    def test_init_names_what_today_s_studies_hold(self, today: World) -> None:
        result = today.run("init", "SDY1")
        assert result.exit_code == 0, result.output
        for entry in ("StudyFiles", "Protocols", "ResultFiles", "archive", "SDY1-DR58_Tab.zip"):
            assert entry in result.stdout
        assert "# file_types:" in result.stdout
        (today.root / "init.yaml").write_text(result.stdout)
        assert today.run("validate", str(today.root / "init.yaml")).exit_code == 0

    def test_shards_then_merge(self, today: World) -> None:
        today.write_manifest(WANTED)
        for shard in ("1/2", "2/2"):
            result = today.apply("--shard", shard, "--transport", "https")
            assert result.exit_code == 0, result.output
        assert today.run("merge-shards", str(today.manifest_path)).exit_code == 0
        verified = today.run("verify", str(today.manifest_path))
        assert verified.exit_code == 0, verified.output
        assert sorted(recorded(today)) == sorted(upstream(today, WANTED_PREFIXES))


class TestKeysThatDoNotWork:
    def test_an_expired_key_file_stops_before_any_request(
        self, today: World, tmp_path: Path
    ) -> None:
        emu = today.emulator
        key = emu.add_api_key(expires_at=datetime.now(UTC) - timedelta(days=3))
        key_file = emu.write_api_key_file(tmp_path / "old-key.json", key)
        today.env["IMMPORT_API_KEY_FILE"] = str(key_file)
        today.write_manifest(WANTED)
        before = len(emu.requests_log)
        result = today.apply()
        assert result.exit_code == ExitCode.AUTH, result.output
        expired_on = key.expires_at.strftime("%Y-%m-%d")
        assert f"expired on {expired_on}" in result.stderr
        assert "https://www.immport.org/auth/api/keys" in result.stderr
        assert paths_since(today, before) == []
        assert key.api_key not in result.output

    def test_a_key_expiring_soon_warns_and_works(self, today: World, tmp_path: Path) -> None:
        emu = today.emulator
        key = emu.add_api_key(expires_at=datetime.now(UTC) + timedelta(days=5, hours=1))
        today.env["IMMPORT_API_KEY_FILE"] = str(emu.write_api_key_file(tmp_path / "k.json", key))
        today.write_manifest(WANTED)
        result = today.run("plan", str(today.manifest_path))
        assert result.exit_code == 0, result.output
        assert "expires on" in result.stderr and "(in 5 days)" in result.stderr

    def test_a_key_file_others_can_read_draws_a_warning(self, today: World) -> None:
        os.chmod(today.env["IMMPORT_API_KEY_FILE"], 0o644)
        today.write_manifest(WANTED)
        result = today.run("plan", str(today.manifest_path))
        assert result.exit_code == 0, result.output
        assert "is readable by others (mode 644); run `chmod 600" in result.stderr

    @pytest.mark.parametrize("how", ["revoked", "expired mid-run"])
    def test_a_refused_key_names_the_likely_causes(self, today: World, how: str) -> None:
        emu = today.emulator
        key = emu.add_api_key()
        today.env["IMMPORT_API_KEY"] = key.api_key
        if how == "revoked":
            emu.revoke_api_key(key)
        else:
            emu.expire_api_key(key)  # the file said it was valid; the server disagrees
        today.write_manifest(WANTED)
        result = today.run("plan", str(today.manifest_path))
        assert result.exit_code == ExitCode.AUTH, result.output
        assert "ImmPort refused the API key from IMMPORT_API_KEY" in result.stderr
        assert "expired or been revoked, or lack the 'download' scope" in result.stderr
        assert key.api_key not in result.output

    def test_a_key_without_the_download_scope(self, today: World) -> None:
        emu = today.emulator
        key = emu.add_api_key(scopes=("browse",))
        today.env["IMMPORT_API_KEY"] = key.api_key
        today.write_manifest(WANTED)
        assert today.run("plan", str(today.manifest_path)).exit_code == 0  # browse is enough
        result = today.apply("--transport", "https")
        assert result.exit_code == ExitCode.AUTH, result.output
        assert "'download' scope" in result.stderr
        assert today.local_files() == []

    def test_a_password_alone_is_told_to_create_a_key(self, today: World) -> None:
        today.env["IMMPORT_API_KEY_FILE"] = ""
        today.env["IMMPORT_USERNAME"] = "alice"
        today.env["IMMPORT_PASSWORD"] = "s3cret-Pa55word"
        today.write_manifest(WANTED)
        result = today.run("plan", str(today.manifest_path))
        assert result.exit_code == ExitCode.AUTH, result.output
        assert "password sign-in is retired" in result.stderr
        assert "create an API key" in result.stderr
        assert "s3cret-Pa55word" not in result.output

    @pytest.mark.parametrize(
        ("content", "why"),
        [
            ("{not json", "it is not JSON"),
            ('{"id": "x"}', "it has no 'api_key' string"),
            ('{"api_key": "k", "expires_at": "x"}', "its 'expires_at' ('x') is no date"),
        ],
    )
    def test_a_file_that_is_not_a_key_file(
        self, today: World, tmp_path: Path, content: str, why: str
    ) -> None:
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        os.chmod(bad, 0o600)
        today.env["IMMPORT_API_KEY_FILE"] = str(bad)
        today.write_manifest(WANTED)
        result = today.run("plan", str(today.manifest_path))
        assert result.exit_code == ExitCode.USAGE, result.output
        assert f"{bad} is not an ImmPort API key file: {why}" in result.stderr


class TestRealRowShapes:
    @pytest.mark.parametrize(
        "knob",
        ["manifest_wrap_content", "manifest_bool_drs", "manifest_datetime_dates"],
    )
    def test_every_plausible_shape_syncs(self, today: World, knob: str) -> None:
        setattr(today.emulator, knob, True)
        today.emulator.manifest_extra_fields = {"aNewField": {"nested": [1, 2]}}
        today.write_manifest(WANTED)
        result = today.apply("--transport", "https")
        assert result.exit_code == 0, result.output
        assert sorted(today.local_files()) == sorted(upstream(today, WANTED_PREFIXES))

    def test_a_file_replaced_upstream_with_same_size_and_date_is_an_update(
        self, today: World
    ) -> None:
        today.write_manifest(WANTED)
        assert today.apply("--transport", "https").exit_code == 0
        target = today.remote / DESIGN
        stat = target.stat()
        target.write_bytes(bytes(b ^ 0x20 for b in target.read_bytes()))
        os.utime(target, (stat.st_atime, stat.st_mtime))
        actions = today.run("plan", str(today.manifest_path), "--json").json()["actions"]
        assert [(a["action"], a["path"], a["reason"]) for a in actions] == [
            ("update", DESIGN, "changed upstream: md5 differs")
        ]
        assert today.apply("--transport", "https").exit_code == 0
        assert (today.dest / DESIGN).read_bytes() == target.read_bytes()

    def test_hostile_rows_are_refused_and_the_rest_syncs(self, today: World) -> None:
        emu = today.emulator
        key = Path(today.env["IMMPORT_API_KEY_FILE"]).read_text()
        bearer = {"Authorization": "Bearer " + json.loads(key)["api_key"]}
        rows = requests.get(emu.query_url + "/api/study/manifest/SDY1", headers=bearer, timeout=10)
        real = rows.json()
        template = next(r for r in real if r["path"] == DESIGN)
        hostile = [
            {**template, "path": "SDY1/../../escape.txt"},
            {**template, "path": "/etc/passwd"},
            {**template, "path": "SDY2/StudyFiles/other-study.txt"},
            {**template, "path": "SDY1/StudyFiles/bad\nname.txt"},
        ]
        emu.inject(ROUTE + "SDY1", status=200, body=json.dumps(real + hostile))
        today.write_manifest("  - accession: SDY1\n    paths: [StudyFiles]\n")
        result = today.run("plan", str(today.manifest_path), "--json")
        problems = "\n".join(result.json()["problems"])
        refused = ("'SDY1/../../escape.txt'", "'etc/passwd'", "'SDY2/StudyFiles/other-study.txt'")
        for shown in refused:
            assert shown in problems, problems
        assert "bad\\nname.txt': it contains a line break" in problems
        assert result.exit_code == ExitCode.REMOTE
        assert DESIGN in [a["path"] for a in result.json()["actions"]]


class TestConnections:
    def test_sixteen_downloads_at_once_reuse_the_api_connections(
        self, today: World, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Every download thread asks the API for its link: the shared pools hold
        enough connections for all of them, so none is dropped and opened again."""
        for n in range(48):
            write_file(today.remote, f"SDY1/ResultFiles/Many/f{n:02d}.txt", f"file {n}\n")
        today.write_manifest("  - accession: SDY1\n    paths: [ResultFiles/Many]\n")
        today.emulator.latency = 0.05  # the link requests overlap, as over a real network
        with caplog.at_level(logging.WARNING, logger="urllib3"):
            result = today.apply("--jobs", "16")
        assert result.exit_code == 0, result.output
        assert len(today.local_files()) == 48
        dropped = [r.getMessage() for r in caplog.records if "pool is full" in r.getMessage()]
        assert dropped == []


class TestTheDemo:
    def test_make_demo_runs_today_s_world_and_tells_the_truth(self, tmp_path: Path) -> None:
        """The demo's claims (one request per study on the re-run) are checked, not assumed."""
        result = subprocess.run(
            [sys.executable, "-m", "immsync.demo", "--workdir", str(tmp_path / "d")],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("IMMPORT_")},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Today's ImmPort" in result.stdout
        assert "The second apply sent 2 request(s), 2 of them study manifests" in result.stdout


class TestRowsThatCannotBeFullyServed:
    def test_a_row_without_md5_is_checked_by_size_and_noted(self, today: World) -> None:
        today.emulator.manifest_null_md5 = {DESIGN}
        today.write_manifest(WANTED)
        plan = today.run("plan", str(today.manifest_path), "--json").json()
        assert "SDY1: 1 file has no MD5 in ImmPort's study manifest" in "\n".join(plan["notes"])
        result = today.apply("--transport", "https")
        assert result.exit_code == 0, result.output
        entry = recorded(today)[DESIGN]
        assert entry.remote_md5 is None and entry.checksum.startswith("xxh3_128:")
        assert (today.dest / DESIGN).read_bytes() == (today.remote / DESIGN).read_bytes()

    def test_a_row_without_a_drs_object_is_reported_and_the_rest_syncs(
        self, today: World
    ) -> None:
        today.write_manifest(WANTED)
        assert today.apply("--transport", "https").exit_code == 0
        today.emulator.manifest_no_drs = {DESIGN, FCS}
        (today.remote / FCS).write_bytes(b"a new version nobody can download yet")
        result = today.apply("--transport", "https", "--prune")
        assert result.exit_code == ExitCode.REMOTE, result.output
        assert f"{FCS}: ImmPort lists it but has not made it downloadable yet" in result.stderr
        # Neither is deleted or replaced: their records and files stay as they were.
        assert DESIGN in recorded(today) and FCS in recorded(today)
        assert (today.dest / FCS).exists()
        assert (today.dest / FCS).read_bytes() != (today.remote / FCS).read_bytes()
