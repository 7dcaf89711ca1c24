"""Bad input never crashes immsync: every failure is a message and a documented exit code.

Malformed replies from each ImmPort endpoint (HTML pages, not JSON, missing keys, wrong
types, truncated, huge, deeply nested), then Hypothesis-generated manifests, listing
replies, token replies and ascp output lines. "Never crashes" means: an exit code from
the documented set, no ``Traceback`` in the output, and CliRunner saw only SystemExit.

The default run keeps each property to a few dozen examples; for a long soak run
``HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/test_badinput.py`` (the profile is
registered in ``conftest.py``).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import pytest
import yaml
from conftest import World
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from immsync.ascp import classify, parse_progress
from immsync.cli import app
from immsync.errors import ExitCode
from immsync.testing.sampledata import SAMPLE_MTIME_ISO

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"


def budget(n: int) -> int:
    """*n* examples in the default suite; the loaded profile's count in a long run."""
    current = settings.default
    return max(n, current.max_examples) if LONG and current is not None else n


def through_cli(n: int) -> settings:
    """Settings for a property that runs the CLI against the function-scoped world.

    Each example resets what it changed in the world, so sharing it is safe.
    """
    return settings(
        max_examples=budget(n),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


DESIGN = "SDY1/StudyFiles/Study_design.txt"
ONE_FILE = "  - accession: SDY1\n    paths:\n      - StudyFiles/Study_design.txt\n"
STUDY_FILES = "  - accession: SDY1\n    paths:\n      - StudyFiles\n"
MAX_REPLY = 64 * 1024 * 1024

# What each command may exit with (README "Exit codes"); 1 (a bug) is never acceptable.
VALIDATE_CODES = {ExitCode.OK, ExitCode.USAGE}
PLAN_CODES = {ExitCode.OK, ExitCode.USAGE, ExitCode.AUTH, ExitCode.REMOTE, ExitCode.LOCAL}
APPLY_CODES = PLAN_CODES | {ExitCode.TRANSFER, ExitCode.INTEGRITY, ExitCode.SETUP}


def invoke(world: World, *args: str) -> Any:
    """Run the CLI in-process and check it did not crash, whatever it answered."""
    result = CliRunner().invoke(app, list(args), env=world.env)
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    assert "Traceback" not in result.stderr, result.stderr
    return result


# -- malformed replies, endpoint by endpoint -------------------------------------------

HTML_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>Sign in</title></head>"
    "<body><h1>Please sign in</h1><form></form></body></html>"
)
NESTED = "[" * 100_000 + "]" * 100_000
HUGE = "x" * (MAX_REPLY + 1)

