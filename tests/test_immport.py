"""ImmportClient against a live emulator over real HTTP: auth, retries, validation, walk."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from immsync.errors import ApiError, AuthError, RemoteNotFound, UnsafePath, UsageError
from immsync.immport import Credentials, ImmportClient, Listing, ListingEntry
from immsync.model import RemoteFile
from immsync.retry import RetryPolicy
from immsync.testing import aspera_tokens
from immsync.testing.emulator import Emulator
from immsync.testing.sampledata import SAMPLE_MTIME_ISO, write_file

PASSWORD = "cl1ent-Pa55word"
TOKEN = "tok-123456"
FAST = RetryPolicy(attempts=4, base_delay=0.5, max_delay=30, jitter=0)


class FakeSleep:
    """Records requested waits instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture(name="emu")
def _emu(tree: Path) -> Iterator[Emulator]:
    with Emulator(tree, world="legacy", username="alice", password=PASSWORD) as emulator:
        yield emulator


@pytest.fixture(name="sleep")
def _sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture(name="make_client")
def _make_client(emu: Emulator, sleep: FakeSleep) -> Iterator[Any]:
    sessions: list[requests.Session] = []

    def make(**overrides: Any) -> ImmportClient:
        session = requests.Session()
        sessions.append(session)
        options: dict[str, Any] = {
            "token_url": emu.token_url,
            "data_url": emu.data_url,
            "query_url": emu.query_url,
            "credentials": Credentials("alice", PASSWORD),
            "timeout": 10.0,
            "retry": FAST,
            "sleep": sleep,
        }
        options.update(overrides)
        return ImmportClient(session, **options)

    yield make
    for session in sessions:
        session.close()


@pytest.fixture(name="client")
def _client(make_client: Any) -> ImmportClient:
    client: ImmportClient = make_client()
    return client


def sample_files(tree: Path, prefix: str) -> list[RemoteFile]:
    return sorted(
        (
            RemoteFile(p.relative_to(tree).as_posix(), p.stat().st_size, SAMPLE_MTIME_ISO)
            for p in (tree / prefix).rglob("*")
            if p.is_file()
        ),
        key=lambda f: f.path,
    )


def entry(path: str, kind: str = "file", size: int = 1) -> dict[str, Any]:
    return {
        "path": path,
        "basename": path.rsplit("/", 1)[-1],
        "type": kind,
        "size": size,
        "mtime": SAMPLE_MTIME_ISO,
        "permissions": [{"name": "view"}],
    }


def assert_no_secrets(text: str, *secrets: str) -> None:
    for secret in (PASSWORD, *secrets):
        assert secret not in text


# -- sign-in ---------------------------------------------------------------------------


@pytest.mark.parametrize("keys", [("token",), ("access_token",), ("token", "access_token")])
def test_sign_in_accepts_either_token_key(emu, client, keys):
    """The token reply may name it token, access_token or both."""
    emu.token_reply_keys = keys
    token = client.bearer_token()
    assert token
    assert client.list_path("/SDY1").self_entry.path == "/SDY1"
    assert client.bearer_token() == token
    assert client.counters["auth"] == 1


def test_bad_credentials_raise_auth_error_naming_the_url(emu, make_client):
    """A refused password gives AuthError naming the token URL and the env vars; no retry."""
    client = make_client(credentials=Credentials("alice", "not-" + PASSWORD))
    with pytest.raises(AuthError) as caught:
        client.list_path("/SDY1")
    text = str(caught.value)
    assert emu.token_url in text
    assert '"Bad credentials"' in text
    assert "IMMPORT_USERNAME" in text and "IMMPORT_PASSWORD" in text
    assert_no_secrets(text, "not-" + PASSWORD)
    assert emu.count("/auth/token") == 1
    assert emu.count("/data/") == 0


