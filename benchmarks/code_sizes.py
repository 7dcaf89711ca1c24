"""The largest modules, classes and functions of immsync, at any commit.

``python -m benchmarks.code_sizes`` measures the working tree; ``--rev REV`` measures
a commit (read through ``git show``, nothing is checked out), and ``--compare REV``
prints both side by side. Sizes are source lines from a definition's first line to
its last, as ``ast`` reports them; test doubles (``immsync/testing``) are left out.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "immsync"


@dataclass(frozen=True)
class Sizes:
    modules: list[tuple[int, str]]
    classes: list[tuple[int, str]]
    functions: list[tuple[int, str]]


def sources(rev: str | None) -> dict[str, str]:
    """Every product module's text, by path, in the working tree or at *rev*."""
    if rev is None:
        return {
            p.relative_to(REPO).as_posix(): p.read_text()
            for p in sorted((REPO / PACKAGE).rglob("*.py"))
            if "testing" not in p.relative_to(REPO / PACKAGE).parts
        }
    git = shutil.which("git") or "git"

    def run(*args: str) -> str:
        return subprocess.run(
            [git, *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout

    listing = run("ls-tree", "-r", "--name-only", rev, PACKAGE).split()
    return {
        path: run("show", f"{rev}:{path}")
        for path in listing
        if path.endswith(".py") and "/testing/" not in path
    }


def measure(texts: dict[str, str]) -> Sizes:
    modules, classes, functions = [], [], []
    for path, text in texts.items():
        modules.append((len(text.splitlines()), path))
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes.append((_length(node), f"{path}:{node.name}"))
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        functions.append((_length(item), f"{path}:{node.name}.{item.name}"))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _top_level(
                tree, node
            ):
                functions.append((_length(node), f"{path}:{node.name}"))
    return Sizes(sorted(modules, reverse=True), sorted(classes, reverse=True),
                 sorted(functions, reverse=True))  # fmt: skip


def _length(node: ast.AST) -> int:
    return int(getattr(node, "end_lineno", 0)) - int(getattr(node, "lineno", 0)) + 1


def _top_level(tree: ast.Module, node: ast.AST) -> bool:
    return node in tree.body


def report(title: str, sizes: Sizes, top: int) -> list[str]:
    lines = [f"## {title}"]
    for name, rows in (("modules", sizes.modules), ("classes", sizes.classes),
                       ("functions", sizes.functions)):  # fmt: skip
        lines.append(f"largest {name}:")
        lines += [f"  {n:5d}  {what}" for n, what in rows[:top]]
    functions = sorted(n for n, _ in sizes.functions)
    if functions:
        median = functions[len(functions) // 2]
        p90 = functions[int(len(functions) * 0.9)]
        lines.append(
            f"functions and methods: {len(functions)}, median {median} lines, 90th percentile "
            f"{p90}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.code_sizes", description=__doc__)
    parser.add_argument("--rev", help="measure this commit instead of the working tree")
    parser.add_argument("--compare", metavar="REV", help="also measure REV, shown first")
    parser.add_argument("--top", type=int, default=8)
    options = parser.parse_args(argv)
    out: list[str] = []
    if options.compare:
        out += report(f"at {options.compare}", measure(sources(options.compare)), options.top)
        out.append("")
    title = f"at {options.rev}" if options.rev else "working tree"
    out += report(title, measure(sources(options.rev)), options.top)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
