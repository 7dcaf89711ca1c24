"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--only NAME ...]``.

Prints one line per figure and writes the results, with the machine's description and
the date, to ``BENCHMARKS.md`` and the raw numbers to ``benchmarks/results/latest.json``
(``--quick``: ``benchmarks/results/quick.md`` and ``quick.json``, so a quick run never
overwrites the real results). ``--only`` updates the figures it runs in those files and
keeps the others, each with the machine and date of its own run. Exit status 0 even when
a target is missed: a missed
target is a finding to report, not a crash; 1 when a figure could not be measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import common, report
from .figures import ALL, FULL, QUICK, Context, Figure

log = logging.getLogger("benchmarks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (CI)")
    parser.add_argument(
        "--only", action="append", choices=sorted(ALL), help="run only this figure (repeatable)"
    )
    parser.add_argument("--out", type=Path, help="Markdown results file")
    parser.add_argument("--json", type=Path, dest="json_out", help="raw results file")
    parser.add_argument(
        "--workdir", type=Path, help="where to build the trees (default: a temporary folder)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    parser.add_argument("-v", "--verbose", action="store_true")
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if options.verbose else logging.WARNING,
        format="bench: %(message)s",
        stream=sys.stderr,
    )
    sizes = QUICK if options.quick else FULL
    results_dir = common.HERE / "results"
    out = options.out or (
        results_dir / "quick.md" if options.quick else common.REPO / "BENCHMARKS.md"
    )
    json_out = options.json_out or results_dir / ("quick.json" if options.quick else "latest.json")
    wanted = list(ALL) if not options.only else [k for k in ALL if k in options.only]
    # status and memory measure the tree that growth builds.
    if {"noop_status", "memory"} & set(wanted) and "growth" not in wanted:
        wanted.insert(0, "growth")
        wanted.sort(key=list(ALL).index)

    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="immsync-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(workdir=workdir.resolve(), sizes=sizes)
    figures: list[Figure] = []
    failed: dict[str, str] = {}
    started = time.perf_counter()
    print(f"immsync benchmarks ({sizes.name}); work folder {ctx.workdir}", flush=True)
    try:
        for key in wanted:
            begun = time.perf_counter()
            try:
                figure = ALL[key](ctx)
            except Exception as exc:  # one broken figure must not hide the others
                failed[key] = f"{type(exc).__name__}: {exc}"
                print(f"{key}: could not be measured: {failed[key]}", flush=True)
                log.info("%s", traceback.format_exc())
                continue
            figure.seconds = time.perf_counter() - begun
            figures.append(figure)
            print(f"{figure.line()}  [{figure.seconds:.0f} s]", flush=True)
    finally:
        ctx.close()
        if not options.keep:
            _remove(ctx.workdir, background=not options.quick)
    total = time.perf_counter() - started
    doc: dict[str, Any] = {
        "suite": sizes.name,
        "machine": common.machine(),
        "total_seconds": total,
        "sizes": asdict(sizes),
        "figures": [asdict(f) for f in figures],
        "not_measured": failed,
    }
    doc["runs"] = [_run_record(doc, wanted)]
    if options.only and json_out.exists():
        doc = _merge(json.loads(json_out.read_text(encoding="utf-8")), doc, wanted)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.markdown(doc), encoding="utf-8")
    print(f"total {total:.0f} s; wrote {out} and {json_out}", flush=True)
    return 1 if failed else 0


def _run_record(doc: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """When, where and at which size *keys* were measured."""
    return {
        "suite": doc["suite"],
        "machine": doc["machine"],
        "total_seconds": doc["total_seconds"],
        "figures": keys,
    }


def _merge(old: dict[str, Any], new: dict[str, Any], ran: list[str]) -> dict[str, Any]:
    """*new*'s figures in place of the same ones in *old*; *old*'s others kept as they were.

    A run of some figures (``--only``) thus updates the report instead of replacing
    it. Each run keeps its own machine, date and size in ``runs``; the top-level
    machine and suite are the latest run's.
    """
    kept = [f for f in old.get("figures", []) if f["key"] not in ran]
    by_key = {f["key"]: f for f in [*kept, *new["figures"]]}
    order = [*ALL, *(k for k in by_key if k not in ALL)]
    runs = []
    for run in old.get("runs") or [_run_record(old, [f["key"] for f in old.get("figures", [])])]:
        still = [k for k in run["figures"] if k not in ran]
        if still:
            runs.append({**run, "figures": still})
    not_measured = {k: v for k, v in old.get("not_measured", {}).items() if k not in ran}
    return {
        **new,
        "figures": [by_key[k] for k in order if k in by_key],
        "not_measured": {**not_measured, **new["not_measured"]},
        "runs": [*runs, *new["runs"]],
    }


def _remove(workdir: Path, *, background: bool) -> None:
    """Delete the work folder; a full run's 300,000 files are left to a detached process.

    Unlinking them takes a minute or two on this disk (mounted with ``discard``),
    time that measures nothing; the folder is in the temporary directory either way.
    """
    if not background:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import shutil, sys; shutil.rmtree(sys.argv[1], ignore_errors=True)",
            str(workdir),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    print(f"removing {workdir} in the background", flush=True)


if __name__ == "__main__":
    sys.exit(main())
