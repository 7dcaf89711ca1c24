"""Rendering: JSON shapes, sizes, log levels."""

from __future__ import annotations

import json

import pytest

from immsync.model import Action, Plan, PlanItem, RemoteFile
from immsync.render import create_log_config, format_size, iter_plan_json, plan_to_json


def make_plan(n: int) -> Plan:
    items = [
        PlanItem(
            Action.DOWNLOAD,
            f"SDY1/f{i}",
            i,
            "not present locally",
            RemoteFile(f"SDY1/f{i}", i, "t"),
        )
        for i in range(n)
    ]
    items.append(PlanItem(Action.UNCHANGED, "SDY1/z", 1, "up to date"))
    return Plan(items=tuple(items), notes=("a note",))


@pytest.mark.parametrize("n", [0, 1, 3])
def test_streamed_plan_json_equals_the_document(n):
    """The streamed plan JSON parses to exactly plan_to_json's document, plus extra keys."""
    plan = make_plan(n)
    text = "".join(iter_plan_json(plan, problems=["p"], extra={"lock_drift": []}))
    expected = plan_to_json(plan, problems=["p"])
    expected["lock_drift"] = []
    assert json.loads(text) == expected


def test_streamed_plan_json_puts_one_action_per_line():
    """Each action is one line, so a plan can be read with grep as well as jq."""
    text = "".join(iter_plan_json(make_plan(3)))
    assert sum('"action": "download"' in line for line in text.splitlines()) == 3


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536 * 1024, "1.5 MiB")]
)
def test_format_size(n, text):
    """Sizes use 1024-based units with one decimal."""
    assert format_size(n) == text


@pytest.mark.parametrize(
    ("verbose", "quiet", "level"),
    [(0, False, "WARNING"), (1, False, "INFO"), (2, False, "DEBUG"), (3, True, "ERROR")],
)
def test_log_levels(verbose, quiet, level):
    """-v raises the level, -vv is debug, -q wins over -v."""
    config = create_log_config(verbose, quiet)
    assert config["loggers"]["immsync"]["level"] == level
