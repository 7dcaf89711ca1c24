"""The benchmark suite still runs: `--quick` produces every figure (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {
    "small_files",
    "parallel",
    "growth",
    "noop_status",
    "noop_apply",
    "hashing",
    "memory",
    "https",
    "https_concurrency",
    "progress_bookkeeping",
}
FIGURES |= {"drs_first_sync", "drs_noop_apply", "manifest_memory"}  # today's ImmPort


def run_quick(
    markdown: Path, raw: Path, workdir: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`python -m benchmarks.run --quick`, its results written to *markdown* and *raw*."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            *extra,
            "--out",
            str(markdown),
            "--json",
            str(raw),
            "--workdir",
            str(workdir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


def test_quick_suite_produces_every_figure(tmp_path: Path) -> None:
    """`python -m benchmarks.run --quick` measures every figure and reports each."""
    markdown, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    result = run_quick(markdown, raw, tmp_path / "work")
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(raw.read_text())
    assert doc["not_measured"] == {}
    assert {f["key"] for f in doc["figures"]} == FIGURES
    text = markdown.read_text()
    assert doc["machine"]["cpu"] in text and doc["machine"]["python"] in text
    for figure in doc["figures"]:
        value = figure["value"]
        assert value["min"] <= value["median"] <= value["max"], figure["key"]
        assert f"### {figure['title']}" in text
        assert f"{figure['title']}: " in result.stdout, "one printed line per figure"
    assert not (tmp_path / "work").exists(), "the work folder is removed afterwards"


def test_only_updates_the_figures_it_runs_and_keeps_the_others(tmp_path: Path) -> None:
    """`--only` replaces its figures in an existing report; the others keep their run."""
    markdown, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    earlier_machine = {
        "cpu": "Earlier CPU",
        "avx2": False,
        "cores": 64,
        "ram_gib": 1.0,
        "python": "3.0",
        "kernel": "k",
        "date": "2001-02-03 04:05 UTC",
    }
    kept = {
        "key": "kept_figure",
        "title": "a figure from an earlier run",
        "setup": "s",
        "target": "t",
        "measured": "m",
        "unit": "x",
        "value": {"median": 1.0, "min": 1.0, "max": 1.0, "values": [1.0]},
        "passed": True,
        "how": "h",
        "bound": "",
        "details": {},
        "seconds": 1.0,
    }
    stale = {**kept, "key": "hashing", "title": "stale hashing figure"}
    raw.write_text(
        json.dumps(
            {
                "suite": "full",
                "machine": earlier_machine,
                "total_seconds": 60.0,
                "sizes": {},
                "figures": [kept, stale],
                "not_measured": {"other_figure": "it broke"},
            }
        )
    )
    result = run_quick(markdown, raw, tmp_path / "work", "--only", "hashing")
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(raw.read_text())
    figures = {f["key"]: f for f in doc["figures"]}
    assert set(figures) == {"kept_figure", "hashing"}
    assert figures["kept_figure"] == kept
    assert figures["hashing"]["title"] != "stale hashing figure"
    assert doc["not_measured"] == {"other_figure": "it broke"}
    earlier, latest = doc["runs"]
    assert earlier["machine"] == earlier_machine and earlier["figures"] == ["kept_figure"]
    assert latest["figures"] == ["hashing"] and latest["suite"] == "quick"
    text = markdown.read_text()
    assert "Earlier CPU" in text and earlier_machine["date"] in text
    assert doc["machine"]["date"] in text
    assert "### a figure from an earlier run" in text
    assert f"### {figures['hashing']['title']}" in text
