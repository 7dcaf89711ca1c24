"""The offline demo: ``make demo`` (or ``python -m immsync.demo``, from any install).

Starts the bundled ImmPort emulator on 127.0.0.1 as today's ImmPort (2026: an API key,
the study file manifest as the catalog, downloads through DRS links over HTTPS) and
runs the real ``immsync`` command against it: the first apply fetches, verifies and
records; the second finds nothing to do and sends one request per study. Everything
lives in the folder given with ``--workdir`` (``make demo``: ``demo-run/``), or else
in a temporary folder removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from immsync.testing.emulator import Emulator
from immsync.testing.sampledata import build_today_tree

_CATALOG_ROUTE = "/data/query/api/study/manifest/"


def run_demo(workdir: Path, manifest_template: Path) -> int:
    if workdir.exists():
        shutil.rmtree(workdir)
    remote_root = workdir / "immport"
    build_today_tree(remote_root)
    manifest = workdir / "manifest.yaml"
    shutil.copyfile(manifest_template, manifest)
    with Emulator(remote_root) as emulator:
        key_file = emulator.write_api_key_file(
            workdir / "immport-api-key.json", emulator.add_api_key()
        )
        print(
            "Today's ImmPort, emulated on 127.0.0.1: an API key (its JSON key file is "
            f"{key_file.name}), the study file manifest as the catalog, DRS links over HTTPS.",
            flush=True,
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IMMPORT_")},
            "IMMPORT_API_KEY_FILE": str(key_file),
            "IMMSYNC_QUERY_API_BASE_URL": emulator.query_url,
            "IMMSYNC_DRS_BASE_URL": emulator.drs_url,
            "IMMPORT_DATA_API_BASE_URL": emulator.data_url,
            "IMMPORT_TOKEN_URL": emulator.token_url,
        }
        env.pop("IMMSYNC_ASCP", None)
        steps = [
            ("validate the manifest", ["validate", str(manifest)], None),
            ("what would change", ["plan", str(manifest)], None),
            ("first apply: fetch, verify, record", ["apply", str(manifest)], None),
            ("second apply: nothing to do", ["apply", str(manifest)], "second"),
            ("offline status", ["status", str(manifest)], None),
            ("re-hash everything", ["verify", str(manifest)], None),
        ]
        second_run: list[str] = []
        for title, args, label in steps:
            print(f"\n$ immsync {' '.join(args)}    # {title}", flush=True)
            before = len(emulator.requests_log)
            result = subprocess.run([sys.executable, "-m", "immsync", *args], env=env, check=False)
            if label == "second":
                second_run = [r.path for r in emulator.requests_log[before:]]
            if result.returncode != 0:
                print(f"demo step failed with exit code {result.returncode}", file=sys.stderr)
                return result.returncode
        served = emulator.bytes_served()
    files = sorted(
        p.relative_to(workdir / "data").as_posix()
        for p in (workdir / "data").rglob("*")
        if p.is_file() and ".immsync" not in p.parts
    )
    print(f"\nFiles in {workdir / 'data'}:")
    for f in files:
        print(f"  {f}")
    catalog = sum(1 for path in second_run if path.startswith(_CATALOG_ROUTE))
    print(
        f"\nDownloaded {served} bytes over both runs. The second apply sent "
        f"{len(second_run)} request(s), {catalog} of them study manifests (one per study), "
        "and downloaded nothing."
    )
    return 0


MANIFEST = Path(__file__).with_name("manifest.yaml")
"""The manifest the demo applies, shipped in the package (examples/demo links to it)."""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m immsync.demo", description=__doc__)
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where to build and keep everything (default: a temporary folder, removed)",
    )
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    args = parser.parse_args()
    if args.workdir is not None:
        sys.exit(run_demo(args.workdir.resolve(), args.manifest))
    with tempfile.TemporaryDirectory(prefix="immsync-demo-") as scratch:
        sys.exit(run_demo(Path(scratch) / "demo-run", args.manifest))
