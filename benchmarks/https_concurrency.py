"""The HTTPS transport on many small files at 1, 4, 8 and 16 files at once.

``python -m benchmarks.https_concurrency [--quick] [--rounds N] [--json]``

300 files of 4 KiB (``--quick``: 40) are served by the ImmPort emulator in today's world
(API key, GA4GH DRS), started as its own process with 20 ms added to every request, the
way a transatlantic client sees ImmPort. Each file costs three round trips (the DRS
object, its access link, the bytes), so a run is bound by latency, not bandwidth. Each
round downloads every file once per concurrency, in an order rotated from round to
round; every run starts with the study manifest known and a fresh client, so no link
is reused between runs.

The figure is the median over rounds of time at 1 file at once / time at 8 (the
default). Prints one line; ``--json`` prints the raw numbers instead.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from immsync.https import DEFAULT_JOBS, HttpsTransfer
from immsync.immport import Credentials, ImmportClient, load_api_key_file
from immsync.immport.wire import api_session
from immsync.model import RemoteFile, TransferBatch
from immsync.testing.sampledata import build_many_files

from . import common

ACCESSION = "SDY300"
FILE_SIZE = 4096
LATENCY = 0.02
CONCURRENCY = (1, 4, 8, 16)
MTIME = "2017-06-15T13:06:07Z"


def make_client(urls: dict[str, str]) -> ImmportClient:
    key, _warnings = load_api_key_file(Path(urls["api_key_file"]))
    return ImmportClient(
        api_session(),
        token_url=urls["token_url"],
        data_url=urls["data_url"],
        query_url=urls["query_url"],
        drs_url=urls["drs_url"],
        credentials=Credentials(api_key=key),
    )


def timed(urls: dict[str, str], jobs: int, staging: Path) -> float:
    """Seconds to download every file with *jobs* files at once; checks each arrived."""
    client = make_client(urls)
    rows = client.study_files(ACCESSION)  # the manifest is known before the clock starts
    files = tuple(
        RemoteFile(row.path, row.size or 0, MTIME, md5=row.md5) for row in rows.values()
    )
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    transfer = HttpsTransfer(client, jobs=jobs)
    started = time.perf_counter()
    try:
        transfer.fetch(TransferBatch(files, staging, f"jobs-{jobs}"), lambda _event: None)
    finally:
        transfer.close()
    elapsed = time.perf_counter() - started
    for file in files:
        if (staging / file.path).stat().st_size != file.size:
            raise RuntimeError(f"{file.path} did not arrive whole")
    shutil.rmtree(staging, ignore_errors=True)
    client.wire.session.close()
    return elapsed


def measure(workdir: Path, *, quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    """Serve the files, download them at each concurrency *rounds* times, rotated.

    Returns the seconds per concurrency per round, the per-round speed-ups of each
    concurrency over one file at a time, and the sizes used.
    """
    count = 40 if quick else 300
    rounds = rounds or (1 if quick else 3)
    build_many_files(workdir / "immport", ACCESSION, count, FILE_SIZE)
    seconds: dict[int, list[float]] = {jobs: [] for jobs in CONCURRENCY}
    with common.emulator_process(
        "--docroot",
        str(workdir / "immport"),
        "--latency",
        str(LATENCY),
        "--api-key-file",
        str(workdir / "api-key.json"),
    ) as urls:
        timed(urls, max(CONCURRENCY), workdir / "warm-up")  # the emulator's MD5 cache
        for n in range(rounds):
            order = CONCURRENCY[n % len(CONCURRENCY) :] + CONCURRENCY[: n % len(CONCURRENCY)]
            for jobs in order:
                seconds[jobs].append(timed(urls, jobs, workdir / f"jobs-{jobs}"))
    speedups = {
        jobs: [one / many for one, many in zip(seconds[1], seconds[jobs], strict=True)]
        for jobs in CONCURRENCY
    }
    return {
        "files": count,
        "file_size": FILE_SIZE,
        "latency": LATENCY,
        "rounds": rounds,
        "default_jobs": DEFAULT_JOBS,
        "seconds": {str(jobs): values for jobs, values in seconds.items()},
        "median_seconds": {str(j): statistics.median(v) for j, v in seconds.items()},
        "speedups": {str(jobs): values for jobs, values in speedups.items()},
        "median_speedup": {str(j): statistics.median(v) for j, v in speedups.items()},
    }


def line(result: dict[str, Any]) -> str:
    times = ", ".join(
        f"{jobs} at once {result['median_seconds'][str(jobs)]:.2f} s "
        f"({result['median_speedup'][str(jobs)]:.1f}x)"
        for jobs in CONCURRENCY
    )
    return (
        f"HTTPS on {result['files']} files of {result['file_size'] // 1024} KiB, "
        f"{result['latency'] * 1000:.0f} ms per request: {times}; n={result['rounds']}"
    )


def main(argv: list[str] | None = None) -> int:
    return common.script_main(
        argv,
        __doc__,
        measure,
        line,
        quick_help="40 files instead of 300, 1 round",
        rounds_help="rounds (default 3, quick 1)",
    )


if __name__ == "__main__":
    sys.exit(main())
