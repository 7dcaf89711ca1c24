"""A per-file DRS download loop, written the way 2026 ImmPort scripts do it, for comparison.

Today's clients (for example the data fetcher of the NIAID BRC codeathon project
hypothesis2omics, which ran against the live service) read an API key, then for each
study:

1. ``GET {query}/api/study/manifest/{SDY}?fileType=all&format=json`` with
   ``Authorization: Bearer <api_key>``: every file's path, size, MD5 and DRS id
   (``fileUUID``), in one request;

and for each file of it, one after the other:

2. ``GET {query}/drs/download/s3/{fileUUID}`` (bearer) for ``{"url": <signed link>}``;
3. ``GET <link>``, streamed into ``<path>.part``, then renamed to ``<path>``;
4. the file's MD5 compared with the manifest's ``generatedMD5``.

That is what this program does, with plain ``requests`` calls (no session, so a new
connection per request, as ``urlopen`` gives those scripts). It is deliberately not
tuned: the point of the comparison is what a careful sequential script costs.

Usage (the emulator's URLs and key come from the environment, like immsync's)::

    IMMPORT_API_KEY_FILE=key.json IMMSYNC_QUERY_API_BASE_URL=http://127.0.0.1:N/data/query \\
    python benchmarks/baseline_drs_per_file.py SDY1 [SDY2 ...] --output OUT [--report R.json]

The report is JSON: ``files``, ``bytes``, ``seconds`` (the loop alone, without the
interpreter's start-up), ``requests`` by kind (``manifest``, ``link``, ``download``)
and ``failures``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import requests

CHUNK = 1024 * 1024
TIMEOUT = 60


def api_key(env: dict[str, str]) -> str:
    """The key's value: ``IMMPORT_API_KEY``, else the ``api_key`` of ``IMMPORT_API_KEY_FILE``."""
    if env.get("IMMPORT_API_KEY"):
        return env["IMMPORT_API_KEY"]
    doc = json.loads(Path(env["IMMPORT_API_KEY_FILE"]).read_text(encoding="utf-8"))
    return str(doc["api_key"])


class Loop:
    """The per-file loop, counting its requests."""

    def __init__(self, query_url: str, key: str) -> None:
        self.query_url = query_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"}
        self.requests = {"manifest": 0, "link": 0, "download": 0}

    def manifest(self, accession: str) -> list[dict[str, Any]]:
        self.requests["manifest"] += 1
        url = f"{self.query_url}/api/study/manifest/{accession}?fileType=all&format=json"
        reply = requests.get(url, headers=self.headers, timeout=TIMEOUT)
        reply.raise_for_status()
        rows = reply.json()
        if isinstance(rows, dict) and "content" in rows:
            rows = rows["content"]
        return [r for r in rows if r.get("drsObjectCreated") in ("Y", True)]

    def download(self, row: dict[str, Any], output: Path) -> int:
        """Fetch one file; returns its size. Raises on any failure or a wrong MD5."""
        self.requests["link"] += 1
        resolver = f"{self.query_url}/drs/download/s3/{row['fileUUID']}"
        reply = requests.get(resolver, headers=self.headers, timeout=TIMEOUT)
        reply.raise_for_status()
        link = reply.json()["url"]
        target = output / row["path"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        self.requests["download"] += 1
        with requests.get(link, stream=True, timeout=TIMEOUT) as body:
            body.raise_for_status()
            with partial.open("wb") as fh:
                for chunk in body.iter_content(CHUNK):
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        expected = row.get("generatedMD5")
        if expected and digest.hexdigest() != expected:
            partial.unlink()
            raise ValueError(f"{row['path']}: MD5 {digest.hexdigest()}, expected {expected}")
        partial.replace(target)
        return size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("accessions", nargs="+", help="studies to fetch whole")
    parser.add_argument("--output", type=Path, required=True, help="output directory")
    parser.add_argument("--report", type=Path, help="write counts and timing here (JSON)")
    options = parser.parse_args()
    env = dict(os.environ)
    loop = Loop(env["IMMSYNC_QUERY_API_BASE_URL"], api_key(env))
    options.output.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    files = total = 0
    started = time.perf_counter()
    for accession in options.accessions:
        for row in loop.manifest(accession):
            try:
                total += loop.download(row, options.output)
                files += 1
            except (requests.RequestException, ValueError, OSError) as exc:
                failures.append(f"{row.get('path')}: {exc}")
    seconds = time.perf_counter() - started
    report = {
        "files": files,
        "bytes": total,
        "seconds": seconds,
        "requests": loop.requests,
        "failures": failures,
    }
    if options.report is not None:
        options.report.write_text(json.dumps(report), encoding="utf-8")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
