"""The ``immsync`` command: a thin adapter between the shell and the library.

Only this module imports typer, reads the environment or prints. Each command parses
its options, builds the collaborators, makes one or two library calls, renders the
result and turns an ``ImmsyncError`` into its documented exit code.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import logging.config
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from . import __version__
from .app.config import ASCP_JOBS, HTTPS_JOBS, Environment, connect
from .app.listing import ObservedCatalog
from .app.run import (
    Scope,
    apply_locked,
    forget_manifest,
    open_state,
    parse_max_delete,
    recorded_for,
    set_aside_broken_state,
)
from .app.transport import check_early
from .check import FileState, status, verify
from .errors import ExitCode, ImmsyncError, SyncFailed, UsageError
from .events import (
    EventReporter,
    EventStream,
    TeeReporter,
    error_to_json,
    listing_to_json,
    write_summary_file,
)
from .lock import DestinationLock
from .lockfile import (
    compare,
    find_lock,
    lock_path,
    make_lock,
    read_lock,
    write_lock,
)
from .manifest import load_manifest
from .model import ListingStatus, Manifest, Report
from .ports import Reporter
from .render import (
    PLAN_LIMIT,
    LineReporter,
    ListingLines,
    ListingStatusLine,
    RichReporter,
    TransferTally,
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
    staged_before,
    visible,
)
from .retry import RetryPolicy
from .shard import (
    Shard,
    existing_shards,
    merge_shards,
    open_main_with_shards,
    shard_lock_path,
)
from .state import lock_path as destination_lock_path
from .state import state_path
from .sync import RemoteView, Survey, SyncOptions, check_prune, survey, survey_remote
from .units import count

if TYPE_CHECKING:

    from .immport import ImmportClient

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

class TransportMode(StrEnum):
    """The values of ``apply --transport``."""

    ascp = "ascp"
    https = "https"
    auto = "auto"






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
        help="Delete recorded files the manifest no longer selects, nor any other "
        "manifest applied to the destination (without it they are kept, and reported).",
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
LimitOpt = Annotated[
    int,
    typer.Option(
        "--limit",
        min=0,
        metavar="N",
        help="List at most N files of the plan (plan, apply --dry-run); a longer plan is "
        "also summed up by folder. 0 lists every file. --json always lists every file.",
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
    limit: LimitOpt = PLAN_LIMIT,
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
        listing = _ListingProgress(None)
        with open_main_with_shards(loaded.destination) as store, listing:
            # Drift from a lock file includes MD5s: compare every one.
            found = survey(
                loaded,
                ObservedCatalog(client.catalog, len(loaded.studies), listing),
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
            extra: dict[str, Any] = {"shared_with": _shared_json(found)}
            if pinned is not None:
                extra["lock_drift"] = [d.to_json() for d in drift]
            answered.set()
            for chunk in iter_plan_json(
                found.plan, problems=found.remote.problems, extra=extra
            ):
                sys.stdout.write(chunk)
            sys.stdout.flush()
        else:
            for line in [
                *plan_lines(found.plan, limit=limit),
                *(f"note: {n}" for n in found.plan.notes),
                *(f"note: lock: {d}" for d in drift),
            ]:
                _out(line)
            _out(plan_summary(found.plan, unlisted=len(found.remote.failed_roots)))
        if prune:
            count, share = parse_max_delete(max_delete)
            check_prune(
                len(found.plan.to_delete), len(found.state), max_count=count, max_share=share
            )
        if found.remote.problems:
            raise SyncFailed(
                "some selected paths could not be listed:",
                exit_code=ExitCode.REMOTE,
                failures=found.remote.problems,
                hint=found.remote.hint,
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
    limit: LimitOpt = PLAN_LIMIT,
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
    with (
        _errors_to_exit_codes(_FILES_RECORDED),
        out.closing_errors(),
        contextlib.ExitStack() as locks_and_listing,
    ):
        loaded = _load(manifest)
        shard = Shard.parse(shard_text) if shard_text is not None else None
        out.shard = None if shard is None else f"{shard.index}/{shard.count}"
        if shard is not None and (prune or rebuild_state):
            raise UsageError(
                "--shard cannot be combined with --prune or --rebuild-state",
                hint="merge the shards (`immsync merge-shards`), then prune or rebuild "
                "with an unsharded apply",
            )
        pinned = read_lock(lock_path(manifest)) if frozen else None
        env = Environment.read(os.environ)
        check_early(transport.value if transport else None, loaded, env)
        client = _connect(env, api_key_file, password_stdin, allow_insecure_http)
        delete_count, delete_share = parse_max_delete(max_delete)
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
        listing = locks_and_listing.enter_context(_ListingProgress(events))
        scope = Scope(
            shard,
            pinned,
            manifest,
            all_checksums=checksum or pinned is not None,
            prune=prune,
            observe_listing=listing,
        )
        if dry_run:
            with scope.open_state(loaded, create=False) as store:
                found = scope.survey(loaded, client, store)
                listing.finish()
                report = Report(plan=found.plan, dry_run=True)
            out.plan(found)
            _finish_apply(report, found.remote, out, plan_limit=limit)
            return
        main_lock = destination_lock_path(loaded.destination)
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
                set_aside_broken_state(state_path(loaded.destination))
            if shard is None and existing_shards(loaded.destination):
                with open_state(loaded, create=True) as store:
                    merge_shards(loaded.destination, store)
            with scope.open_state(loaded, create=True) as store:
                found, report, received = apply_locked(
                    loaded, store, client, env, options, rebuild_state, scope,
                    transport=transport.value if transport else None,
                    https_jobs=jobs or HTTPS_JOBS,
                    hold_fds=tuple(lock.fileno() for lock in held),
                    say=_say,
                    make_reporter=lambda problems: _make_reporter(
                        out, problems, shard=shard, listing=listing
                    ),
                )
        if received:
            _interrupted(report, received[0], out, found.remote.problems)
        _finish_apply(report, found.remote, out)


def _finish_apply(
    report: Report, remote: RemoteView, out: _ApplyOutput, *, plan_limit: int = PLAN_LIMIT
) -> None:
    problems = remote.problems
    unlisted = len(remote.failed_roots)
    failures = tuple(f"{f.path}: {f.error}" for f in report.failures)
    exit_code = ExitCode.TRANSFER if failures else ExitCode.REMOTE if problems else ExitCode.OK
    out.summary(report, problems, exit_code=exit_code)
    if out.events is None:
        if report.dry_run:
            for line in plan_lines(report.plan, limit=plan_limit):
                _out(line)
            _out(plan_summary(report.plan, unlisted=unlisted))
        else:
            _out(report_summary(report, unlisted=unlisted, tally=out.tally, shard=out.shard))
    if failures:
        raise SyncFailed(
            f"{count(len(failures), 'file')} could not be synced; every other file was kept and "
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
            hint=remote.hint,
        )


def _interrupted(
    report: Report, signum: int, out: _ApplyOutput, problems: tuple[str, ...]
) -> None:
    done = [o for o in report.outcomes if o.ok]
    remaining = len(report.plan.to_fetch) - len(done)
    code = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED
    out.summary(report, problems, exit_code=code, interrupted=True)
    typer.echo(
        f"error: interrupted: {count(len(done), 'file')} completed and recorded, "
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
        checks = status(loaded.destination, recorded_for(loaded, manifest))
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
    with _errors_to_exit_codes(), _json_error_document(json_output):
        loaded = _load(manifest)
        checks = verify(loaded.destination, recorded_for(loaded, manifest))
        if json_output:
            _print_json(checks_to_json(checks))
        else:
            _out(checks_summary(checks, "verified"))
        bad = [c for c in checks if c.state is not FileState.OK]
        if bad:
            from .errors import ChecksumMismatch

            raise ChecksumMismatch(
                f"{count(len(bad), 'recorded file')} failed verification:\n"
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
        with _ListingProgress(None) as listing:
            catalog = ObservedCatalog(client.catalog, len(loaded.studies), listing)
            remote = survey_remote(loaded, catalog)
        if remote.problems:
            raise SyncFailed(
                "the lock file was not written: some selected paths could not be listed:",
                exit_code=ExitCode.REMOTE,
                failures=remote.problems,
                hint=remote.hint,
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
        message = f"wrote {target}: {count(len(pinned.files), 'file')} pinned, {format_size(total)}"
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
        lock_file = destination_lock_path(loaded.destination)
        with DestinationLock(lock_file, wait=wait), open_state(loaded, create=True) as store:
            result = merge_shards(loaded.destination, store)
        names = ", ".join(str(s) for s in result.shards)
        _out(
            f"merged {count(len(result.shards), 'shard state')} ({names}): "
            f"{count(result.recorded, 'record')} written; {count(result.total, 'file')} recorded"
        )


@app.command("forget")
def forget_command(
    manifest: Annotated[
        str,
        typer.Argument(
            help="The manifest to retire; with --destination, the name `plan` shows for "
            "it (its file need not exist any more).",
            show_default=False,
            metavar="MANIFEST",
        ),
    ],
    destination: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="The destination to retire it from (default: the manifest's).",
            show_default=False,
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Retire a manifest from its destination, so that other manifests' --prune may
    remove the files only it selected. Its files and their records stay.

    Example: immsync forget old.yaml --destination data
    """
    with _errors_to_exit_codes():
        if destination is None:
            if not Path(manifest).is_file():
                raise UsageError(
                    f"there is no manifest file {manifest}",
                    hint=f"name its destination: `immsync forget {shlex.quote(manifest)} "
                    "--destination DIR` (`immsync plan` of another manifest there shows "
                    "the names)",
                )
            destination = _load(Path(manifest)).destination
        destination = destination.absolute()
        if not state_path(destination).is_file():
            raise UsageError(
                f"nothing is recorded in {destination}: no manifest to forget there",
                hint="check the destination (the folder a manifest's `destination:` names)",
            )
        with DestinationLock(destination_lock_path(destination)):
            done = forget_manifest(destination, manifest)
        after = (
            f"{count(done.unclaimed, 'recorded file')} no manifest selects now: the next "
            "`apply --prune` of another manifest there removes them"
            if done.remaining
            else "no other manifest is recorded there; the files stay"
        )
        _out(f"forgot {done.selection.label} in {destination}: {after}")


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
        self.tally = TransferTally()
        """What the transports moved this run, for the summary's bytes."""
        self.shard: str | None = None
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
            report,
            problems=problems,
            exit_code=exit_code,
            interrupted=interrupted,
            tally=self.tally,
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