def test_missing_credentials_raise_auth_error_with_hint(make_client):
    """Without a password or token, AuthError says which variables to set."""
    client = make_client(credentials=Credentials(username="alice"))
    with pytest.raises(AuthError) as caught:
        client.bearer_token()
    assert "IMMPORT_PASSWORD" in str(caught.value)
    assert "IMMPORT_TOKEN" in str(caught.value)


def test_given_token_is_used_without_signing_in(emu, make_client):
    """A bearer token in the credentials is sent as is; the token URL is never called."""
    token = ImmportClient(
        requests.Session(),
        token_url=emu.token_url,
        data_url=emu.data_url,
        query_url=None,
        credentials=Credentials("alice", PASSWORD),
    ).bearer_token()
    client = make_client(credentials=Credentials(token=token))
    assert client.list_path("SDY269").items
    assert emu.count("/auth/token") == 1


def test_sign_in_survives_a_transient_failure(emu, client, sleep):
    """A 502 from the token endpoint is retried."""
    emu.inject("/auth/token", status=502)
    assert client.bearer_token()
    assert sleep.calls == [0.5]


# -- 401 handling ----------------------------------------------------------------------


def test_expired_token_triggers_one_new_sign_in(emu, client):
    """A 401 on a data call signs in again once and the call succeeds."""
    client.list_path("/SDY1")
    emu.expire_bearer_tokens()
    assert client.list_path("/SDY1/StudyFiles").items
    assert emu.count("/auth/token") == 2
    assert client.counters["auth"] == 2


def test_persistent_401_signs_in_only_once(emu, client):
    """If the new token is refused too, AuthError follows after exactly one re-sign-in."""
    emu.inject(
        "/data/list",
        status=401,
        times=10,
        body={"error": "invalid_token", "message": "Access denied"},
    )
    with pytest.raises(AuthError) as caught:
        client.list_path("/SDY1")
    assert '"Access denied"' in str(caught.value)
    assert emu.count("/auth/token") == 2
    assert emu.count("/data/list") == 2


def test_401_with_token_only_credentials_is_auth_error(emu, make_client):
    """With only a bearer token, a 401 cannot be repaired: AuthError naming IMMPORT_TOKEN."""
    stale = "stale-token-0123456789"
    emu.inject(
        "/data/list",
        status=401,
        body={"error": "invalid_token", "message": f"Invalid access token: {stale}"},
    )
    client = make_client(credentials=Credentials(token=stale))
    with pytest.raises(AuthError) as caught:
        client.list_path("/SDY1")
    text = str(caught.value)
    assert "IMMPORT_TOKEN" in text
    assert "Invalid access token: ***" in text
    assert_no_secrets(text, stale)
    assert emu.count("/auth/token") == 0


# -- transient failures ----------------------------------------------------------------


def test_503_then_success_is_retried_with_backoff(emu, client, sleep):
    """Two 503s, then a good reply: the call succeeds after two backoff waits."""
    client.bearer_token()
    emu.inject("/data/list", status=503, times=2)
    assert client.list_path("/SDY1").items
    assert sleep.calls == [0.5, 1.0]
    assert client.counters["list"] == 3


def test_persistent_503_gives_up_after_the_attempts(emu, client, sleep):
    """When every attempt fails, a transient ApiError names the endpoint and status."""
    client.bearer_token()
    emu.inject("/data/list", status=503, times=10)
    with pytest.raises(ApiError) as caught:
        client.list_path("/SDY1")
    assert caught.value.transient
    assert caught.value.status == 503
    assert "/data/list" in str(caught.value) and "HTTP 503" in str(caught.value)
    assert emu.count("/data/list") == 4
    assert len(sleep.calls) == 3


def test_429_retry_after_is_honoured(emu, client, sleep):
    """A 429 with Retry-After waits exactly what the server asked."""
    client.bearer_token()
    emu.inject("/data/list", status=429, retry_after=7)
    assert client.list_path("/SDY1").items
    assert sleep.calls == [7.0]


