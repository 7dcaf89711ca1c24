"""Run a command and write its peak resident memory to a JSON file.

``python benchmarks/peak_rss.py REPORT.json COMMAND [ARG ...]``

Why a launcher: Linux carries a process's memory high-water mark across ``exec``, so
a command started straight from the harness (whose emulator holds hundreds of MB)
reports the harness's peak as its own ``ru_maxrss``. Started from this small process
instead, the command's ``ru_maxrss`` is its own. The command's output passes through;
the exit status is the command's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    report, *argv = sys.argv[1:]
    proc = subprocess.Popen(argv)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped above
    Path(report).write_text(json.dumps({"max_rss_kib": usage.ru_maxrss}), encoding="utf-8")
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


if __name__ == "__main__":
    sys.exit(main())
