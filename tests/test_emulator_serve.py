"""``python -m immsync.testing.emulator``: a user pastes its lines and tries every command.

The emulator runs as a program, as a user starts it; its ``export``/``unset`` lines are
evaluated by bash in front of real ``immsync`` commands, in an environment that holds
stale credentials a user's shell may carry; SIGINT stops it and its temporary folder
is gone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PASSWORD = "emu-Pa55word-never-shown"


@dataclass
class Served:
    proc: subprocess.Popen[str]
    info: dict[str, str]
    banner: list[str]

    @property
    def shell_lines(self) -> str:
        """What the user pastes: the export and unset lines, verbatim."""
        return "\n".join(line for line in self.banner if line.startswith(("export ", "unset ")))

    def stop(self) -> str:
        """Ctrl-C, as a user stops it; returns everything else it printed."""
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, err
        return out + err


def serve(*args: str, tmp_path: Path) -> Served:
    env = {**os.environ, "IMMPORT_PASSWORD": PASSWORD, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "immsync.testing.emulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    banner = []
    while not (line := proc.stdout.readline()).startswith("# Ctrl-C"):
        assert line, "the emulator stopped before printing its banner"
        banner.append(line.rstrip("\n"))
    banner.append(line.rstrip("\n"))
    return Served(proc, info, banner)


def user_shell(
    served: Served, script: str, cwd: Path, **stale: str
) -> subprocess.CompletedProcess[str]:
    """Bash with the pasted lines, then *script*; *stale* variables the shell had before."""
    home = cwd / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": f"{VENV_BIN}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(home), **stale}
    return subprocess.run(
        ["bash", "-c", f"{served.shell_lines}\n{script}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def files_under(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".immsync" not in p.relative_to(root).parts
    }


def test_legacy_world_serves_both_transports_to_a_pasted_shell(tmp_path: Path):
    """--legacy: demo studies, a netrc sign-in, and the stand-in ascp for --transport ascp."""
    served = serve("--legacy", tmp_path=tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    try:
        docroot = Path(served.info["docroot"])
        upstream = files_under(docroot)
        assert {"SDY1", "SDY269"} <= {path.split("/")[0] for path in upstream}
        script = """set -e
immsync init SDY1 SDY269 > manifest.yaml
immsync plan manifest.yaml
immsync apply manifest.yaml --transport ascp
sed 's/^destination: data$/destination: over-https/' manifest.yaml > https.yaml
immsync apply https.yaml --transport https
immsync verify manifest.yaml
immsync verify https.yaml
"""
        # A shell that still holds a key and a token from elsewhere: both outrank a netrc.
        result = user_shell(
            served, script, work, IMMPORT_API_KEY="stale-key", IMMPORT_TOKEN="stale-token"
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "transport: ascp (--transport)" in result.stderr
        assert "transport: https (--transport)" in result.stderr
        assert files_under(work / "data") == upstream
        assert files_under(work / "over-https") == upstream
        scratch = Path(served.info["ascp"]).parents[2]
        assert Path(served.info["netrc"]).parent == scratch
        assert docroot.parent == scratch
    finally:
        output = served.stop()
    assert not scratch.exists()
    printed = "\n".join(
        [json.dumps(served.info), *served.banner, output, result.stdout, result.stderr]
    )
    assert PASSWORD not in printed


def test_today_world_serves_https_and_shows_ascp_refused(tmp_path: Path):
    """Today's world: the key file signs in; the stand-in ascp meets a retired Aspera service."""
    served = serve(tmp_path=tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    try:
        key_file = Path(served.info["api_key_file"])
        key = json.loads(key_file.read_text())["api_key"]
        upstream = files_under(Path(served.info["docroot"]))
        script = """immsync init SDY1 SDY269 > manifest.yaml || exit 90
immsync apply manifest.yaml --transport ascp
echo "ascp-exit=$?"
immsync apply manifest.yaml || exit 91
immsync apply manifest.yaml --transport https || exit 92
immsync verify manifest.yaml || exit 93
"""
        result = user_shell(served, script, work, IMMPORT_API_KEY="stale-key-from-elsewhere")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ascp-exit=8" in result.stdout
        assert "ImmPort's Aspera service does not answer" in result.stderr
        assert "every file goes over https (DRS) for the rest of this run" in result.stderr
        assert "Up to date" in result.stdout
        fetched = files_under(work / "data")
        assert fetched and all(upstream[path] == data for path, data in fetched.items())
        scratch = key_file.parent
        assert Path(served.info["ascp"]).parents[2] == scratch
    finally:
        output = served.stop()
    assert not scratch.exists()
    printed = "\n".join(
        [json.dumps(served.info), *served.banner, output, result.stdout, result.stderr]
    )
    assert key not in printed


def test_named_folders_are_kept_and_nothing_temporary_is_made(tmp_path: Path):
    """--docroot, --netrc and --aspera-dir: the stand-in ascp stays, runnable, after exit."""
    from immsync.testing.sampledata import build_sample_tree

    docroot = tmp_path / "immport"
    build_sample_tree(docroot)
    aspera, netrc = tmp_path / "aspera-cli", tmp_path / "private" / "netrc"
    served = serve(
        "--legacy",
        "--docroot",
        str(docroot),
        "--aspera-dir",
        str(aspera),
        "--netrc",
        str(netrc),
        tmp_path=tmp_path,
    )
    try:
        assert served.info["docroot"] == str(docroot)
        assert served.info["ascp"] == str(aspera / "bin" / "ascp")
        assert f"export NETRC={netrc}" in served.banner
        assert (netrc.stat().st_mode & 0o777) == 0o600
    finally:
        served.stop()
    assert served.banner[-1] == "# Ctrl-C stops the emulator."
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("immport-emu-")]
    version = subprocess.run(
        [str(aspera / "bin" / "ascp"), "-A"], capture_output=True, text=True, check=False
    )
    assert "ascp version" in version.stdout, version.stderr


@pytest.mark.parametrize("world", [[], ["--legacy"]])
def test_the_banner_says_which_world_and_where_ascp_is(tmp_path: Path, world: list[str]):
    served = serve(*world, tmp_path=tmp_path)
    try:
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in served.banner
            if line.startswith("export ")
        )
        assert exports["IMMSYNC_ASCP"] == served.info["ascp"]
        assert exports["IMMSYNC_ASPERA_KEY"] == served.info["aspera_key"]
        assert os.access(served.info["ascp"], os.X_OK)
        assert served.banner[0].startswith("# legacy ImmPort" if world else "# today's ImmPort")
    finally:
        served.stop()


def test_the_readme_shows_a_real_run(tmp_path: Path):
    """The README's example output is what the program prints, but for ports and folders."""
    served = serve(tmp_path=tmp_path)
    served.stop()
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("$ python -m immsync.testing.emulator\n", 1)[1].split("```", 1)[0]

    def general(text: str) -> str:
        text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)
        return re.sub(r"[^\s\"=]*/immport-emu-[^/\s\".]+", "SCRATCH", text)

    printed = "\n".join([json.dumps(served.info), *served.banner]) + "\n"
    assert general(shown) == general(printed)
