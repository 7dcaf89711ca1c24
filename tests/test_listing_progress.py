"""Progress while listing ImmPort, read from the real command's output.

A slow listing (the emulator answers each request after a delay) must not be a blank
screen: a log gets a quiet line now and then, a terminal a line redrawn in place, and
`apply --json` a ``listing`` event per path listed.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import World
from test_progress_cli import run_on_terminal

TWO_STUDIES = "  - accession: SDY1\n  - accession: SDY269\n"
LINE = re.compile(r"^listing ImmPort: study ([12]) of 2 \((SDY1|SDY269)\), (\d+) files? so far$")


@pytest.mark.parametrize("command", ["plan", "lock"])
def test_a_slow_listing_gets_a_quiet_line_in_a_log(today: World, command: str):
    today.write_manifest(TWO_STUDIES)
    today.emulator.latency = 0.7  # each study's manifest: over a second in all
    result = today.run(command, str(today.manifest_path))
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    progress = [line for line in lines if line.startswith("listing ImmPort:")]
    assert progress, lines
    assert all(LINE.match(line) for line in progress), progress
    assert len(progress) <= 2  # quiet: not a line per request
    assert re.search(r"^listed 2 studies, \d+ files in \d+ s$", result.stderr, re.M), lines
    assert "\r" not in result.stderr


def test_a_fast_listing_prints_nothing(today: World):
    today.write_manifest(TWO_STUDIES)
    result = today.run("plan", str(today.manifest_path))
    assert result.exit_code == 0, result.output
    assert "listing ImmPort" not in result.stderr and "listed " not in result.stderr


def test_apply_json_reports_each_study_listed_before_the_plan(today: World):
    today.write_manifest(TWO_STUDIES)
    result = today.apply("--json", "--dry-run")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    types = [e["type"] for e in events]
    assert types.index("plan") > max(i for i, t in enumerate(types) if t == "listing")
    listing = [e for e in events if e["type"] == "listing"]
    assert [(e["study"], e["studies_started"], e["studies_total"]) for e in listing] == [
        ("SDY1", 1, 2),
        ("SDY269", 2, 2),
    ]
    assert 0 < listing[0]["files_seen"] < listing[1]["files_seen"]


def test_a_terminal_shows_the_listing_as_it_goes(today: World):
    today.write_manifest(TWO_STUDIES)
    today.emulator.latency = 0.5
    code, drawn = run_on_terminal(today, ["plan", str(today.manifest_path)])
    assert code == 0, drawn
    assert "listing ImmPort: study 1 of 2 (SDY1), 0 files so far" in drawn, drawn
    assert re.search(r"listing ImmPort: study 2 of 2 \(SDY269\), \d+ files so far", drawn)
