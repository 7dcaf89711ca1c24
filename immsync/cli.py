"""The ``immsync`` command: a thin adapter between the shell and the library.

Only this module imports typer, reads the environment or prints. Each command parses
its options, builds the collaborators, makes one or two library calls, renders the
result and turns an ``ImmsyncError`` into its documented exit code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.config
import netrc
import os
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.console import Console

from . import __version__
from .check import FileState, status, verify
from .errors import ExitCode, ImmsyncError, LockDrift, StateError, SyncFailed, UsageError
from .events import EventReporter, EventStream, TeeReporter, error_to_json, write_summary_file
from .lock import DestinationLock
from .lockfile import (
    LockFile,
    PinnedCatalog,
    compare,
    find_lock,
    lock_path,
    make_lock,
    read_lock,
    write_lock,
)
from .manifest import load_manifest
from .model import Manifest, Report, StateEntry
from .ports import Reporter
from .render import (
    LineReporter,
    RichReporter,
    check_lines,
    checks_summary,
    checks_to_json,
    create_log_config,
    format_size,
    iter_plan_json,
    plan_lines,
    plan_summary,
    plan_to_json,
    report_summary,
    report_to_json,
    visible,
)
from .retry import RetryPolicy
from .shard import (
    Shard,
    all_entries,
    existing_shards,
    merge_shards,
    open_main_with_shards,
    open_shard_state,
    shard_lock_path,
    shard_staging,
    share_of,
)
from .state import STATE_DIRNAME, StateStore, state_path
from .statedir import private_folder
from .sync import Applier, Survey, SyncOptions, check_prune, survey, survey_remote
from .transports import AsperaTokens, Choice, choose_transport

if TYPE_CHECKING:
    import requests

    from .ascp import AscpTransfer
    from .https import HttpsTransfer
    from .immport import Credentials, ImmportClient

# The offline commands (validate, plan --offline, status, verify) never touch the
# network: requests, the ImmPort client and the transports are imported where they are
# used, which takes a sixth of a second off every offline command's start-up.

log = logging.getLogger("immsync")

# Locals are never shown in tracebacks: they hold passwords and tokens.
app = typer.Typer(
    name="immsync",
    help="Declarative, verified, resumable sync of ImmPort study files.",
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DEFAULT_QUERY_URL = "https://www.immport.org/data/query"
DEFAULT_DRS_URL = "https://drs.immport.org"
DEFAULT_TOKEN_URL = "https://www.immport.org/auth/token"  # noqa: S105 - a URL
DEFAULT_DATA_URL = "https://api.immport.org/data"
"""The legacy data API: the folder listing and Aspera tokens, used only where they answer."""
ASCP_JOBS = 2
"""``--jobs`` for ascp: sessions at once (servers refuse bursts of sign-ins)."""
HTTPS_JOBS = 8
"""``--jobs`` over HTTPS: files at once; small files are latency-bound, links are cheap."""


class TransportMode(StrEnum):
    """The values of ``apply --transport``."""

    ascp = "ascp"
    https = "https"
    auto = "auto"


@dataclass(frozen=True, slots=True)
class Environment:
    """Everything immsync takes from environment variables, read once here."""

    username: str | None = None
    password: str | None = None
    token: str | None = None
    api_key: str | None = None
    api_key_file: str | None = None
    token_url: str = DEFAULT_TOKEN_URL
    data_url: str = DEFAULT_DATA_URL
    query_url: str = DEFAULT_QUERY_URL
    drs_url: str = DEFAULT_DRS_URL
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
        # A legacy deployment named by its data API serves the query API below it.
        query_default = data_url + "/query" if get("IMMPORT_DATA_API_BASE_URL") else None
        query_url = (
            get("IMMSYNC_QUERY_API_BASE_URL") or query_default or DEFAULT_QUERY_URL
        ).rstrip("/")
        return cls(
            username=get("IMMPORT_USERNAME"),
            password=environ.get("IMMPORT_PASSWORD") or None,
            token=get("IMMPORT_TOKEN"),
            api_key=get("IMMPORT_API_KEY"),
            api_key_file=get("IMMPORT_API_KEY_FILE"),
            token_url=get("IMMPORT_TOKEN_URL") or DEFAULT_TOKEN_URL,
            data_url=data_url,
            query_url=query_url,
            drs_url=(get("IMMSYNC_DRS_BASE_URL") or _default_drs_url(query_url)).rstrip("/"),
            ascp=get("IMMSYNC_ASCP"),
            aspera_key=get("IMMSYNC_ASPERA_KEY"),
            aspera_host=get("IMMSYNC_ASPERA_HOST") or "aspera-immport.niaid.nih.gov",
            aspera_user=get("IMMSYNC_ASPERA_USER") or "databrowser",
            aspera_port=port,
            path=environ.get("PATH"),
            netrc=get("NETRC"),
            home=Path(environ.get("HOME") or Path.home()),
        )


def _default_drs_url(query_url: str) -> str:
    """ImmPort's DRS service beside ImmPort's query API; beside any other query API, the
    DRS service of the same origin, so that a key for another deployment (a mirror, the
    emulator) is never sent to ImmPort's."""
    if query_url == DEFAULT_QUERY_URL:
        return DEFAULT_DRS_URL
    parts = urlsplit(query_url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else DEFAULT_DRS_URL


@dataclass(slots=True)
class _Context:
    verbose: int = 0
    quiet: bool = False
    manifest: Path | None = None
    """The manifest of the running command, named in hints in place of ``MANIFEST``."""


_ctx = _Context()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"immsync {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            metavar="",
            show_default=False,
            help="More detail; -vv for debug. Also after the command.",
        ),
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Errors only. Also after the command.")
    ] = False,
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
_ACCESS = "Credentials and network"
ApiKeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--api-key-file",
        help="The JSON key file ImmPort's web site gave you (default: $IMMPORT_API_KEY_FILE).",
        show_default=False,
        dir_okay=False,
        rich_help_panel=_ACCESS,
    ),
]
PasswordStdinOpt = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read a legacy ImmPort password from standard input.",
        rich_help_panel=_ACCESS,
    ),
]
InsecureHttpOpt = Annotated[
    bool,
    typer.Option(
        "--allow-insecure-http",
        help="Allow plain-http API URLs on non-loopback hosts.",
        rich_help_panel=_ACCESS,
    ),
]
PruneOpt = Annotated[
    bool,
    typer.Option(
        "--prune",
        help="Delete recorded files the manifest no longer selects (without it they "
        "are kept, and reported).",
        rich_help_panel="Deleting",
    ),
]
MaxDeleteOpt = Annotated[
    str,
    typer.Option(
        metavar="N|N%",
        help="With --prune: refuse to delete more than N files, or N% of those recorded.",
        rich_help_panel="Deleting",
    ),
]
ChecksumOpt = Annotated[
    bool,
    typer.Option(
        "--checksum",
        help="Legacy listing only: also fetch ImmPort's MD5s for studies with nothing to "
        "download (today's catalog, the study file manifest, always has them).",
    ),
]


