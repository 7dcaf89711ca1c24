"""The offline demo: ``make demo`` (or ``python -m immsync.testing.demo``).

Starts the bundled ImmPort emulator on 127.0.0.1, installs the stand-in ``ascp``, and
runs the real ``immsync`` command against them twice: the first run fetches, verifies
and records; the second finds nothing to do. Everything lives in ``demo-run/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .emulator import Emulator
from .fake_ascp import install_fake_ascp
from .sampledata import build_sample_tree

DEMO_USER = "demo"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - the emulator's made-up account


def run_demo(workdir: Path, manifest_template: Path) -> int:
    if workdir.exists():
        shutil.rmtree(workdir)
    remote_root = workdir / "immport"
    build_sample_tree(remote_root)
    manifest = workdir / "manifest.yaml"
    shutil.copyfile(manifest_template, manifest)
    with Emulator(
        remote_root, world="legacy", username=DEMO_USER, password=DEMO_PASSWORD
    ) as emulator:
        config = emulator.write_aspera_config(
            workdir / "aspera-config.json", session_log=str(workdir / "ascp-sessions.jsonl")
        )
        aspera = install_fake_ascp(workdir / "aspera-cli", config)
        env = {
            **os.environ,
            "IMMPORT_USERNAME": DEMO_USER,
            "IMMPORT_PASSWORD": DEMO_PASSWORD,
            "IMMPORT_TOKEN_URL": emulator.token_url,
            "IMMPORT_DATA_API_BASE_URL": emulator.data_url,
            "IMMSYNC_ASCP": str(aspera.ascp),
        }
        steps = [
            ("validate the manifest", ["validate", str(manifest)]),
            ("what would change", ["plan", str(manifest)]),
            ("first apply: fetch, verify, record", ["apply", str(manifest)]),
            ("second apply: nothing to do", ["apply", str(manifest)]),
            ("offline status", ["status", str(manifest)]),
            ("re-hash everything", ["verify", str(manifest)]),
        ]
        for title, args in steps:
            print(f"\n$ immsync {' '.join(args)}    # {title}", flush=True)
            result = subprocess.run([sys.executable, "-m", "immsync", *args], env=env, check=False)
            if result.returncode != 0:
                print(f"demo step failed with exit code {result.returncode}", file=sys.stderr)
                return result.returncode
    sessions = (workdir / "ascp-sessions.jsonl").read_text().count("\n")
    files = sorted(
        p.relative_to(workdir / "data").as_posix()
        for p in (workdir / "data").rglob("*")
        if p.is_file() and ".immsync" not in p.parts
    )
    print(f"\nFiles in {workdir / 'data'}:")
    for f in files:
        print(f"  {f}")
    print(f"\nascp sessions started over both runs: {sessions} (the second run started none).")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("demo-run"))
    parser.add_argument(
        "--manifest",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "examples/demo/manifest.yaml",
    )
    args = parser.parse_args()
    sys.exit(run_demo(args.workdir.resolve(), args.manifest))


if __name__ == "__main__":
    main()
