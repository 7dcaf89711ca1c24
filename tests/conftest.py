"""Shared fixtures: a complete offline world of emulator, stand-in ascp and CLI runner."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from immsync.cli import app
from immsync.testing.aspera_config import FakeAsperaConfig
from immsync.testing.emulator import Emulator
from immsync.testing.fake_ascp import FakeAsperaInstall, install_fake_ascp
from immsync.testing.sampledata import build_sample_tree, build_today_tree

PASSWORD = "s3cret-Pa55word"

# A shell without job control starts a background command with SIGINT ignored (`make
# test &` in a CI script), and every process started from here would inherit that: the
# tests that interrupt immsync with Ctrl-C need SIGINT to work as it does for a user.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# No stagger between sessions: the tests' emulator has no rate limit to respect.
APPLY_TEST_OPTIONS = ("--session-stagger", "0", "--retry-wait", "0.01")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class World:
    """A temporary ImmPort (emulator + stand-in ascp) and a manifest folder."""

    root: Path
    remote: Path
    emulator: Emulator
    config_path: Path
    aspera: FakeAsperaInstall
    env: dict[str, str] = field(default_factory=dict)

    @property
    def dest(self) -> Path:
        return self.root / "data"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.yaml"

    def write_manifest(self, studies: str) -> Path:
        self.manifest_path.write_text(f"version: 1\ndestination: data\nstudies:\n{studies}")
        return self.manifest_path

    def run(self, *args: str, input: str | None = None) -> CliResult:
        result = CliRunner().invoke(app, list(args), env=self.env, input=input)
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return CliResult(result.exit_code, result.stdout, result.stderr)

    def plan(self, *extra: str) -> CliResult:
        return self.run("plan", str(self.manifest_path), *extra)

    def apply(self, *extra: str) -> CliResult:
        return self.run("apply", str(self.manifest_path), *APPLY_TEST_OPTIONS, *extra)

    def sessions(self) -> list[dict[str, Any]]:
        log = self.root / "sessions.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    def configure_aspera(self, **changes: Any) -> None:
        config = FakeAsperaConfig.load(self.config_path)
        for key, value in changes.items():
            setattr(config, key, value)
        config.save(self.config_path)

    def local_files(self) -> list[str]:
        return sorted(
            p.relative_to(self.dest).as_posix()
            for p in self.dest.rglob("*")
            if p.is_file() and ".immsync" not in p.relative_to(self.dest).parts
        )


@pytest.fixture(name="tree")
def _tree(tmp_path: Path) -> Path:
    """The bundled sample ImmPort tree, built fresh in a temporary folder."""
    root = tmp_path / "immport"
    build_sample_tree(root)
    return root


@pytest.fixture(name="today_tree")
def _today_tree(tmp_path: Path) -> Path:
    """The bundled sample of today's ImmPort, built fresh in a temporary folder."""
    root = tmp_path / "immport"
    build_today_tree(root)
    return root


@pytest.fixture(name="world")
def _world(tmp_path: Path, tree: Path) -> Any:
    remote = tree
    root = tmp_path / "project"
    root.mkdir()
    with Emulator(remote, world="legacy", username="alice", password=PASSWORD) as emulator:
        config = emulator.write_aspera_config(
            tmp_path / "aspera.json", session_log=str(root / "sessions.jsonl")
        )
        aspera = install_fake_ascp(tmp_path / "aspera-cli", config)
        env = {
            "IMMPORT_USERNAME": "alice",
            "IMMPORT_PASSWORD": PASSWORD,
            "IMMPORT_TOKEN": "",
            "IMMPORT_TOKEN_URL": emulator.token_url,
            "IMMPORT_DATA_API_BASE_URL": emulator.data_url,
            "IMMSYNC_ASCP": str(aspera.ascp),
            "IMMSYNC_ASPERA_KEY": "",
            "PATH": os.environ.get("PATH", ""),
        }
        yield World(root, remote, emulator, config, aspera, env)


@pytest.fixture(name="today")
def _today(tmp_path: Path, today_tree: Path) -> Any:
    """Today's ImmPort (2026): an API key file, the study manifest, DRS; no Aspera."""
    remote = today_tree
    root = tmp_path / "project"
    root.mkdir()
    with Emulator(remote) as emulator:
        key = emulator.add_api_key()
        key_file = emulator.write_api_key_file(tmp_path / "immport-key.json", key)
        config = emulator.write_aspera_config(
            tmp_path / "aspera.json", session_log=str(root / "sessions.jsonl")
        )
        aspera = install_fake_ascp(tmp_path / "aspera-cli", config)
        env = {
            "IMMPORT_API_KEY_FILE": str(key_file),
            "IMMPORT_API_KEY": "",
            "IMMPORT_TOKEN": "",
            "IMMPORT_USERNAME": "",
            "IMMPORT_PASSWORD": "",
            "IMMPORT_TOKEN_URL": emulator.token_url,
            "IMMPORT_DATA_API_BASE_URL": emulator.data_url,
            "IMMSYNC_QUERY_API_BASE_URL": emulator.query_url,
            "IMMSYNC_DRS_BASE_URL": emulator.drs_url,
            "IMMSYNC_ASCP": "",
            "IMMSYNC_ASPERA_KEY": "",
            "PATH": os.environ.get("PATH", ""),
        }
        yield World(root, remote, emulator, config, aspera, env)


@pytest.fixture(name="private_mounts")
def _private_mounts() -> Any:
    """Mounts without root (tests/private_mounts.py), for the variants of root-only tests
    that run where the tests are not root; skipped as root, where the originals run."""
    from private_mounts import private_mounts_for_non_root

    yield from private_mounts_for_non_root()


# Hypothesis: the default suite keeps properties small and untimed (CI machines vary);
# `HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/test_badinput.py` is a soak run.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("long", max_examples=2000, deadline=None)
if os.environ.get("HYPOTHESIS_PROFILE"):
    _hypothesis_settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
