"""The seven figures of issue 5, each a ratio of two things measured side by side.

Every function takes the run's :class:`Context` and returns a :class:`Figure`. Sizes
come from :class:`Sizes` (``FULL`` for ``make bench``, ``QUICK`` for ``--quick``).
Where a figure runs immsync in-process rather than as the command line, its ``how``
says so and why.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from . import common
from .common import World, alternate, counted, immsync, ratio_summary, summary

log = logging.getLogger("benchmarks")

MB = 1_000_000
MIB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    """How big each figure is; ``FULL`` follows the issue's table."""

    name: str
    small_files: int
    small_rounds: int
    small_baseline_files: int
    """Files the per-file baseline fetches each round (its cost is strictly per file)."""
    parallel_files: int
    parallel_size: int
    parallel_rate: float
    parallel_rounds: int
    noop_files: int
    noop_folders: int
    noop_rounds: int
    growth_small: int
    growth_big: int
    growth_rounds: int
    status_rounds: int
    hash_bytes: int
    hash_file_size: int
    hash_rounds: int
    memory_rounds: int


FULL = Sizes(
    name="full",
    small_files=1000,
    small_rounds=3,
    small_baseline_files=30,
    parallel_files=16,
    parallel_size=32 * MIB,
    parallel_rate=40 * MB,
    parallel_rounds=3,
    noop_files=20_000,
    noop_folders=500,
    noop_rounds=5,
    growth_small=10_000,
    growth_big=100_000,
    growth_rounds=1,
    status_rounds=5,
    hash_bytes=2 << 30,
    hash_file_size=128 * MIB,
    hash_rounds=3,
    memory_rounds=1,
)

QUICK = Sizes(
    name="quick",
    small_files=60,
    small_rounds=1,
    small_baseline_files=3,
    parallel_files=4,
    parallel_size=1 * MIB,
    parallel_rate=16 * MB,
    parallel_rounds=1,
    noop_files=400,
    noop_folders=20,
    noop_rounds=1,
    growth_small=100,
    growth_big=500,
    growth_rounds=1,
    status_rounds=1,
    hash_bytes=64 * MIB,
    hash_file_size=16 * MIB,
    hash_rounds=1,
    memory_rounds=1,
)
"""Tiny sizes for CI (``--quick``): the same code paths, no meaningful numbers."""


@dataclass
class Figure:
    """One line of the results table, with everything behind it."""

    key: str
    title: str
    setup: str
    target: str
    measured: str
    """What the median and range are of, e.g. 'speed-up over the baseline'."""
    unit: str
    value: dict[str, Any]
    """``summary()`` of the per-round values."""
    passed: bool
    how: str
    bound: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    """Wall time the figure took, set-up included."""

    def line(self) -> str:
        v = self.value
        verdict = "met" if self.passed else "MISSED"
        extra = self.details.get("headline", "")
        return (
            f"{self.title}: {fmt(v['median'], self.unit)} "
            f"(range {fmt(v['min'], self.unit)} - {fmt(v['max'], self.unit)}, "
            f"n={len(v['values'])}); target {self.target}: {verdict}"
            + (f"; {extra}" if extra else "")
        )


def fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:.3g} {unit}"


@dataclass
class Context:
    """What the figures share: where to work, sizes, and results passed between them."""

    workdir: Path
    sizes: Sizes
    growth_world: World | None = None
    """Kept serving after the growth figure: status and memory use its tree."""
    growth_dest: Path | None = None
    growth_manifest: Path | None = None
    stack: ExitStack = field(default_factory=ExitStack)

    def close(self) -> None:
        self.stack.close()
        self.growth_world = None

    def fresh(self, name: str) -> Path:
        path = self.workdir / name
        common.remove_tree(path)
        path.mkdir(parents=True)
        return path


def count_files(top: Path) -> int:
    """Files below *top*, immsync's own folder left out."""
    total = 0
    for _dirpath, dirnames, filenames in os.walk(top):
        if ".immsync" in dirnames:
            dirnames.remove(".immsync")
        total += len(filenames)
    return total


# -- 1. small-file batching --------------------------------------------------------------