# -- collaborators ----------------------------------------------------------------------








def _with_stdin_password(env: Environment) -> Environment:
    from dataclasses import replace

    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("--password-stdin was given but standard input was empty")
    return replace(env, password=password)










def _connect(
    env: Environment, api_key_file: Path | None, password_stdin: bool, allow_insecure_http: bool
) -> ImmportClient:
    if password_stdin:
        env = _with_stdin_password(env)
    return connect(env, api_key_file, allow_insecure_http=allow_insecure_http)


def _say(line: str) -> None:
    """A line of information for people (stderr), silenced by -q."""
    if not _ctx.quiet:
        typer.echo(line, err=True)


def _shared_json(found: Survey) -> list[dict[str, Any]]:
    return [
        {"manifest": s.label, "last_applied": s.last_applied, "left_alone": s.left_alone}
        for s in found.plan.shared
    ]


class _ListingProgress:
    """How far the listing has come: on stderr for people (a line redrawn on a terminal,
    a quiet line every few seconds in a log, nothing with -q), and as ``listing`` events
    with --json. A context manager: leaving it ends the display."""

    def __init__(self, events: EventStream | None) -> None:
        self._events = events
        self._human: ListingLines | ListingStatusLine | None = None
        if not _ctx.quiet:
            if sys.stderr.isatty():
                self._human = ListingStatusLine(Console(stderr=True))
            else:
                self._human = ListingLines(lambda line: typer.echo(line, err=True))

    def __call__(self, status: ListingStatus) -> None:
        if self._human is not None:
            self._human(status)
        if self._events is not None and status.listed:
            self._events.emit("listing", listing_to_json(status))

    def finish(self) -> None:
        if self._human is not None:
            self._human.finish()

    def __enter__(self) -> _ListingProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


