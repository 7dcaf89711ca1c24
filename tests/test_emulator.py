"""The ImmPort emulator over real HTTP: reply shapes, auth, faults, its CLI, sample data."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from immsync.testing import aspera_tokens
from immsync.testing.aspera_config import FakeAsperaConfig
from immsync.testing.emulator import Emulator
from immsync.testing.sampledata import (
    SAMPLE_MTIME_ISO,
    build_sample_tree,
    write_file,
)

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "emu-Pa55word"
SPRING_KEYS = ["timestamp", "status", "error", "message", "path"]


@pytest.fixture(name="emu")
def _emu(tree: Path) -> Iterator[Emulator]:
    with Emulator(tree, world="legacy", username="alice", password=PASSWORD) as emulator:
        yield emulator


@pytest.fixture(name="http")
def _http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def sign_in(http: requests.Session, emu: Emulator) -> str:
    reply = http.post(emu.token_url, data={"username": "alice", "password": PASSWORD}, timeout=10)
    assert reply.status_code == 200
    return str(reply.json()["token"])


@pytest.fixture(name="auth")
def _auth(http: requests.Session, emu: Emulator) -> dict[str, str]:
    return {"Authorization": f"bearer {sign_in(http, emu)}"}


def list_path(
    http: requests.Session, emu: Emulator, path: str, auth: dict[str, str]
) -> requests.Response:
    return http.post(f"{emu.data_url}/list", json={"path": path}, headers=auth, timeout=10)


# -- /auth/token ----------------------------------------------------------------------


def test_token_reply_is_jackson_pretty_printed(http, emu):
    """The token reply has one key per line with spaces around the colon, like Jackson."""
    reply = http.post(emu.token_url, data={"username": "alice", "password": PASSWORD}, timeout=10)
    lines = reply.text.splitlines()
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert lines[0] == "{" and lines[-1] == "}"
    assert lines[1] == '  "status" : 200,'
    token = reply.json()["token"]
    assert f'  "token" : "{token}",' in lines
    assert f'  "access_token" : "{token}"' in lines


@pytest.mark.parametrize("keys", [("token",), ("access_token",)])
def test_token_reply_keys_switch(http, emu, keys):
    """token_reply_keys chooses which token keys the reply carries."""
    emu.token_reply_keys = keys
    doc = http.post(emu.token_url, data={"username": "alice", "password": PASSWORD}, timeout=10)
    assert set(doc.json()) == {"status", *keys}


def test_bad_credentials_answer_401_with_oauth_body(http, emu):
    """A wrong password gets 401 and the Spring OAuth error body."""
    reply = http.post(emu.token_url, data={"username": "alice", "password": "wrong"}, timeout=10)
    assert reply.status_code == 401
    assert reply.json() == {
        "error": "invalid_grant",
        "error_description": "Bad credentials",
        "status": 401,
        "message": "Bad credentials",
    }


def test_token_endpoint_accepts_a_json_body(http, emu):
    """A client posting JSON credentials instead of a form also signs in."""
    reply = http.post(emu.token_url, json={"username": "alice", "password": PASSWORD}, timeout=10)
    assert reply.status_code == 200


def test_passwords_are_never_recorded(http, emu):
    """The request log keeps no form body, so no password ever lands in it."""
    sign_in(http, emu)
    http.post(emu.token_url, data={"username": "alice", "password": "wrong-pw"}, timeout=10)
    assert emu.count("/auth/token") == 2
    assert all(r.json_body is None for r in emu.requests_log)
    assert PASSWORD not in repr(emu.requests_log) and "wrong-pw" not in repr(emu.requests_log)
    assert PASSWORD not in repr(emu)


# -- bearer checks ----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["bearer", "Bearer", "BEARER"])
def test_both_bearer_spellings_are_accepted(http, emu, scheme):
    """ImmPort's tools send 'bearer', generated clients 'Bearer'; both work."""
    token = sign_in(http, emu)
    reply = list_path(http, emu, "/SDY1", {"Authorization": f"{scheme} {token}"})
    assert reply.status_code == 200