# endpoint -> (route to inject on, command, {kind: (status, body, words in the message)})
MALFORMED: dict[str, dict[str, tuple[int, Any, str]]] = {
    "auth": {
        "html": (200, HTML_PAGE, "got an HTML page instead of JSON"),
        "html-error": (401, HTML_PAGE, "the reply was an HTML page"),
        "not-json": (200, "token=abc; expires=never", "not valid JSON"),
        "missing-keys": (200, {"status": 200}, "no 'token' or 'access_token' string"),
        "wrong-types": (200, {"token": 12345, "access_token": ["x"]}, "no 'token' or"),
        "not-an-object": (200, '["token", "abc"]', "expected a JSON object, got array"),
        "truncated": (200, '{\n  "status" : 200,\n  "token" : "eyJhbGciOi', "truncated"),
        "huge": (200, HUGE, "-byte limit"),
        "nested": (200, NESTED, "nested too deeply"),
    },
    "list": {
        "html": (200, HTML_PAGE, "got an HTML page instead of JSON"),
        "html-error": (403, HTML_PAGE, "the reply was an HTML page"),
        "not-json": (200, "self=/SDY1;items=", "not valid JSON"),
        "missing-keys": (200, {"items": []}, "the 'self' entry is missing"),
        "wrong-types": (
            200,
            {"self": {"path": "/SDY1/StudyFiles", "type": "directory"}, "items": {"a": 1}},
            "'items' is a JSON object, not a list",
        ),
        "bad-item": (
            200,
            {
                "self": {"path": "/SDY1/StudyFiles", "type": "directory"},
                "items": [{"path": "/SDY1/StudyFiles/a", "type": "file", "size": "12"}],
            },
            "items[0].size is missing or not a non-negative integer",
        ),
        "truncated": (200, '{"self":{"path":"/SDY1/StudyFiles","type":"dir', "truncated"),
        "huge": (200, HUGE, "-byte limit"),
        "nested": (200, NESTED, "nested too deeply"),
    },
    "download-token": {
        "html": (200, HTML_PAGE, "got an HTML page instead of JSON"),
        "html-error": (403, HTML_PAGE, "the reply was an HTML page"),
        "not-json": (200, "token: abc", "not valid JSON"),
        "missing-keys": (200, {"status": 200}, "no 'token' string"),
        "wrong-types": (200, {"token": {"value": "abc"}}, "no 'token' string"),
        "truncated": (200, '{"token":"abc', "truncated"),
        "huge": (200, HUGE, "-byte limit"),
        "nested": (200, NESTED, "nested too deeply"),
    },
    "manifest": {
        "html": (200, HTML_PAGE, "got an HTML page instead of JSON"),
        "html-error": (403, HTML_PAGE, "the reply was an HTML page"),
        "not-json": (200, "path\tgeneratedMD5\n", "not valid JSON"),
        "missing-keys": (200, [{"fileName": "Study_design.txt"}], "none of its 1 rows"),
        "wrong-types": (
            200,
            {"rows": [{"path": 1, "generatedMD5": 2}]},
            "a JSON object, not a list of files",
        ),
        "truncated": (200, '[{"path":"SDY1/StudyFiles/a","generatedMD5":"0', "truncated"),
        "huge": (200, HUGE, "-byte limit"),
        "nested": (200, NESTED, "nested too deeply"),
    },
}
ROUTES = {
    "auth": "/auth/token",
    "list": "/data/list",
    "download-token": "/data/download/token",
    "manifest": "/data/query/api/study/manifest/",
}
CASES = [(endpoint, kind) for endpoint, kinds in MALFORMED.items() for kind in kinds]


class TestMalformedReplies:
    @pytest.mark.parametrize(("endpoint", "kind"), CASES, ids=[f"{e}-{k}" for e, k in CASES])
    def test_clear_message_and_documented_exit_code(
        self, world: World, endpoint: str, kind: str
    ) -> None:
        """A malformed reply gives a message naming the endpoint and what is wrong, no crash."""
        status, body, words = MALFORMED[endpoint][kind]
        if not isinstance(body, str):
            body = json.dumps(body)
        world.write_manifest(ONE_FILE)
        if endpoint == "list":
            world.emulator.manifest_route = False  # a deployment with only the listing
        if endpoint == "manifest":
            world.env["IMMSYNC_MANIFEST_MAX_BYTES"] = str(MAX_REPLY)
        world.emulator.inject(ROUTES[endpoint], status=status, body=body, times=1)
        if endpoint == "download-token":
            result = invoke(
                world, "apply", str(world.manifest_path), "--retries", "0", "--session-stagger", "0"
            )
        else:
            result = invoke(world, "plan", str(world.manifest_path), "--json")

        expected = {
            "auth": ExitCode.AUTH if status == 401 else ExitCode.REMOTE,
            "list": ExitCode.REMOTE,
            "manifest": ExitCode.REMOTE,
            "download-token": ExitCode.REMOTE,
        }[endpoint]
        assert result.exit_code == expected, result.output
        assert ROUTES[endpoint].rstrip("/") in result.stderr
        assert words in result.stderr
        assert len(result.output) < 10_000  # the body itself is never echoed whole
        if endpoint == "download-token":
            assert world.sessions() == []
            assert not (world.dest / DESIGN).exists()


