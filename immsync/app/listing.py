"""Listing progress: a catalog that says how far the listing of ImmPort has come.

Listing a large study can take many seconds; a wrapped catalog reports each study as
it starts and as each of its selected paths is listed, so the command line can show
progress instead of a blank screen. Nothing here prints.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..model import Caveats, ListingStatus, RemoteFile
from ..ports import RemoteCatalog


class ObservedCatalog:
    """A ``RemoteCatalog`` that passes every call through and reports each ``walk``.

    Args:
        catalog: the catalog to list with.
        studies_total: how many studies the manifest names.
        observe: called before and after each walk, from the listing's thread.
    """

    def __init__(
        self,
        catalog: RemoteCatalog,
        studies_total: int,
        observe: Callable[[ListingStatus], None],
    ) -> None:
        self._catalog = catalog
        self._total = studies_total
        self._observe = observe
        self._lock = threading.Lock()
        self._studies: set[str] = set()
        self._files = 0

    def walk(
        self,
        root: str,
        *,
        workers: int = 8,
        on_unsafe: Callable[[str, str], None] | None = None,
    ) -> list[RemoteFile]:
        study = root.strip("/").partition("/")[0]
        with self._lock:
            self._studies.add(study)
            started = ListingStatus(study, len(self._studies), self._total, self._files, False)
        self._observe(started)
        files = self._catalog.walk(root, workers=workers, on_unsafe=on_unsafe)
        with self._lock:
            self._files += len(files)
            listed = ListingStatus(study, len(self._studies), self._total, self._files, True)
        self._observe(listed)
        return files

    def caveats(self, accession: str) -> Caveats:
        return self._catalog.caveats(accession)

    def paths_near(self, root: str) -> Sequence[str]:
        return self._catalog.paths_near(root)

    def study_checksums(self, accession: str) -> dict[str, tuple[str, int]] | None:
        return self._catalog.study_checksums(accession)
