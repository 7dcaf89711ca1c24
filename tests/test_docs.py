"""The README documents every command, exit code and environment variable the code has."""

from __future__ import annotations

import re
from pathlib import Path

from typer.main import get_command

from immsync.cli import app
from immsync.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_command_has_help_and_is_in_the_readme():
    """Each CLI command has help text and a row in the README's command table."""
    group = get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert command.help and len(command.help) > 20, name
        assert f"`immsync {name} " in README, f"README lacks `immsync {name}`"


def test_every_exit_code_is_in_the_readme():
    """Each ExitCode value has a row in the README's exit-code table."""
    for code in ExitCode:
        assert re.search(
            rf"^\| ({code.value}|[0-9 /]*\b{code.value}\b[0-9 /]*) \|", README, re.M
        ), code


def test_every_environment_variable_is_documented():
    """Each variable the CLI reads appears in the README's environment table."""
    wiring = (ROOT / "immsync" / "cli.py", *(ROOT / "immsync" / "app").glob("*.py"))
    source = "".join(path.read_text() for path in wiring)
    names = set(re.findall(r'"((?:IMMPORT|IMMSYNC)_[A-Z_]+)"', source))
    assert names, "expected the CLI to read variables"
    for name in names:
        assert f"`{name}`" in README, name


def test_readme_names_the_two_newcomer_commands():
    """The README gives `make demo` and `make test`, and the Makefile defines both."""
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.M)


def test_the_jobs_defaults_in_the_readme_are_the_code_s():
    """The option table's `--jobs` defaults are the ones apply uses."""
    from immsync.app.config import ASCP_JOBS, HTTPS_JOBS

    assert f"[{ASCP_JOBS} for `ascp`, {HTTPS_JOBS} over HTTPS]" in README


def test_command_help_paragraphs_are_wrapped_by_the_terminal_not_the_source():
    """Typer keeps a docstring's line breaks inside a paragraph; at 80 columns each
    source line would then wrap again, leaving one-word lines. Each paragraph is one line."""
    group = get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        for paragraph in command.help.split("\n\n"):
            assert "\n" not in paragraph, (name, paragraph)