# -- generated manifests ---------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**6), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
accessions = st.sampled_from(["SDY1", "SDY269", "SDY99999", "sdy1", "SDY", "ALLSTUDIES"]) | st.text(
    max_size=8
)
paths = st.sampled_from(
    [
        "StudyFiles",
        "StudyFiles/Study_design.txt",
        "ResultFiles/HAI_result",
        "ResultFiles/",
        "No_such_folder",
        "../SDY269",
        "/etc",
        "a\\b",
        "a//b",
        ".",
        "",
        "a\nb",
        "*",
    ]
) | st.text(max_size=16)
patterns = st.sampled_from(["*.txt", "*", "[", "**/x", "hai_*", "", "[!a-", "?"]) | st.text(
    max_size=6
)
studies = st.fixed_dictionaries(
    {"accession": accessions},
    optional={
        "paths": st.lists(paths, max_size=3) | json_values,
        "include": st.lists(patterns, max_size=2) | json_values,
        "exclude": st.lists(patterns, max_size=2),
        "notes": json_values,
    },
)
destinations = st.sampled_from(
    ["data", "./data", "data/sub", "~/data", "", ".", "data/../data2"]
) | (st.text(max_size=10).filter(lambda s: not s.startswith("/")))
manifest_docs = st.fixed_dictionaries(
    {"version": st.sampled_from([1, 2, "1", None, 1.0, True, 0])},
    optional={
        "destination": destinations | json_values.filter(lambda v: not isinstance(v, str)),
        "studies": st.lists(studies, max_size=3) | json_values,
        "extra": json_values,
    },
)


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


def _mangle(text: str, at: int, junk: str) -> str:
    """*text* with *junk* inserted at a point (a fraction of its length, per mille)."""
    cut = len(text) * at // 1000
    return text[:cut] + junk + text[cut:]


junks = st.sampled_from(["", "\t", ":", "- ", "{", "'", "&a", "*a", "\x00", "\n  ", "\u2028"])


manifest_texts = st.one_of(
    manifest_docs.map(_dump),
    json_values.map(_dump),
    st.text(max_size=200),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
)
BOMB = (
    "\n".join(
        ['l0: &l0 ["a", "a", "a", "a", "a", "a", "a", "a", "a"]']
        + [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    )
    + "\nversion: 1\ndestination: data\nstudies:\n  - accession: SDY1\n    paths: *l8\n"
)


class TestGeneratedManifests:
    @through_cli(40)
    @given(text=manifest_texts, at=st.integers(0, 1000), junk=junks)
    @example(text=BOMB, at=0, junk="")
    @example(text="version: 1\nversion: 1\ndestination: data\nstudies: []\n", at=0, junk="")
    @example(text="\ufeffversion: 1\n", at=0, junk="")
    def test_validate_never_crashes(self, world: World, text: str, at: int, junk: str) -> None:
        """validate on any text exits 0 or 2 with a message, never a traceback."""
        text = _mangle(text, at, junk)
        world.manifest_path.write_bytes(text.encode("utf-8", "surrogatepass"))
        result = invoke(world, "validate", str(world.manifest_path))
        assert result.exit_code in VALIDATE_CODES, result.output
        if result.exit_code == ExitCode.USAGE:
            assert result.stderr.startswith("error: "), result.stderr

    @through_cli(25)
    @given(doc=manifest_docs)
    def test_plan_never_crashes(self, world: World, doc: Any) -> None:
        """plan on any generated manifest exits with a documented code, never a traceback."""
        world.manifest_path.write_text(_dump(doc), encoding="utf-8")
        result = invoke(world, "plan", str(world.manifest_path), "--json")
        assert result.exit_code in PLAN_CODES, result.output
        if result.exit_code in (ExitCode.OK, ExitCode.REMOTE):
            json.loads(result.stdout)


# -- generated server replies ----------------------------------------------------------

items = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "path": st.sampled_from(
                [
                    "/SDY1/StudyFiles/x.txt",
                    "/SDY1/StudyFiles/Study_design.txt",
                    "/SDY1/StudyFiles",
                    "/SDY1/StudyFiles/sub",
                    "/SDY1/StudyFiles/..",
                    "/etc/passwd",
                    "",
                    "SDY1/StudyFiles/y",
                ]
            )
            | json_values,
            "type": st.sampled_from(["file", "directory", "link", ""]) | json_values,
            "size": st.integers(-5, 10**15) | json_values,
            "mtime": st.sampled_from([SAMPLE_MTIME_ISO, "", "yesterday", "2017-13-45T99:99:99Z"])
            | json_values,
            "basename": json_values,
        },
    ),
)


