"""Progress as `immsync apply` shows it, read from the real command's output.

On a terminal (a pseudo-terminal here) the bars are redrawn in place; in a log (a pipe)
the lines are plain. Both say which shard runs and what an earlier run left staged.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import re
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path

from conftest import World
from test_resilience import wait_for

from immsync.errors import ExitCode
from immsync.shard import Shard, shard_staging
from immsync.testing.sampledata import write_file

BIG = "SDY1/ResultFiles/big.bin"
BIG_SIZE = 12 * 1024 * 1024
ONLY_BIG = "  - accession: SDY1\n    paths: [ResultFiles/big.bin]\n"
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def staged_partial(world: World) -> Path:
    return shard_staging(world.dest, Shard(1, 1)) / (BIG + ".partial")


def big_file_partly_staged(world: World) -> int:
    """The big file upstream, and part of it staged by an earlier, interrupted run of the
    same shard; the emulator then serves it slowly. Returns the bytes staged."""
    write_file(world.remote, BIG, random.Random(4).randbytes(BIG_SIZE))
    world.write_manifest(ONLY_BIG)
    world.emulator.blob_chunk_delay = 0.05
    proc = subprocess.Popen(
        command(world), env={**os.environ, **world.env}, cwd=world.root,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: staged_partial(world).exists() and staged_partial(world).stat().st_size
                 >= 1024 * 1024, "the big file to start arriving")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == ExitCode.INTERRUPTED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    world.emulator.blob_chunk_delay = 0.01  # 64 KiB chunks: about 6 MiB/s
    return staged_partial(world).stat().st_size


def command(world: World) -> list[str]:
    return [
        sys.executable, "-m", "immsync", "apply", str(world.manifest_path),
        "--transport", "https", "--shard", "1/1",
    ]


def run_on_terminal(world: World, args: list[str] | None = None) -> tuple[int, str]:
    """Run immsync (apply, or *args*) with stderr on a 160-column pseudo-terminal:
    (exit code, what it drew)."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {**os.environ, **world.env, "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    argv = command(world) if args is None else [sys.executable, "-m", "immsync", *args]
    proc = subprocess.Popen(
        argv, env=env, cwd=world.root, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=terminal,
    )
    os.close(terminal)
    drawn = bytearray()
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError as exc:  # EIO: the terminal's other end closed
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(controller)
        code = proc.wait(timeout=60)
    return code, _ESCAPES.sub("", drawn.decode("utf-8", "replace"))


def mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"


def test_a_terminal_shows_labelled_times_one_unit_family_and_a_bar_for_the_big_file(
    world: World,
):
    staged = big_file_partly_staged(world)
    code, drawn = run_on_terminal(world)
    assert code == 0, drawn
    frames = drawn.replace("\r", "\n")
    # Which shard, and what an earlier run left.
    assert "shard 1/1: Plan: 1 to download" in frames
    assert f"batch 1/1: {mib(staged)} of it already staged by an earlier run, resumed" in frames
    assert f"resuming {BIG} at {mib(staged)} of 12.0 MiB, staged by an earlier run" in frames
    # The run's bar is the shard's; sizes and rate in MiB; each time says what it is.
    run_bar = re.compile(
        r"shard 1/1 .*\d+\.\d MiB of 12\.0 MiB .*\d+\.\d MiB/s, elapsed \d+ s, "
        r"about \d+ s remaining"
    )
    assert run_bar.search(frames), frames[-3000:]
    # The big file has a bytes bar of its own, beside the files bar.
    file_bar = rf"^{re.escape(BIG)} +[━╸╺ ]+ \d+\.\d MiB of 12\.0 MiB"
    assert re.search(file_bar, frames, re.MULTILINE), frames[-3000:]
    assert re.search(r"^files +[━╸╺ ]+ 0 of 1 file", frames, re.MULTILINE), frames[-3000:]
    assert "MB/s" not in frames and "0:00:" not in frames  # no decimal units, no bare clocks


def test_a_log_gets_plain_lines_naming_the_shard_and_the_staged_bytes(world: World):
    staged = big_file_partly_staged(world)
    world.emulator.blob_chunk_delay = 0.0
    proc = subprocess.run(
        command(world), env={**os.environ, **world.env}, cwd=world.root,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert any(line.startswith("shard 1/1: Plan: 1 to download") for line in lines), lines
    assert (
        f"batch 1/1: starting transfer of 1 file, 12.0 MiB; {mib(staged)} of it already "
        "staged by an earlier run, resumed"
    ) in lines
    assert f"resuming {BIG} at {mib(staged)} of 12.0 MiB, staged by an earlier run" in lines
    done = re.compile(
        rf"^shard 1/1: Done in \d+\.\d s: 1 downloaded, .* {re.escape(mib(BIG_SIZE - staged))} "
        rf"transferred in 1 session, {re.escape(mib(staged))} resumed from staging\.$",
        re.MULTILINE,
    )
    assert done.search(proc.stdout), proc.stdout


def test_quiet_shows_no_progress_at_all(world: World):
    big_file_partly_staged(world)
    world.emulator.blob_chunk_delay = 0.0
    result = world.run(
        "-q", "apply", str(world.manifest_path), "--transport", "https", "--shard", "1/1"
    )
    assert result.exit_code == 0, result.output
    assert result.output == ""