_NOTHING_CHANGED = "nothing was changed"
_FILES_RECORDED = "every file recorded so far is complete: run the same command again to go on"


@contextmanager
def _errors_to_exit_codes(on_interrupt: str = _NOTHING_CHANGED) -> Iterator[None]:
    """The one place where failures become messages and exit codes.

    *on_interrupt* says, after Ctrl-C or SIGTERM, what the command leaves behind.
    """
    try:
        yield
    except BrokenPipeError:
        # Whoever read our output stopped (`immsync plan m.yaml | head -1`): stop
        # quietly, as other tools do, and let nothing else try to write there.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise typer.Exit(int(ExitCode.BROKEN_PIPE)) from None
    except ImmsyncError as exc:
        typer.echo(visible(f"error: {_with_manifest_named(str(exc))}"), err=True)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt as exc:
        # Outside the transfers (listing, planning, verifying) nothing is half-written.
        terminated = isinstance(exc, _Terminated)
        typer.echo(
            f"error: {'terminated' if terminated else 'interrupted'}; {on_interrupt}", err=True
        )
        code = ExitCode.TERMINATED if terminated else ExitCode.INTERRUPTED
        raise typer.Exit(int(code)) from None


def _load(manifest: Path) -> Manifest:
    _ctx.manifest = manifest
    return load_manifest(manifest)


def _with_manifest_named(text: str) -> str:
    """Hints say ``immsync apply MANIFEST``; name the manifest this command was given."""
    if _ctx.manifest is None:
        return text
    return text.replace(" MANIFEST`", f" {shlex.quote(str(_ctx.manifest))}`")


@contextmanager
def _json_error_document(enabled: bool) -> Iterator[threading.Event]:
    """With --json, a failure before the answer was printed prints ``{"error": ...}``.

    Set the event once the answer is out: a failure after it (problems the answer
    already lists) adds no second document.
    """
    answered = threading.Event()
    try:
        yield answered
    except ImmsyncError as exc:
        if enabled and not answered.is_set():
            if exc.hint:
                exc.hint = _with_manifest_named(exc.hint)
            _print_json({"error": error_to_json(exc)})
        raise


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs (see ``main``)."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def _out(text: str = "") -> None:
    if not _ctx.quiet:
        typer.echo(visible(text))


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@app.command()
def validate(manifest: ManifestArg) -> None:
    """Check a manifest and report every problem with its line and place.

    Exit 0 when valid, 2 when not.

    Example: immsync validate examples/manifest.yaml
    """
    with _errors_to_exit_codes():
        loaded = _load(manifest)
        studies = "1 study" if len(loaded.studies) == 1 else f"{len(loaded.studies)} studies"
        _out(f"{manifest}: valid ({studies}, destination {loaded.destination})")