class TestGeneratedReplies:
    @through_cli(30)
    @given(listing=st.lists(items, max_size=6))
    def test_listing_replies(self, world: World, listing: list[Any]) -> None:
        """plan over any listing reply exits 0 or 4 with problems named, never a traceback."""
        world.write_manifest(STUDY_FILES)
        world.emulator.manifest_route = False  # a deployment with only the listing
        world.emulator.listing_overrides["/SDY1/StudyFiles"] = listing
        try:
            result = invoke(world, "plan", str(world.manifest_path), "--json")
        finally:
            world.emulator.listing_overrides.clear()
        assert result.exit_code in (ExitCode.OK, ExitCode.REMOTE), result.output
        doc = json.loads(result.stdout)
        assert (result.exit_code == ExitCode.REMOTE) == bool(doc["problems"])

    @through_cli(25)
    @given(
        body=json_values.map(json.dumps) | st.text(max_size=60),
        status=st.sampled_from([200, 200, 200, 400, 401, 403, 404, 418]),
    )
    def test_sign_in_replies(self, world: World, body: str, status: int) -> None:
        """plan after any sign-in reply exits 0, 3 or 4, never a traceback."""
        world.write_manifest(ONE_FILE)
        world.emulator.clear_faults()
        world.emulator.inject("/auth/token", status=status, body=body, times=1)
        result = invoke(world, "plan", str(world.manifest_path))
        world.emulator.clear_faults()
        assert result.exit_code in (ExitCode.OK, ExitCode.AUTH, ExitCode.REMOTE), result.output

    @through_cli(12)
    @given(
        body=json_values.map(json.dumps)
        | st.dictionaries(st.sampled_from(["token", "error", "message"]), json_values).map(
            json.dumps
        )
        | st.text(max_size=60),
        status=st.sampled_from([200, 200, 400, 403, 404]),
    )
    def test_download_token_replies(self, world: World, body: str, status: int) -> None:
        """apply after any download-token reply exits with a documented code, never crashes."""
        world.write_manifest(ONE_FILE)
        shutil.rmtree(world.dest, ignore_errors=True)
        world.emulator.clear_faults()
        world.emulator.inject("/data/download/token", status=status, body=body, times=1)
        result = invoke(
            world, "apply", str(world.manifest_path), "--retries", "0", "--session-stagger", "0"
        )
        world.emulator.clear_faults()
        assert result.exit_code in APPLY_CODES, result.output


# -- generated ascp output -------------------------------------------------------------

numbers = st.from_regex(r"\A[0-9]{1,400}(\.[0-9]{1,5})?\Z")
progress_lines = st.builds(
    lambda name, pct, size, unit, rate, clock, eta: (
        f"{name} {pct}% {size}{unit} {rate} {clock}{eta}"
    ),
    st.text(max_size=50),
    st.from_regex(r"\A[0-9]{1,4}\Z"),
    numbers,
    st.sampled_from(["B", "KB", "MB", "GB", "TB", "PB", "XB", ""]),
    st.sampled_from(["", "12.3Mb/s", "999Gb/s", "1 Kbps", "x"]) | numbers.map(lambda n: n + "Mb/s"),
    st.sampled_from(["--:--", "00:01", "1:02:03"]) | numbers,
    st.sampled_from(["", " ETA", "    "]),
)


class TestAscpOutput:
    @settings(max_examples=budget(200), deadline=None)
    @given(line=st.text(max_size=300) | progress_lines)
    @example(line="02054141.001.52628.fcs  50% " + "9" * 400 + "KB 1.0Mb/s 00:01 ETA")
    @example(line="x 100% 1.5PB 10Gb/s 1:00:00 ETA")
    def test_parse_progress_and_classify_never_raise(self, line: str) -> None:
        """Any ascp output line is parsed to a sane tuple or None, and classified, never raising."""
        parsed = parse_progress(line)
        if parsed is not None:
            name, percent, shown, _rate = parsed
            assert name and 0 <= percent <= 100 and shown >= 0
        assert classify(line) in ("transient", "token", "auth", "permanent", "not_found", "disk")

    def test_huge_sizes_are_not_progress(self) -> None:
        """A size too large to be real is no progress line (it used to overflow)."""
        assert parse_progress("a.fcs  50% " + "9" * 400 + "KB 1.0Mb/s 00:01 ETA") is None


def test_long_profile_is_registered() -> None:
    """HYPOTHESIS_PROFILE=long names a registered profile for soak runs."""
    profile = settings.get_profile("long")
    assert profile.max_examples >= 1000
    assert profile.deadline is None
