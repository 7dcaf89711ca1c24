"""Dependencies point one way: the import graph of immsync matches the design."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "immsync"

# module -> the immsync modules it may import. Anything not listed imports nothing of ours.
ALLOWED = {
    "errors": set(),
    "model": set(),
    "staging": {"model"},
    "units": set(),
    "ports": {"errors", "model"},
    "hashing": set(),
    "paths": {"errors", "model"},
    "retry": set(),
    "decide": {"errors"},
    "plan": {"model"},
    "manifest": {"errors", "model", "paths"},
    "statedir": {"errors"},
    "state": {"errors", "model", "paths", "statedir"},
    "lock": {"errors", "statedir"},
    "check": {"hashing", "model"},
    "immport": {"errors", "model", "net", "paths", "retry"},  # a package
    "ascp": {"errors", "model", "staging"},
    "https": {"errors", "model", "net", "staging", "units"},
    "net": set(),
    "transports": {"errors", "model", "ports"},
    "sync": {
        "decide", "errors", "model", "manifest", "hashing", "paths", "plan", "ports", "retry",
        "staging", "state", "statedir", "units",
    },
    "render": {"check", "errors", "model", "staging", "units"},
    # CI and scale: library modules the CLI composes; none of them starts a transfer.
    "events": {"errors", "lockfile", "model", "ports"},
    "lockfile": {"errors", "manifest", "model", "ports"},
    "shard": {"errors", "lock", "model", "state", "statedir"},
    "init": {"errors", "paths", "units"},
    # The wiring: environment, credentials, transport choice, one run put together.
    "app": {
        "__init__", "ascp", "errors", "https", "immport", "lockfile", "model", "ports", "shard",
        "state", "statedir", "sync", "transports", "units",
    },
    "cli": {
        "app", "ascp", "check", "errors", "https", "immport", "lock", "manifest", "model", "render",
        "ports", "retry", "state", "statedir", "sync", "transports", "units", "__init__",
        "events", "init", "lockfile", "shard",
    },
    "__init__": {"errors", "manifest", "model", "plan"},
    # The offline demo: the one module that drives the doubles (it runs the real CLI).
    "demo": {"testing"},
    "__main__": {"cli"},
}


def immsync_imports(path: Path) -> set[str]:
    """The top-level immsync modules *path* imports; a subpackage's own modules are one."""
    tree = ast.parse(path.read_text())
    in_subpackage = path.parent != PACKAGE
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and not module.startswith("immsync"):
                continue
            if in_subpackage and node.level == 1:
                continue  # a sibling inside the same subpackage
            if node.level == 0:
                module = module.removeprefix("immsync").removeprefix(".")
            if module:
                found.add(module.split(".")[0])
            else:
                # `from . import x` / `from immsync import x`: x is a module or a name in __init__
                for alias in node.names:
                    is_module = (PACKAGE / f"{alias.name}.py").exists()
                    found.add(alias.name if is_module else "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("immsync."):
                    found.add(alias.name.split(".")[1])
    return found


def product_modules() -> list[tuple[str, Path]]:
    """Every module of the product, a subpackage's files under the subpackage's name."""
    found = [(path.stem, path) for path in sorted(PACKAGE.glob("*.py"))]
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        if init.parent.name == "testing":
            continue
        found += [(init.parent.name, path) for path in sorted(init.parent.glob("*.py"))]
    return found


def test_every_module_imports_only_what_the_design_allows():
    """No module reaches past its layer (e.g. immport never imports ascp, plan only model)."""
    for name, path in product_modules():
        assert name in ALLOWED, f"{name}.py is new: add it to ALLOWED in this test"
        extra = immsync_imports(path) - ALLOWED[name] - ({"__init__"} if name == "cli" else set())
        assert not extra, f"{name}.py imports {sorted(extra)}, which its layer does not allow"


def test_only_the_cli_imports_typer():
    """The library never imports typer or click; the CLI never imports click."""
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        assert "import click" not in source and "from click" not in source, path
        if path.name != "cli.py":
            assert "import typer" not in source, path


def loaded_after(statement: str, watched: tuple[str, ...]) -> list[str]:
    """Which of *watched* a fresh interpreter has loaded after running *statement*."""
    code = f"import sys\n{statement}\nprint(sorted(m for m in {watched!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return list(ast.literal_eval(out.strip()))


def test_every_public_name_resolves():
    """Each name in immsync.__all__ is there, though loaded only on first use."""
    import immsync

    for name in immsync.__all__:
        assert getattr(immsync, name) is not None, name


def test_the_client_and_stand_in_ascp_start_without_the_manifest_libraries():
    """The stand-in ascp starts once per session: it loads no YAML, schema or CLI code."""
    watched = ("jsonschema", "yaml", "typer", "rich")
    assert loaded_after("import immsync.immport, immsync.testing.fake_ascp", watched) == []


def test_the_command_line_loads_the_network_stack_only_when_used():
    """Offline commands (status, verify, validate) never pay for requests or the client."""
    watched = ("requests", "immsync.immport", "immsync.https", "immsync.ascp")
    assert loaded_after("import immsync.cli", watched) == []


def test_failures_are_asked_not_compared_as_strings():
    """Failure kinds carry their behaviour; no module compares them as strings."""
    import re

    compared = re.compile(r"\.kind\s*(?:==|!=|in)\s*[(\"']")
    for _module, path in product_modules():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not compared.search(line), f"{path.name}:{number}: {line.strip()}"


def test_every_failure_says_how_to_react():
    from immsync.errors import Failure

    assert {f for f in Failure if f.retryable} == {
        Failure.TRANSIENT,
        Failure.UNREACHABLE,
        Failure.TOKEN,
    }
    assert {f for f in Failure if f.stops_run} == {Failure.DISK}
    assert {f for f in Failure if f.unreachable} == {Failure.UNREACHABLE}


def test_no_caller_probes_for_an_optional_method():
    """The protocols in ports.py declare terminate and close: nothing looks them up."""
    import re

    probing = re.compile(r"getattr\([^)]*[\"'](?:terminate|close)[\"']")
    for _module, path in product_modules():
        assert not probing.search(path.read_text()), path.name


def test_one_reporter_protocol():
    """The protocols live in ports.py, once each."""
    import re

    for _module, path in product_modules():
        if path.name == "ports.py":
            continue
        for name in ("Transfer", "RemoteCatalog", "Reporter"):
            assert not re.search(rf"^class _?{name}\(Protocol\)", path.read_text(), re.M), (
                f"{path.name} defines its own {name} protocol"
            )


TESTING = PACKAGE / "testing"


def test_no_product_module_imports_the_test_doubles():
    """immsync.testing serves tests only: nothing under immsync/ but it imports it."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if TESTING in path.parents:
            continue
        tree = ast.parse(path.read_text())
        in_subpackage = path.parent != PACKAGE
        docstrings = {
            id(body[0].value)
            for owner in ast.walk(tree)
            if isinstance(owner, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and (body := owner.body)
            and isinstance(body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                if node.level == (2 if in_subpackage else 1) and not node.module:
                    names = [alias.name for alias in node.names]  # from . import testing
                if node.level:
                    names = [n.split(".")[0] for n in names]
                else:
                    names = [n.removeprefix("immsync.") for n in names if n.startswith("immsync")]
                assert "testing" not in names, f"{path} imports immsync.testing"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("immsync.testing"), path
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
            ):
                # importlib.import_module("immsync.testing...") or a -m command line
                assert "immsync.testing" not in node.value, f"{path} names immsync.testing"


def _private(name: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))


def test_the_test_doubles_use_only_public_names_of_the_product():
    """immsync/testing/ imports and reads no _private module or name of the product."""
    for path in sorted(TESTING.glob("*.py")):
        tree = ast.parse(path.read_text())
        bound: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                from_product = (node.level == 0 and module.startswith("immsync")) or node.level > 1
                if not from_product or module.startswith("immsync.testing"):
                    continue
                assert not _private(module), f"{path.name} imports from {module}"
                for alias in node.names:
                    assert not _private(alias.name), f"{path.name} imports {module}.{alias.name}"
                    bound.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("immsync") and not alias.name.startswith(
                        "immsync.testing"
                    ):
                        assert not _private(alias.name), f"{path.name} imports {alias.name}"
                        bound.add((alias.asname or alias.name).split(".")[0])
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
            ):
                assert not _private(node.attr), f"{path.name} reads {node.value.id}.{node.attr}"
