"""The ``immsync`` command: a thin adapter between the shell and the library.

Only this module imports typer, reads the environment or prints. Each command parses
its options, builds the collaborators, makes one or two library calls, renders the
result and turns an ``ImmsyncError`` into its documented exit code.
"""

from __future__ import annotations

import json
import logging
import logging.config
import netrc
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated, Any
from urllib.parse import urlsplit

import requests
import typer
from rich.console import Console

from . import __version__
from .ascp import AscpSettings, AscpTransfer, locate_ascp, locate_key
from .check import FileState, status, verify
from .errors import ExitCode, ImmsyncError, StateError, SyncFailed, UsageError
from .immport import Credentials, ImmportClient
from .lock import DestinationLock
from .manifest import load_manifest
from .model import Manifest, Report
from .render import (
    LineReporter,
    RichReporter,
    check_lines,
    checks_summary,
    checks_to_json,
    create_log_config,
    plan_lines,
    plan_summary,
    plan_to_json,
    report_summary,
    report_to_json,
)
from .retry import RetryPolicy
from .state import STATE_DIRNAME, StateStore, state_path
from .sync import Applier, Survey, SyncOptions, survey

log = logging.getLogger("immsync")

# Locals are never shown in tracebacks: they hold passwords and tokens.
app = typer.Typer(
    name="immsync",
    help="Declarative, verified, resumable sync of ImmPort study files.",
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_TOKEN_URL = "https://auth.immport.org/auth/token"  # noqa: S105 - a URL
DEFAULT_DATA_URL = "https://api.immport.org/data"


@dataclass(frozen=True, slots=True)
class Environment:
    """Everything immsync takes from environment variables, read once here."""

    username: str | None = None
    password: str | None = None
    token: str | None = None
    token_url: str = DEFAULT_TOKEN_URL
    data_url: str = DEFAULT_DATA_URL
    query_url: str | None = None
    ascp: str | None = None
    aspera_key: str | None = None
    aspera_host: str = "aspera-immport.niaid.nih.gov"
    aspera_user: str = "databrowser"
    aspera_port: int = 33001
    path: str | None = None
    netrc: str | None = None
    home: Path = field(default_factory=Path.home)

    def __repr__(self) -> str:
        # dataclass's repr would print the password.
        return f"Environment(username={self.username!r}, token_url={self.token_url!r})"

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> Environment:
        def get(name: str) -> str | None:
            value = environ.get(name, "").strip()
            return value or None

        port_text = get("IMMSYNC_ASPERA_PORT") or "33001"
        try:
            port = int(port_text)
        except ValueError:
            raise UsageError(
                f"IMMSYNC_ASPERA_PORT must be a port number, not {port_text!r}"
            ) from None
        data_url = (get("IMMPORT_DATA_API_BASE_URL") or DEFAULT_DATA_URL).rstrip("/")
        return cls(
            username=get("IMMPORT_USERNAME"),
            password=environ.get("IMMPORT_PASSWORD") or None,
            token=get("IMMPORT_TOKEN"),
            token_url=get("IMMPORT_TOKEN_URL") or DEFAULT_TOKEN_URL,
            data_url=data_url,
            query_url=(get("IMMSYNC_QUERY_API_BASE_URL") or data_url + "/query").rstrip("/"),
            ascp=get("IMMSYNC_ASCP"),
            aspera_key=get("IMMSYNC_ASPERA_KEY"),
            aspera_host=get("IMMSYNC_ASPERA_HOST") or "aspera-immport.niaid.nih.gov",
            aspera_user=get("IMMSYNC_ASPERA_USER") or "databrowser",
            aspera_port=port,
            path=environ.get("PATH"),
            netrc=get("NETRC"),
            home=Path(environ.get("HOME") or Path.home()),
        )


@dataclass(slots=True)
class _Context:
    verbose: int = 0
    quiet: bool = False


_ctx = _Context()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"immsync {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More detail (-vv for debug).")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Errors only.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Declarative, verified, resumable sync of ImmPort study files.

    Write a manifest naming the studies and paths you want, then run
    `immsync apply manifest.yaml`. Run `immsync COMMAND --help` for details.
    """
    _ctx.verbose = verbose
    _ctx.quiet = quiet
    logging.config.dictConfig(create_log_config(verbose, quiet))


ManifestArg = Annotated[
    Path, typer.Argument(help="The manifest (YAML).", show_default=False, dir_okay=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of text.")]


@contextmanager
def _errors_to_exit_codes() -> Iterator[None]:
    """The one place where failures become messages and exit codes."""
    try:
        yield
    except ImmsyncError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None


def _out(text: str = "") -> None:
    if not _ctx.quiet:
        typer.echo(text)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@app.command()
def validate(manifest: ManifestArg) -> None:
    """Check a manifest and report every problem with its line and place.

    Exit 0 when valid, 2 when not.

    Example: immsync validate examples/manifest.yaml
    """
    with _errors_to_exit_codes():
        loaded = load_manifest(manifest)
        _out(
            f"{manifest}: valid ({len(loaded.studies)} studies, destination "
            f"{loaded.destination})"
        )


@app.command()
def plan(
    manifest: ManifestArg,
    json_output: JsonOpt = False,
    allow_insecure_http: Annotated[
        bool, typer.Option(help="Allow plain-http API URLs on non-loopback hosts.")
    ] = False,
) -> None:
    """Show what `apply` would do, without changing anything.

    Lists the remote files, compares them with the state and the files on disk, and
    prints each download, update, repair and delete with its reason.

    Example: immsync plan examples/manifest.yaml --json
    """
    with _errors_to_exit_codes():
        loaded = load_manifest(manifest)
        env = Environment.read(os.environ)
        client = _make_client(env, allow_insecure_http=allow_insecure_http)
        with _open_state(loaded, create=False) as store:
            found = survey(loaded, client, store)
        if json_output:
            _print_json(plan_to_json(found.plan, problems=found.remote.problems))
        else:
            for line in [*plan_lines(found.plan), *(f"note: {n}" for n in found.plan.notes)]:
                _out(line)
            _out(plan_summary(found.plan))
        if found.remote.problems:
            raise SyncFailed(
                "some selected paths could not be listed:",
                exit_code=ExitCode.REMOTE,
                failures=found.remote.problems,
                hint="check the paths in the manifest against ImmPort",
            )


@app.command()
def apply(
    manifest: ManifestArg,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, max=16, help="Transfer sessions at once.")
    ] = 2,
    prune: Annotated[
        bool, typer.Option(help="Delete recorded files the manifest no longer selects.")
    ] = False,
    max_delete: Annotated[
        str,
        typer.Option(
            metavar="N|N%",
            help="With --prune: refuse to delete more than N files, or N% of those recorded.",
        ),
    ] = "50%",
    rebuild_state: Annotated[
        bool,
        typer.Option(
            help="Replace an unreadable state: set it aside and re-record the files on "
            "disk that match the listing (re-hashed, not re-downloaded)."
        ),
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Plan and report, change nothing.")] = False,
    batch_files: Annotated[
        int, typer.Option(min=1, help="At most this many files per ascp session.")
    ] = 500,
    batch_gib: Annotated[
        float, typer.Option(min=0.001, help="About this many GiB per ascp session at most.")
    ] = 20.0,
    session_stagger: Annotated[
        float, typer.Option(min=0, help="Seconds between the starts of two ascp sessions.")
    ] = 1.0,
    retries: Annotated[
        int, typer.Option(min=0, help="Retries of a failed session (transient faults only).")
    ] = 4,
    retry_wait: Annotated[
        float, typer.Option(min=0, help="First retry delay in seconds; doubles each time.")
    ] = 2.0,
    json_output: JsonOpt = False,
    wait: Annotated[
        float | None,
        typer.Option(
            min=0, help="Wait up to this many seconds for another run on the same destination.",
            show_default=False,
        ),
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option(help="Read the ImmPort password from standard input.")
    ] = False,
    allow_insecure_http: Annotated[
        bool, typer.Option(help="Allow plain-http API URLs on non-loopback hosts.")
    ] = False,
) -> None:
    """Make the destination match the manifest: fetch, verify, record.

    Only missing or changed files are transferred. Each file is verified before it
    appears at its final path. Exit 0 only when every selected file is present,
    verified and recorded.

    Example: immsync apply examples/manifest.yaml --jobs 4
    """
    with _errors_to_exit_codes():
        loaded = load_manifest(manifest)
        env = Environment.read(os.environ)
        if password_stdin:
            env = _with_stdin_password(env)
        client = _make_client(env, allow_insecure_http=allow_insecure_http)
        delete_count, delete_share = _parse_max_delete(max_delete)
        options = SyncOptions(
            jobs=jobs,
            prune=prune,
            dry_run=dry_run,
            max_delete=delete_count,
            max_delete_share=delete_share,
            batch_max_files=batch_files,
            batch_max_bytes=int(batch_gib * 1024**3),
            session_stagger=session_stagger,
            retry=RetryPolicy(attempts=retries + 1, base_delay=retry_wait, max_delay=60.0),
        )
        lock_path = loaded.destination / STATE_DIRNAME / "lock"
        if dry_run:
            with _open_state(loaded, create=False) as store:
                found = survey(loaded, client, store)
                report = Report(plan=found.plan, dry_run=True)
            _finish_apply(report, found.remote.problems, json_output, prune)
            return
        with DestinationLock(lock_path, wait=wait):
            if rebuild_state:
                _set_aside_broken_state(state_path(loaded.destination))
            with _open_state(loaded, create=True) as store:
                found, report, received = _apply_locked(
                    loaded, store, client, env, options, json_output, rebuild_state
                )
        if received:
            _interrupted(report, received[0], json_output)
        _finish_apply(report, found.remote.problems, json_output, prune)


def _apply_locked(
    loaded: Manifest,
    store: StateStore,
    client: ImmportClient,
    env: Environment,
    options: SyncOptions,
    json_output: bool,
    rebuild_state: bool,
) -> tuple[Survey, Report, list[int]]:
    found = survey(loaded, client, store, record_adopted=True, trust_timestamps=rebuild_state)
    transfer = _LazyAscp(env, client, workdir=loaded.destination / STATE_DIRNAME / "tmp")
    cancel = threading.Event()
    reporter = _make_reporter(json_output)
    applier = Applier(loaded, store, transfer, options=options, reporter=reporter, cancel=cancel)
    with _signals_cancel(cancel, transfer) as received:
        try:
            report = applier.run(found)
        finally:
            close = getattr(reporter, "close", None)
            if close is not None:
                close()
    report.token_requests = client.counters.get("download_token", 0)
    return found, report, received


def _parse_max_delete(text: str) -> tuple[int | None, float | None]:
    """``"10"`` is a count, ``"25%"`` a share of the recorded files."""
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100
            if not 0 <= share <= 1:
                raise ValueError
            return None, share
        count = int(text)
        if count < 0:
            raise ValueError
        return count, None
    except ValueError:
        raise UsageError(
            f"--max-delete takes a count (e.g. 100) or a share (e.g. 25%), not {text!r}"
        ) from None


def _set_aside_broken_state(path: Path) -> None:
    """Move an unreadable state out of the way (never delete it: it is evidence)."""
    if not path.exists():
        return
    try:
        StateStore.open(path).close()
        return  # readable: nothing to rebuild; missing records are adopted anyway
    except StateError:
        pass
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.rename(part.with_name(f"{part.name}.broken-{stamp}"))
    log.warning("the unreadable state was moved to %s.broken-%s", path, stamp)


def _finish_apply(
    report: Report, problems: tuple[str, ...], json_output: bool, prune: bool
) -> None:
    if json_output:
        _print_json(report_to_json(report, problems=problems))
    else:
        if report.dry_run:
            for line in plan_lines(report.plan):
                _out(line)
            _out(plan_summary(report.plan, prune=prune))
        else:
            _out(report_summary(report))
    failures = tuple(f"{f.path}: {f.error}" for f in report.failures)
    if failures:
        raise SyncFailed(
            f"{len(failures)} file(s) could not be synced; every other file was kept and "
            "recorded:",
            exit_code=ExitCode.TRANSFER,
            failures=failures + problems,
            hint="run the same command again to retry only what is missing",
        )
    if problems:
        raise SyncFailed(
            "some selected paths could not be listed:",
            exit_code=ExitCode.REMOTE,
            failures=problems,
            hint="check the paths in the manifest against ImmPort",
        )


def _interrupted(report: Report, signum: int, json_output: bool) -> None:
    done = [o for o in report.outcomes if o.ok]
    remaining = len(report.plan.to_fetch) - len(done)
    if json_output:
        _print_json(report_to_json(report))
    typer.echo(
        f"error: interrupted: {len(done)} file(s) were completed and recorded, "
        f"{remaining} remain; run the same command again to resume",
        err=True,
    )
    code = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED
    raise typer.Exit(int(code))


@app.command("status")
def status_command(manifest: ManifestArg, json_output: JsonOpt = False) -> None:
    """Show what is recorded and whether each local file still matches (offline).

    Compares sizes and modification times only; use `verify` to re-hash.

    Example: immsync status examples/manifest.yaml --json
    """
    with _errors_to_exit_codes():
        loaded = load_manifest(manifest)
        with _open_state(loaded, create=False) as store:
            checks = status(loaded.destination, store.entries())
        if json_output:
            _print_json(checks_to_json(checks))
        else:
            for line in check_lines(checks):
                _out(line)
            _out(checks_summary(checks, "status of"))


@app.command("verify")
def verify_command(manifest: ManifestArg, json_output: JsonOpt = False) -> None:
    """Re-hash every recorded file and compare it with its recorded checksum.

    Exits 6 and names each file that is missing or no longer matches.

    Example: immsync verify examples/manifest.yaml
    """
    with _errors_to_exit_codes():
        loaded = load_manifest(manifest)
        with _open_state(loaded, create=False) as store:
            checks = verify(loaded.destination, store.entries())
        if json_output:
            _print_json(checks_to_json(checks))
        else:
            _out(checks_summary(checks, "verified"))
        bad = [c for c in checks if c.state is not FileState.OK]
        if bad:
            from .errors import ChecksumMismatch

            raise ChecksumMismatch(
                f"{len(bad)} recorded file(s) failed verification:\n"
                + "\n".join(check_lines(bad)),
                hint="run `immsync apply` to repair them",
            )


# -- collaborators ----------------------------------------------------------------------


def _netrc_credentials(env: Environment) -> tuple[str | None, str | None]:
    """The netrc entry for the sign-in host, when the environment gave no credentials."""
    if env.token or env.password:
        return env.username, env.password
    path = Path(env.netrc) if env.netrc else env.home / ".netrc"
    if not path.is_file():
        return env.username, env.password
    host = urlsplit(env.token_url).hostname or ""
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError) as exc:
        raise UsageError(
            f"cannot read the netrc file {path}: {getattr(exc, 'msg', exc)}",
            hint="fix the file (it must be readable only by you: chmod 600), or set "
            "IMMPORT_USERNAME and IMMPORT_PASSWORD",
        ) from None
    if entry is None:
        return env.username, env.password
    login, _account, password = entry
    if env.username and login and login != env.username:
        return env.username, env.password  # the netrc entry is someone else's
    return env.username or login or None, password or None


def _make_client(env: Environment, *, allow_insecure_http: bool) -> ImmportClient:
    username, password = _netrc_credentials(env)
    session = requests.Session()
    session.headers["User-Agent"] = f"immsync/{__version__}"
    return ImmportClient(
        session,
        token_url=env.token_url,
        data_url=env.data_url,
        query_url=env.query_url,
        credentials=Credentials(username=username, password=password, token=env.token),
        allow_insecure_http=allow_insecure_http,
    )


def _with_stdin_password(env: Environment) -> Environment:
    from dataclasses import replace

    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("--password-stdin was given but standard input was empty")
    return replace(env, password=password)


@contextmanager
def _open_state(manifest: Manifest, *, create: bool) -> Iterator[StateStore]:
    store = StateStore.open(state_path(manifest.destination), create=create)
    try:
        yield store
    finally:
        store.close()


class _LazyAscp:
    """Finds ``ascp`` only when a transfer is needed, so no-op runs work without it."""

    name = "ascp"

    def __init__(self, env: Environment, client: ImmportClient, *, workdir: Path) -> None:
        self._env = env
        self._client = client
        self._workdir = workdir
        self._transfer: AscpTransfer | None = None
        # Re-entrant: terminate() runs from a signal handler, maybe while _get() holds it.
        self._lock = threading.RLock()

    def _get(self) -> AscpTransfer:
        with self._lock:
            if self._transfer is None:
                binary = locate_ascp(self._env.ascp, path_env=self._env.path, home=self._env.home)
                key = locate_key(self._env.aspera_key, binary)
                settings = AscpSettings(
                    binary=binary,
                    key=key,
                    host=self._env.aspera_host,
                    user=self._env.aspera_user,
                    port=self._env.aspera_port,
                )
                self._workdir.mkdir(parents=True, exist_ok=True)
                self._transfer = AscpTransfer(
                    settings,
                    token_source=self._client.download_token,
                    workdir=self._workdir,
                    env=_child_environment(),
                )
            return self._transfer

    def fetch(self, batch: Any, on_progress: Any) -> None:
        self._get().fetch(batch, on_progress)

    def terminate(self) -> None:
        with self._lock:
            transfer = self._transfer
        if transfer is not None:
            transfer.terminate()


def _child_environment() -> dict[str, str]:
    # ascp gets the caller's environment (proxies, locale), minus ImmPort secrets it
    # has no use for: a child process's environment is readable by its owner in /proc.
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("IMMPORT_PASSWORD", "IMMPORT_TOKEN", "IMMPORT_USERNAME")
    }


def _make_reporter(json_output: bool) -> Any:
    if _ctx.quiet or json_output:
        from .sync import NullReporter

        return NullReporter()
    if sys.stderr.isatty():
        return RichReporter(Console(stderr=True))
    return LineReporter(lambda line: typer.echo(line, err=True))


@contextmanager
def _signals_cancel(cancel: threading.Event, transfer: _LazyAscp) -> Iterator[list[int]]:
    """On SIGINT/SIGTERM: stop the transfers, let the run record what finished."""
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not received:
            received.append(signum)
        cancel.set()
        transfer.terminate()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def main() -> None:
    """Console-script entry point."""
    app()
