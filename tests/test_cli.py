"""The command line behaves like the tools people know (rclone, Terraform, gh, git)."""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from conftest import World

from immsync.cli import hoist_global_options
from immsync.errors import ExitCode

COMMANDS = ["validate", "plan", "apply", "status", "verify", "lock", "merge-shards", "init"]


def immsync(*args: str, env: dict[str, str] | None = None, **kwargs: object) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "immsync", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "80", **(env or {})},
        **kwargs,  # type: ignore[arg-type]
    )


def width(line: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


class TestHelp:
    @pytest.mark.parametrize("command", ["", *COMMANDS])
    def test_dash_h_is_help_and_fits_80_columns(self, command: str) -> None:
        result = immsync(*([command] if command else []), "-h")
        assert result.returncode == 0, result.stderr
        assert "Usage: immsync" in result.stdout
        lines = result.stdout.splitlines()
        assert max(width(line) for line in lines) <= 80
        assert "--no-" not in result.stdout, "no --no- twins for plain flags"

    def test_verbose_is_a_counted_flag_not_a_number(self) -> None:
        out = immsync("-h").stdout
        line = next(line for line in out.splitlines() if "--verbose" in line)
        assert "<int>" not in line and "INTEGER" not in line

    def test_apply_groups_its_options(self) -> None:
        out = immsync("apply", "-h").stdout
        for panel in ("Deleting", "State and locks", "Tuning", "Output", "Credentials and network"):
            assert f"─ {panel} ─" in out, panel

    def test_shell_completion_is_offered(self) -> None:
        out = immsync("-h").stdout
        assert "--install-completion" in out and "--show-completion" in out

    @pytest.mark.parametrize("command", ["plan", "apply", "lock", "init"])
    def test_every_command_that_talks_to_immport_takes_the_credential_options(
        self, command: str
    ) -> None:
        out = immsync(command, "-h").stdout
        assert "--api-key-file" in out and "--password-stdin" in out


class TestGlobalOptionsAnywhere:
    def test_flags_move_before_the_command(self) -> None:
        assert hoist_global_options(["plan", "m.yaml", "-vv", "--json"]) == [
            "-vv",
            "plan",
            "m.yaml",
            "--json",
        ]
        assert hoist_global_options(["status", "-q", "m.yaml"]) == ["-q", "status", "m.yaml"]
        # Nothing after "--" is an option.
        assert hoist_global_options(["validate", "--", "-v"]) == ["validate", "--", "-v"]

    def test_verbose_after_the_command_works(self, world: World) -> None:
        world.write_manifest("  - accession: SDY1\n")
        before = immsync("validate", str(world.manifest_path), "-vv", env=world.env)
        assert before.returncode == 0, before.stderr
        assert "DEBUG" in before.stderr
        quiet = immsync("validate", str(world.manifest_path), "-q", env=world.env)
        assert quiet.returncode == 0 and quiet.stdout == ""


class TestPipes:
    def test_a_closed_stdout_ends_the_command_quietly(self, world: World) -> None:
        """`immsync plan m.yaml | head -1`: no traceback, no error, exit 141 as with SIGPIPE."""
        world.write_manifest("  - accession: SDY1\n  - accession: SDY269\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "immsync", "plan", str(world.manifest_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **world.env},
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader is gone before the first line is written
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == ExitCode.BROKEN_PIPE, err
        assert "Traceback" not in err and "error" not in err.lower(), err

    def test_the_exit_code_is_documented(self) -> None:
        readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
        assert f"| {int(ExitCode.BROKEN_PIPE)} |" in readme


def test_counts_read_as_words() -> None:
    """'1 file', '2 files': no 'file(s)' left in what people read."""
    from immsync.units import count

    assert (count(1, "file"), count(0, "file"), count(2, "study", "studies")) == (
        "1 file",
        "0 files",
        "2 studies",
    )
    product = Path(__file__).resolve().parents[1] / "immsync"
    for path in product.rglob("*.py"):
        if "testing" in path.parts:
            continue
        for line in path.read_text().splitlines():
            if "f\"" in line or line.strip().startswith(('"', "f'")):
                assert "file(s)" not in line or "log." in line or '"%s' in line, (path, line)
