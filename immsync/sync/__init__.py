"""The one module that composes the others: survey, observe, plan, transfer, verify, record.

The order of operations is what makes a run safe to interrupt at any instant:

1. a file is transferred into ``<destination>/.immsync/staging/`` (never its final path);
2. its size is checked against the listing and its content hashed (xxh3_128, and MD5
   in the same read when ImmPort published one, which must match);
3. it is flushed to disk and moved to its final path with ``os.replace`` (atomic);
4. only then is it recorded, in one SQLite transaction.

A crash between 3 and 4 leaves a complete, correct but unrecorded file, which the next
run fetches again; nothing is ever recorded that was not verified.
"""

from __future__ import annotations

from .apply import STAGING_DIRNAME, Applier, NullReporter, SyncOptions, _EarlyHashes
from .batches import SessionGate, SessionSlot, make_batches
from .survey import (
    RemoteView,
    Survey,
    adopt_local_files,
    check_prune,
    drop_case_collisions,
    is_case_insensitive,
    observe_local,
    survey,
    survey_remote,
    with_checksums,
)

__all__ = [
    "STAGING_DIRNAME",
    "Applier",
    "NullReporter",
    "RemoteView",
    "SessionGate",
    "SessionSlot",
    "Survey",
    "SyncOptions",
    "_EarlyHashes",
    "adopt_local_files",
    "check_prune",
    "drop_case_collisions",
    "is_case_insensitive",
    "make_batches",
    "observe_local",
    "survey",
    "survey_remote",
    "with_checksums",
]