def test_retry_after_is_capped(emu, make_client, sleep):
    """A Retry-After beyond max_delay is cut down to it."""
    client = make_client(retry=RetryPolicy(attempts=2, max_delay=5, jitter=0))
    emu.inject("/data/list", status=503, retry_after=3600)
    client.list_path("/SDY1")
    assert sleep.calls == [5]


def test_dropped_connection_is_retried(emu, client, sleep):
    """A connection closed without a reply is retried."""
    client.bearer_token()
    emu.inject("/data/list", status=0, drop_connection=True)
    assert client.list_path("/SDY1").items
    assert len(sleep.calls) == 1


def test_unreachable_server_is_transient_api_error(emu, client, sleep):
    """When nothing answers, the call is retried, then fails as a transient ApiError."""
    client.list_path("/SDY1")
    emu.stop()
    with pytest.raises(ApiError, match="Connection refused") as caught:
        client.list_path("/SDY1")
    assert caught.value.transient
    assert len(sleep.calls) == 3


def test_timeout_is_transient_api_error(emu, make_client):
    """A reply slower than the timeout gives a transient ApiError saying so."""
    client = make_client(timeout=0.2, retry=RetryPolicy(attempts=1))
    client.bearer_token()
    emu.inject("/data/list", status=200, delay=1.0)
    with pytest.raises(ApiError, match="timed out") as caught:
        client.list_path("/SDY1")
    assert caught.value.transient


def test_client_errors_are_not_retried(emu, client, sleep):
    """A 400 is permanent: no retry, and the server's message is quoted."""
    client.bearer_token()
    emu.inject(
        "/data/list", status=400, body={"error": "Bad Request", "message": "Path must name a study"}
    )
    with pytest.raises(ApiError) as caught:
        client.list_path("/SDY1")
    assert '"Path must name a study"' in str(caught.value)
    assert not caught.value.transient
    assert sleep.calls == []


# -- malformed replies -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("<html><body><h1>Site maintenance</h1></body></html>", "HTML page"),
        ("{}", "'self' entry is missing"),
        ('{"self":{"path":"/SDY1","type":"directory","size":0', "truncated"),
        ("", "empty"),
        ("[1, 2]", "expected a JSON object, got array"),
        ('{"self": {"path": "/SDY1", "type": "directory"}}', "'items' is missing"),
        ('{"self": {"path": "/SDY1", "type": "directory"}, "items": {}}', "not a list"),
        ('{"self": "x", "items": []}', "self is a JSON string"),
        (
            '{"self": {"path": "/SDY1", "type": "directory"}, "items": '
            '[{"path": "/SDY1/a", "type": "file", "size": "12", "mtime": "t"}]}',
            "items[0].size",
        ),
        (
            '{"self": {"path": "/SDY1", "type": "directory"}, "items": '
            '[{"path": "/SDY1/a", "type": "file", "size": 12}]}',
            "items[0].mtime",
        ),
        (
            '{"self": {"path": "/SDY1", "type": "directory"}, "items": [{"type": "file"}]}',
            "items[0].path",
        ),
        (
            '{"self": {"path": "/SDY1", "type": "directory"}, "items": [null]}',
            "items[0] is a JSON null",
        ),
    ],
)
def test_malformed_listing_is_api_error(emu, client, sleep, body, expected):
    """Unusable listing replies give ApiError naming the endpoint and the problem."""
    client.bearer_token()
    emu.inject("/data/list", status=200, body=body)
    with pytest.raises(ApiError) as caught:
        client.list_path("/SDY1")
    text = str(caught.value)
    assert expected in text
    assert "/data/list" in text
    assert sleep.calls == []


def test_oversized_reply_is_refused(emu, client):
    """A reply over the size cap is an ApiError, not a buffer."""
    client.max_reply_bytes = 200
    with pytest.raises(ApiError, match="limit"):
        client.list_path("/SDY1")