def small_file_batching(ctx: Context) -> Figure:
    """1,000 files of 1-10 KB: immsync vs the documented per-file recipe."""
    sz = ctx.sizes
    root = ctx.fresh("small-files")
    with World(root, latency=0.020, setup_delay=0.3) as world:
        files = common.small_study("SDY101", sz.small_files, per_folder=100, seed=101)
        common.write_files(world.docroot, files)
        dest = root / "dest"
        manifest = world.manifest("small", dest, ["SDY101"])
        paths = [rel for rel, _ in files]
        ours: list[float] = []
        theirs: list[float] = []
        our_counts: list[dict[str, int]] = []
        their_counts: list[dict[str, int]] = []
        offset = 0

        def run_immsync() -> None:
            common.remove_tree(dest)
            proc, sessions, requests = counted(
                world, lambda: immsync("apply", str(manifest), env=world.env)
            )
            proc.check()
            got = count_files(dest)
            if got != len(paths):
                raise RuntimeError(f"immsync fetched {got} of {len(paths)} files")
            ours.append(proc.elapsed)
            our_counts.append({"sessions": sessions, **requests})

        def run_baseline() -> None:
            nonlocal offset
            take = [paths[(offset + n) % len(paths)] for n in range(sz.small_baseline_files)]
            offset += len(take)
            listing = root / "baseline-paths.txt"
            listing.write_text("\n".join(take) + "\n")
            out = root / "baseline-out"
            common.remove_tree(out)
            report = root / "baseline-report.json"
            argv = [
                sys.executable,
                str(common.HERE / "baseline_per_file.py"),
                "--paths",
                str(listing),
                "--output",
                str(out),
                "--report",
                str(report),
            ]
            proc, sessions, requests = counted(world, lambda: common.run(argv, world.env))
            proc.check()
            doc = json.loads(report.read_text())
            if doc["failures"]:
                raise RuntimeError(f"the baseline failed on {doc['failures'][:3]}")
            # Its cost is strictly per file (a sign-in, a token and a session each),
            # so the time for the whole study is the per-file time times the files.
            theirs.append(doc["seconds"] / len(take) * len(paths))
            their_counts.append({"files": len(take), "sessions": sessions, **requests})

        alternate(sz.small_rounds, run_immsync, run_baseline)
    ratio = ratio_summary(theirs, ours)
    last = our_counts[-1]
    per_file = their_counts[-1]
    n = sz.small_files
    base_sessions = round(per_file["sessions"] / per_file["files"] * n)
    base_tokens = round(per_file["download_token"] / per_file["files"] * n)
    base_auth = round(per_file["auth"] / per_file["files"] * n)
    return Figure(
        key="small_files",
        title="small-file batching",
        setup=f"{n:,} files of 1-10 KB in one study; ascp set-up 0.3 s; API latency 20 ms",
        target=">= 20x faster than the per-file baseline",
        measured="speed-up: baseline time / immsync time",
        unit="x",
        value=ratio,
        passed=ratio["median"] >= 20,
        how=(
            "`immsync apply` (command line, child process, fresh destination each round) "
            "against `benchmarks/baseline_per_file.py` (ImmPort's documented recipe: a "
            f"sign-in, a token and one ascp session per file) on {sz.small_baseline_files} "
            f"different files per round, scaled to all {n:,} files (its cost is strictly "
            "per file; the whole study would take it minutes per round). Alternated, "
            f"{sz.small_rounds} rounds."
        ),
        details={
            "immsync_seconds": summary(ours),
            "baseline_seconds_for_all_files": summary(theirs),
            "baseline_seconds_per_file": summary([t / n for t in theirs]),
            "immsync_ascp_sessions": last["sessions"],
            "immsync_token_requests": last["download_token"],
            "immsync_sign_ins": last["auth"],
            "immsync_list_requests": last["list"],
            "baseline_ascp_sessions": base_sessions,
            "baseline_token_requests": base_tokens,
            "baseline_sign_ins": base_auth,
            "headline": (
                f"ascp sessions {last['sessions']} vs {base_sessions}, token requests "
                f"{last['download_token']} vs {base_tokens}"
            ),
        },
    )


# -- 2. parallel sessions ------------------------------------------------------------------


