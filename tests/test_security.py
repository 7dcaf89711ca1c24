"""Containment, secrets and deletion guards, end to end.

Hostile paths come from both sides (the manifest and the server's listing); secrets are
looked for everywhere a user or another local user could see them: the live ``ascp``
command line, logs, error messages, JSON output and the state files.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import PASSWORD, CliResult, World

from immsync.cli import app
from immsync.errors import ExitCode
from immsync.state import StateStore, state_path
from immsync.testing.sampledata import SAMPLE_MTIME_ISO

STUDY = "SDY1/StudyFiles"
DESIGN = f"{STUDY}/Study_design.txt"
PROTOCOL = f"{STUDY}/SDY1_protocol.pdf"
HAI = "SDY1/ResultFiles/HAI_result/hai_results.txt"
FLOW = "SDY1/ResultFiles/Flow_cytometry_result"
FCS = f"{FLOW}/02054141.001.52628.fcs"

STUDY_AND_HAI = """\
  - accession: SDY1
    paths:
      - StudyFiles
      - ResultFiles/HAI_result
"""
FLOW_AND_DESIGN = """\
  - accession: SDY1
    paths:
      - ResultFiles/Flow_cytometry_result
      - StudyFiles/Study_design.txt
"""


# -- helpers ---------------------------------------------------------------------------


def recorded(world: World) -> dict[str, Any]:
    with StateStore.open(state_path(world.dest), create=False) as store:
        return store.entries()


def file_item(world: World, path: str, **changes: Any) -> dict[str, Any]:
    """A listing item as ImmPort writes it for the real file at *path* (overridable)."""
    item: dict[str, Any] = {
        "path": "/" + path,
        "basename": path.rsplit("/", 1)[-1],
        "type": "file",
        "size": (world.remote / path).stat().st_size,
        "mtime": SAMPLE_MTIME_ISO,
        "permissions": [{"name": "view"}],
    }
    item.update(changes)
    return item


def hostile(path: str, *, kind: str = "file", basename: str | None = None) -> dict[str, Any]:
    return {
        "path": path,
        "basename": basename if basename is not None else path.rsplit("/", 1)[-1],
        "type": kind,
        "size": 10,
        "mtime": SAMPLE_MTIME_ISO,
        "permissions": [{"name": "view"}],
    }


def snapshot(root: Path, *, skip: tuple[Path, ...]) -> dict[str, tuple[int, int]]:
    """Every file and folder below *root* (outside *skip*); files with size and mtime.

    Folder mtimes are left out: creating the destination or a log touches its parent.
    """
    seen: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            path = here / name
            if path in skip:
                continue
            st = path.lstat()
            is_dir = path.is_dir() and not path.is_symlink()
            seen[path.relative_to(root).as_posix()] = (
                (-1, -1) if is_dir else (st.st_size, st.st_mtime_ns)
            )
    return seen


def ignored_paths(world: World, tmp_path: Path) -> tuple[Path, ...]:
    """What a run legitimately writes outside the destination: the stand-in's own logs."""
    return (
        world.dest,
        world.root / "sessions.jsonl",
        world.config_path.with_name(world.config_path.name + ".faults.json"),
    )


def secrets_in(text: str | bytes, secrets: list[str]) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [s for s in secrets if s.encode() in data]


# -- hostile paths in the manifest -----------------------------------------------------


