"""Reference for a no-op ``apply`` against today's ImmPort: one manifest request, one lstat a file.

``python benchmarks/bare_manifest_check.py DEST SDY1 [SDY2 ...]``

The least a client can do to tell that a mirror is up to date: fetch each study's file
manifest (``requests``, bearer API key from the environment as immsync reads it), decode
it with ``json``, and compare each row's size with an ``os.lstat`` of the local copy.
It trusts sizes alone and records nothing, so it is a floor, not a competitor. Exit
status 1 if a file is missing or has another size.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import requests


def main() -> int:
    dest, *accessions = sys.argv[1:]
    env = os.environ
    key = (
        env.get("IMMPORT_API_KEY")
        or json.loads(Path(env["IMMPORT_API_KEY_FILE"]).read_text(encoding="utf-8"))["api_key"]
    )
    query = env["IMMSYNC_QUERY_API_BASE_URL"].rstrip("/")
    stale = 0
    for accession in accessions:
        reply = requests.get(
            f"{query}/api/study/manifest/{accession}?fileType=all&format=json",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        reply.raise_for_status()
        for row in json.loads(reply.content):
            try:
                if os.lstat(f"{dest}/{row['path']}").st_size != row["filesizeBytes"]:
                    stale += 1
            except FileNotFoundError:
                stale += 1
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
