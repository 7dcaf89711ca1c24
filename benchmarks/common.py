"""What every figure shares: timing, child processes, the offline world, file trees.

The harness process hosts the ImmPort emulator (threads) and starts immsync, the
references and the stand-in ``ascp`` as child processes, exactly as a user's shell
would. Each child's wall time is measured around its whole life (start-up included)
and its peak resident memory comes from ``wait4``, so nothing is sampled.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from immsync.testing.emulator import Emulator
from immsync.testing.fake_ascp import install_fake_ascp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
USERNAME = "bench"
PASSWORD = "bench-password"  # noqa: S105 - the emulator's made-up account
IMMSYNC = (sys.executable, "-m", "immsync")
FIXED_MTIME = 1497531967
"""Every generated remote file gets this mtime, so listings are reproducible."""


# -- numbers -------------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of *values* (and the values, for the raw record)."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": list(values),
    }


def ratio_summary(top: Sequence[float], bottom: Sequence[float]) -> dict[str, Any]:
    """Per-round ratios top[i] / bottom[i]: the pairs were measured side by side."""
    return summary([t / b for t, b in zip(top, bottom, strict=True)])


def alternate(rounds: int, first: Callable[[], None], second: Callable[[], None]) -> None:
    """Run both *rounds* times, swapping which goes first, so drift hits both alike."""
    for n in range(rounds):
        if n % 2 == 0:
            first()
            second()
        else:
            second()
            first()


# -- the machine -----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, Python, kernel and the date, for BENCHMARKS.md."""
    model = platform.processor() or "unknown"
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", "", "x86_64"):
                model = value.strip()
            if key.strip() == "flags" and not flags:
                flags = value
    except OSError:
        pass
    ram = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu": model,
        "avx2": " avx2" in flags,
        "cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(ram / 1024**3, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# -- child processes -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proc:
    """One finished child process."""

    argv: tuple[str, ...]
    returncode: int
    elapsed: float
    """Wall seconds from start to exit."""
    cpu: float
    """User + system CPU seconds of the child (and of any child it waited for)."""
    max_rss_mib: float
    """``ru_maxrss`` of the child. Linux carries the high-water mark across ``exec``,
    so this includes the harness's own size: use :func:`peak_rss` to measure memory."""
    stdout: str
    stderr: str

    def check(self) -> Proc:
        if self.returncode != 0:
            raise RuntimeError(
                f"{' '.join(self.argv[:4])} ... exited {self.returncode}:\n"
                f"{self.stderr[-3000:]}\n{self.stdout[-2000:]}"
            )
        return self

    def json(self) -> Any:
        return json.loads(self.stdout)


def run(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout: float = 900.0,
    cwd: Path | None = None,
) -> Proc:
    """Run *argv* to completion; time it and read its peak memory from ``wait4``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=dict(env), cwd=cwd
        )
        killer = threading.Timer(timeout, _kill, args=(proc.pid,))
        killer.daemon = True
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        elapsed = time.perf_counter() - started
        # Reaped by wait4 above: tell Popen, or it would wait for the pid again.
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Proc(
            argv=tuple(argv),
            returncode=proc.returncode,
            elapsed=elapsed,
            cpu=usage.ru_utime + usage.ru_stime,
            max_rss_mib=usage.ru_maxrss / 1024,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
        )


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def immsync(*args: str, env: Mapping[str, str], timeout: float = 900.0) -> Proc:
    """The real ``immsync`` command line, as a child process."""
    return run([*IMMSYNC, *args], env, timeout=timeout)


def peak_rss(argv: Sequence[str], env: Mapping[str, str]) -> tuple[Proc, float]:
    """Run *argv* through ``peak_rss.py``; return it and its own peak RSS in MiB."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as report:
        report_path = Path(report.name)
    try:
        proc = run([sys.executable, str(HERE / "peak_rss.py"), str(report_path), *argv], env)
        kib = json.loads(report_path.read_text() or "{}").get("max_rss_kib", 0)
    finally:
        report_path.unlink(missing_ok=True)
    return proc, kib / 1024