def _make_reporter(
    out: _ApplyOutput,
    problems: tuple[str, ...],
    *,
    shard: Shard | None,
    listing: _ListingProgress,
) -> Reporter:
    """The run's reporters: the tally behind the summary's bytes, the events of --json,
    and the human progress (a terminal's bars, or a log's plain lines)."""
    listing.finish()  # the listing is over once there is a plan to report
    reporters: list[Reporter] = [out.tally]
    if out.events is not None:
        # With --json, stdout carries the events and stderr still the human progress.
        reporters.append(
            EventReporter(
                out.events, plan_document=lambda plan: plan_to_json(plan, problems=problems)
            )
        )
    if not _ctx.quiet:
        label = f"{shard.index}/{shard.count}" if shard is not None else None

        if sys.stderr.isatty():
            human: Reporter = RichReporter(
                Console(stderr=True), shard=label, staged=staged_before
            )
        else:
            human = LineReporter(
                lambda line: typer.echo(line, err=True), shard=label, staged=staged_before
            )
        reporters.append(human)
    return TeeReporter(reporters)




def _one_line_paragraphs(doc: str) -> str:
    """*doc* with each paragraph on one line: typer keeps a docstring's line breaks
    inside a paragraph, which a terminal narrower than the source then breaks again."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


for _command in app.registered_commands:
    if _command.help is None and _command.callback is not None and _command.callback.__doc__:
        _command.help = _one_line_paragraphs(_command.callback.__doc__)


def main() -> None:
    """Console-script entry point."""
    # By default SIGTERM ends Python without a word. While transfers run,
    # signals_cancel takes over both signals to stop them and record what finished.
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
