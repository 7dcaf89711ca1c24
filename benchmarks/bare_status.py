"""The bare reference for ``immsync status``: the least work that answers the question.

``python benchmarks/bare_status.py DESTINATION``

Walks the destination with ``os.scandir`` (skipping the state folder), loads the state
with the standard library's ``sqlite3``, and counts the recorded files whose size and
modification time still match. Standard library only, so its start-up is the
interpreter's alone.
"""

from __future__ import annotations

import os
import sqlite3
import sys


def walk(top: str) -> dict[str, tuple[int, int]]:
    """Every regular file below *top*: relative path -> (size, mtime_ns)."""
    found: dict[str, tuple[int, int]] = {}
    stack = [("", top)]
    while stack:
        prefix, folder = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    if not (prefix == "" and entry.name == ".immsync"):
                        stack.append((prefix + entry.name + "/", entry.path))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    found[prefix + entry.name] = (st.st_size, st.st_mtime_ns)
    return found


def main() -> int:
    top = sys.argv[1]
    on_disk = walk(top)
    db = sqlite3.connect(f"file:{top}/.immsync/state.sqlite?mode=ro", uri=True)
    recorded = {p: (s, m) for p, s, m in db.execute("SELECT path, size, mtime_ns FROM files")}
    db.close()
    ok = sum(1 for path, fingerprint in recorded.items() if on_disk.get(path) == fingerprint)
    print(f"{len(recorded)} recorded, {ok} ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
