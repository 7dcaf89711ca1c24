"""immsync: declarative, verified, resumable sync of ImmPort study files."""

from __future__ import annotations

__version__ = "0.1.0"
