"""immsync's HTTPS transport against a plain ``requests`` download loop, over the same links.

``python -m benchmarks.https_vs_requests [--quick] [--rounds N] [--json]``

1 GiB in 16 files (``--quick``: 32 MiB) is served by the ImmPort emulator, started as
its own process so that serving costs this process no CPU or GIL time. Each round
downloads every file twice, alternating which goes first:

- **immsync**: ``HttpsTransfer(jobs=4)``, one ``fetch`` of all 16 files, as ``apply
  --jobs 4`` runs it (DRS link per file, ranged GETs, 1 MiB writes, a .partial renamed);
- **requests**: the loop a user would write: for each file, the same DRS link call,
  then ``requests.get(link, stream=True)`` and ``iter_content(1 MiB)`` into a file.

Both start with the study manifest already fetched and write to the same disk. The
figure is the median over rounds of the per-round ratio immsync MB/s / requests MB/s.
Prints one line; ``--json`` prints the raw numbers instead.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from immsync.https import HttpsTransfer
from immsync.immport import Credentials, ImmportClient
from immsync.immport.wire import api_session
from immsync.model import RemoteFile, TransferBatch

from . import common

MIB = 1024 * 1024
FILES = 16
JOBS = 4
USERNAME = "bench"
PASSWORD = "bench-password"  # noqa: S105 - the emulator's made-up account
MTIME = "2017-06-15T13:06:07Z"


def build_tree(root: Path, file_size: int) -> list[RemoteFile]:
    """FILES random files of *file_size* bytes below ``root/SDY1/ResultFiles``."""
    folder = root / "SDY1" / "ResultFiles" / "Bench_result"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for n in range(FILES):
        target = folder / f"bench_{n:02d}.bin"
        with target.open("wb") as fh:
            left = file_size
            while left:
                step = min(left, 4 * MIB)
                fh.write(os.urandom(step))
                left -= step
        files.append(RemoteFile(target.relative_to(root).as_posix(), file_size, MTIME))
    return files


def make_client(urls: dict[str, str]) -> ImmportClient:
    return ImmportClient(
        api_session(),
        token_url=urls["token_url"],
        data_url=urls["data_url"],
        query_url=urls["query_url"],
        credentials=Credentials(USERNAME, PASSWORD),
    )


def run_immsync(client: ImmportClient, files: list[RemoteFile], staging: Path) -> None:
    transfer = HttpsTransfer(client, jobs=JOBS)
    try:
        transfer.fetch(TransferBatch(tuple(files), staging, "bench"), lambda _event: None)
    finally:
        transfer.close()


def run_requests(client: ImmportClient, files: list[RemoteFile], staging: Path) -> None:
    uuids = client.study_files("SDY1")
    with requests.Session() as session:
        for file in files:
            link = client.drs_url(uuids[file.path].uuid, "s3")
            target = staging / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            with session.get(link, stream=True, timeout=60) as reply:
                reply.raise_for_status()
                with target.open("wb") as fh:
                    for chunk in reply.iter_content(MIB):
                        fh.write(chunk)


def timed(
    run: Callable[[ImmportClient, list[RemoteFile], Path], None],
    client: ImmportClient,
    files: list[RemoteFile],
    staging: Path,
) -> float:
    """MB/s of one download of every file; checks that each arrived whole."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.perf_counter()
    run(client, files, staging)
    elapsed = time.perf_counter() - started
    for file in files:
        size = (staging / file.path).stat().st_size
        if size != file.size:
            raise RuntimeError(f"{file.path}: {size} bytes arrived, expected {file.size}")
    shutil.rmtree(staging, ignore_errors=True)
    return sum(f.size for f in files) / 1e6 / elapsed


def measure(workdir: Path, *, quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    """Build the files, serve them, download them both ways *rounds* times, alternating.

    Returns the per-round MB/s of each (``immsync``, ``requests``), the per-round
    ratios and their median, and the sizes used.
    """
    file_size = 2 * MIB if quick else 64 * MIB
    rounds = rounds or (2 if quick else 5)
    files = build_tree(workdir / "immport", file_size)
    speeds: dict[str, list[float]] = {"immsync": [], "requests": []}
    env = {**os.environ, "IMMPORT_USERNAME": USERNAME, "IMMPORT_PASSWORD": PASSWORD}
    docroot = str(workdir / "immport")
    with common.emulator_process("--legacy", "--docroot", docroot, env=env) as urls:
        client = make_client(urls)
        client.study_files("SDY1")  # both sides start with the manifest known
        order: list[tuple[str, Callable[[ImmportClient, list[RemoteFile], Path], None]]] = [
            ("immsync", run_immsync),
            ("requests", run_requests),
        ]
        timed(run_immsync, client, files, workdir / "warm-up")
        for n in range(rounds):
            for name, run in order if n % 2 == 0 else order[::-1]:
                speeds[name].append(timed(run, client, files, workdir / name))
    ratios = [a / b for a, b in zip(speeds["immsync"], speeds["requests"], strict=True)]
    return {
        "files": FILES,
        "file_size": file_size,
        "total_bytes": FILES * file_size,
        "jobs": JOBS,
        "rounds": rounds,
        "mb_per_s": speeds,
        "median_mb_per_s": {k: statistics.median(v) for k, v in speeds.items()},
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
    }


def line(result: dict[str, Any]) -> str:
    m = result["median_mb_per_s"]
    ratios = result["ratios"]
    return (
        f"https transport vs plain requests loop: {result['median_ratio']:.2f}x "
        f"(range {min(ratios):.2f}x - {max(ratios):.2f}x, n={result['rounds']}); "
        f"immsync --jobs {result['jobs']} {m['immsync']:.0f} MB/s vs requests "
        f"{m['requests']:.0f} MB/s, {result['total_bytes'] / MIB:.0f} MiB in "
        f"{result['files']} files"
    )


def main(argv: list[str] | None = None) -> int:
    return common.script_main(
        argv,
        __doc__,
        measure,
        line,
        quick_help="32 MiB instead of 1 GiB, 2 rounds",
        rounds_help="rounds (default 5, quick 2)",
    )


if __name__ == "__main__":
    sys.exit(main())
