"""The run summary tells bytes that moved over the network from bytes resumed from staging.

A run is interrupted part-way through a large file (SIGINT to a real `python -m immsync`
process), then run again. The emulator counts the bytes it serves over HTTPS and the
stand-in ascp logs the bytes it sends per session; the summaries must agree with them:
the first run transferred what it left in staging, the rerun transferred only the rest
and resumed what was staged.
"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path
from typing import Any

from conftest import World
from test_resilience import finish, start_apply, wait_for

from immsync.errors import ExitCode
from immsync.testing.sampledata import write_file

BIG = "SDY1/ResultFiles/big.bin"
BIG_SIZE = 6 * 1024 * 1024
ONLY_BIG = "  - accession: SDY1\n    paths: [ResultFiles/big.bin]\n"


def partial_size(world: World) -> int:
    try:
        return (world.dest / ".immsync" / "staging" / (BIG + ".partial")).stat().st_size
    except OSError:
        return 0


def interrupt_part_way(world: World, *args: str) -> tuple[dict[str, Any], str]:
    """Run apply until the big file has partly arrived, then Ctrl-C: (its summary, stderr)."""
    summary = world.root / "interrupted.json"
    proc = start_apply(world, *args, "--summary-file", str(summary), new_session=True)
    try:
        wait_for(lambda: partial_size(world) > BIG_SIZE // 8, "the big file to start arriving")
        os.killpg(proc.pid, signal.SIGINT)
        returncode, _out, err = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert returncode == ExitCode.INTERRUPTED, err
    result: dict[str, Any] = json.loads(summary.read_text())["result"]
    return result, err


def rerun(world: World, *args: str, json_events: bool = False) -> tuple[dict[str, Any], str]:
    """Apply again to the end: (its summary's result, its output: the human lines).

    The summary comes from the last event of --json, else from --summary-file.
    """
    if json_events:
        result = world.apply(*args, "--json")
        assert result.exit_code == 0, result.output
        events = [json.loads(line) for line in result.stdout.splitlines()]
        assert events[-1]["type"] == "summary"
        return events[-1]["result"], result.stderr
    summary = world.root / "rerun.json"
    result = world.apply(*args, "--summary-file", str(summary))
    assert result.exit_code == 0, result.output
    return json.loads(summary.read_text())["result"], result.output


def test_https_resume_counts_only_the_bytes_served_again(world: World):
    """Over HTTPS: transferred equals what the server sent this run; resumed is the rest."""
    write_file(world.remote, BIG, random.Random(5).randbytes(BIG_SIZE))
    world.write_manifest(ONLY_BIG)
    world.emulator.blob_chunk_delay = 0.02  # 64 KiB chunks: about 3 MiB/s
    first, _err = interrupt_part_way(world, "--transport", "https")
    kept = partial_size(world)
    assert 0 < kept < BIG_SIZE
    # What the interrupted run moved is what it left in staging: not zeros.
    assert first["bytes_transferred"] == kept
    assert first["bytes_resumed"] == 0
    served_before = world.emulator.bytes_served(BIG)
    world.emulator.blob_chunk_delay = 0.0
    result, stderr = rerun(world, "--transport", "https")
    served = world.emulator.bytes_served(BIG) - served_before
    assert served == BIG_SIZE - kept  # the emulator's own count of the rerun's bytes
    assert result["bytes_transferred"] == served
    assert result["bytes_resumed"] == kept
    assert result["counts"]["download"] == 1
    size = lambda n: f"{n / 1024**2:.1f} MiB"  # noqa: E731
    assert f"{size(served)} transferred in 1 session, {size(kept)} resumed from staging." in (
        stderr
    )
    assert f"resuming {BIG} at {size(kept)} of 6.0 MiB, staged by an earlier run" in stderr


def test_ascp_resume_counts_only_the_bytes_ascp_sent_again(world: World):
    """Over ascp (-k 2): transferred is about what the session sent; resumed is the rest."""
    write_file(world.remote, BIG, random.Random(6).randbytes(BIG_SIZE))
    world.write_manifest(ONLY_BIG)
    world.configure_aspera(rate_limit=2 * 1024 * 1024)
    first, _err = interrupt_part_way(world, "--transport", "ascp")
    kept = partial_size(world)
    assert 0 < kept < BIG_SIZE
    # As of ascp's last progress line (it redraws about twice a second): not zeros,
    # and never more than it left.
    assert 0 < first["bytes_transferred"] <= kept + BIG_SIZE // 100
    world.configure_aspera(rate_limit=None)
    before = len(world.sessions())
    result, stderr = rerun(world, "--transport", "ascp", json_events=True)
    sessions = world.sessions()[before:]
    assert len(sessions) == 1
    assert sessions[0]["resumed"] == {"/" + BIG: kept}  # ascp itself resumed there
    sent = sessions[0]["bytes_sent"]
    assert sent == BIG_SIZE - kept
    assert abs(result["bytes_transferred"] - sent) <= BIG_SIZE // 100
    assert result["bytes_resumed"] == kept
    assert f"resuming {BIG} at " in stderr


def test_a_run_without_staged_bytes_resumes_nothing(world: World, tmp_path: Path):
    """A first run over HTTPS: every byte of every file transferred, none resumed."""
    world.write_manifest("  - accession: SDY1\n    paths: [StudyFiles]\n")
    result, stderr = rerun(world, "--transport", "https")
    served = world.emulator.bytes_served()
    assert served > 0
    assert (result["bytes_transferred"], result["bytes_resumed"]) == (served, 0)
    assert "resumed from staging" not in stderr