def parallel_sessions(ctx: Context) -> Figure:
    """16 files of 32 MB, 40 MB/s per session: --jobs 4 vs --jobs 1."""
    sz = ctx.sizes
    root = ctx.fresh("parallel")
    with World(root, rate_limit=sz.parallel_rate) as world:
        rels = [f"SDY201/ResultFiles/Flow_result/f{n:02d}.fcs" for n in range(sz.parallel_files)]
        total = common.big_files(world.docroot, rels, sz.parallel_size, seed=201)
        dest = root / "dest"
        manifest = world.manifest("parallel", dest, ["SDY201"])
        # The emulator computes each file's MD5 on first request and caches it;
        # warm it so that neither side pays for it.
        immsync("plan", str(manifest), env=world.env).check()
        times: dict[int, list[float]] = {1: [], 4: []}
        sessions: dict[int, list[int]] = {1: [], 4: []}

        def run_jobs(jobs: int) -> Callable[[], None]:
            def go() -> None:
                common.remove_tree(dest)
                proc, started, _ = counted(
                    world,
                    lambda: immsync("apply", str(manifest), "--jobs", str(jobs), env=world.env),
                )
                proc.check()
                times[jobs].append(proc.elapsed)
                sessions[jobs].append(started)

            return go

        alternate(sz.parallel_rounds, run_jobs(1), run_jobs(4))
        ratio = ratio_summary(times[1], times[4])
    floor = total / sz.parallel_rate
    return Figure(
        key="parallel",
        title="parallel sessions",
        setup=(
            f"{sz.parallel_files} files of {sz.parallel_size // MIB} MiB; per-session rate "
            f"cap {sz.parallel_rate / MB:.0f} MB/s"
        ),
        target="--jobs 4 >= 3x faster than --jobs 1",
        measured="speed-up: time with --jobs 1 / time with --jobs 4",
        unit="x",
        value=ratio,
        passed=ratio["median"] >= 3,
        how=(
            "`immsync apply --jobs 1` and `--jobs 4` (command line, fresh destination each "
            f"round), alternated, {sz.parallel_rounds} rounds; the emulator's MD5 cache is "
            "warmed first."
        ),
        details={
            "jobs1_seconds": summary(times[1]),
            "jobs4_seconds": summary(times[4]),
            "jobs1_sessions": sessions[1][-1],
            "jobs4_sessions": sessions[4][-1],
            "one_session_floor_seconds": floor,
            "four_session_floor_seconds": floor / 4,
            "headline": f"sessions {sessions[1][-1]} vs {sessions[4][-1]}",
        },
    )


# -- 3. growth (also builds the 100,000-file mirror the next two figures use) ---------


def growth(ctx: Context) -> Figure:
    """Files per second applying 100,000 vs 10,000 tiny files."""
    sz = ctx.sizes
    root = ctx.fresh("growth")
    world = ctx.stack.enter_context(World(root))  # serving until Context.close
    ctx.growth_world = world
    started = time.perf_counter()
    common.write_files(world.docroot, common.tiny_study("SDY401", sz.growth_small, 200))
    common.write_files(world.docroot, common.tiny_study("SDY402", sz.growth_big, 200))
    log.info("growth: wrote the remote trees in %.1f s", time.perf_counter() - started)
    small_dest, big_dest = root / "dest-small", root / "dest-big"
    small = world.manifest("growth-small", small_dest, ["SDY401"])
    big = world.manifest("growth-big", big_dest, ["SDY402"])
    immsync("plan", str(small), env=world.env).check()  # warm the MD5 caches
    immsync("plan", str(big), env=world.env).check()
    rates: dict[int, list[float]] = {sz.growth_small: [], sz.growth_big: []}
    seconds: dict[int, list[float]] = {sz.growth_small: [], sz.growth_big: []}
    sessions: dict[int, int] = {}

    def apply(manifest: Path, dest: Path, count: int) -> Callable[[], None]:
        def go() -> None:
            common.remove_tree(dest)
            proc, started_sessions, _ = counted(
                world, lambda: immsync("apply", str(manifest), env=world.env)
            )
            proc.check()
            got = count_files(dest)
            if got != count:
                raise RuntimeError(f"apply fetched {got} of {count} files")
            rates[count].append(count / proc.elapsed)
            seconds[count].append(proc.elapsed)
            sessions[count] = started_sessions

        return go

    small_run = apply(small, small_dest, sz.growth_small)
    big_run = apply(big, big_dest, sz.growth_big)
    # small, big, small: every big run sits between two small ones, so each ratio
    # compares it with a neighbour measured moments before or after.
    small_run()
    for _ in range(sz.growth_rounds):
        big_run()
        small_run()
    ctx.growth_dest = big_dest
    ctx.growth_manifest = big
    big_rates = rates[sz.growth_big]
    small_rates = rates[sz.growth_small]
    ratios = []
    for n, rate in enumerate(big_rates):
        ratios += [rate / small_rates[n], rate / small_rates[n + 1]]
    ratio = summary(ratios)
    return Figure(
        key="growth",
        title="growth",
        setup=(
            f"apply of {sz.growth_small:,} vs {sz.growth_big:,} tiny files (set-up delay 0, "
            "no rate cap)"
        ),
        target=">= 0.8x: files/s at the larger size over files/s at the smaller",
        measured="(files/s applying the large tree) / (files/s applying the small tree)",
        unit="x",
        value=ratio,
        passed=ratio["median"] >= 0.8,
        how=(
            "`immsync apply` (command line, default --jobs 2, fresh destination) of each "
            "tree, in the order small, large, small"
            + (", repeated" if sz.growth_rounds > 1 else "")
            + "; each large run is compared with the small run just before and just after it."
        ),
        details={
            "small_files_per_second": summary(small_rates),
            "big_files_per_second": summary(big_rates),
            "small_seconds": summary(seconds[sz.growth_small]),
            "big_seconds": summary(seconds[sz.growth_big]),
            "small_sessions": sessions[sz.growth_small],
            "big_sessions": sessions[sz.growth_big],
            "headline": (
                f"{statistics_median(small_rates):.0f} vs {statistics_median(big_rates):.0f} "
                "files/s"
            ),
        },
    )