class TestHostileManifestPaths:
    @pytest.mark.parametrize(
        ("yaml_value", "what"),
        [
            ("/etc/passwd", "'/etc/passwd' is an absolute path"),
            ("StudyFiles/../../../outside", "has a '..' segment"),
            ("..", "has a '..' segment"),
            ('"StudyFiles/a\\0b"', "contains a NUL character"),
            ('"StudyFiles/a\\nb"', "contains a line break"),
            ('"StudyFiles/a\\rb"', "contains a carriage return"),
            ("'StudyFiles\\..\\..\\outside'", "contains a backslash"),
        ],
        ids=["absolute", "dotdot", "bare-dotdot", "nul", "newline", "carriage-return", "backslash"],
    )
    def test_validate_names_the_exact_place(self, world: World, yaml_value: str, what: str) -> None:
        """validate exits 2 naming file:line:column, the YAML place and what is wrong."""
        world.write_manifest(
            f"  - accession: SDY1\n    paths:\n      - StudyFiles\n      - {yaml_value}\n"
        )
        result = world.run("validate", str(world.manifest_path))
        assert result.exit_code == ExitCode.USAGE
        assert f"{world.manifest_path}:7:9: studies[0].paths[1]: " in result.stderr
        assert what in result.stderr
        assert "Traceback" not in result.output

    def test_apply_with_a_hostile_path_contacts_nothing(self, world: World) -> None:
        """apply with a hostile manifest path exits 2 and never contacts ImmPort."""
        world.write_manifest("  - accession: SDY1\n    paths:\n      - ../SDY269\n")
        result = world.apply()
        assert result.exit_code == ExitCode.USAGE
        assert "studies[0].paths[0]" in result.stderr
        assert world.emulator.requests_log == []
        assert not world.dest.exists()


# -- hostile entries from the server ---------------------------------------------------


class TestHostileServerEntries:
    """Hostile entries of the legacy listing (test_today.py holds the manifest's)."""

    @pytest.fixture(autouse=True)
    def _listing_only(self, world: World) -> None:
        world.emulator.manifest_route = False  # a deployment that still lists folders

    def hostile_entries(self, tmp_path: Path) -> list[dict[str, Any]]:
        outside = tmp_path / "outside"
        return [
            hostile(f"{outside}/evil-absolute.txt"),
            hostile("/etc/passwd"),
            hostile("/SDY1/StudyFiles/../../../../evil-dotdot.txt"),
            hostile("SDY1/StudyFiles/../../../../evil-dotdot-noslash.txt"),
            hostile("/SDY1/StudyFiles/.."),
            hostile("/SDY1/StudyFiles/../../..", kind="directory"),
            hostile("/SDY1/StudyFiles/."),
            hostile("/SDY1/StudyFiles/"),
            hostile("/SDY1/StudyFiles/evil\x00nul.txt"),
            hostile("/SDY1/StudyFiles/evil\nnewline.txt"),
            hostile("/SDY1/StudyFiles/evil\rreturn.txt"),
            hostile("/SDY1/StudyFiles/..\\..\\..\\evil-backslash.txt"),
            hostile("/SDY1/StudyFiles/sub/deeper.txt"),
            hostile("/" + HAI),  # real, but outside the listed folder
            hostile("/SDY269/StudyFiles/SDY269_summary.txt"),  # another study
            hostile("/SDY269", kind="directory"),
        ]

    def test_each_hostile_entry_is_refused_and_the_rest_syncs(
        self, world: World, tmp_path: Path
    ) -> None:
        """Hostile listing entries are refused by name, the rest lands, exit 4, nothing outside."""
        (tmp_path / "outside").mkdir()
        entries = self.hostile_entries(tmp_path)
        world.emulator.listing_overrides["/SDY1/StudyFiles"] = [
            file_item(world, DESIGN),
            *entries,
            file_item(world, PROTOCOL),
        ]
        world.write_manifest(STUDY_AND_HAI)
        skip = ignored_paths(world, tmp_path)
        before = snapshot(tmp_path, skip=skip)
        passwd = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()

        result = world.apply()

        assert result.exit_code == ExitCode.REMOTE, result.output
        assert "Traceback" not in result.output
        for entry in entries:
            assert repr(entry["path"]) in result.stderr, entry["path"]
        assert "refused remote entry" in result.stderr
        assert world.local_files() == sorted([DESIGN, PROTOCOL, HAI])
        assert sorted(recorded(world)) == sorted([DESIGN, PROTOCOL, HAI])
        assert snapshot(tmp_path, skip=skip) == before
        assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() == passwd
        assert not list((tmp_path / "outside").iterdir())
        for session in world.sessions():
            assert sorted(session["sources"]) == sorted("/" + p for p in (DESIGN, PROTOCOL, HAI))

    def test_plan_names_hostile_entries_as_problems(self, world: World, tmp_path: Path) -> None:
        """plan --json lists each refused entry under problems and plans only safe files."""
        entries = self.hostile_entries(tmp_path)
        world.emulator.listing_overrides["/SDY1/StudyFiles"] = [file_item(world, DESIGN), *entries]
        world.write_manifest(STUDY_AND_HAI)
        result = world.run("plan", str(world.manifest_path), "--json")
        assert result.exit_code == ExitCode.REMOTE
        doc = result.json()
        assert sorted(a["path"] for a in doc["actions"]) == sorted([DESIGN, HAI])
        problems = "\n".join(doc["problems"])
        for entry in entries:
            assert repr(entry["path"]) in problems

    def test_hostile_file_root_reply_is_refused(self, world: World) -> None:
        """A listing of a file that describes another path is refused, not followed."""
        world.write_manifest(
            "  - accession: SDY1\n    paths:\n      - StudyFiles/Study_design.txt\n"
        )
        world.emulator.inject(
            "/data/list",
            status=200,
            times=5,
            body={"self": hostile("/etc/passwd"), "items": []},
        )
        result = world.apply()
        assert result.exit_code == ExitCode.REMOTE
        assert "'/etc/passwd'" in result.stderr
        assert world.local_files() == []

    def test_hostile_basename_is_ignored(self, world: World, tmp_path: Path) -> None:
        """A file lands where its path says, whatever its basename claims."""
        world.emulator.listing_overrides["/SDY1/StudyFiles"] = [
            file_item(world, DESIGN, basename="../../../../evil-basename.txt"),
            file_item(world, PROTOCOL, basename="/etc/passwd"),
        ]
        world.write_manifest("  - accession: SDY1\n    paths:\n      - StudyFiles\n")
        skip = ignored_paths(world, tmp_path)
        before = snapshot(tmp_path, skip=skip)
        result = world.apply()
        assert result.exit_code == 0, result.output
        assert world.local_files() == sorted([DESIGN, PROTOCOL])
        assert snapshot(tmp_path, skip=skip) == before