@app.command()
def plan(
    manifest: ManifestArg,
    json_output: JsonOpt = False,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode",
            help="Exit 0 when there is nothing to do, 10 when changes are pending "
            "(errors keep their own codes). With --prune, deletions count.",
        ),
    ] = False,
    prune: PruneOpt = False,
    max_delete: MaxDeleteOpt = "50%",
    api_key_file: ApiKeyFileOpt = None,
    password_stdin: PasswordStdinOpt = False,
    allow_insecure_http: InsecureHttpOpt = False,
    checksum: ChecksumOpt = False,
) -> None:
    """Show what `apply` would do, without changing anything.

    Lists the remote files, compares them with the state and the files on disk, and
    prints each download, update, repair and delete with its reason. With a lock file
    beside the manifest (`immsync lock`), also shows where upstream or the manifest
    drifted from it.

    Example: immsync plan examples/manifest.yaml --json --detailed-exitcode
    """
    with _errors_to_exit_codes(), _json_error_document(json_output) as answered:
        loaded = _load(manifest)
        env = Environment.read(os.environ)
        client = _connect(env, api_key_file, password_stdin, allow_insecure_http)
        pinned = find_lock(lock_path(manifest))
        with open_main_with_shards(loaded.destination) as store:
            # Drift from a lock file includes MD5s: compare every one.
            found = survey(
                loaded,
                client.catalog,
                store,
                all_checksums=checksum or pinned is not None,
                prune=prune,
            )
        drift = []
        if pinned is not None:
            releases = {a: client.latest_data_release(a) for a in pinned.releases()}
            drift = compare(
                pinned,
                loaded,
                found.remote.selected,
                listed=found.remote.listed,
                unlisted=found.remote.is_unlisted,
                releases=releases,
            )
        if json_output:
            extra = {"lock_drift": [d.to_json() for d in drift]} if pinned is not None else {}
            answered.set()
            for chunk in iter_plan_json(
                found.plan, problems=found.remote.problems, extra=extra
            ):
                sys.stdout.write(chunk)
            sys.stdout.flush()
        else:
            for line in [
                *plan_lines(found.plan),
                *(f"note: {n}" for n in found.plan.notes),
                *(f"note: lock: {d}" for d in drift),
            ]:
                _out(line)
            _out(plan_summary(found.plan, unlisted=len(found.remote.failed_roots)))
        if prune:
            count, share = _parse_max_delete(max_delete)
            check_prune(
                len(found.plan.to_delete), len(found.state), max_count=count, max_share=share
            )
        if found.remote.problems:
            raise SyncFailed(
                "some selected paths could not be listed:",
                exit_code=ExitCode.REMOTE,
                failures=found.remote.problems,
                hint="check the paths in the manifest against ImmPort",
            )
        if detailed_exitcode and found.plan:
            raise typer.Exit(int(ExitCode.CHANGES_PENDING))