def test_error_reply_with_status_200_is_recognised(emu, client):
    """A 200 carrying only error/message is an error; a 'not found' one is RemoteNotFound."""
    client.bearer_token()
    emu.inject("/data/list", status=200, body={"error": "x", "message": "/SDY7 not found"})
    with pytest.raises(RemoteNotFound):
        client.list_path("/SDY7")
    emu.inject("/data/list", status=200, body={"error": "x", "message": "Something odd"})
    with pytest.raises(ApiError, match="Something odd"):
        client.list_path("/SDY1")


def test_unknown_path_is_remote_not_found(client):
    """Listing a path ImmPort does not have raises RemoteNotFound naming it."""
    with pytest.raises(RemoteNotFound) as caught:
        client.list_path("SDY404/StudyFiles")
    assert "/SDY404/StudyFiles" in str(caught.value)
    assert caught.value.status == 404


# -- listing and walking ----------------------------------------------------------------


def test_list_path_returns_typed_entries(client):
    """list_path gives the folder and its direct children as ListingEntry records."""
    listing = client.list_path("/SDY1/StudyFiles/")
    assert isinstance(listing, Listing)
    assert listing.self_entry == ListingEntry("/SDY1/StudyFiles", "directory", 0, SAMPLE_MTIME_ISO)
    assert listing.items == (
        ListingEntry("/SDY1/StudyFiles/SDY1_protocol.pdf", "file", 150_000, SAMPLE_MTIME_ISO),
        ListingEntry("/SDY1/StudyFiles/Study_design.txt", "file", 12_000, SAMPLE_MTIME_ISO),
    )


@pytest.mark.parametrize("root", ["/SDY1", "SDY1", "SDY1/", "/SDY1/"])
@pytest.mark.parametrize("workers", [1, 4])
def test_walk_finds_every_file_of_a_nested_tree(client, tree, root, workers):
    """walk returns every file below the root, sorted, without leading slashes."""
    assert client.walk(root, workers=workers) == sample_files(tree, "SDY1")


def test_walk_of_a_subfolder_and_a_file(client, tree):
    """walk of a folder stays inside it; walk of a file gives just that file."""
    assert client.walk("/SDY1/ResultFiles") == sample_files(tree, "SDY1/ResultFiles")
    assert client.walk("/SDY269/StudyFiles/SDY269_summary.txt") == [
        RemoteFile("SDY269/StudyFiles/SDY269_summary.txt", 2000, SAMPLE_MTIME_ISO)
    ]


def test_walk_of_a_missing_root_is_remote_not_found(client):
    """A root that does not exist raises RemoteNotFound."""
    with pytest.raises(RemoteNotFound):
        client.walk("/SDY1/NoSuchFolder")


def test_walk_sees_new_files(client, tree):
    """Files added upstream appear, with their own size and mtime."""
    write_file(tree, "SDY1/StudyFiles/deep/er/new.txt", b"hello", mtime=1.6e9)
    files = {f.path: f for f in client.walk("SDY1")}
    assert files["SDY1/StudyFiles/deep/er/new.txt"] == RemoteFile(
        "SDY1/StudyFiles/deep/er/new.txt", 5, "2020-09-13T12:26:40Z"
    )


def test_walk_reauthenticates_once_for_all_workers(emu, client, tree):
    """After tokens expire, a concurrent walk signs in again only once."""
    client.bearer_token()
    emu.expire_bearer_tokens()
    assert client.walk("/", workers=8) == sample_files(tree, "")
    assert emu.count("/auth/token") == 2


HOSTILE = [
    pytest.param(entry("/SDY1/.."), "its name is '..'", id="dotdot-file"),
    pytest.param(entry("/SDY1/..", "directory"), "its name is '..'", id="dotdot-dir"),
    pytest.param(entry("/SDY1/."), "its name is '.'", id="dot"),
    pytest.param(entry("/etc/passwd"), "not inside /SDY1", id="elsewhere"),
    pytest.param(entry("/SDY10/x"), "not inside /SDY1", id="sibling-prefix"),
    pytest.param(entry("/SDY1/a/b.txt"), "not directly inside /SDY1", id="two-levels"),
    pytest.param(entry("/SDY1/"), "its name is empty", id="empty-name"),
    pytest.param(entry("/SDY1/a\nb"), "line break", id="newline"),
    pytest.param(entry("/SDY1/a\rb"), "carriage return", id="carriage-return"),
    pytest.param(entry("/SDY1/a\x00b"), "NUL", id="nul"),
    pytest.param(entry("/SDY1/..\\..\\x"), "backslash", id="backslash"),
]