class TestSymlinks:
    def test_symlinked_study_folder_leading_outside_is_not_written_through(
        self, world: World, tmp_path: Path
    ) -> None:
        """dest/SDY1 -> elsewhere: files are refused naming the link; nothing lands outside."""
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        world.dest.mkdir()
        (world.dest / "SDY1").symlink_to(elsewhere)
        world.write_manifest("  - accession: SDY1\n    paths:\n      - StudyFiles\n")
        result = world.apply()
        assert result.exit_code == ExitCode.TRANSFER, result.output
        assert "Traceback" not in result.output
        assert f"{world.dest / 'SDY1'} is a symlink to {elsewhere}" in result.stderr
        assert DESIGN in result.stderr
        assert list(elsewhere.rglob("*")) == []
        assert recorded(world) == {}

    def test_symlinked_file_leading_outside_is_not_written_through(
        self, world: World, tmp_path: Path
    ) -> None:
        """A symlink at a file's own path, leading outside, is never followed for writing."""
        target = tmp_path / "precious.txt"
        target.write_text("keep me")
        link = world.dest / DESIGN
        link.parent.mkdir(parents=True)
        link.symlink_to(target)
        world.write_manifest("  - accession: SDY1\n    paths:\n      - StudyFiles\n")
        result = world.apply()
        assert result.exit_code == ExitCode.TRANSFER, result.output
        assert f"{link} is a symlink to {target}" in result.stderr
        assert target.read_text() == "keep me"
        assert sorted(recorded(world)) == [PROTOCOL]

    def test_file_behind_an_outside_symlink_is_not_adopted(
        self, world: World, tmp_path: Path
    ) -> None:
        """A matching file reached through a symlink leading outside is not recorded as ours."""
        elsewhere = tmp_path / "elsewhere"
        (elsewhere / "StudyFiles").mkdir(parents=True)
        copy = elsewhere / "StudyFiles" / "Study_design.txt"
        copy.write_bytes((world.remote / DESIGN).read_bytes())
        world.dest.mkdir()
        (world.dest / "SDY1").symlink_to(elsewhere)
        world.write_manifest(
            "  - accession: SDY1\n    paths:\n      - StudyFiles/Study_design.txt\n"
        )
        result = world.apply()
        assert result.exit_code == ExitCode.TRANSFER, result.output
        assert recorded(world) == {}
        assert copy.read_bytes() == (world.remote / DESIGN).read_bytes()
        assert sorted(p.name for p in elsewhere.rglob("*")) == ["StudyFiles", "Study_design.txt"]

    def test_symlink_inside_the_destination_is_allowed(self, world: World) -> None:
        """A symlink that stays inside the destination is fine to write through."""
        world.dest.mkdir()
        (world.dest / "real-SDY1").mkdir()
        (world.dest / "SDY1").symlink_to(world.dest / "real-SDY1")
        world.write_manifest("  - accession: SDY1\n    paths:\n      - StudyFiles\n")
        result = world.apply()
        assert result.exit_code == 0, result.output
        assert (world.dest / "real-SDY1" / "StudyFiles" / "Study_design.txt").is_file()


