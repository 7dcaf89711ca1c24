"""examples/ci: each example is parsed and its immsync commands run against the emulator.

Steps that only install things or talk to the CI service (``uses:``, ``pip install``)
are not run; every shell line that calls immsync is, with the CI's variables set as
the service would set them. The README shows each example verbatim.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import World

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
    assert f"/{spec['completions']}\"" in command, "the shard count must equal completions"
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
