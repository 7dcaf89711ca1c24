"""Starting a manifest: ``immsync init SDY1 SDY269`` writes one from ImmPort's catalog.

Each study's catalog is read once (one request per study, plus its summary for
the data release), and the manifest names what is there in comments, with sizes, so
that narrowing it is a matter of uncommenting lines. The text is valid as printed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import yaml

from .errors import RemoteNotFound, UsageError
from .paths import unsafe_reason
from .units import format_size

RESULTS_FOLDER = "ResultFiles"
_ACCESSION = re.compile(r"SDY[0-9]+")
# A YAML plain scalar needs no quotes when it is made of these (and starts with none
# of YAML's indicator characters, which this set excludes anyway).
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+()/-]*")


class StudyLister(Protocol):
    """The part of ``ImmportClient`` that ``init`` needs."""

    def top_level(self, accession: str) -> list[tuple[str, bool, int]]:
        """``(name, is_folder, bytes below it)`` for each entry at the study's top level."""
        ...

    def latest_data_release(self, accession: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class TopEntry:
    """One entry at a study's top level."""

    name: str
    folder: bool
    size: int
    """Bytes; for a folder, everything below it (as ImmPort's listing totals it)."""


@dataclass(frozen=True, slots=True)
class StudyOverview:
    accession: str
    entries: tuple[TopEntry, ...]
    release: str | None = None

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)


def check_accessions(accessions: Sequence[str]) -> list[str]:
    """The accessions, upper-cased and without repeats; UsageError for a malformed one."""
    result: list[str] = []
    for raw in accessions:
        accession = raw.strip().upper()
        if not _ACCESSION.fullmatch(accession):
            raise UsageError(
                f"{raw!r} is not a study accession: expected SDY followed by digits, e.g. SDY269"
            )
        if accession not in result:
            result.append(accession)
    if not result:
        raise UsageError("name at least one study, e.g. `immsync init SDY1`")
    return result


def overview(lister: StudyLister, accession: str) -> StudyOverview:
    """List the top level of one study.

    Raises:
        RemoteNotFound: ImmPort has no such study.
        AuthError, ApiError: as for every call.
    """
    entries = []
    for name, folder, size in lister.top_level(accession):
        # Anything a manifest could not name safely is left out, as the sync would.
        if not name or "/" in name or unsafe_reason(name) is not None:
            continue
        entries.append(TopEntry(name, folder, size))
    entries.sort(key=lambda e: e.name)
    return StudyOverview(accession, tuple(entries), lister.latest_data_release(accession))


def render_manifest(
    studies: Sequence[StudyOverview], *, results_only: bool = False, destination: str = "data"
) -> str:
    """The manifest text for *studies*, commented for a reader.

    Without *results_only* each study is taken whole (new upstream files are picked up
    later) and its top-level entries are listed, commented out, as a ready ``paths:``.
    With it, each study's ``paths`` is its ``ResultFiles`` folder.

    Raises:
        RemoteNotFound: *results_only* and a study has no ``ResultFiles`` folder.
    """
    names = ", ".join(s.accession for s in studies)
    lines = [
        f"# immsync manifest for {names}, written by `immsync init` from ImmPort's listing.",
        "#",
        "#   immsync validate THIS-FILE   # check it",
        "#   immsync plan THIS-FILE       # what apply would fetch",
        "#   immsync apply THIS-FILE      # fetch, verify and record",
        "#",
        "# A file lands at <destination>/<accession>/<path below the study>.",
        "# The format: schemas/manifest.schema.json in the immsync sources.",
        "version: 1",
        "",
        "# Where the files go: relative to this file's folder unless absolute.",
        f"destination: {_scalar(destination)}",
        "",
        "studies:",
    ]
    for study in studies:
        lines += _study_lines(study, results_only=results_only)
    return "\n".join(lines) + "\n"


def init_manifest(
    lister: StudyLister,
    accessions: Sequence[str],
    *,
    results_only: bool = False,
    destination: str = "data",
) -> str:
    """Check *accessions*, list each study and return the manifest text."""
    studies = [overview(lister, a) for a in check_accessions(accessions)]
    return render_manifest(studies, results_only=results_only, destination=destination)


def _study_lines(study: StudyOverview, *, results_only: bool) -> list[str]:
    release = f", data release {study.release}" if study.release else ""
    lines = [
        "",
        f"  # {study.accession}: {len(study.entries)} top-level entries, "
        f"{format_size(study.size)}{release}.",
        f"  - accession: {study.accession}",
    ]
    width = max((len(_scalar(e.name)) for e in study.entries), default=0)

    def entry_line(entry: TopEntry, prefix: str) -> str:
        kind = "folder" if entry.folder else "file"
        return f"{prefix}{_scalar(entry.name):<{width}}  # {kind}, {format_size(entry.size)}"

    if results_only:
        results = next((e for e in study.entries if e.folder and e.name == RESULTS_FOLDER), None)
        if results is None:
            raise RemoteNotFound(
                f"{study.accession} has no {RESULTS_FOLDER} folder on ImmPort",
                hint="leave out --results-only to take the whole study",
            )
        others = [e for e in study.entries if e is not results]
        lines.append("    paths:")
        lines.append(entry_line(results, "      - "))
        if others:
            lines.append("      # Also there (uncomment to take):")
            lines += [entry_line(e, "      # - ") for e in others]
    else:
        lines.append("    # The whole study. To take only part of it, uncomment 'paths:' and")
        lines.append("    # the entries you want (a folder means everything below it):")
        lines.append("    # paths:")
        lines += [entry_line(e, "    #   - ") for e in study.entries]
    lines.append("    # ImmPort's kinds of files to take; by default every kind but archive_file")
    lines.append("    # (the zips of earlier data releases in archive/, large and rarely wanted):")
    lines.append(
        "    # file_types: [study_file, protocol_file, result_file, release_file, archive_file]"
    )
    lines.append('    # Filters on the path below the study, e.g. to skip the packaged archives:')
    lines.append('    # exclude: ["*.zip"]')
    return lines


def _scalar(text: str) -> str:
    """*text* as a YAML scalar: plain when that is unambiguous, else double-quoted."""
    if _PLAIN.fullmatch(text) and yaml.safe_load(text) == text:
        return text  # not a number, boolean or null in disguise ("2017", "yes", "1e5")
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(text)