@pytest.mark.parametrize(
    "header",
    [None, "bearer", "bearer not-a-token", "Basic YWxpY2U6cHc="],
)
def test_data_calls_without_a_valid_token_get_401(http, emu, header):
    """Missing, empty, unknown or non-bearer authorization gets 401 invalid_token."""
    headers = {"Authorization": header} if header else {}
    reply = list_path(http, emu, "/SDY1", headers)
    assert reply.status_code == 401
    body = reply.json()
    assert body["error"] == "invalid_token"
    assert body["status"] == 401
    assert body["message"]


def test_expired_bearer_tokens_are_refused(http, emu, auth):
    """expire_bearer_tokens invalidates every token issued so far, but not new ones."""
    emu.expire_bearer_tokens()
    reply = list_path(http, emu, "/SDY1", auth)
    assert reply.status_code == 401
    assert "expired" in reply.json()["message"].lower()
    fresh = {"Authorization": f"bearer {sign_in(http, emu)}"}
    assert list_path(http, emu, "/SDY1", fresh).status_code == 200


# -- /data/list -----------------------------------------------------------------------


def test_listing_shape_of_a_folder(http, emu, auth):
    """A folder listing has the documented keys in order; folder items are recursive."""
    reply = list_path(http, emu, "/SDY1", auth)
    assert reply.status_code == 200
    assert ":" in reply.text and '" : ' not in reply.text  # compact, unlike /auth/token
    doc = reply.json()
    assert list(doc) == ["self", "items", "item_count", "total_count", "parameters"]
    assert doc["self"]["path"] == "/SDY1"
    assert doc["self"]["type"] == "directory"
    assert doc["self"]["size"] == 0
    by_name = {item["basename"]: item for item in doc["items"]}
    assert sorted(by_name) == ["ResultFiles", "SDY1-DR47_Tab.zip", "StudyFiles"]
    results = by_name["ResultFiles"]
    assert results["path"] == "/SDY1/ResultFiles"
    assert results["type"] == "directory"
    assert results["fileCount"] == 4
    assert results["size"] == 180_000 + 120_000 + 95_000 + 6_000
    archive = by_name["SDY1-DR47_Tab.zip"]
    assert archive == {
        "path": "/SDY1/SDY1-DR47_Tab.zip",
        "basename": "SDY1-DR47_Tab.zip",
        "type": "file",
        "size": 200_000,
        "mtime": SAMPLE_MTIME_ISO,
        "permissions": [{"name": "view"}],
    }
    assert doc["item_count"] == doc["total_count"] == 3


@pytest.mark.parametrize("spelling", ["SDY1/StudyFiles", "/SDY1/StudyFiles/", "SDY1/StudyFiles/"])
def test_listing_path_spellings(http, emu, auth, spelling):
    """The leading slash is optional and a trailing slash is fine."""
    doc = list_path(http, emu, spelling, auth).json()
    assert doc["self"]["path"] == "/SDY1/StudyFiles"
    assert [i["path"] for i in doc["items"]] == [
        "/SDY1/StudyFiles/SDY1_protocol.pdf",
        "/SDY1/StudyFiles/Study_design.txt",
    ]


def test_listing_a_file_describes_it(http, emu, auth):
    """Listing a file gives the file as self and no items."""
    doc = list_path(http, emu, "/SDY1/StudyFiles/Study_design.txt", auth).json()
    assert doc["self"]["type"] == "file"
    assert doc["self"]["size"] == 12_000
    assert doc["items"] == []


def test_unknown_path_gets_spring_404(http, emu, auth):
    """An unknown path gets 404 with the Spring error body naming it."""
    reply = list_path(http, emu, "/SDY999/nothing", auth)
    assert reply.status_code == 404
    body = reply.json()
    assert list(body) == SPRING_KEYS
    assert body["status"] == 404
    assert body["error"] == "Not Found"
    assert body["message"] == "/SDY999/nothing not found"
    assert body["path"] == "/data/list"


def test_dot_dot_is_refused(http, emu, auth):
    """Paths with '..' are refused with 400."""
    assert list_path(http, emu, "/SDY1/../SDY269", auth).status_code == 400