@pytest.mark.parametrize(("hostile", "reason"), HOSTILE)
def test_hostile_listing_entry_raises_unsafe_path(emu, client, hostile, reason):
    """Without on_unsafe, an entry escaping its folder raises UnsafePath naming it."""
    emu.listing_overrides["/SDY1"] = [entry("/SDY1/ok.txt"), hostile]
    with pytest.raises(UnsafePath) as caught:
        client.walk("/SDY1")
    assert reason in str(caught.value)
    assert repr(hostile["path"]) in str(caught.value)


@pytest.mark.parametrize(("hostile", "reason"), HOSTILE)
def test_hostile_listing_entry_goes_to_on_unsafe(emu, client, hostile, reason):
    """With on_unsafe, the entry is reported and skipped; safe siblings are kept."""
    emu.listing_overrides["/SDY1"] = [entry("/SDY1/ok.txt", size=3), hostile]
    refused: list[tuple[str, str]] = []
    files = client.walk("/SDY1", on_unsafe=lambda p, r: refused.append((p, r)))
    assert files == [RemoteFile("SDY1/ok.txt", 3, SAMPLE_MTIME_ISO)]
    assert len(refused) == 1
    assert refused[0][0] == hostile["path"]
    assert reason in refused[0][1]


def test_hostile_entry_deep_in_the_tree(emu, client):
    """Entries are checked at every level, including folders listed by worker threads."""
    emu.listing_overrides["/SDY1/ResultFiles/HAI_result"] = [entry("/SDY1/ResultFiles/../../x")]
    refused: list[tuple[str, str]] = []
    files = client.walk("SDY1", on_unsafe=lambda p, r: refused.append((p, r)))
    assert refused == [
        ("/SDY1/ResultFiles/../../x", "it is not inside /SDY1/ResultFiles/HAI_result")
    ]
    assert "SDY1/ResultFiles/HAI_result/hai_results.txt" not in {f.path for f in files}


def test_duplicate_entries_are_refused(emu, client):
    """An entry listed twice is refused the second time."""
    emu.listing_overrides["/SDY1"] = [entry("/SDY1/a.txt"), entry("/SDY1/a.txt")]
    with pytest.raises(UnsafePath, match="more than once"):
        client.walk("/SDY1")


def test_entries_without_leading_slash_are_accepted(emu, client):
    """Item paths written without the leading slash are understood."""
    emu.listing_overrides["/SDY1"] = [entry("SDY1/a.txt", size=9), entry("SDY1/Sub/", "directory")]
    emu.listing_overrides["/SDY1/Sub"] = [entry("SDY1/Sub/b.txt", size=4)]
    assert client.walk("/SDY1") == [
        RemoteFile("SDY1/Sub/b.txt", 4, SAMPLE_MTIME_ISO),
        RemoteFile("SDY1/a.txt", 9, SAMPLE_MTIME_ISO),
    ]


@pytest.mark.parametrize("root", ["/SDY1/../etc", "SDY1/./x", "SDY1/a\nb"])
def test_unsafe_root_is_refused_before_any_request(emu, client, root):
    """walk refuses a root with '..', '.' or control characters without calling ImmPort."""
    with pytest.raises(UnsafePath):
        client.walk(root)
    assert emu.count("/data/") == 0


# -- download tokens -------------------------------------------------------------------