def audited_immsync(*args: str, env: Mapping[str, str], watch: Path) -> tuple[Proc, list[str]]:
    """``immsync`` with a Python audit hook that lists every file opened below *watch*.

    The state folder (``.immsync``) is left out; anything else opened there means a
    file's content was read. Used once per figure, never for the timed runs.
    """
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as report:
        report_path = Path(report.name)
    try:
        argv = [
            sys.executable,
            str(HERE / "audited_cli.py"),
            "--watch",
            str(watch),
            "--report",
            str(report_path),
            "--",
            *args,
        ]
        proc = run(argv, env)
        opened: list[str] = json.loads(report_path.read_text() or "[]")
    finally:
        report_path.unlink(missing_ok=True)
    return proc, opened


# -- the offline world ---------------------------------------------------------------


@dataclass
class EmulatedWorld:
    """What every benchmark world has: the emulator serving *root*/immport, the
    environment immsync runs with, and manifests written beside them. A context manager."""

    root: Path
    latency: float = 0.0
    emulator: Emulator = field(init=False)
    env: dict[str, str] = field(init=False, default_factory=dict)

    @property
    def docroot(self) -> Path:
        return self.root / "immport"

    @staticmethod
    def inherited_env() -> dict[str, str]:
        """This process's environment without any ImmPort or immsync setting."""
        return {
            k: v for k, v in os.environ.items() if not k.startswith(("IMMPORT_", "IMMSYNC_"))
        }

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.emulator.stop()

    def manifest(self, name: str, destination: Path, studies: Iterable[str]) -> Path:
        """Write a manifest selecting whole *studies* into *destination*."""
        lines = ["version: 1", f"destination: {destination}", "studies:"]
        lines += [f"  - accession: {s}" for s in studies]
        path = self.root / f"{name}.yaml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


@dataclass
class World(EmulatedWorld):
    """The legacy world: an emulator, a stand-in ``ascp`` for it, and the environment.

    ``setup_delay``, ``rate_limit`` (bytes/s per session) and ``latency`` (seconds per
    API reply) are the knobs the figures set.
    """

    setup_delay: float = 0.0
    rate_limit: float | None = None
    ascp: Path = field(init=False)

    @property
    def session_log(self) -> Path:
        return self.root / "ascp-sessions.jsonl"

    def __enter__(self) -> World:
        self.docroot.mkdir(parents=True, exist_ok=True)
        self.emulator = Emulator(
            self.docroot, world="legacy", username=USERNAME, password=PASSWORD
        ).start()
        self.emulator.latency = self.latency
        config = self.emulator.write_aspera_config(
            self.root / "aspera-config.json",
            session_log=str(self.session_log),
            setup_delay=self.setup_delay,
            rate_limit=self.rate_limit,
        )
        self.ascp = install_fake_ascp(self.root / "aspera-cli", config).ascp
        self.env = {
            **self.inherited_env(),
            "IMMPORT_USERNAME": USERNAME,
            "IMMPORT_PASSWORD": PASSWORD,
            "IMMPORT_TOKEN_URL": self.emulator.token_url,
            "IMMPORT_DATA_API_BASE_URL": self.emulator.data_url,
            "IMMSYNC_ASCP": str(self.ascp),
        }
        return self

    def sessions(self) -> int:
        """``ascp`` sessions started so far (one JSON line each in the session log)."""
        try:
            with self.session_log.open("rb") as fh:
                return sum(1 for _ in fh)
        except FileNotFoundError:
            return 0

    def requests(self) -> dict[str, int]:
        """API requests served so far, by kind."""
        return {
            "auth": self.emulator.count("/auth/token"),
            "download_token": self.emulator.count("/data/download/token"),
            "list": self.emulator.count("/data/list"),
            "manifest": self.emulator.count("/data/query/api/study/manifest"),
        }

    def reset_log(self) -> None:
        """Forget recorded requests (the log grows with every run otherwise)."""
        with self.emulator._lock:
            self.emulator.requests_log.clear()