@app.command()
def apply(
    manifest: ManifestArg,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            max=16,
            show_default=False,
            help=f"ascp sessions at once [default: {ASCP_JOBS}]; over HTTPS, files "
            f"downloading at once [default: {HTTPS_JOBS}].",
        ),
    ] = None,
    prune: PruneOpt = False,
    max_delete: MaxDeleteOpt = "50%",
    rebuild_state: Annotated[
        bool,
        typer.Option(
            "--rebuild-state",
            help="Replace an unreadable state: set it aside and re-record the files on "
            "disk that match upstream (re-hashed, not re-downloaded).",
            rich_help_panel="State and locks",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Plan and report, change nothing.")
    ] = False,
    batch_files: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            help="At most this many files per ascp session.",
            rich_help_panel="Tuning",
        ),
    ] = 500,
    batch_gib: Annotated[
        float,
        typer.Option(
            min=0.001,
            metavar="GIB",
            help="About this many GiB per ascp session at most.",
            rich_help_panel="Tuning",
        ),
    ] = 20.0,
    session_stagger: Annotated[
        float,
        typer.Option(
            min=0,
            metavar="SECONDS",
            help="Space session starts by up to this many seconds: the next starts once "
            "the previous one has connected, or after this long.",
            rich_help_panel="Tuning",
        ),
    ] = 1.0,
    retries: Annotated[
        int,
        typer.Option(
            min=0,
            metavar="N",
            help="Retries of a failed session (transient faults only).",
            rich_help_panel="Tuning",
        ),
    ] = 4,
    retry_wait: Annotated[
        float,
        typer.Option(
            min=0,
            metavar="SECONDS",
            help="First retry delay in seconds; doubles each time.",
            rich_help_panel="Tuning",
        ),
    ] = 2.0,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print a stream of JSON events on stdout, one per line, ending with a "
            "summary (schemas/events.schema.json).",
            rich_help_panel="Output",
        ),
    ] = False,
    summary_file: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="Also write the final summary JSON to PATH (atomically), e.g. for a CI "
            "artifact.",
            dir_okay=False,
            show_default=False,
            rich_help_panel="Output",
        ),
    ] = None,
    frozen: Annotated[
        bool,
        typer.Option(
            "--frozen",
            help="Fetch exactly what the lock file beside the manifest pins; fail, naming "
            "each file, if upstream or the manifest no longer matches it.",
            rich_help_panel="Pinning and job arrays",
        ),
    ] = False,
    shard_text: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="K/N",
            help="Take shard K of N (from 1) of the selected files, with its own state, for "
            "job arrays; `immsync merge-shards` folds the shards together afterwards.",
            show_default=False,
            rich_help_panel="Pinning and job arrays",
        ),
    ] = None,
    wait: Annotated[
        float | None,
        typer.Option(
            min=0,
            metavar="SECONDS",
            help="Wait up to this many seconds for another run on the same destination.",
            show_default=False,
            rich_help_panel="State and locks",
        ),
    ] = None,
    password_stdin: PasswordStdinOpt = False,
    api_key_file: ApiKeyFileOpt = None,
    allow_insecure_http: InsecureHttpOpt = False,
    transport: Annotated[
        TransportMode | None,
        typer.Option(
            help="How files travel: ascp, https (ImmPort's download links; nothing to "
            "install) or auto (ascp when it is installed, else HTTPS). Default: the "
            "manifest's transport, else auto.",
            show_default=False,
        ),
    ] = None,
    checksum: ChecksumOpt = False,
) -> None:
    """Make the destination match the manifest: fetch, verify, record.

    Only missing or changed files are transferred. Each file is verified before it
    appears at its final path. Exit 0 only when every selected file is present,
    verified and recorded.

    Example: immsync apply examples/manifest.yaml --jobs 4
    """
    events = EventStream(typer.echo) if json_output else None
    out = _ApplyOutput(events, summary_file)
    with _errors_to_exit_codes(_FILES_RECORDED), out.closing_errors():
        loaded = _load(manifest)
        shard = Shard.parse(shard_text) if shard_text is not None else None
        if shard is not None and (prune or rebuild_state):
            raise UsageError(
                "--shard cannot be combined with --prune or --rebuild-state",
                hint="merge the shards (`immsync merge-shards`), then prune or rebuild "
                "with an unsharded apply",
            )
        pinned = read_lock(lock_path(manifest)) if frozen else None
        env = Environment.read(os.environ)
        client = _connect(env, api_key_file, password_stdin, allow_insecure_http)
        delete_count, delete_share = _parse_max_delete(max_delete)
        options = SyncOptions(
            jobs=jobs or ASCP_JOBS,
            prune=prune,
            dry_run=dry_run,
            max_delete=delete_count,
            max_delete_share=delete_share,
            batch_max_files=batch_files,
            batch_max_bytes=int(batch_gib * 1024**3),
            session_stagger=session_stagger,
            retry=RetryPolicy(attempts=retries + 1, base_delay=retry_wait, max_delay=60.0),
        )
        scope = _Scope(
            shard, pinned, manifest, all_checksums=checksum or pinned is not None, prune=prune
        )
        if dry_run:
            with scope.open_state(loaded, create=False) as store:
                found = scope.survey(loaded, client, store)
                report = Report(plan=found.plan, dry_run=True)
            out.plan(found)
            _finish_apply(
                report, found.remote.problems, out, unlisted=len(found.remote.failed_roots)
            )
            return
        main_lock = loaded.destination / STATE_DIRNAME / "lock"
        with contextlib.ExitStack() as locks:
            # A shard shares the destination with the other shards of its run only.
            held = [
                locks.enter_context(
                    DestinationLock(main_lock, wait=wait, shared=shard is not None)
                )
            ]
            if shard is not None:
                held.append(
                    locks.enter_context(
                        DestinationLock(shard_lock_path(loaded.destination, shard), wait=wait)
                    )
                )
            if rebuild_state:
                _set_aside_broken_state(state_path(loaded.destination))
            if shard is None and existing_shards(loaded.destination):
                with _open_state(loaded, create=True) as store:
                    merge_shards(loaded.destination, store)
            with scope.open_state(loaded, create=True) as store:
                found, report, received = _apply_locked(
                    loaded, store, client, env, options, out, rebuild_state, scope,
                    transport=transport.value if transport else None,
                    https_jobs=jobs or HTTPS_JOBS,
                    hold_fds=tuple(lock.fileno() for lock in held),
                )
        if received:
            _interrupted(report, received[0], out, found.remote.problems)
        _finish_apply(
            report, found.remote.problems, out, unlisted=len(found.remote.failed_roots)
        )


def _apply_locked(
    loaded: Manifest,
    store: StateStore,
    client: ImmportClient,
    env: Environment,
    options: SyncOptions,
    out: _ApplyOutput,
    rebuild_state: bool,
    scope: _Scope,
    *,
    transport: str | None = None,
    https_jobs: int = HTTPS_JOBS,
    hold_fds: tuple[int, ...] = (),
) -> tuple[Survey, Report, list[int]]:
    found = scope.survey(
        loaded, client, store, record_adopted=True, trust_timestamps=rebuild_state
    )
    choice = _choose_transport(
        transport, loaded, env, client, options, https_jobs=https_jobs, hold_fds=hold_fds
    )
    if found.plan.to_fetch and not _ctx.quiet:
        typer.echo(f"transport: {choice.reason}", err=True)
    transfer = choice.transfer
    cancel = threading.Event()
    reporter = _make_reporter(out, found.remote.problems)
    applier = Applier(
        loaded,
        store,
        transfer,
        options=options,
        reporter=reporter,
        cancel=cancel,
        staging=scope.staging(loaded),
    )
    with _signals_cancel(cancel, transfer) as received:
        try:
            report = applier.run(found)
        finally:
            reporter.close()
            transfer.close()
    report.token_requests = client.counters.get("download_token", 0)
    return found, report, received


