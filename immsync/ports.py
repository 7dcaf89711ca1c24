"""The seams between the sync and what it drives: transports, catalogs, reporters.

Each is a ``Protocol`` with every method a caller may use written out, so that no
caller probes for an optional one. Implementations need not inherit from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from .errors import ImmsyncError
from .model import (
    Caveats,
    FileOutcome,
    Plan,
    ProgressCallback,
    ProgressEvent,
    RemoteFile,
    TransferBatch,
)


class Transfer(Protocol):
    """A way to move files from ImmPort into a local staging folder.

    Implementations: ``immsync.ascp.AscpTransfer``, ``immsync.https.HttpsTransfer``,
    ``immsync.transports.AutoTransfer``, and ``immsync.testing.fakes.FakeTransfer``. A
    transport only *moves bytes*: the caller checks sizes, hashes, places files and
    records them, so every transport shares the same guarantees.
    """

    name: str

    def fetch(self, batch: TransferBatch, on_progress: ProgressCallback) -> None:
        """Bring every file of *batch* to ``batch.staging / staged_name(file.path)``.

        Args:
            batch: the files and the staging folder. Parent folders may not exist yet.
            on_progress: called from the calling thread with progress as it is known.

        Raises:
            TransferError: the session failed. Files that did arrive stay in staging;
                the caller decides which of them are complete.
            TransportUnavailable: the transport cannot run at all.
        """
        ...

    def terminate(self) -> None:
        """Stop every running session now; safe from a signal handler and any thread.

        Later ``fetch`` calls fail with ``Failure.INTERRUPTED``; partial files stay.
        """
        ...

    def close(self) -> None:
        """Release what the transport holds (sessions, connections) after the run."""
        ...


class RemoteCatalog(Protocol):
    """What planning needs of ImmPort: ``immsync.immport.StudyCatalog`` provides it."""

    def walk(
        self,
        root: str,
        *,
        workers: int = ...,
        on_unsafe: Callable[[str, str], None] | None = ...,
    ) -> list[RemoteFile]:
        """Every file below *root* (or *root* itself if it is a file)."""
        ...

    def study_checksums(self, accession: str) -> dict[str, tuple[str, int]] | None:
        """Upstream ``(md5, size)`` by path, or None when ImmPort gives none."""
        ...

    def caveats(self, accession: str) -> Caveats:
        """What is known to be unavailable or unverifiable in a study already walked."""
        ...

    def paths_near(self, root: str) -> Sequence[str]:
        """Paths ImmPort has near *root*, which it does not have: for suggestions.

        Costs at most one request: a study the catalog holds whole gives all its paths;
        a folder-by-folder listing gives the entries of *root*'s parent folder.
        """
        ...


class Reporter(Protocol):
    """Receives a run's events as they happen; the CLI renders them. Thread-safe."""

    def plan_ready(self, plan: Plan) -> None: ...
    def batch_started(self, batch: TransferBatch) -> None: ...
    def progress(self, event: ProgressEvent) -> None: ...
    def file_done(self, outcome: FileOutcome) -> None: ...
    def retrying(self, batch: TransferBatch, error: ImmsyncError, delay: float) -> None: ...

    def close(self) -> None:
        """The run is over: finish what is shown (progress bars, open sessions)."""
        ...