def statistics_median(values: list[float]) -> float:
    return float(summary(values)["median"])


# -- 4. no-op re-run, offline check -----------------------------------------------------


def noop_status(ctx: Context) -> Figure:
    """`immsync status` over the 100,000 recorded files vs a bare scandir + sqlite3."""
    sz = ctx.sizes
    assert ctx.growth_world is not None
    assert ctx.growth_dest is not None and ctx.growth_manifest is not None
    dest, manifest, env = ctx.growth_dest, ctx.growth_manifest, ctx.growth_world.env
    ours: list[float] = []
    bare: list[float] = []
    ours_cpu: list[float] = []
    bare_cpu: list[float] = []
    bare_argv = [sys.executable, str(common.HERE / "bare_status.py"), str(dest)]

    def run_status() -> None:
        proc = immsync("status", str(manifest), env=env).check()
        if f"{sz.growth_big} ok" not in proc.stdout:
            raise RuntimeError(f"status did not find every file ok: {proc.stdout[-300:]}")
        ours.append(proc.elapsed)
        ours_cpu.append(proc.cpu)

    def run_bare() -> None:
        proc = common.run(bare_argv, env).check()
        if f"{sz.growth_big} ok" not in proc.stdout:
            raise RuntimeError(f"the bare reference disagrees: {proc.stdout}")
        bare.append(proc.elapsed)
        bare_cpu.append(proc.cpu)

    run_status()  # warm the page cache for both; not counted
    run_bare()
    for kept in (ours, bare, ours_cpu, bare_cpu):
        kept.clear()
    alternate(sz.status_rounds, run_status, run_bare)
    _, opened = common.audited_immsync("status", str(manifest), env=env, watch=dest)
    ratio = ratio_summary(ours, bare)
    return Figure(
        key="noop_status",
        title="no-op re-run, offline check",
        setup=f"{sz.growth_big:,} recorded files, nothing changed; `immsync status`",
        target="<= 2x the bare reference, and no file read",
        measured="time of `immsync status` / time of the bare reference",
        unit="x",
        value=ratio,
        passed=ratio["median"] <= 2 and not opened,
        how=(
            "`immsync status` (command line) against `benchmarks/bare_status.py` (walk with "
            "os.scandir, load the state with sqlite3, compare), both child processes, both "
            f"start-ups included, alternated, {sz.status_rounds} rounds after one warm-up "
            "each. Files read: counted by a Python audit hook over one extra run "
            "(`benchmarks/audited_cli.py`)."
        ),
        details={
            "immsync_seconds": summary(ours),
            "bare_seconds": summary(bare),
            "immsync_cpu_seconds": summary(ours_cpu),
            "bare_cpu_seconds": summary(bare_cpu),
            "cpu_ratio": ratio_summary(ours_cpu, bare_cpu),
            "files_opened_below_destination": len(opened),
            "headline": f"{len(opened)} files read",
        },
    )


# -- 5. no-op re-run, full apply --------------------------------------------------------


def _record_mirror(
    world: World, dest: Path, files: list[tuple[str, bytes]], mtime_iso: str
) -> None:
    """Lay out *files* in *dest* and record them, as a finished apply would have.

    Built directly (content, mtimes and state rows) because fetching 20,000 files
    would only slow the set-up down; the measured run then proves it is a no-op.
    """
    from immsync.model import StateEntry
    from immsync.state import StateStore, state_path

    common.write_files(dest, files)
    mtime_ns = common.FIXED_MTIME * 1_000_000_000
    entries = [
        StateEntry(
            path=rel,
            size=len(data),
            mtime_ns=mtime_ns,
            checksum=f"xxh3_128:{xxhash.xxh3_128(data).hexdigest()}",
            remote_size=len(data),
            remote_mtime=mtime_iso,
            remote_md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
        )
        for rel, data in files
    ]
    with StateStore.open(state_path(dest), create=True) as store:
        store.record(entries)


