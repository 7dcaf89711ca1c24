"""Run the ``immsync`` command line and list every file it opens below a folder.

``python benchmarks/audited_cli.py --watch DEST --report OUT.json -- status m.yaml``

A Python audit hook (PEP 578) sees every ``open`` the interpreter makes, whether by
``open()``, ``Path.open`` or ``os.open``; files inside the state folder ``.immsync``
are left out. It observes and changes nothing, so immsync runs as it always does.
The benchmarks use it to prove that a no-op run reads no file and hashes nothing.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--watch", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    watch = str(options.watch.resolve()) + os.sep
    skip = watch + ".immsync" + os.sep
    opened: list[str] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or not args:
            return
        target = args[0]
        if isinstance(target, int):  # an fd being wrapped: opened (and seen) already
            return
        try:
            text = os.path.abspath(os.fsdecode(target))
        except (TypeError, ValueError):
            return
        if text.startswith(watch) and not text.startswith(skip):
            opened.append(text)

    def save() -> None:
        options.report.write_text(json.dumps(opened), encoding="utf-8")

    atexit.register(save)
    sys.addaudithook(hook)
    rest = options.args[1:] if options.args[:1] == ["--"] else options.args
    sys.argv = ["immsync", *rest]
    from immsync.cli import main as immsync_main

    immsync_main()


if __name__ == "__main__":
    main()