def _remove_stale_scratch(workdir: Path, *, max_age: float = 86400.0) -> None:
    """Remove scratch files (ascp pair lists) a killed run left over a day ago.

    Only old ones: a concurrent shard of this destination may be using a fresh one.
    """
    if not private_folder(workdir, create=False):
        return
    cutoff = time.time() - max_age
    for entry in os.scandir(workdir):
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)


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
        # create=False reads even where nothing can be written (a full disk), so a
        # healthy state is never mistaken for a broken one and moved away.
        with StateStore.open(path, create=False) as store:
            store.entries()  # every record readable and safe
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
    report: Report, problems: tuple[str, ...], out: _ApplyOutput, *, unlisted: int
) -> None:
    failures = tuple(f"{f.path}: {f.error}" for f in report.failures)
    exit_code = ExitCode.TRANSFER if failures else ExitCode.REMOTE if problems else ExitCode.OK
    out.summary(report, problems, exit_code=exit_code)
    if out.events is None:
        if report.dry_run:
            for line in plan_lines(report.plan):
                _out(line)
            _out(plan_summary(report.plan, unlisted=unlisted))
        else:
            _out(report_summary(report, unlisted=unlisted))
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


def _interrupted(
    report: Report, signum: int, out: _ApplyOutput, problems: tuple[str, ...]
) -> None:
    done = [o for o in report.outcomes if o.ok]
    remaining = len(report.plan.to_fetch) - len(done)
    code = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED
    out.summary(report, problems, exit_code=code, interrupted=True)
    typer.echo(
        f"error: interrupted: {len(done)} file(s) were completed and recorded, "
        f"{remaining} remain; run the same command again to resume",
        err=True,
    )
    raise typer.Exit(int(code))


@app.command("status")
def status_command(manifest: ManifestArg, json_output: JsonOpt = False) -> None:
    """Show what is recorded and whether each local file still matches (offline).

    Compares sizes and modification times only; use `verify` to re-hash.

    Example: immsync status examples/manifest.yaml --json
    """
    with _errors_to_exit_codes(), _json_error_document(json_output):
        loaded = _load(manifest)
        checks = status(loaded.destination, _recorded_for(loaded, manifest))
        if json_output:
            _print_json(checks_to_json(checks))
        else:
            for line in check_lines(checks):
                _out(line)
            _out(checks_summary(checks, "status of"))


def _recorded_for(loaded: Manifest, manifest: Path) -> dict[str, StateEntry]:
    """What the state records for this manifest's studies (every shard's too).

    Raises:
        StateError: the destination is not a folder.
        ChecksumMismatch: nothing is recorded for the manifest: a check of nothing
            must not read as success.
    """
    destination = loaded.destination
    if destination.exists() and not destination.is_dir():
        raise StateError(
            f"the destination {destination} is not a folder",
            hint=f"check `destination:` in {manifest}",
        )
    with _open_state(loaded, create=False) as store:
        entries = all_entries(destination, store.entries())
    studies = tuple(study.accession + "/" for study in loaded.studies)
    mine = {path: entry for path, entry in entries.items() if path.startswith(studies)}
    if not mine:
        from .errors import ChecksumMismatch

        raise ChecksumMismatch(
            f"nothing is recorded for {manifest} in {destination}: it has not been "
            "applied there yet, so there is nothing to check",
            hint=f"run `immsync apply {manifest}` first",
        )
    return mine


@app.command("verify")
def verify_command(manifest: ManifestArg, json_output: JsonOpt = False) -> None:
    """Re-hash every recorded file and compare it with its recorded checksum.

    Exits 6 and names each file that is missing or no longer matches.

    Example: immsync verify examples/manifest.yaml
    """
    with _errors_to_exit_codes(), _json_error_document(json_output):
        loaded = _load(manifest)
        checks = verify(loaded.destination, _recorded_for(loaded, manifest))
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


@app.command("lock")
def lock_command(
    manifest: ManifestArg,
    api_key_file: ApiKeyFileOpt = None,
    password_stdin: PasswordStdinOpt = False,
    allow_insecure_http: InsecureHttpOpt = False,
) -> None:
    """Pin what the manifest selects upstream now, in a lock file beside it.

    Writes <manifest stem>.lock.json: every selected file's size, modification time,
    MD5 (where ImmPort gives one) and data release, sorted and stable, to be
    committed. `apply --frozen` then fetches exactly that; `plan` shows drift from it.

    Example: immsync lock examples/manifest.yaml
    """
    with _errors_to_exit_codes("the lock file is replaced whole or not at all"):
        loaded = _load(manifest)
        env = Environment.read(os.environ)
        client = _connect(env, api_key_file, password_stdin, allow_insecure_http)
        remote = survey_remote(loaded, client.catalog)
        if remote.problems:
            raise SyncFailed(
                "the lock file was not written: some selected paths could not be listed:",
                exit_code=ExitCode.REMOTE,
                failures=remote.problems,
                hint="check the paths in the manifest against ImmPort",
            )
        releases = {s.accession: client.latest_data_release(s.accession) for s in loaded.studies}
        target = lock_path(manifest)
        try:
            previous = find_lock(target)
        except UsageError:
            previous = None  # unreadable: replaced below, which is what was asked
        pinned = make_lock(remote.selected, releases, manifest_name=manifest.name)
        write_lock(target, pinned)
        total = sum(f.size for f in pinned.files.values())
        message = f"wrote {target}: {len(pinned.files)} file(s) pinned, {format_size(total)}"
        if previous is not None:
            drift = compare(previous, loaded, remote.selected, listed=remote.listed)
            kinds = [d.kind.value for d in drift]
            message += (
                f" ({kinds.count('changed')} changed, {kinds.count('not_in_lock')} added, "
                f"{kinds.count('not_selected') + kinds.count('gone_upstream')} removed "
                "since the previous lock)"
            )
        _out(message)