# -- secrets ---------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _descendants(pid: int) -> list[int]:
    result, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            result.append(child)
            todo.append(child)
    return result


class TestSecrets:
    def test_typer_never_shows_locals(self) -> None:
        """Tracebacks never show local variables (they hold passwords and tokens)."""
        assert app.pretty_exceptions_show_locals is False

    def test_live_ascp_command_line_holds_no_secret(self, world: World) -> None:
        """/proc/<pid>/cmdline of a running ascp holds no password or token; nor its environ."""
        world.write_manifest(FLOW_AND_DESIGN)
        world.configure_aspera(faults=[{"kind": "hang", "seconds": 1}])
        env = {**os.environ, **world.env}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "immsync",
                "-vv",
                "apply",
                str(world.manifest_path),
                "--session-stagger",
                "0",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        cmdline = environ = b""
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                for pid in _descendants(proc.pid):
                    try:
                        text = Path(f"/proc/{pid}/cmdline").read_bytes()
                        if str(world.aspera.ascp).encode() in text:
                            cmdline = text
                            environ = Path(f"/proc/{pid}/environ").read_bytes()
                    except OSError:
                        continue
                if cmdline:
                    break
                time.sleep(0.02)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert cmdline, "never saw the stand-in ascp running"
        assert proc.returncode == 0, err.decode()
        secrets = [PASSWORD, *world.emulator.issued_tokens()]
        assert len(secrets) >= 3  # the password, a bearer token, an Aspera token
        argv = cmdline.split(b"\0")
        assert b"--mode=recv" in argv
        assert secrets_in(cmdline, secrets) == []
        assert b"ASPERA_SCP_TOKEN=" in environ  # the token goes by environment...
        assert PASSWORD.encode() not in environ  # ...and the password not at all
        assert b"IMMPORT_PASSWORD" not in environ
        assert secrets_in(out + err, secrets) == []

    def test_no_secret_in_logs_errors_json_or_state(self, world: World) -> None:
        """-vv logs, --json, refusals (bad password, 401, token denied) and state leak nothing."""
        world.write_manifest(FLOW_AND_DESIGN)
        outputs: list[CliResult] = [
            world.run("-vv", "apply", str(world.manifest_path), "--session-stagger", "0"),
        ]
        assert outputs[0].exit_code == 0, outputs[0].output
        (world.dest / FCS).unlink()
        outputs.append(world.apply("--json"))
        assert outputs[-1].exit_code == 0
        outputs.append(world.run("-vv", "plan", str(world.manifest_path), "--json"))
        outputs.append(world.run("-vv", "status", str(world.manifest_path), "--json"))
        outputs.append(world.run("-vv", "verify", str(world.manifest_path), "--json"))

        # The Aspera server refuses the token: the token must not show in the error.
        (world.dest / FCS).unlink()
        world.configure_aspera(faults=[{"kind": "token_denied", "times": 99}])
        denied = world.run(
            "-vv",
            "apply",
            str(world.manifest_path),
            "--retries",
            "1",
            "--retry-wait",
            "0",
            "--session-stagger",
            "0",
        )
        assert denied.exit_code == ExitCode.TRANSFER
        assert "token denied" in denied.stderr
        outputs.append(denied)
        world.configure_aspera(faults=[])

        # ImmPort refuses a data call and echoes the bearer token in its message.
        bearer = requests.post(
            world.emulator.token_url,
            data={"username": "alice", "password": PASSWORD},
            timeout=10,
        ).json()["token"]
        world.emulator.inject(
            "/data/query/api/study/manifest/",
            status=401,
            times=5,
            body={"error": "invalid_token", "message": f"Invalid access token: {bearer}"},
        )
        echoed = _run_with(
            world,
            ["-vv", "plan", str(world.manifest_path)],
            IMMPORT_TOKEN=bearer,
            IMMPORT_PASSWORD="",
        )
        assert echoed.exit_code == ExitCode.AUTH, echoed.output
        assert "Invalid access token: ***" in echoed.stderr
        outputs.append(echoed)
        world.emulator.clear_faults()

        # A wrong password: refused, and neither password is echoed.
        wrong = "Wr0ng-but-secret-password"
        bad = _run_with(world, ["-vv", "apply", str(world.manifest_path)], IMMPORT_PASSWORD=wrong)
        assert bad.exit_code == ExitCode.AUTH
        assert wrong not in bad.output
        outputs.append(bad)

        secrets = [PASSWORD, wrong, *world.emulator.issued_tokens()]
        assert len(world.emulator.issued_tokens()) >= 4
        for result in outputs:
            assert secrets_in(result.output, secrets) == [], result.output
            assert "Traceback" not in result.output
        state_bytes = b"".join(
            p.read_bytes() for p in (world.dest / ".immsync").rglob("*") if p.is_file()
        )
        assert secrets_in(state_bytes, secrets) == []
        for session in world.sessions():
            assert secrets_in(" ".join(session["argv"]), secrets) == []