def test_download_token_covers_the_paths(emu, client):
    """download_token returns a token the Aspera side accepts for those paths."""
    token = client.download_token(["/SDY1/StudyFiles/Study_design.txt", "SDY269/StudyFiles"])
    aspera_tokens.check(
        emu.aspera_secret,
        token,
        ["/SDY1/StudyFiles/Study_design.txt", "/SDY269/StudyFiles/SDY269_summary.txt"],
    )
    assert emu.requests_log[-1].json_body == {
        "paths": ["/SDY1/StudyFiles/Study_design.txt", "/SDY269/StudyFiles"]
    }
    assert client.counters["download_token"] == 1


def test_download_token_for_unknown_path(client):
    """An unknown path gives RemoteNotFound quoting ImmPort's message."""
    with pytest.raises(RemoteNotFound, match=r"/SDY1/gone\.txt not found"):
        client.download_token(["/SDY1/gone.txt"])


def test_download_token_reply_without_token(emu, client):
    """A reply without a token string is an ApiError, never a KeyError."""
    client.bearer_token()
    emu.inject("/data/download/token", status=200, body={"tokens": ["x"]})
    with pytest.raises(ApiError, match="no 'token'"):
        client.download_token(["/SDY1"])


# -- study checksums -------------------------------------------------------------------


def test_study_checksums_match_the_files(client, tree):
    """study_checksums maps each path to its md5 and size."""
    sums = client.study_checksums("SDY1")
    assert sums is not None
    assert len(sums) == 7
    data = (tree / "SDY1/SDY1-DR47_Tab.zip").read_bytes()
    assert sums["SDY1/SDY1-DR47_Tab.zip"] == (
        hashlib.md5(data, usedforsecurity=False).hexdigest(),
        len(data),
    )
    assert client.counters["manifest"] == 1


def test_study_checksums_report_overrides_lowercased(emu, client):
    """A reported md5 is taken as given (lowercased), even if it does not match the file."""
    emu.md5_overrides["SDY269/StudyFiles/SDY269_summary.txt"] = "ABCDEF" + "0" * 26
    sums = client.study_checksums("SDY269")
    assert sums is not None
    assert sums["SDY269/StudyFiles/SDY269_summary.txt"] == ("abcdef" + "0" * 26, 2000)


def test_study_checksums_skip_unusable_rows(emu, client):
    """Rows without a 32-hex md5, a path or a whole-number size are left out."""
    good = {"path": "SDY1/a.txt", "generatedMD5": "a" * 32, "filesizeBytes": 5}
    rows = [
        good,
        {"path": "SDY1/b.txt", "generatedMD5": None, "filesizeBytes": 5},
        {"path": "SDY1/c.txt", "generatedMD5": "xyz", "filesizeBytes": 5},
        {"path": "SDY1/d.txt", "generatedMD5": "b" * 32, "filesizeBytes": "5"},
        {"generatedMD5": "c" * 32, "filesizeBytes": 5},
        "nonsense",
    ]
    client.bearer_token()
    emu.inject("/data/query/api/study/manifest/", status=200, body=json.dumps(rows))
    assert client.study_checksums("SDY1") == {
        "SDY1/a.txt": ("a" * 32, 5),
        "SDY1/d.txt": ("b" * 32, 5),  # a size sent as digits is still a size
    }


def test_study_checksums_unavailable_gives_none(emu, client, sleep, caplog):
    """A manifest endpoint answering 503 (after retries) gives None and an INFO log."""
    caplog.set_level(logging.INFO, logger="immsync.immport")
    emu.manifest_available = False
    assert client.study_checksums("SDY1") is None
    assert emu.count("/data/query/api/study/manifest/SDY1") == 4
    assert "checksums" in caplog.text


def test_study_checksums_for_unknown_study_or_no_query_url(make_client, client):
    """An unknown study or a missing query URL gives None."""
    assert client.study_checksums("SDY5") is None
    assert make_client(query_url=None).study_checksums("SDY1") is None


