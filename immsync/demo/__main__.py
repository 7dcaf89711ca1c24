"""``python -m immsync.demo``: the offline demo (see the package docstring)."""

from __future__ import annotations

from . import main

main()
