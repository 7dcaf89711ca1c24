"""The file through which the emulator tells the stand-in ``ascp`` what it serves.

The emulator writes it (``Emulator.write_aspera_config``); each stand-in ``ascp``
process reads it at start. Tests edit ``faults`` to make the next sessions fail.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class FakeAsperaConfig:
    docroot: str
    """Folder served as the Aspera docroot: remote ``/SDY1/x`` is ``docroot/SDY1/x``."""
    secret: str
    """HMAC secret shared with the emulator that mints the transfer tokens."""
    host: str = "aspera-immport.niaid.nih.gov"
    user: str = "databrowser"
    port: int = 33001
    session_log: str | None = None
    """JSON-lines file: one record per ``ascp`` invocation (argv, files, result)."""
    setup_delay: float = 0.0
    """Seconds each session spends 'connecting' before moving bytes."""
    rate_limit: float | None = None
    """Bytes per second per session; None for as fast as the disk goes."""
    faults: list[dict[str, Any]] = field(default_factory=list)
    """Fault descriptions, consumed in order; see ``immsync.testing.fake_ascp``."""

    def save(self, path: Path) -> Path:
        """Write atomically, so a concurrently starting ``ascp`` never reads half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".aspera-config-")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(self), fh, indent=2)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path) -> FakeAsperaConfig:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**data)