def _run_with(world: World, args: list[str], **env: str) -> CliResult:
    saved = dict(world.env)
    world.env.update(env)
    try:
        return world.run(*args)
    finally:
        world.env.clear()
        world.env.update(saved)


# -- where credentials come from -------------------------------------------------------


class TestCredentialSources:
    def test_password_stdin(self, world: World) -> None:
        """--password-stdin reads the password from standard input (none in the environment)."""
        world.write_manifest(FLOW_AND_DESIGN)
        world.env["IMMPORT_PASSWORD"] = ""
        without = world.apply()
        assert without.exit_code == ExitCode.AUTH
        result = world.run(
            "apply",
            str(world.manifest_path),
            "--password-stdin",
            "--session-stagger",
            "0",
            input=PASSWORD + "\n",
        )
        assert result.exit_code == 0, result.output
        assert PASSWORD not in result.output
        assert FCS in recorded(world)

    def test_password_stdin_empty_is_a_usage_error(self, world: World) -> None:
        """An empty standard input with --password-stdin is a usage error (exit 2)."""
        world.write_manifest(FLOW_AND_DESIGN)
        world.env["IMMPORT_PASSWORD"] = ""
        result = world.run("apply", str(world.manifest_path), "--password-stdin", input="")
        assert result.exit_code == ExitCode.USAGE
        assert "--password-stdin was given but standard input was empty" in result.stderr
        assert world.emulator.requests_log == []

    def test_netrc_entry_for_the_sign_in_host(self, world: World, tmp_path: Path) -> None:
        """A netrc machine entry for the emulator's host signs in when the environment has none."""
        world.write_manifest(FLOW_AND_DESIGN)
        netrc = tmp_path / "netrc"
        netrc.write_text(f"machine 127.0.0.1\n  login alice\n  password {PASSWORD}\n")
        netrc.chmod(0o600)
        world.env.update(
            IMMPORT_USERNAME="", IMMPORT_PASSWORD="", NETRC=str(netrc), HOME=str(tmp_path)
        )
        result = world.apply()
        assert result.exit_code == 0, result.output
        assert FCS in recorded(world)
        assert world.emulator.count("/auth/token") == 1

    def test_netrc_for_another_host_is_not_used(self, world: World, tmp_path: Path) -> None:
        """A netrc entry for another machine gives no credentials: exit 3."""
        world.write_manifest(FLOW_AND_DESIGN)
        netrc = tmp_path / "netrc"
        netrc.write_text(f"machine auth.immport.org login alice password {PASSWORD}\n")
        netrc.chmod(0o600)
        world.env.update(IMMPORT_USERNAME="", IMMPORT_PASSWORD="", NETRC=str(netrc))
        result = world.apply()
        assert result.exit_code == ExitCode.AUTH
        assert world.emulator.count("/auth/token") == 0