def test_dotfiles_are_not_served(http, emu, auth, tree):
    """Hidden files are neither listed nor listable."""
    write_file(tree, "SDY1/.hidden", b"x")
    names = [i["basename"] for i in list_path(http, emu, "/SDY1", auth).json()["items"]]
    assert ".hidden" not in names
    assert list_path(http, emu, "/SDY1/.hidden", auth).status_code == 404


def test_listing_overrides_replace_items(http, emu, auth):
    """listing_overrides makes a folder list exactly the given items."""
    items = [
        {
            "path": "/SDY1/../../etc/passwd",
            "basename": "passwd",
            "type": "file",
            "size": 1,
            "mtime": SAMPLE_MTIME_ISO,
        }
    ]
    emu.listing_overrides["/SDY1"] = items
    doc = list_path(http, emu, "SDY1/", auth).json()
    assert doc["items"] == items
    assert doc["self"]["path"] == "/SDY1"


# -- /data/download/token ----------------------------------------------------------------


def test_download_token_covers_the_requested_paths(http, emu, auth):
    """The minted Aspera token is accepted for exactly what was requested."""
    reply = http.post(
        f"{emu.data_url}/download/token",
        headers=auth,
        timeout=10,
        json={"paths": ["/SDY1/StudyFiles", "SDY269/StudyFiles/SDY269_summary.txt"]},
    )
    assert reply.status_code == 200
    token = reply.json()["token"]
    aspera_tokens.check(emu.aspera_secret, token, ["/SDY1/StudyFiles/Study_design.txt"])
    with pytest.raises(aspera_tokens.TokenRejected):
        aspera_tokens.check(emu.aspera_secret, token, ["/SDY1/SDY1-DR47_Tab.zip"])


def test_download_token_accepts_a_bare_string(http, emu, auth):
    """R clients unbox a one-path list into a string; that works too."""
    reply = http.post(
        f"{emu.data_url}/download/token", headers=auth, timeout=10, json={"paths": "/SDY1"}
    )
    assert reply.status_code == 200


def test_download_token_for_unknown_path_is_404(http, emu, auth):
    """An unknown path gets 404 whose message names it."""
    reply = http.post(
        f"{emu.data_url}/download/token",
        headers=auth,
        timeout=10,
        json={"paths": ["/SDY1/StudyFiles", "/SDY1/missing.txt"]},
    )
    assert reply.status_code == 404
    assert reply.json()["message"] == "/SDY1/missing.txt not found"


@pytest.mark.parametrize("body", [{}, {"paths": []}, {"paths": [""]}, {"paths": [3]}])
def test_download_token_without_paths_is_400(http, emu, auth, body):
    """Missing, empty or non-string paths get 400."""
    reply = http.post(f"{emu.data_url}/download/token", headers=auth, json=body, timeout=10)
    assert reply.status_code == 400
    assert reply.json()["error"] == "Bad Request"


# -- study manifest ------------------------------------------------------------------


def manifest(
    http: requests.Session,
    emu: Emulator,
    auth: dict[str, str],
    study: str = "SDY1",
    file_type: str = "all",
) -> requests.Response:
    return http.get(
        f"{emu.query_url}/api/study/manifest/{study}",
        headers=auth,
        timeout=10,
        params={"fileType": file_type, "format": "json"},
    )