def noop_apply(ctx: Context) -> Figure:
    """A no-op `immsync apply` of 20,000 files vs the bare listing walk."""
    from immsync.sync import SyncOptions
    from immsync.testing.sampledata import iso_mtime

    sz = ctx.sizes
    root = ctx.fresh("noop-apply")
    per_folder = max(1, sz.noop_files // sz.noop_folders)
    files = common.tiny_study("SDY301", sz.noop_files, per_folder)
    workers = SyncOptions().list_workers
    with World(root, latency=0.005) as world:
        # The folder listing is what the bare walk measures: without the study file
        # manifest route, apply lists through it too (the manifest route has its own
        # figure, "no-op apply, today's ImmPort").
        world.emulator.manifest_route = False
        common.write_files(world.docroot, files)
        dest = root / "dest"
        _record_mirror(world, dest, files, iso_mtime(common.FIXED_MTIME))
        manifest = world.manifest("noop", dest, ["SDY301"])
        walk_argv = [
            sys.executable,
            str(common.HERE / "listing_walk.py"),
            "--workers",
            str(workers),
            "/SDY301",
        ]
        ours: list[float] = []
        bare: list[float] = []
        ours_cpu: list[float] = []
        bare_cpu: list[float] = []
        sessions: list[int] = []
        tokens: list[int] = []

        def run_apply() -> None:
            proc, started, requests = counted(
                world, lambda: immsync("apply", str(manifest), env=world.env)
            )
            proc.check()
            ours.append(proc.elapsed)
            ours_cpu.append(proc.cpu)
            sessions.append(started)
            tokens.append(requests["download_token"])

        def run_walk() -> None:
            proc = common.run(walk_argv, world.env).check()
            bare.append(proc.elapsed)
            bare_cpu.append(proc.cpu)

        run_apply()  # warm-up (the emulator's MD5 cache, the page cache); not counted
        run_walk()
        for kept in (ours, bare, ours_cpu, bare_cpu):
            kept.clear()
        alternate(sz.noop_rounds, run_apply, run_walk)
        before = world.sessions()
        _, opened = common.audited_immsync("apply", str(manifest), env=world.env, watch=dest)
        sessions.append(world.sessions() - before)
    ratio = ratio_summary(ours, bare)
    return Figure(
        key="noop_apply",
        title="no-op re-run, full apply",
        setup=(
            f"{sz.noop_files:,} recorded files across {sz.noop_folders} folders, nothing "
            "changed, API latency 5 ms"
        ),
        target="no ascp session, no file hashed, <= 1.3x the bare listing walk",
        measured="time of the no-op `immsync apply` / time of the bare listing walk",
        unit="x",
        value=ratio,
        passed=ratio["median"] <= 1.3 and not any(sessions) and not opened and not any(tokens),
        how=(
            "`immsync apply` (command line) against `benchmarks/listing_walk.py` "
            f"(immsync's ImmportClient.walk alone, {workers} workers like apply), both child "
            f"processes with start-up, alternated, {sz.noop_rounds} rounds after a warm-up. "
            "Sessions from the stand-in ascp's log, token requests from the emulator, files "
            "hashed from an audit hook over one extra run."
        ),
        details={
            "apply_seconds": summary(ours),
            "walk_seconds": summary(bare),
            "apply_cpu_seconds": summary(ours_cpu),
            "walk_cpu_seconds": summary(bare_cpu),
            "ascp_sessions": max(sessions),
            "token_requests": max(tokens),
            "files_opened_below_destination": len(opened),
            "headline": f"{max(sessions)} sessions, {len(opened)} files hashed",
        },
    )


# -- 6. hashing ------------------------------------------------------------------------


def hashing(ctx: Context) -> Figure:
    """verify vs raw xxh3_128 in memory; single-pass xxh3+MD5 vs MD5 alone."""
    from immsync.check import FileState, verify
    from immsync.hashing import file_digests
    from immsync.model import StateEntry
    from immsync.state import StateStore, state_path

    sz = ctx.sizes
    root = ctx.fresh("hashing")
    dest = root / "dest"
    count = max(1, sz.hash_bytes // sz.hash_file_size)
    rels = [f"SDY501/ResultFiles/Big_result/h{n:03d}.bin" for n in range(count)]
    total = common.big_files(dest, rels, sz.hash_file_size, seed=501)
    entries = []
    md5s: dict[Path, str] = {}
    for rel in rels:
        path = dest / rel
        st = path.stat()
        data = path.read_bytes()
        # Digests from the libraries directly, so verify is checked, not trusted.
        checksum = f"xxh3_128:{xxhash.xxh3_128(data).hexdigest()}"
        md5s[path] = hashlib.md5(data, usedforsecurity=False).hexdigest()
        del data
        entries.append(StateEntry(rel, st.st_size, st.st_mtime_ns, checksum, st.st_size, ""))
    with StateStore.open(state_path(dest), create=True) as store:
        store.record(entries)
    manifest = root / "hashing.yaml"
    manifest.write_text(f"version: 1\ndestination: {dest}\nstudies:\n  - accession: SDY501\n")
    recorded = {e.path: e for e in entries}
    paths = [dest / rel for rel in rels]

    verify_t: list[float] = []
    raw_t: list[float] = []
    both_t: list[float] = []
    md5_t: list[float] = []
    cli_t: list[float] = []

    def run_verify() -> None:
        started = time.perf_counter()
        checks = verify(dest, recorded)
        verify_t.append(time.perf_counter() - started)
        if any(c.state is not FileState.OK for c in checks):
            raise RuntimeError("verify found a mismatch in the hashing figure's files")

    def run_raw() -> None:
        spent = 0.0
        for path in paths:
            data = path.read_bytes()  # outside the clock: the bytes are "in memory"
            started = time.perf_counter()
            xxhash.xxh3_128(data).digest()
            spent += time.perf_counter() - started
            del data
        raw_t.append(spent)

    def run_both() -> None:
        started = time.perf_counter()
        got = [file_digests(path, md5=True).md5 for path in paths]
        both_t.append(time.perf_counter() - started)
        if got != [md5s[path] for path in paths]:
            raise RuntimeError("the single-pass check computed a wrong MD5")

    def run_md5() -> None:
        started = time.perf_counter()
        for path in paths:
            with path.open("rb") as fh:
                hashlib.file_digest(fh, "md5").hexdigest()
        md5_t.append(time.perf_counter() - started)

    run_raw()  # reads every file: now they are all in the page cache
    raw_t.clear()
    alternate(sz.hash_rounds, run_verify, run_raw)
    alternate(sz.hash_rounds, run_both, run_md5)
    env = dict(os.environ)
    for _ in range(sz.hash_rounds):
        cli_t.append(immsync("verify", str(manifest), env=env).check().elapsed)
    verify_ratio = ratio_summary(raw_t, verify_t)
    md5_ratio = ratio_summary(md5_t, both_t)
    gb = total / 1e9
    passed = verify_ratio["median"] >= 0.8 and md5_ratio["median"] >= 0.85
    return Figure(
        key="hashing",
        title="hashing",
        setup=f"{total / 2**30:.2g} GiB in {count} files, already in the page cache",
        target="verify >= 0.8x raw xxh3_128 in memory; xxh3+MD5 single pass >= 0.85x MD5 alone",
        measured="verify throughput / raw xxh3_128 throughput (MD5 ratio below)",
        unit="x",
        value=verify_ratio,
        passed=passed,
        how=(
            "In-process, because the figure is about hashing throughput and a child "
            "process would add its start-up to a 0.1-second measurement: "
            "`immsync.check.verify` (what `immsync verify` runs) against "
            "`xxhash.xxh3_128(bytes)` over each file's bytes read beforehand; "
            "`immsync.hashing.file_digests(md5=True)` (the staging check) against "
            f"`hashlib.file_digest(f, 'md5')`. Alternated, {sz.hash_rounds} rounds. The "
            "command line `immsync verify` is timed too, for reference."
        ),
        details={
            "verify_gb_per_s": summary([gb / t for t in verify_t]),
            "raw_xxh3_gb_per_s": summary([gb / t for t in raw_t]),
            "xxh3_md5_gb_per_s": summary([gb / t for t in both_t]),
            "md5_alone_gb_per_s": summary([gb / t for t in md5_t]),
            "md5_ratio": md5_ratio,
            "md5_ratio_passed": md5_ratio["median"] >= 0.85,
            "verify_ratio_passed": verify_ratio["median"] >= 0.8,
            "cli_verify_seconds": summary(cli_t),
            "cli_verify_gb_per_s": summary([gb / t for t in cli_t]),
            "headline": (
                f"verify {summary([gb / t for t in verify_t])['median']:.1f} GB/s vs raw "
                f"{summary([gb / t for t in raw_t])['median']:.1f} GB/s; xxh3+MD5 / MD5 "
                f"{md5_ratio['median']:.2f}x (range {md5_ratio['min']:.2f}-"
                f"{md5_ratio['max']:.2f})"
            ),
        },
    )


# -- 8. HTTPS transport (issue 6) --------------------------------------------------------


def https_transport(ctx: Context) -> Figure:
    """1 GiB in 16 files over DRS links, --jobs 4: immsync's transport vs a requests loop."""
    from . import https_vs_requests

    quick = ctx.sizes.name == "quick"
    result = https_vs_requests.measure(ctx.fresh("https"), quick=quick)
    ratio = summary(result["ratios"])
    speeds = result["median_mb_per_s"]
    return Figure(
        key="https",
        title="HTTPS transport",
        setup=(
            f"{result['total_bytes'] // 2**20} MiB in {result['files']} files over the "
            "emulator's DRS links (page cache), --jobs 4"
        ),
        target="reported against a plain requests loop over the same links (>= 0.9x)",
        measured="throughput of immsync's HTTPS transport / throughput of the requests loop",
        unit="x",
        value=ratio,
        passed=ratio["median"] >= 0.9,
        how=(
            "`immsync.https.HttpsTransfer` (in-process, --jobs 4, links from the emulator's "
            "DRS endpoint) against a loop of `requests.get(..., stream=True)` over the same "
            f"links, both writing to disk, alternated, {result['rounds']} rounds "
            "(`benchmarks/https_vs_requests.py`)."
        ),
        bound=(
            f"immsync {speeds['immsync']:.0f} MB/s, requests loop {speeds['requests']:.0f} "
            "MB/s (medians)."
        ),
        details={"headline": https_vs_requests.line(result), **result},
    )


# -- 9. HTTPS concurrency on small files (issue 11) ----------------------------------------


def https_concurrency(ctx: Context) -> Figure:
    """300 small files over DRS, 20 ms per request: 8 files at once vs one at a time."""
    from . import https_concurrency as bench

    quick = ctx.sizes.name == "quick"
    result = bench.measure(ctx.fresh("https-concurrency"), quick=quick)
    default = str(result["default_jobs"])
    ratio = summary(result["speedups"][default])
    return Figure(
        key="https_concurrency",
        title="HTTPS concurrency",
        setup=(
            f"{result['files']} files of {result['file_size'] // 1024} KiB over today's DRS "
            f"(GA4GH object, access, bytes), {result['latency'] * 1000:.0f} ms added to "
            "every request"
        ),
        target=f"the default ({default} files at once) >= 4x faster than 1 at a time",
        measured=f"speed-up: time at 1 file at once / time at {default}",
        unit="x",
        value=ratio,
        passed=ratio["median"] >= 4,
        how=(
            "`immsync.https.HttpsTransfer` (in-process) at 1, 4, 8 and 16 files at once, a "
            "fresh client each run with the study manifest already fetched, against the "
            f"emulator as its own process, rotated, {result['rounds']} rounds "
            "(`benchmarks/https_concurrency.py`)."
        ),
        bound=", ".join(
            f"{jobs} at once {seconds:.2f} s"
            for jobs, seconds in result["median_seconds"].items()
        )
        + " (medians).",
        details={"headline": bench.line(result), **result},
    )


def progress_bookkeeping(ctx: Context) -> Figure:
    """The cost per file of progress reporting with 20,000 vs 2,000 files in flight."""
    from immsync.model import (
        Action,
        FileOutcome,
        Plan,
        PlanItem,
        ProgressEvent,
        RemoteFile,
        TransferBatch,
    )
    from immsync.render import LineReporter
    from immsync.testing.fakes import FakeClock

    quick = ctx.sizes.name == "quick"
    small, large = (200, 2_000) if quick else (2_000, 20_000)
    rounds = 1 if quick else 3
    staging = ctx.fresh("progress-bookkeeping")

    def per_file(n: int) -> float:
        """Seconds per file to report *n* files in flight, then each of them done."""
        files = tuple(RemoteFile(f"SDY1/ResultFiles/f{i:06d}.txt", 10, "t") for i in range(n))
        plan = Plan(items=tuple(PlanItem(Action.DOWNLOAD, f.path, 10, "new", f) for f in files))
        lines: list[str] = []
        reporter = LineReporter(lines.append, interval=3600.0, clock=FakeClock())
        # As timeit does: a collection pass over every live object would charge the
        # larger size for its allocations, which is not what the figure is about.
        gc.collect()
        gc.disable()
        started = time.perf_counter()
        reporter.plan_ready(plan)
        reporter.batch_started(TransferBatch(files=files, staging=staging, label="batch 1/1"))
        for f in files:
            name = f.path.rpartition("/")[2]
            reporter.progress(ProgressEvent("batch 1/1", name, percent=100, bytes_done=10))
        for f in files:
            reporter.file_done(FileOutcome(f.path, Action.DOWNLOAD, ok=True, size=10))
        elapsed = time.perf_counter() - started
        gc.enable()
        return elapsed / n

    small_t: list[float] = []
    large_t: list[float] = []
    common.alternate(
        rounds, lambda: small_t.append(per_file(small)), lambda: large_t.append(per_file(large))
    )
    ratio = common.ratio_summary(large_t, small_t)
    return Figure(
        key="progress_bookkeeping",
        title="progress bookkeeping",
        setup=f"{large:,} vs {small:,} files reported in flight in one batch, then done",
        target="<= 1.5x: the cost per file does not grow with the files in flight",
        measured="(seconds per file at the larger size) / (seconds per file at the smaller)",
        unit="x",
        value=ratio,
        passed=ratio["median"] <= 1.5,
        how=(
            "`immsync.render.LineReporter` in-process (what a log run's progress uses), fed "
            "a plan, one batch, a progress event and a completion per file, with the "
            "garbage collector paused as timeit does; alternated, "
            f"{rounds} rounds."
        ),
        bound=(
            f"{statistics_median(small_t) * 1e6:.1f} us a file at {small:,}, "
            f"{statistics_median(large_t) * 1e6:.1f} us at {large:,} (medians). Each "
            "completion once rescanned every file still in flight, which made 20,000 "
            "files take 21 s."
        ),
    )


# -- 7. memory -------------------------------------------------------------------------


def memory(ctx: Context) -> Figure:
    """Peak resident memory of `immsync plan` over 100,000 files."""
    sz = ctx.sizes
    assert ctx.growth_world is not None and ctx.growth_manifest is not None
    world = ctx.growth_world
    recorded = ctx.growth_manifest
    fresh = world.root / "memory-fresh.yaml"
    text = recorded.read_text().replace(str(ctx.growth_dest), str(world.root / "nowhere"))
    fresh.write_text(text)
    peaks: dict[str, list[float]] = {"recorded": [], "fresh": []}
    for _ in range(sz.memory_rounds):
        for name, manifest in (("recorded", recorded), ("fresh", fresh)):
            proc, mib = common.peak_rss([*common.IMMSYNC, "plan", str(manifest)], world.env)
            proc.check()
            peaks[name].append(mib * MIB / MB)
    worst = [max(a, b) for a, b in zip(peaks["recorded"], peaks["fresh"], strict=True)]
    value = summary(worst)
    return Figure(
        key="memory",
        title="memory",
        setup=f"planning {sz.growth_big:,} files",
        target="peak resident memory < 250 MB",
        measured="peak RSS of `immsync plan` (the larger of the two cases)",
        unit="MB",
        value=value,
        passed=value["max"] < 250,
        how=(
            "`immsync plan` (command line) over the growth figure's tree, once with all "
            f"{sz.growth_big:,} files recorded and unchanged and once into an empty "
            "destination (every file to download); peak RSS is `ru_maxrss` from `wait4`, "
            "taken by a small launcher (`benchmarks/peak_rss.py`) so that the harness's "
            "own memory is not counted in."
        ),
        details={
            "recorded_mb": summary(peaks["recorded"]),
            "fresh_mb": summary(peaks["fresh"]),
            "headline": (
                f"{summary(peaks['recorded'])['max']:.0f} MB with the state loaded, "
                f"{summary(peaks['fresh'])['max']:.0f} MB into an empty destination"
            ),
        },
    )


def _today(key: str) -> Callable[[Context], Figure]:
    """A figure of issue 11 (today's ImmPort) from ``today.py``, which builds on this module."""

    def run(ctx: Context) -> Figure:
        from .today import FIGURES

        return FIGURES[key](ctx)

    return run


ALL: dict[str, Callable[[Context], Figure]] = {
    "small_files": small_file_batching,
    "parallel": parallel_sessions,
    "growth": growth,
    "noop_status": noop_status,
    "memory": memory,
    "noop_apply": noop_apply,
    "hashing": hashing,
    "https": https_transport,
    "https_concurrency": https_concurrency,
    "progress_bookkeeping": progress_bookkeeping,
}
"""Run order: growth builds the 100,000-file mirror that status and memory use."""

ALL.update({key: _today(key) for key in ("drs_first_sync", "drs_noop_apply", "manifest_memory")})