@app.command("merge-shards")
def merge_shards_command(
    manifest: ManifestArg,
    wait: Annotated[
        float | None,
        typer.Option(
            min=0,
            metavar="SECONDS",
            help="Wait up to this many seconds for another run on the same destination.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Fold the states of `apply --shard` runs into the destination's main state.

    Run it once every task of the array has finished (it fails naming a shard that
    is still running). Idempotent: with no shard states left it changes nothing.

    Example: immsync merge-shards examples/manifest.yaml
    """
    with _errors_to_exit_codes("merging is safe to repeat: run the same command again"):
        loaded = _load(manifest)
        if not existing_shards(loaded.destination):
            _out(f"no shard states to merge in {loaded.destination}")
            return
        lock_file = loaded.destination / STATE_DIRNAME / "lock"
        with DestinationLock(lock_file, wait=wait), _open_state(loaded, create=True) as store:
            result = merge_shards(loaded.destination, store)
        names = ", ".join(str(s) for s in result.shards)
        _out(
            f"merged {len(result.shards)} shard state(s) ({names}): {result.recorded} "
            f"record(s) written; {result.total} file(s) recorded"
        )


@app.command("init")
def init_command(
    accessions: Annotated[
        list[str],
        typer.Argument(help="Study accessions, e.g. SDY1 SDY269.", show_default=False),
    ],
    results_only: Annotated[
        bool, typer.Option("--results-only", help="Take each study's ResultFiles folder only.")
    ] = False,
    destination: Annotated[
        str, typer.Option(help="The manifest's destination folder.")
    ] = "data",
    api_key_file: ApiKeyFileOpt = None,
    password_stdin: PasswordStdinOpt = False,
    allow_insecure_http: InsecureHttpOpt = False,
) -> None:
    """Print a commented manifest for the given studies, from ImmPort's listing.

    Each study's top-level folders and files are named in the manifest, with their
    sizes, ready to narrow down. Redirect it to a file and edit it.

    Example: immsync init SDY1 SDY269 --results-only > manifest.yaml
    """
    with _errors_to_exit_codes():
        env = Environment.read(os.environ)
        client = _connect(env, api_key_file, password_stdin, allow_insecure_http)
        from .init import init_manifest

        text = init_manifest(
            client, accessions, results_only=results_only, destination=destination
        )
        typer.echo(text, nl=False)


class _ApplyOutput:
    """Where apply's machine-readable output goes: the event stream and the summary file."""

    def __init__(self, events: EventStream | None, summary_file: Path | None) -> None:
        self.events = events
        self.summary_file = summary_file
        self._summarised = False

    def plan(self, found: Survey) -> None:
        """The plan event of a run that plans without an Applier (``--dry-run``)."""
        if self.events is not None:
            self.events.emit(
                "plan", {"plan": plan_to_json(found.plan, problems=found.remote.problems)}
            )

    def summary(
        self,
        report: Report,
        problems: tuple[str, ...],
        *,
        exit_code: int,
        interrupted: bool = False,
    ) -> None:
        self._summarised = True
        if self.events is None and self.summary_file is None:
            return
        document = report_to_json(
            report, problems=problems, exit_code=exit_code, interrupted=interrupted
        )
        if self.events is not None:
            self.events.summary(document)
        if self.summary_file is not None:
            write_summary_file(self.summary_file, document)

    @contextmanager
    def closing_errors(self) -> Iterator[None]:
        """A run that fails before its summary ends the stream (and the file) with the error."""
        try:
            yield
        except ImmsyncError as exc:
            if exc.hint:
                exc.hint = _with_manifest_named(exc.hint)
            if not self._summarised:
                if self.events is not None:
                    self.events.error(exc)
                if self.summary_file is not None:
                    write_summary_file(self.summary_file, {"error": error_to_json(exc)})
            raise


@dataclass(frozen=True, slots=True)
class _Scope:
    """What a run covers: one shard or the whole selection, frozen to a lock or not."""

    shard: Shard | None
    pinned: LockFile | None
    manifest_path: Path
    all_checksums: bool = False
    """Compare upstream MD5s of unchanged files too (``--checksum``, ``--frozen``)."""
    prune: bool = False
    """Plan deletions to carry out (``--prune``), not only to report."""

    @contextmanager
    def open_state(self, manifest: Manifest, *, create: bool) -> Iterator[StateStore]:
        """The shard's own state, or the main state (which, to plan, shows shards' records)."""
        destination = manifest.destination
        if self.shard is not None:
            store: StateStore = open_shard_state(destination, self.shard, create=create)
        elif create:
            store = StateStore.open(state_path(destination), create=True)
        else:
            store = open_main_with_shards(destination)
        try:
            yield store
        finally:
            store.close()

    def staging(self, manifest: Manifest) -> Path | None:
        return None if self.shard is None else shard_staging(manifest.destination, self.shard)

    def survey(
        self,
        manifest: Manifest,
        client: ImmportClient,
        store: StateStore,
        *,
        record_adopted: bool = False,
        trust_timestamps: bool = False,
    ) -> Survey:
        """Plan this run's share; with a lock, refuse (LockDrift) if it no longer matches."""
        catalog: Any = (
            client.catalog if self.pinned is None else PinnedCatalog(client.catalog, self.pinned)
        )
        found = survey(
            manifest,
            catalog,
            store,
            record_adopted=record_adopted,
            trust_timestamps=trust_timestamps,
            share=None if self.shard is None else share_of(self.shard),
            all_checksums=self.all_checksums,
            prune=self.prune,
        )
        if self.pinned is not None:
            drift = [
                d
                for d in compare(
                    self.pinned,
                    manifest,
                    found.remote.selected,
                    listed=found.remote.listed,
                    unlisted=found.remote.is_unlisted,
                )
                if d.blocks_frozen
            ]
            if drift:
                raise LockDrift(
                    f"--frozen: {len(drift)} file(s) no longer match the lock file "
                    f"{lock_path(self.manifest_path)}; nothing was fetched:",
                    drift=(*(str(d) for d in drift), *found.remote.problems),
                    hint="if the change is intended, run `immsync lock MANIFEST`, review the "
                    "lock file's diff and commit it",
                )
        return found


# -- collaborators ----------------------------------------------------------------------


def _netrc_credentials(env: Environment) -> tuple[str | None, str | None]:
    """The netrc entry for the sign-in host, when the environment gave no credentials."""
    if env.token or env.password:
        return env.username, env.password
    path = Path(env.netrc) if env.netrc else env.home / ".netrc"
    if not path.is_file():
        return env.username, env.password
    # Python checks owner and mode only of a default ~/.netrc it finds itself; a file
    # named explicitly is read as it is. Whichever file it is holds a password: like
    # ssh with a key file, refuse one that is not the user's own and private.
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        problem = (
            f"it belongs to uid {st.st_uid}, not to you (uid {os.getuid()})"
            if st.st_uid != os.getuid()
            else f"its permissions ({st.st_mode & 0o777:o}) let others read or change it"
        )
        raise UsageError(
            f"refusing the netrc file {path}: {problem}",
            hint=f"a netrc file holds passwords: make it yours and private (chmod 600 {path}), "
            "or set IMMPORT_USERNAME and IMMPORT_PASSWORD",
        )
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


def _connect(
    env: Environment, api_key_file: Path | None, password_stdin: bool, allow_insecure_http: bool
) -> ImmportClient:
    """The ImmPort client for this run, its credentials checked before any request."""
    import requests

    from .immport import ImmportClient, ListingLimits, ManifestLimits

    if password_stdin:
        env = _with_stdin_password(env)
    session = requests.Session()
    session.headers["User-Agent"] = f"immsync/{__version__}"
    return ImmportClient(
        session,
        token_url=env.token_url,
        data_url=env.data_url,
        query_url=env.query_url,
        drs_url=env.drs_url,
        credentials=_credentials(env, api_key_file),
        allow_insecure_http=allow_insecure_http,
        listing_limits=ListingLimits.from_environment(os.environ),
        manifest_limits=ManifestLimits.from_environment(os.environ),
    )


def _credentials(env: Environment, api_key_file: Path | None) -> Credentials:
    """API key, then key file, then bearer token, then username and password.

    A key file's expiry is checked here, before any request: an expired key ends the
    run (exit 3), one close to expiry draws a warning.
    """
    from .immport import ApiKey, Credentials, load_api_key_file

    key: ApiKey | None = None
    if env.api_key:
        key = ApiKey(env.api_key, "IMMPORT_API_KEY")
    elif api_key_file is not None or env.api_key_file:
        key, warnings = load_api_key_file(api_key_file or Path(env.api_key_file or ""))
        for warning in warnings:
            log.warning("%s", warning)
    if key is not None:
        soon = key.check_expiry()
        if soon:
            log.warning("%s", soon)
        return Credentials(api_key=key)
    username, password = _netrc_credentials(env)
    return Credentials(username=username, password=password, token=env.token)


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


def _choose_transport(
    given: str | None,
    loaded: Manifest,
    env: Environment,
    client: ImmportClient,
    options: SyncOptions,
    *,
    https_jobs: int = HTTPS_JOBS,
    hold_fds: tuple[int, ...] = (),
) -> Choice:
    """The transport for this run: --transport, else the manifest's, else auto.

    Nothing here sends a request: auto learns whether ImmPort's Aspera service answers
    from the first token request, when a first file has to move.
    """
    if given:
        mode, origin = given, "--transport"
    elif loaded.transport:
        mode, origin = loaded.transport, f"the manifest's transport: {loaded.transport}"
    else:
        mode, origin = "auto", ""

    from .ascp import locate_ascp, locate_key

    def probe_ascp() -> str:
        binary = locate_ascp(env.ascp, path_env=env.path, home=env.home)
        locate_key(env.aspera_key, binary)
        return f"found at {binary}"

    def make_https() -> HttpsTransfer:
        import requests

        from .https import HttpsTransfer

        def new_session() -> requests.Session:
            session = requests.Session()
            session.headers["User-Agent"] = f"immsync/{__version__}"
            return session

        return HttpsTransfer(client, jobs=https_jobs, session_factory=new_session)

    def notice(line: str) -> None:
        if not _ctx.quiet:
            typer.echo(f"transport: {line}", err=True)

    workdir = loaded.destination / STATE_DIRNAME / "tmp"
    _remove_stale_scratch(workdir)
    return choose_transport(
        mode,
        make_ascp=lambda: _LazyAscp(env, client, workdir=workdir, hold_fds=hold_fds),
        make_https=make_https,
        probe_ascp=probe_ascp,
        origin=origin,
        notice=notice,
    )


class _LazyAscp:
    """Finds ``ascp`` only when a transfer is needed, so no-op runs work without it.

    Its first Aspera token request tells whether ImmPort's Aspera service still answers
    (see ``immsync.transports.AsperaTokens``).
    """

    name = "ascp"

    def __init__(
        self,
        env: Environment,
        client: ImmportClient,
        *,
        workdir: Path,
        hold_fds: tuple[int, ...] = (),
    ) -> None:
        self._env = env
        self._client = client
        self._workdir = workdir
        # The destination's locks: every ascp inherits them, so the destination stays
        # locked while any of them lives, even if immsync is killed.
        self._hold_fds = hold_fds
        self._tokens = AsperaTokens(client.download_token)
        self._transfer: AscpTransfer | None = None
        # Re-entrant: terminate() runs from a signal handler, maybe while _get() holds it.
        self._lock = threading.RLock()

    def _get(self) -> AscpTransfer:
        with self._lock:
            if self._transfer is None:
                from .ascp import AscpSettings, AscpTransfer, locate_ascp, locate_key

                binary = locate_ascp(self._env.ascp, path_env=self._env.path, home=self._env.home)
                key = locate_key(self._env.aspera_key, binary)
                settings = AscpSettings(
                    binary=binary,
                    key=key,
                    host=self._env.aspera_host,
                    user=self._env.aspera_user,
                    port=self._env.aspera_port,
                )
                private_folder(self._workdir)
                self._transfer = AscpTransfer(
                    settings,
                    token_source=self._tokens,
                    workdir=self._workdir,
                    env=_child_environment(),
                    hold_fds=self._hold_fds,
                )
            return self._transfer

    def fetch(self, batch: Any, on_progress: Any) -> None:
        self._get().fetch(batch, on_progress)

    def terminate(self) -> None:
        with self._lock:
            transfer = self._transfer
        if transfer is not None:
            transfer.terminate()

    def close(self) -> None:
        with self._lock:
            transfer = self._transfer
        if transfer is not None:
            transfer.close()


def _child_environment() -> dict[str, str]:
    # ascp gets the caller's environment (proxies, locale), minus ImmPort secrets it
    # has no use for: a child process's environment is readable by its owner in /proc.
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("IMMPORT_PASSWORD", "IMMPORT_TOKEN", "IMMPORT_USERNAME", "IMMPORT_API_KEY")
    }


def _make_reporter(out: _ApplyOutput, problems: tuple[str, ...]) -> Reporter:
    human: Reporter | None = None
    if not _ctx.quiet:
        if sys.stderr.isatty():
            human = RichReporter(Console(stderr=True))
        else:
            human = LineReporter(lambda line: typer.echo(line, err=True))
    if out.events is None:
        if human is None:
            from .sync import NullReporter

            return NullReporter()
        return human
    # With --json, stdout carries the events and stderr still the human progress.
    events = EventReporter(
        out.events, plan_document=lambda plan: plan_to_json(plan, problems=problems)
    )
    return events if human is None else TeeReporter([events, human])


@contextmanager
def _signals_cancel(cancel: threading.Event, transfer: Any) -> Iterator[list[int]]:
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
    # By default SIGTERM ends Python without a word. While transfers run,
    # _signals_cancel takes over both signals to stop them and record what finished.
    signal.signal(signal.SIGTERM, _raise_terminated)
    app(args=hoist_global_options(sys.argv[1:]), prog_name="immsync")


_GLOBAL_FLAGS = re.compile(r"-v+|--verbose|-q|--quiet")


def hoist_global_options(args: list[str]) -> list[str]:
    """``immsync plan m.yaml -v`` as ``immsync -v plan m.yaml``: global flags go first.

    Typer reads the group's options only before the command name; people put ``-v``
    wherever they like. No option of any command takes a value that looks like these
    flags, and nothing after ``--`` is touched.
    """
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if _GLOBAL_FLAGS.fullmatch(a)]
    rest = [a for a in args[:end] if not _GLOBAL_FLAGS.fullmatch(a)]
    return [*flags, *rest, *args[end:]]
