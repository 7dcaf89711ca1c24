"""``python -m immsync``: the same as the ``immsync`` command."""

from __future__ import annotations

from .cli import main

main()