def test_study_manifest_rows(http, emu, auth, tree):
    """Each file of the study appears once, with its real md5, size and a stable UUID."""
    rows = manifest(http, emu, auth).json()
    assert len(rows) == 7
    row = next(r for r in rows if r["fileName"] == "Study_design.txt")
    data = (tree / "SDY1/StudyFiles/Study_design.txt").read_bytes()
    assert row["path"] == "SDY1/StudyFiles/Study_design.txt"
    assert row["generatedMD5"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert row["reportedMD5"] is None
    assert row["filesizeBytes"] == len(data)
    assert row["studyAccession"] == "SDY1"
    assert row["fileType"] == "study_file"
    uuid.UUID(row["fileUUID"])
    expected = {
        "fileDetailsId",
        "reportedMD5",
        "generatedMD5",
        "studyAccession",
        "filesizeBytes",
        "fileType",
        "fileAccession",
        "fileName",
        "path",
        "dateFileUpdated",
        "fileUUID",
        "drsObjectCreated",
        "workspaceId",
    }
    assert expected <= set(row)
    again = manifest(http, emu, auth).json()
    assert again == rows


def test_study_manifest_filters_by_file_type(http, emu, auth):
    """fileType=result_file keeps only files under ResultFiles."""
    rows = manifest(http, emu, auth, file_type="result_file").json()
    assert {r["fileType"] for r in rows} == {"result_file"}
    assert len(rows) == 4


def test_md5_overrides_change_the_reported_md5(http, emu, auth):
    """md5_overrides reports a different md5 for one path."""
    emu.md5_overrides["SDY1/SDY1-DR47_Tab.zip"] = "0" * 32
    rows = manifest(http, emu, auth).json()
    assert next(r for r in rows if r["fileName"] == "SDY1-DR47_Tab.zip")["generatedMD5"] == "0" * 32


def test_md5_follows_file_changes(http, emu, auth, tree):
    """A replaced file gets a fresh md5 (the cache keys on size and mtime)."""
    write_file(tree, "SDY269/StudyFiles/SDY269_summary.txt", b"new content", mtime=1.6e9)
    [row] = [
        r
        for r in manifest(http, emu, auth, "SDY269").json()
        if r["fileName"] == "SDY269_summary.txt"
    ]
    assert row["generatedMD5"] == hashlib.md5(b"new content", usedforsecurity=False).hexdigest()
    assert row["filesizeBytes"] == 11


def test_manifest_unknown_study_and_unavailable(http, emu, auth):
    """An unknown study is 404; manifest_available=False makes the route 503."""
    assert manifest(http, emu, auth, "SDY42").status_code == 404
    emu.manifest_available = False
    reply = manifest(http, emu, auth)
    assert reply.status_code == 503
    assert list(reply.json()) == SPRING_KEYS


def test_drs_download_gives_a_working_presigned_url(http, emu, auth, tree):
    """The DRS route answers a URL whose plain GET streams the file's bytes."""
    row = next(r for r in manifest(http, emu, auth).json() if r["fileName"] == "SDY1_protocol.pdf")
    reply = http.get(f"{emu.query_url}/drs/download/s3/{row['fileUUID']}", headers=auth, timeout=10)
    assert reply.status_code == 200
    url = reply.json()["url"]
    blob = http.get(url, timeout=10)
    assert blob.content == (tree / "SDY1/StudyFiles/SDY1_protocol.pdf").read_bytes()
    assert http.get(url.replace("sig=", "sig=0"), timeout=10).status_code == 403


# -- instrumentation --------------------------------------------------------------------


def test_injected_fault_applies_the_given_number_of_times(http, emu, auth):
    """inject answers the next `times` matching requests with the fault, then recovers."""
    emu.inject("/data/list", status=503, times=2, retry_after=3)
    first = list_path(http, emu, "/SDY1", auth)
    assert first.status_code == 503
    assert first.headers["Retry-After"] == "3"
    assert list(first.json()) == SPRING_KEYS
    assert list_path(http, emu, "/SDY1", auth).status_code == 503
    assert list_path(http, emu, "/SDY1", auth).status_code == 200
    assert emu.count("/data/list") == 3


def test_injected_bodies_are_sent_verbatim(http, emu, auth):
    """A string body is sent as is (HTML as text/html); a dict as JSON."""
    emu.inject("/data/list", status=200, body="<html><body>Maintenance</body></html>")
    emu.inject("/data/list", status=400, body={"error": "x", "message": "custom"})
    html = list_path(http, emu, "/SDY1", auth)
    assert html.status_code == 200
    assert html.headers["Content-Type"].startswith("text/html")
    assert html.text.startswith("<html>")
    assert list_path(http, emu, "/SDY1", auth).json() == {"error": "x", "message": "custom"}


def test_injected_faults_match_by_route_prefix(http, emu, auth):
    """A fault for one route leaves other routes alone."""
    emu.inject("/data/download/token", status=500)
    assert list_path(http, emu, "/SDY1", auth).status_code == 200
    reply = http.post(
        f"{emu.data_url}/download/token", json={"paths": ["/SDY1"]}, headers=auth, timeout=10
    )
    assert reply.status_code == 500


def test_dropped_connection_gives_no_reply(http, emu, auth):
    """drop_connection closes the socket without any status line."""
    emu.inject("/data/list", status=0, drop_connection=True)
    with pytest.raises(requests.ConnectionError):
        list_path(http, emu, "/SDY1", auth)
    assert list_path(http, emu, "/SDY1", auth).status_code == 200


def test_requests_are_recorded_with_json_bodies(http, emu, auth):
    """requests_log keeps method, path (no query) and parsed JSON body."""
    list_path(http, emu, "SDY1", auth)
    manifest(http, emu, auth)
    listed, fetched = emu.requests_log[-2:]
    assert (listed.method, listed.path, listed.json_body) == (
        "POST",
        "/data/list",
        {"path": "SDY1"},
    )
    assert (fetched.method, fetched.path) == ("GET", "/data/query/api/study/manifest/SDY1")
    assert emu.count("/data/") == 2


def test_issued_tokens_lists_bearer_and_aspera_tokens(http, emu, auth):
    """issued_tokens returns every bearer and Aspera token handed out, for leak checks."""
    reply = http.post(
        f"{emu.data_url}/download/token", json={"paths": ["/SDY1"]}, headers=auth, timeout=10
    )
    bearer = auth["Authorization"].split(" ", 1)[1]
    assert emu.issued_tokens() == [bearer, reply.json()["token"]]


def test_write_aspera_config(emu, tmp_path, tree):
    """The saved config names the docroot and the token secret, plus overrides."""
    path = emu.write_aspera_config(tmp_path / "cfg" / "aspera.json", setup_delay=0.25)
    config = FakeAsperaConfig.load(path)
    assert Path(config.docroot) == tree
    assert config.secret == emu.aspera_secret
    assert config.setup_delay == 0.25


def test_each_emulator_has_its_own_secret_and_port(tree):
    """Two emulators differ in Aspera secret and port."""
    with Emulator(tree, world="legacy") as one, Emulator(tree, world="legacy") as two:
        assert one.aspera_secret != two.aspera_secret
        assert one.base_url != two.base_url
        assert one.token_url == one.base_url + "/auth/token"
        assert one.data_url == one.base_url + "/data"
        assert one.query_url == one.base_url + "/data/query"


def test_stop_closes_kept_alive_connections(http, tree):
    """After stop, even a pooled keep-alive connection gets no reply."""
    emu = Emulator(tree, world="legacy", username="alice", password=PASSWORD).start()
    sign_in(http, emu)
    emu.stop()
    with pytest.raises(requests.ConnectionError):
        http.post(emu.token_url, data={"username": "alice", "password": PASSWORD}, timeout=5)


def test_unknown_route_is_404(http, emu, auth):
    """Routes the emulator does not serve get a Spring 404."""
    reply = http.get(f"{emu.base_url}/data/nothing", headers=auth, timeout=10)
    assert reply.status_code == 404
    assert list(reply.json()) == SPRING_KEYS


# -- command line ------------------------------------------------------------------------


def test_cli_serves_until_sigterm(tree, http):
    """The CLI prints its URLs as one JSON line, serves, and exits 0 on SIGTERM."""
    env = {
        **os.environ,
        "IMMPORT_PASSWORD": "from-env",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "immsync.testing.emulator",
            "--docroot",
            str(tree),
            "--username",
            "bob",
            "--legacy",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert set(info) >= {"base_url", "token_url", "data_url"}
        reply = http.post(
            info["token_url"], data={"username": "bob", "password": "from-env"}, timeout=10
        )
        assert reply.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


# -- sample data ---------------------------------------------------------------------


def test_sample_tree_is_deterministic_and_small(tmp_path):
    """Two builds are byte-identical, under 2 MB, with the fixed mtime."""
    one = build_sample_tree(tmp_path / "a")
    two = build_sample_tree(tmp_path / "b")
    assert one == two
    assert "SDY1/ResultFiles/Flow_cytometry_result/02054141.001.52628.fcs" in one
    total = 0
    for rel in one:
        a, b = tmp_path / "a" / rel, tmp_path / "b" / rel
        assert a.read_bytes() == b.read_bytes()
        assert a.stat().st_mtime == 1497531967
        total += a.stat().st_size
    assert total < 2_000_000
