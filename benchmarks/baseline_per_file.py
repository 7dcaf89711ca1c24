"""The per-file download recipe from ImmPort's documentation, for comparison.

ImmPort's "File Download API: Python examples" page (old docs.immport.org, mirrored at
``schepuri2012/immport-static-site:docs/filedownload/pythonexamples.md``) downloads a
file with ``api_file_download(username, password, file_path, output_directory)``:

1. ``POST /auth/token`` with the username and password (form fields) for a bearer token;
2. ``POST /data/download/token`` with ``{ "paths" : [ "<that one path>" ] }`` for an
   Aspera token;
3. run ``ascp -v -L OUT -i KEY -O 33001 -P 33001 --user databrowser -p
   aspera-immport.niaid.nih.gov:'<path>' OUT`` for that one file;

and downloads several files by calling it once per file. This program does exactly
that, with two differences that do not change its cost: the Aspera token goes to
``ascp`` in ``ASPERA_SCP_TOKEN`` rather than ``-W`` (same effect; keeps it out of
argv), and ``ascp`` is started from an argv list rather than through a shell.

Usage (the emulator's URLs and account come from the environment, like the tool's)::

    IMMPORT_USERNAME=.. IMMPORT_PASSWORD=.. IMMPORT_TOKEN_URL=.. \\
    IMMPORT_DATA_API_BASE_URL=.. IMMSYNC_ASCP=/path/to/ascp \\
    python benchmarks/baseline_per_file.py --paths PATHS.txt --output OUT [--report R.json]

``PATHS.txt`` holds one ImmPort path per line (``SDY1/ResultFiles/...``). The report
is JSON: ``files``, ``seconds`` (the loop alone, without interpreter start-up),
``ascp_sessions``, ``token_requests``, ``auth_requests`` and ``failures``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

ASPERA_USERNAME = "databrowser"
ASPERA_SERVER = "aspera-immport.niaid.nih.gov"


class Recipe:
    """The three helper functions of the documentation page, with counters."""

    def __init__(self, env: dict[str, str]) -> None:
        self.username = env["IMMPORT_USERNAME"]
        self.password = env["IMMPORT_PASSWORD"]
        self.token_url = env.get("IMMPORT_TOKEN_URL", "https://auth.immport.org/auth/token")
        data_url = env.get("IMMPORT_DATA_API_BASE_URL", "https://api.immport.org/data")
        self.aspera_token_url = data_url.rstrip("/") + "/download/token"
        self.ascp = env.get("IMMSYNC_ASCP", "ascp")
        self.key = env.get("IMMSYNC_ASPERA_KEY") or str(
            Path(self.ascp).resolve().parent.parent / "etc" / "asperaweb_id_dsa.openssh"
        )
        self.child_env = {
            k: v for k, v in env.items() if k not in ("IMMPORT_PASSWORD", "IMMPORT_USERNAME")
        }
        self.auth_requests = 0
        self.token_requests = 0
        self.sessions = 0

    def request_immport_token(self) -> str | None:
        self.auth_requests += 1
        r = requests.post(
            self.token_url,
            data={"username": self.username, "password": self.password},
            timeout=60,
        )
        if r.status_code == 200:
            doc = r.json()
            return str(doc.get("token") or doc.get("access_token"))
        return None

    def request_aspera_token(self, file_path: str, immport_token: str) -> str | None:
        self.token_requests += 1
        headers = {"Authorization": "bearer " + immport_token, "Content-Type": "application/json"}
        payload = '{ "paths" : [ "' + file_path + '" ] }'
        r = requests.post(self.aspera_token_url, headers=headers, data=payload, timeout=60)
        if r.status_code == 200:
            return str(r.json()["token"])
        return None

    def api_file_download(self, file_path: str, output_directory: str) -> bool:
        immport_token = self.request_immport_token()
        if immport_token is None:
            print("ERROR: Credentials incorrect for ImmPort, unable to retrieve token")
            return False
        aspera_token = self.request_aspera_token(file_path, immport_token)
        if aspera_token is None:
            print("ERROR: Unable to obtain Aspera token")
            return False
        command = [
            self.ascp,
            "-v",
            "-L",
            output_directory,
            "-i",
            self.key,
            "-O",
            "33001",
            "-P",
            "33001",
            "--user",
            ASPERA_USERNAME,
            "-p",
            f"{ASPERA_SERVER}:{file_path}",
            output_directory,
        ]
        self.sessions += 1
        result = subprocess.run(
            command,
            env={**self.child_env, "ASPERA_SCP_TOKEN": aspera_token},
            stdout=subprocess.DEVNULL,
            check=False,
        )
        return result.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=Path, required=True, help="one ImmPort path per line")
    parser.add_argument("--output", type=Path, required=True, help="output directory")
    parser.add_argument("--report", type=Path, help="write counts and timing here (JSON)")
    options = parser.parse_args()
    paths = [p.strip() for p in options.paths.read_text().splitlines() if p.strip()]
    options.output.mkdir(parents=True, exist_ok=True)
    recipe = Recipe(dict(os.environ))
    failures = []
    started = time.perf_counter()
    for file_path in paths:
        if not recipe.api_file_download(file_path, str(options.output)):
            failures.append(file_path)
    seconds = time.perf_counter() - started
    report = {
        "files": len(paths),
        "seconds": seconds,
        "ascp_sessions": recipe.sessions,
        "token_requests": recipe.token_requests,
        "auth_requests": recipe.auth_requests,
        "failures": failures,
    }
    if options.report is not None:
        options.report.write_text(json.dumps(report), encoding="utf-8")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