class TestInsecureHttp:
    @pytest.mark.parametrize("command", ["plan", "apply"])
    def test_plain_http_to_a_remote_host_is_refused(self, world: World, command: str) -> None:
        """http:// to a non-loopback host: exit 2 before any connection is made."""
        world.write_manifest(FLOW_AND_DESIGN)
        world.env["IMMPORT_TOKEN_URL"] = "http://example.invalid/auth/token"
        result = world.run(command, str(world.manifest_path))
        assert result.exit_code == ExitCode.USAGE
        assert "refusing the plain-http ImmPort token URL http://example.invalid" in result.stderr
        assert world.emulator.requests_log == []

    def test_allow_insecure_http_warns_and_proceeds(self, world: World) -> None:
        """With --allow-insecure-http the URL is accepted and a warning is logged."""
        world.write_manifest(FLOW_AND_DESIGN)
        bearer = requests.post(
            world.emulator.token_url,
            data={"username": "alice", "password": PASSWORD},
            timeout=10,
        ).json()["token"]
        # A bearer token is given, so the (unreachable) sign-in host is never contacted.
        world.env.update(
            IMMPORT_TOKEN_URL="http://example.invalid/auth/token",
            IMMPORT_TOKEN=bearer,
            IMMPORT_PASSWORD="",
        )
        result = world.run("plan", str(world.manifest_path), "--allow-insecure-http")
        assert result.exit_code == 0, result.output
        assert "using plain http to example.invalid" in result.stderr


# -- deletion guards -------------------------------------------------------------------


class TestDeletionGuards:
    def sync_then_narrow(self, world: World) -> Path:
        world.write_manifest(FLOW_AND_DESIGN)
        assert world.apply().exit_code == 0
        mine = world.dest / FLOW / "my-own-analysis.fcs"
        mine.write_bytes(b"mine")
        # Sorted by path, the download (HAI) falls between the deletions.
        world.write_manifest(
            "  - accession: SDY1\n    paths:\n"
            f"      - {FCS.removeprefix('SDY1/')}\n      - ResultFiles/HAI_result\n"
        )
        return mine

    def test_plan_shows_deletions_first(self, world: World) -> None:
        """plan lists every deletion before any download."""
        self.sync_then_narrow(world)
        result = world.run("plan", str(world.manifest_path), "--prune", "--max-delete", "3")
        assert result.exit_code == 0, result.output
        actions = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
        assert actions.count("delete") == 3
        assert "download" in actions
        first_other = next(i for i, a in enumerate(actions) if a != "delete")
        assert actions[:first_other] == ["delete"] * 3
        assert "delete" not in actions[first_other:]

    def test_max_delete_count_and_share(self, world: World) -> None:
        """--max-delete as a count or a share refuses a larger prune and changes nothing."""
        mine = self.sync_then_narrow(world)
        before = sorted(recorded(world))
        for limit, words in [("2", "the limit of 2"), ("50%", "the limit of 50% of them")]:
            result = world.apply("--prune", "--max-delete", limit)
            assert result.exit_code == ExitCode.USAGE, result.output
            assert f"--prune would delete 3 of 4 recorded files, more than {words}" in (
                result.stderr
            )
            assert sorted(recorded(world)) == before
            assert (world.dest / DESIGN).exists()
        bad = world.apply("--prune", "--max-delete", "lots")
        assert bad.exit_code == ExitCode.USAGE
        assert mine.read_bytes() == b"mine"

    def test_prune_deletes_only_recorded_files(self, world: World) -> None:
        """--prune removes recorded, deselected files; the user's own file stays."""
        mine = self.sync_then_narrow(world)
        result = world.apply("--prune", "--max-delete", "75%")
        assert result.exit_code == 0, result.output
        assert not (world.dest / DESIGN).exists()
        assert mine.read_bytes() == b"mine"
        assert sorted(recorded(world)) == sorted([FCS, HAI])
        assert world.local_files() == sorted([FCS, HAI, f"{FLOW}/my-own-analysis.fcs"])
