"""immsync: declarative, verified, resumable sync of ImmPort study files.

The command line (``immsync``) is a thin layer over this library:

>>> from immsync import load_manifest, make_plan  # doctest: +SKIP

The names below are imported on first use (PEP 562), so that importing one module
(``immsync.immport``, or the stand-in ``ascp``, which starts once per session) does not
pay for the manifest's YAML and JSON-schema libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .errors import ExitCode, ImmsyncError
    from .manifest import load_manifest
    from .model import Action, Manifest, Plan, PlanItem, RemoteFile, StateEntry
    from .plan import make_plan

_HOMES = {
    "Action": "model",
    "ExitCode": "errors",
    "ImmsyncError": "errors",
    "Manifest": "model",
    "Plan": "model",
    "PlanItem": "model",
    "RemoteFile": "model",
    "StateEntry": "model",
    "load_manifest": "manifest",
    "make_plan": "plan",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'immsync' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value