def counted(world: World, action: Callable[[], Proc]) -> tuple[Proc, int, dict[str, int]]:
    """Run *action*; return it with the ``ascp`` sessions and API requests it caused."""
    sessions = world.sessions()
    before = world.requests()
    proc = action()
    after = world.requests()
    return proc, world.sessions() - sessions, {k: after[k] - before[k] for k in after}


# -- file trees ------------------------------------------------------------------------


def write_files(root: Path, files: Iterable[tuple[str, bytes]]) -> int:
    """Create each ``(relative path, content)`` under *root* with the fixed mtime.

    Raw ``os`` calls, because the large figures create 100,000 files and ``Path``
    methods would triple the cost. Returns the bytes written.
    """
    made: set[str] = set()
    total = 0
    base = str(root)
    times = (FIXED_MTIME, FIXED_MTIME)
    for rel, data in files:
        folder = rel.rpartition("/")[0]
        if folder not in made:
            os.makedirs(f"{base}/{folder}", exist_ok=True)
            made.add(folder)
        path = f"{base}/{rel}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.utime(path, times)
        total += len(data)
    return total


def tiny_study(accession: str, count: int, per_folder: int) -> list[tuple[str, bytes]]:
    """*count* tiny files (tens of bytes) of one study, *per_folder* to a folder."""
    return [
        (
            f"{accession}/ResultFiles/Batch{n // per_folder:04d}_result/s{n:06d}.txt",
            f"{accession} sample {n}\n".encode(),
        )
        for n in range(count)
    ]


def small_study(accession: str, count: int, per_folder: int, seed: int) -> list[tuple[str, bytes]]:
    """*count* files of 1-10 KB (random sizes, random bytes), *per_folder* to a folder."""
    rng = random.Random(seed)
    return [
        (
            f"{accession}/ResultFiles/Assay{n // per_folder:03d}_result/r{n:05d}.txt",
            rng.randbytes(rng.randint(1024, 10 * 1024)),
        )
        for n in range(count)
    ]


def big_files(root: Path, relpaths: Sequence[str], size: int, seed: int) -> int:
    """Files of *size* bytes each, written from one random block with a unique head.

    Hash speed does not depend on content, so repeating a block is as good as fresh
    random bytes and a great deal faster to write.
    """
    rng = random.Random(seed)
    block = rng.randbytes(min(size, 8 << 20))
    for n, rel in enumerate(relpaths):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            written = 0
            head = f"{rel} {n}\n".encode()
            fh.write(head)
            written += len(head)
            while written < size:
                piece = block[: size - written]
                fh.write(piece)
                written += len(piece)
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    return size * len(relpaths)


def remove_tree(path: Path) -> None:
    """``rm -rf``, quietly (fast enough for 100,000 files through ``shutil``)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def now() -> float:
    return time.perf_counter()


@contextlib.contextmanager
def emulator_process(*args: str, env: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """``python -m immsync.testing.emulator ARGS`` as a process of its own, so that its
    work is not counted in the measuring process; yields the URLs it prints first."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "immsync.testing.emulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(env if env is not None else os.environ),
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the emulator did not start")
        yield json.loads(line)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def script_main(
    argv: list[str] | None,
    doc: str | None,
    measure: Callable[..., dict[str, Any]],
    line: Callable[[dict[str, Any]], str],
    *,
    quick_help: str,
    rounds_help: str,
) -> int:
    """The command line of a benchmark script run on its own: measure, print one line
    (or, with ``--json``, the raw numbers)."""
    import argparse

    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--rounds", type=int, help=rounds_help)
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    parser.add_argument("--workdir", type=Path, help="where to put the files (default: temp)")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=options.workdir) as tmp:
        result = measure(Path(tmp), quick=options.quick, rounds=options.rounds)
    print(json.dumps(result, indent=2) if options.json else line(result))
    return 0