def test_study_checksums_with_malformed_reply_gives_none(emu, client):
    """A manifest that is not a JSON list gives None rather than failing the sync."""
    client.bearer_token()
    emu.inject("/data/query/api/study/manifest/", status=200, body="{}")
    assert client.study_checksums("SDY1") is None


def test_study_checksums_propagate_auth_errors(make_client):
    """Refused credentials are not hidden as 'checksums unavailable'."""
    client = make_client(credentials=Credentials("alice", "wrong"))
    with pytest.raises(AuthError):
        client.study_checksums("SDY1")


# -- URLs and secrets ------------------------------------------------------------------


def test_plain_http_to_a_remote_host_is_refused():
    """http:// to a non-loopback host raises UsageError with a hint."""
    with pytest.raises(UsageError) as caught:
        ImmportClient(
            requests.Session(),
            token_url="http://auth.example.org/auth/token",
            data_url="https://api.example.org/data",
            query_url=None,
            credentials=Credentials("a", "b"),
        )
    assert "https://" in str(caught.value)
    assert caught.value.hint


def test_plain_http_allowed_explicitly_logs_a_warning(caplog):
    """allow_insecure_http accepts a remote http URL but warns."""
    caplog.set_level(logging.WARNING, logger="immsync.immport")
    ImmportClient(
        requests.Session(),
        token_url="http://auth.example.org/auth/token",
        data_url="https://api.example.org/data",
        query_url=None,
        credentials=Credentials("a", "b"),
        allow_insecure_http=True,
    )
    assert "auth.example.org" in caplog.text
    assert any(r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "[::1]"])
def test_plain_http_to_loopback_is_fine(host, caplog):
    """Loopback hosts (the emulator) may use plain http without a warning."""
    caplog.set_level(logging.WARNING, logger="immsync.immport")
    ImmportClient(
        requests.Session(),
        token_url=f"http://{host}:8080/auth/token",
        data_url=f"http://{host}:8080/data",
        query_url=f"http://{host}:8080/data/query",
        credentials=Credentials("a", "b"),
    )
    assert caplog.records == []


@pytest.mark.parametrize(
    "url",
    ["ftp://api.example.org/data", "api.example.org/data", "https://user:pw@api.example.org/data"],
)
def test_unusable_urls_are_refused(url):
    """Non-http(s) URLs and URLs carrying credentials are refused."""
    with pytest.raises(UsageError) as caught:
        ImmportClient(
            requests.Session(),
            token_url="https://a.example.org/auth/token",
            data_url=url,
            query_url=None,
            credentials=Credentials("a", "b"),
        )
    assert ":pw@" not in str(caught.value)


def test_credentials_repr_hides_secrets():
    """Credentials never show the password or token in their repr or str."""
    creds = Credentials("alice", PASSWORD, TOKEN)
    assert repr(creds) == (
        "Credentials(username='alice', password=***, token=***, api_key=None)"
    )
    assert_no_secrets(str(creds) + repr(creds), TOKEN)


def test_no_secret_in_messages_or_logs(emu, make_client, caplog):
    """Across sign-in, re-sign-in, retries and failures, no password or token leaks."""
    caplog.set_level(logging.DEBUG)
    client = make_client()
    first = client.bearer_token()
    emu.expire_bearer_tokens()
    emu.inject("/data/list", status=503)
    client.walk("/SDY1")
    second = client.bearer_token()
    aspera = client.download_token(["/SDY1"])
    messages = [repr(client)]
    emu.inject(
        "/data/list",
        status=401,
        times=5,
        body={"error": "invalid_token", "message": f"Invalid access token: {second}"},
    )
    with pytest.raises(AuthError) as caught:
        client.list_path("/SDY1")
    messages.append(str(caught.value))
    bad = make_client(credentials=Credentials("alice", "wrong-" + PASSWORD))
    with pytest.raises(AuthError) as caught:
        bad.walk("/SDY1")
    messages.append(str(caught.value))
    everything = "\n".join(messages) + caplog.text
    assert_no_secrets(everything, first, second, aspera, "wrong-" + PASSWORD)
