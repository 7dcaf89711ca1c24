"""Which transport a run uses, and the one that starts ``ascp`` only when it must."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..model import Manifest
from ..state import STATE_DIRNAME
from ..statedir import private_folder
from ..sync import SyncOptions
from ..transports import AsperaTokens, Choice, choose_transport
from .config import HTTPS_JOBS, Environment, child_environment

if TYPE_CHECKING:
    import requests

    from ..ascp import AscpTransfer
    from ..https import HttpsTransfer
    from ..immport import ImmportClient

def choose(
    given: str | None,
    loaded: Manifest,
    env: Environment,
    client: ImmportClient,
    options: SyncOptions,
    *,
    https_jobs: int = HTTPS_JOBS,
    hold_fds: tuple[int, ...] = (),
    notice: Callable[[str], None],
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

    from ..ascp import locate_ascp, locate_key

    def probe_ascp() -> str:
        binary = locate_ascp(env.ascp, path_env=env.path, home=env.home)
        locate_key(env.aspera_key, binary)
        return f"found at {binary}"

    def make_https() -> HttpsTransfer:
        import requests

        from ..https import HttpsTransfer

        def new_session() -> requests.Session:
            session = requests.Session()
            session.headers["User-Agent"] = f"immsync/{__version__}"
            return session

        return HttpsTransfer(client, jobs=https_jobs, session_factory=new_session)

    workdir = loaded.destination / STATE_DIRNAME / "tmp"
    remove_stale_scratch(workdir)
    return choose_transport(
        mode,
        make_ascp=lambda: LazyAscp(env, client, workdir=workdir, hold_fds=hold_fds),
        make_https=make_https,
        probe_ascp=probe_ascp,
        origin=origin,
        notice=notice,
    )


def check_early(given: str | None, loaded: Manifest, env: Environment) -> None:
    """Fail in the first second when the chosen transport cannot run at all.

    ``--transport ascp`` (or the manifest's) without ascp or its key, and an
    ``IMMSYNC_ASCP`` that names no program, end the run before any sign-in or listing.

    Raises:
        TransportUnavailable: ascp or its key is missing (exit 8).
    """
    mode = given or loaded.transport or "auto"
    if mode == "ascp" or (mode == "auto" and env.ascp):
        from ..ascp import locate_ascp, locate_key

        binary = locate_ascp(env.ascp, path_env=env.path, home=env.home)
        locate_key(env.aspera_key, binary)


class LazyAscp:
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
                from ..ascp import AscpSettings, AscpTransfer, locate_ascp, locate_key

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
                    env=child_environment(),
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


def remove_stale_scratch(workdir: Path, *, max_age: float = 86400.0) -> None:
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
