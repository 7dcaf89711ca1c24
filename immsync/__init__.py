"""immsync: declarative, verified, resumable sync of ImmPort study files.

The command line (``immsync``) is a thin layer over this library:

>>> from immsync import load_manifest, make_plan  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ExitCode, ImmsyncError
from .manifest import load_manifest
from .model import Action, Manifest, Plan, PlanItem, RemoteFile, StateEntry
from .plan import make_plan

__all__ = [
    "Action",
    "ExitCode",
    "ImmsyncError",
    "Manifest",
    "Plan",
    "PlanItem",
    "RemoteFile",
    "StateEntry",
    "__version__",
    "load_manifest",
    "make_plan",
]
