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
}


def test_quick_suite_produces_every_figure(tmp_path: Path) -> None:
    """`python -m benchmarks.run --quick` measures all seven figures and reports each."""
    markdown, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--out",
            str(markdown),
            "--json",
            str(raw),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
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
