"""examples/ci: each example is parsed and its immsync commands run against the emulator.

Steps that talk to the CI service (``uses:``) are not run; every shell line that calls
immsync is, with the CI's variables set as the service would set them. Each ``pip
install`` line is run too, in a fresh virtual environment, with its repository URL
pointed at a copy of this checkout tagged as the line asks. The README shows each
example verbatim.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import World

from immsync import __version__

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "examples" / "ci"
EXAMPLES = sorted(p.name for p in CI.iterdir())
WHOLE = "  - accession: SDY1\n  - accession: SDY269\n"
EXPRESSION = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")


def shell_env(world: World, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The CI job's environment: the world's endpoints and account, immsync on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, **world.env, **(extra or {})}
    env["PATH"] = f"{venv_bin}{os.pathsep}{world.env['PATH']}"
    return env


def run_shell(world: World, script: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start *script* as CI runners do: bash, stop at the first failing command."""
    return subprocess.Popen(
        ["bash", "-eo", "pipefail", "-c", script],
        cwd=world.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(child: subprocess.Popen[str]) -> None:
    stdout, stderr = child.communicate(timeout=90)
    assert child.returncode == 0, f"{child.args}\n{stdout}\n{stderr}"


def runs_immsync(script: str) -> bool:
    return "immsync " in script and "pip install" not in script


def expand(text: str, values: dict[str, str]) -> str:
    """GitHub's ${{ ... }} expressions, for the names the examples use."""
    return EXPRESSION.sub(lambda m: values[m[1]], text)


def api_key_only(world: World) -> Any:
    """An API key the examples' jobs get as their only credential (no password left)."""
    key = world.emulator.add_api_key()
    world.env.update({"IMMPORT_USERNAME": "", "IMMPORT_PASSWORD": "", "IMMPORT_TOKEN": ""})
    return key


def prepare(world: World) -> None:
    """The repository the CI job checks out: manifest.yaml and its committed lock."""
    world.write_manifest(WHOLE)
    result = world.run("lock", str(world.manifest_path))
    assert result.exit_code == 0, result.output


def fetched(world: World) -> Counter[str]:
    return Counter(s.lstrip("/") for session in world.sessions() for s in session["sources"])


def upstream_files(world: World) -> list[str]:
    files = (p for p in world.remote.rglob("*") if p.is_file())
    return sorted(p.relative_to(world.remote).as_posix() for p in files)


def assert_one_verified_mirror(world: World) -> None:
    counts = fetched(world)
    assert sorted(counts) == upstream_files(world)
    assert set(counts.values()) == {1}, counts
    assert world.run("verify", str(world.manifest_path)).exit_code == 0


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_is_in_the_readme(name: str):
    """The README shows each example file verbatim, so what people copy is what is tested."""
    readme = (ROOT / "README.md").read_text()
    text = (CI / name).read_text()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#!"))
    assert body.strip() in readme, f"README lacks examples/ci/{name} verbatim"


def test_github_actions_workflow(world: World):
    """The workflow caches the destination, runs apply --frozen, and leaves both artifacts."""
    workflow: Any = yaml.safe_load((CI / "github-actions.yml").read_text())
    steps = workflow["jobs"]["sync"]["steps"]
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache@"))
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert cache["with"]["path"] == "data"
    assert "manifest.lock.json" in cache["with"]["key"]
    assert upload["if"] == "always()"
    prepare(world)
    secrets = {"secrets.IMMPORT_API_KEY": api_key_only(world).api_key}
    scripts = [s for s in steps if "run" in s and runs_immsync(s["run"])]
    assert scripts, "expected a step running immsync"
    for step in scripts:
        env = {k: expand(str(v), secrets) for k, v in step.get("env", {}).items()}
        finish(run_shell(world, step["run"], shell_env(world, env)))
    for artifact in upload["with"]["path"].split():
        assert (world.root / artifact).is_file(), artifact
    summary = json.loads((world.root / "immsync-summary.json").read_text())
    events = (world.root / "immsync-events.ndjson").read_text().splitlines()
    assert json.loads(events[-1])["result"] == summary["result"]
    assert summary["result"]["counts"]["download"] == len(upstream_files(world))
    assert_one_verified_mirror(world)


def test_gitlab_ci_job(world: World):
    """The GitLab job caches data/, runs apply --frozen, and keeps both artifacts."""
    job: Any = yaml.safe_load((CI / "gitlab-ci.yml").read_text())["immport-data"]
    assert job["cache"]["paths"] == ["data/"]
    assert job["artifacts"]["when"] == "always"
    prepare(world)
    script = "\n".join(line for line in job["script"] if runs_immsync(line))
    assert "--frozen" in script
    variables = {"IMMPORT_API_KEY": api_key_only(world).api_key}  # a masked CI/CD variable
    finish(run_shell(world, script, shell_env(world, variables)))
    for artifact in job["artifacts"]["paths"]:
        assert (world.root / artifact).is_file(), artifact
    assert_one_verified_mirror(world)


def test_github_actions_matrix_of_shards(world: World):
    """Each matrix job runs its shard at once; the merge job folds them and verifies."""
    workflow: Any = yaml.safe_load((CI / "github-actions-shards.yml").read_text())
    fetch, merge = workflow["jobs"]["fetch"], workflow["jobs"]["merge"]
    assert merge["needs"] == "fetch"
    shards = fetch["strategy"]["matrix"]["shard"]
    prepare(world)
    api_key = api_key_only(world).api_key
    children = []
    for shard in shards:
        values = {
            "matrix.shard": str(shard),
            "strategy.job-total": str(len(shards)),
            "secrets.IMMPORT_API_KEY": api_key,
        }
        env = {k: expand(str(v), values) for k, v in fetch["env"].items()}
        for step in fetch["steps"]:
            if "run" in step:
                children.append(run_shell(world, step["run"], shell_env(world, env)))
    for child in children:
        finish(child)
    for step in merge["steps"]:
        if "run" in step:
            finish(run_shell(world, step["run"], shell_env(world)))
    assert_one_verified_mirror(world)


def test_slurm_job_array(world: World):
    """Every array task runs the script at once with Slurm's variables; then the merge step."""
    script = (CI / "slurm-array.sh").read_text()
    array = re.search(r"^#SBATCH --array=1-(\d+)$", script, re.M)
    assert array is not None, "the array must count from 1 like --shard"
    merge = re.search(r'--wrap "(immsync merge-shards .*)"$', script, re.M)
    assert merge is not None
    world.write_manifest(WHOLE)
    key_file = world.emulator.write_api_key_file(world.root / "key.json", api_key_only(world))
    count = 2  # a smaller array than the example's: the same script, a faster test
    children = [
        run_shell(
            world,
            f"bash {CI / 'slurm-array.sh'} manifest.yaml",
            shell_env(
                world,
                {
                    "SLURM_ARRAY_TASK_ID": str(k),
                    "SLURM_ARRAY_TASK_COUNT": str(count),
                    "IMMPORT_API_KEY_FILE": str(key_file),
                },
            ),
        )
        for k in range(1, count + 1)
    ]
    for child in children:
        finish(child)
    finish(run_shell(world, merge[1], shell_env(world)))
    assert_one_verified_mirror(world)


def test_kubernetes_indexed_job(world: World):
    """Each pod's command, with its JOB_COMPLETION_INDEX from 0, takes shard index+1 of N."""
    job: Any = yaml.safe_load((CI / "k8s-indexed-job.yaml").read_text())
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"]
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["sh", "-c"]
    (command,) = container["args"]
    assert f'/{spec["completions"]}"' in command, "the shard count must equal completions"
    world.write_manifest(WHOLE)
    command = command.replace("/config/manifest.yaml", str(world.manifest_path))
    (secret,) = [e for e in container["env"] if e["name"] == "IMMPORT_API_KEY"]
    assert secret["valueFrom"]["secretKeyRef"]["key"] == "api_key"
    api_key = api_key_only(world).api_key
    children = [
        run_shell(
            world,
            command,
            shell_env(world, {"JOB_COMPLETION_INDEX": str(index), "IMMPORT_API_KEY": api_key}),
        )
        for index in range(spec["completions"])
    ]
    for child in children:
        finish(child)
    assert_one_verified_mirror(world)  # verify reads every shard's state, merged or not


# -- the install lines ---------------------------------------------------------------

PLACEHOLDER = "https://github.com/YOUR-ORG/immsync"
INSTALL = re.compile(r'^python -m pip install "immsync @ git\+(?P<url>\S+?)@(?P<ref>[^"@\s]+)"$')


def strings_in(doc: Any) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for value in doc.values():
            yield from strings_in(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from strings_in(value)


def install_lines(name: str) -> list[str]:
    """The shell lines of example *name* that install immsync."""
    path = CI / name
    if path.suffix in (".yml", ".yaml"):
        scripts = list(strings_in(yaml.safe_load(path.read_text())))
    else:
        scripts = [path.read_text()]
    return [
        line.strip()
        for script in scripts
        for line in script.splitlines()
        if "pip install" in line and not line.lstrip().startswith("#")
    ]


INSTALLING = [name for name in EXAMPLES if install_lines(name)]


def test_every_install_line_names_the_placeholder_and_this_release():
    """One form everywhere: the README's placeholder URL, pinned to this version's tag."""
    assert {"github-actions.yml", "gitlab-ci.yml"} <= set(INSTALLING)
    for name in INSTALLING:
        for line in install_lines(name):
            match = INSTALL.match(line)
            assert match, f"examples/ci/{name}: {line!r} is not the README's install form"
            assert match["url"] == PLACEHOLDER, name
            assert match["ref"] == f"v{__version__}", f"{name} pins {match['ref']}"
    # The examples point to this section by name; it shows the same line and explains it.
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Installing immsync in CI\n", 1)[1].split("\n### ", 1)[0]
    assert install_lines(INSTALLING[0])[0] in section
    assert "`YOUR-ORG/immsync` is a placeholder" in section


@pytest.fixture(name="release_repo", scope="module")
def _release_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare repository holding this checkout's files as they are, tagged v<version>.

    It stands for the repository the examples' placeholder names, so pip clones it and
    checks the tag out exactly as it would from a real host. The files are copied into
    a repository of its own: the checkout's git store is only read, never written.
    """
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    listed = subprocess.run(
        [*git, "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip("installing from git needs this checkout to be a git work tree")
    work = tmp_path_factory.mktemp("release") / "immsync"
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_symlink() or source.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name, follow_symlinks=False)
    subprocess.run([*git, "init", "-q", "-b", "main", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "release"], check=True)
    subprocess.run([*git, "-C", str(work), "tag", f"v{__version__}"], check=True)
    bare = work.parent / "immsync.git"
    subprocess.run([*git, "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


def fresh_venv(root: Path) -> Path:
    """A new virtual environment that sees this one's packages but not its immsync.

    Every other distribution installed here (immsync's dependencies, pip, the build
    backend) is linked into one folder the new environment has on its path, so pip
    finds the dependencies installed and needs no index; immsync itself must come from
    the install line.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    shared = root / "shared-packages"
    shared.mkdir()
    for folder in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for entry in Path(folder).iterdir():
            name = entry.name.lower()
            if name.startswith(("immsync", "__editable__", "_editable_impl_")) or (
                entry.suffix == ".pth"
            ):
                continue
            if not (shared / entry.name).exists():
                (shared / entry.name).symlink_to(entry)
    site = subprocess.run(
        [
            str(root / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "shared-packages.pth").write_text(f"{shared}\n")
    return root


def offline_shell(venv: Path, home: Path) -> dict[str, str]:
    """A CI job's shell with *venv* first on PATH; pip uses no index and no config."""
    home.mkdir(exist_ok=True)
    return {
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        # The backend is already installed; pip reads a negative option's variable
        # inverted: "false" here means --no-build-isolation.
        "PIP_NO_BUILD_ISOLATION": "false",
    }


def run_in(env: dict[str, str], script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{script}\n{result.stdout}\n{result.stderr}"
    return result


def installed_from(env: dict[str, str], venv: Path, cwd: Path) -> None:
    """immsync runs from *venv*: its command, its version, its package folder."""
    found = run_in(env, "command -v immsync; immsync --version", cwd).stdout.split("\n")
    assert found[0] == str(venv / "bin" / "immsync")
    assert found[1] == f"immsync {__version__}"
    where = run_in(env, "python -c 'import immsync; print(immsync.__file__)'", cwd).stdout
    assert Path(where.strip()).is_relative_to(venv), where


@pytest.mark.parametrize("name", INSTALLING)
def test_install_line_installs_the_tagged_release(name: str, release_repo: Path, tmp_path: Path):
    """The example's own pip line, its URL pointed at a tagged copy of this checkout."""
    venv = fresh_venv(tmp_path / "venv")
    env = offline_shell(venv, tmp_path / "home")
    for line in install_lines(name):
        line = line.replace(f"git+{PLACEHOLDER}@", f"git+file://{release_repo}@")
        assert str(release_repo) in line, line
        result = run_in(env, line, tmp_path)
        assert "Successfully installed immsync" in result.stdout, result.stdout
    installed_from(env, venv, tmp_path)


def test_an_installed_copy_runs_the_demo_and_the_emulator(release_repo: Path, tmp_path: Path):
    """The README's `pip install .` from a clone; then the demo and the emulator run
    from the installed copy alone, and leave nothing behind in the folder they ran in."""
    venv = fresh_venv(tmp_path / "venv")
    env = offline_shell(venv, tmp_path / "home")
    run_in(env, f"git clone -q {release_repo} clone", tmp_path)
    readme = (ROOT / "README.md").read_text()
    assert "python3 -m pip install .  " in readme
    run_in(env, "python3 -m pip install .", tmp_path / "clone")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    installed_from(env, venv, elsewhere)
    demo = run_in(env, "python -m immsync.demo", elsewhere)
    assert "and downloaded nothing" in demo.stdout, demo.stdout
    emulator = subprocess.Popen(
        [str(venv / "bin" / "python"), "-m", "immsync.testing.emulator", "--legacy"],
        cwd=elsewhere,
        env={**env, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert emulator.stdout is not None
        info = json.loads(emulator.stdout.readline())
        ascp = run_in(env, f"{info['ascp']} -A", elsewhere)
        assert "ascp version" in ascp.stdout
    finally:
        emulator.send_signal(signal.SIGINT)
        emulator.communicate(timeout=20)
    assert emulator.returncode == 0
    assert not Path(info["ascp"]).exists()
    assert list(elsewhere.iterdir()) == []
