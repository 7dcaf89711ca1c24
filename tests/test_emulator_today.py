"""The emulator's default world, today's ImmPort, over real HTTP: API keys, the study file
manifest in its real row shapes, GA4GH DRS, the command line, and today's sample tree."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from immsync.testing.emulator import TODAY_FILE_TYPES, ApiKey, Emulator, file_uuid
from immsync.testing.sampledata import (
    build_many_files,
    build_sample_tree,
    build_today_tree,
    write_file,
)

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "emu-Pa55word"
SPRING_KEYS = ["timestamp", "status", "error", "message", "path"]
ROW_FIELDS = [
    "fileDetailsId",
    "workspaceId",
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
    "aigeneratedKeywords",
    "aigeneratedSummary",
]
PROTOCOL = "SDY1/StudyFiles/SDY1_protocol.pdf"


@pytest.fixture(name="emu")
def _emu(today_tree: Path) -> Iterator[Emulator]:
    with Emulator(today_tree, username="alice", password=PASSWORD) as emulator:
        yield emulator


@pytest.fixture(name="http")
def _http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(name="key")
def _key(emu: Emulator) -> ApiKey:
    return emu.add_api_key()


@pytest.fixture(name="auth")
def _auth(key: ApiKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.api_key}"}


def bearer(key: ApiKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.api_key}"}


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


def rows_by_path(http: requests.Session, emu: Emulator, auth: dict[str, str]) -> dict[str, Any]:
    reply = manifest(http, emu, auth)
    assert reply.status_code == 200
    return {row["path"]: row for row in reply.json()}


def drs_object(
    http: requests.Session, emu: Emulator, auth: dict[str, str], object_id: str
) -> requests.Response:
    return http.get(f"{emu.drs_url}/ga4gh/drs/v1/objects/{object_id}", headers=auth, timeout=10)


def drs_access(
    http: requests.Session, emu: Emulator, auth: dict[str, str], object_id: str, access_id: str
) -> requests.Response:
    url = f"{emu.drs_url}/ga4gh/drs/v1/objects/{object_id}/access/{access_id}"
    return http.get(url, headers=auth, timeout=10)


def shortcut(
    http: requests.Session, emu: Emulator, auth: dict[str, str], method: str, object_id: str
) -> requests.Response:
    return http.get(f"{emu.query_url}/drs/download/{method}/{object_id}", headers=auth, timeout=10)


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# -- the world ------------------------------------------------------------------------


def test_today_is_the_default_world_and_legacy_is_a_mode(today_tree):
    """Emulator() serves today's ImmPort; world="legacy" the old one; others are refused."""
    assert Emulator(today_tree).world == "today"
    assert Emulator(today_tree, world="legacy").world == "legacy"
    with pytest.raises(ValueError, match="unknown world"):
        Emulator(today_tree, world="tomorrow")  # type: ignore[arg-type]


# -- API keys -------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_an_api_key_is_accepted_as_a_bearer(http, emu, key, scheme):
    """A key sent as 'Authorization: Bearer <api_key>' (either spelling) reads the manifest."""
    reply = manifest(http, emu, {"Authorization": f"{scheme} {key.api_key}"})
    assert reply.status_code == 200
    assert len(reply.json()) > 0


@pytest.mark.parametrize(
    "header", [None, "Bearer", "Bearer not-a-key", "Basic YWxpY2U6cHc=", "Token x"]
)
def test_missing_or_unknown_keys_get_401_in_spring_shape(http, emu, key, header):
    """No key, an unknown key or another scheme gets 401 with status, error and message."""
    headers = {"Authorization": header} if header else {}
    reply = manifest(http, emu, headers)
    assert reply.status_code == 401
    body = reply.json()
    assert list(body) == SPRING_KEYS
    assert (body["status"], body["error"]) == (401, "Unauthorized")
    assert body["message"]
    assert reply.headers["WWW-Authenticate"].startswith("Bearer ")


def test_an_expired_key_gets_401_saying_so(http, emu):
    """A key past its expiry is refused; the message says it expired, when, and where to go."""
    old = emu.add_api_key(expires_at=datetime.now(UTC) - timedelta(days=1))
    reply = manifest(http, emu, bearer(old))
    assert reply.status_code == 401
    message = reply.json()["message"]
    assert "expired" in message
    assert old.expires_at.strftime("%Y-%m-%d") in message
    assert "https://www.immport.org/auth/api/keys" in message


def test_a_key_can_expire_mid_run(http, emu, key, auth):
    """expire_api_key makes a working key expire now."""
    assert manifest(http, emu, auth).status_code == 200
    expired = emu.expire_api_key(key)
    assert expired.expires_at <= datetime.now(UTC)
    reply = manifest(http, emu, auth)
    assert reply.status_code == 401
    assert "expired" in reply.json()["message"]


def test_a_revoked_key_gets_401(http, emu, key, auth):
    """revoke_api_key (by record, value or id) makes a key answer 401 'revoked'."""
    other = emu.add_api_key()
    assert manifest(http, emu, auth).status_code == 200
    emu.revoke_api_key(key)
    emu.revoke_api_key(other.id)
    for headers in (auth, bearer(other)):
        reply = manifest(http, emu, headers)
        assert reply.status_code == 401
        assert "revoked" in reply.json()["message"]


def test_a_key_without_download_scope_gets_403_on_every_download_route(http, emu):
    """A browse-only key reads the manifest, summary and DRS objects, but no link route."""
    browse = bearer(emu.add_api_key(scopes=("browse",)))
    row = rows_by_path(http, emu, browse)[PROTOCOL]
    object_id = row["fileUUID"]
    assert http.get(f"{emu.query_url}/api/study/summary/SDY1", headers=browse, timeout=10).ok
    assert drs_object(http, emu, browse, object_id).status_code == 200
    refused = [
        shortcut(http, emu, browse, "s3", object_id),
        shortcut(http, emu, browse, "stream", object_id),
        drs_access(http, emu, browse, object_id, "s3"),
        drs_access(http, emu, browse, object_id, "stream"),
    ]
    for reply in refused:
        assert reply.status_code == 403
        body = reply.json()
        assert (body["status"], body["error"]) == (403, "Forbidden")
        assert "'download' scope" in body["message"]


def test_the_manifest_needs_the_browse_scope(http, emu):
    """A download-only key may fetch links but not the manifest or summary (403)."""
    download = bearer(emu.add_api_key(scopes=("download",)))
    assert manifest(http, emu, download).status_code == 403
    summary = http.get(f"{emu.query_url}/api/study/summary/SDY1", headers=download, timeout=10)
    assert summary.status_code == 403
    assert "'browse' scope" in summary.json()["message"]
    object_id = str(file_uuid(PROTOCOL))
    assert shortcut(http, emu, download, "s3", object_id).status_code == 200


def test_add_api_key_defaults_and_checks(emu):
    """Keys default to 90 days, browse+download and a fresh value; scopes are checked."""
    key = emu.add_api_key()
    uuid.UUID(key.id)
    assert key.scopes == ("browse", "download")
    left = key.expires_at - datetime.now(UTC)
    assert timedelta(days=89) < left <= timedelta(days=90)
    assert len(key.api_key) >= 32
    assert emu.add_api_key(value="my-own-key").api_key == "my-own-key"
    assert key.api_key not in repr(key)
    assert key.api_key in emu.issued_tokens()
    with pytest.raises(ValueError, match="scopes"):
        emu.add_api_key(scopes=("admin",))
    with pytest.raises(ValueError, match="aware"):
        emu.add_api_key(expires_at=datetime(2030, 1, 1))


def test_key_file_has_the_web_pages_format_and_owner_only_mode(emu, tmp_path):
    """The key file is {id, api_key, expires_at} with nanosecond digits and Z, mode 0600."""
    key = emu.add_api_key(expires_at=datetime(2026, 5, 21, 20, 55, 24, 654328, tzinfo=UTC))
    target = tmp_path / "keys" / "immport-api-key.json"
    target.parent.mkdir()
    target.write_text("old")
    target.chmod(0o644)
    assert emu.write_api_key_file(target, key) == target
    doc = json.loads(target.read_text())
    assert list(doc) == ["id", "api_key", "expires_at"]
    assert doc["id"] == key.id and doc["api_key"] == key.api_key
    assert doc["expires_at"] == "2026-05-21T20:55:24.654328000Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", doc["expires_at"])
    assert datetime.fromisoformat(doc["expires_at"]) == key.expires_at
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


# -- password sign-in and the retired endpoints ---------------------------------------


@pytest.mark.parametrize("password", [PASSWORD, "wrong"])
def test_password_sign_in_is_refused(http, emu, password):
    """POST /auth/token answers 400: the exchange is no longer supported; use an API key."""
    reply = http.post(
        emu.token_url, data={"username": "alice", "password": password}, timeout=10
    )
    assert reply.status_code == 400
    body = reply.json()
    assert list(body) == SPRING_KEYS
    assert "no longer supported" in body["message"]
    assert "API key" in body["message"]
    assert emu.issued_tokens() == []


def test_allow_password_sign_in_gives_an_access_token_that_works(http, emu):
    """With allow_password_sign_in the legacy exchange answers access_token only."""
    emu.allow_password_sign_in = True
    reply = http.post(emu.token_url, data={"username": "alice", "password": PASSWORD}, timeout=10)
    assert reply.status_code == 200
    doc = reply.json()
    assert set(doc) == {"status", "access_token"}
    session = {"Authorization": f"bearer {doc['access_token']}"}
    assert manifest(http, emu, session).status_code == 200
    wrong = http.post(emu.token_url, data={"username": "alice", "password": "no"}, timeout=10)
    assert wrong.status_code == 401


@pytest.mark.parametrize(
    ("method", "route", "body"),
    [
        ("POST", "/data/list", {"path": "/SDY1"}),
        ("GET", "/data/list", None),
        ("POST", "/data/download/token", {"paths": ["/SDY1"]}),
    ],
)
def test_legacy_endpoints_answer_spring_404(http, emu, auth, method, route, body):
    """/data/list and /data/download/token are gone: 404 with a Spring body naming the path."""
    reply = http.request(method, emu.base_url + route, json=body, headers=auth, timeout=10)
    assert reply.status_code == 404
    doc = reply.json()
    assert list(doc) == SPRING_KEYS
    assert (doc["status"], doc["error"], doc["path"]) == (404, "Not Found", route)
    assert doc["message"]


# -- the study file manifest ----------------------------------------------------------


def test_manifest_rows_have_exactly_the_real_fields_and_types(http, emu, auth, today_tree):
    """Each row has the observed fields in order, with their real types and formats."""
    rows = manifest(http, emu, auth).json()
    assert isinstance(rows, list)
    for row in rows:
        assert list(row) == ROW_FIELDS
        assert isinstance(row["fileDetailsId"], int) and isinstance(row["workspaceId"], int)
        assert row["reportedMD5"] is None
        assert re.fullmatch(r"[0-9a-f]{32}", row["generatedMD5"])
        assert row["studyAccession"] == "SDY1"
        assert not row["path"].startswith("/")
        assert row["path"].startswith("SDY1/")
        assert row["fileName"] == row["path"].rsplit("/", 1)[1]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", row["dateFileUpdated"])
        assert row["fileUUID"] == str(file_uuid(row["path"]))
        assert row["drsObjectCreated"] == "Y"
        assert row["aigeneratedKeywords"] is None and row["aigeneratedSummary"] is None
        data = (today_tree / row["path"]).read_bytes()
        assert row["filesizeBytes"] == len(data)
        assert row["generatedMD5"] == md5_hex(data)
    by_path = {r["path"]: r for r in rows}
    assert by_path["SDY1/Protocols/Flow_cytometry_panel.docx"]["dateFileUpdated"] == "2018-02-01"
    assert by_path["SDY1/SDY1-DR58_Tab.zip"]["fileAccession"] == "SDY1-DR58_Tab.zip"
    assert re.fullmatch(r"SFL\d+", by_path[PROTOCOL]["fileAccession"])
    assert re.fullmatch(r"PTL\d+", by_path["SDY1/Protocols/SDY1_protocol.pdf"]["fileAccession"])
    hai = by_path["SDY1/ResultFiles/HAI_result/hai_results.txt"]
    assert re.fullmatch(r"\d+", hai["fileAccession"])


def test_file_types_follow_the_folders(http, emu, auth):
    """StudyFiles, Protocols, ResultFiles, the study root and archive/ give the five types."""
    expected = {
        "StudyFiles": "study_file",
        "Protocols": "protocol_file",
        "ResultFiles": "result_file",
        "archive": "archive_file",
    }
    rows = rows_by_path(http, emu, auth)
    for path, row in rows.items():
        parts = path.split("/")
        want = "release_file" if len(parts) == 2 else expected[parts[1]]
        assert row["fileType"] == want, path
    assert {r["fileType"] for r in rows.values()} == set(TODAY_FILE_TYPES)
    assert sum(r["fileType"] == "archive_file" for r in rows.values()) == 5


def test_a_protocol_repeated_under_study_files_has_the_same_md5(http, emu, auth):
    """ImmPort lists one document under StudyFiles and Protocols, with one MD5."""
    rows = rows_by_path(http, emu, auth)
    copy = rows["SDY1/Protocols/SDY1_protocol.pdf"]
    assert copy["generatedMD5"] == rows[PROTOCOL]["generatedMD5"]
    assert copy["fileUUID"] != rows[PROTOCOL]["fileUUID"]


@pytest.mark.parametrize("file_type", TODAY_FILE_TYPES)
def test_the_file_type_filter_keeps_one_type(http, emu, auth, file_type):
    """fileType=<type> answers exactly the rows of that type from fileType=all."""
    everything = manifest(http, emu, auth).json()
    reply = manifest(http, emu, auth, file_type=file_type)
    assert reply.status_code == 200
    assert reply.json() == [r for r in everything if r["fileType"] == file_type]
    assert reply.json()


def test_an_unknown_file_type_is_400(http, emu, auth):
    """A fileType outside the five is refused with 400."""
    assert manifest(http, emu, auth, file_type="other_file").status_code == 400


def test_manifest_wrap_content(http, emu, auth):
    """manifest_wrap_content answers the rows inside {"content": [...]}."""
    rows = manifest(http, emu, auth).json()
    emu.manifest_wrap_content = True
    assert manifest(http, emu, auth).json() == {"content": rows}


def test_manifest_bool_drs_and_datetime_dates(http, emu, auth):
    """Each knob, flipped alone on a warm cache, changes the rows at once."""
    assert rows_by_path(http, emu, auth)[PROTOCOL]["dateFileUpdated"] == "2017-06-15"
    emu.manifest_datetime_dates = True
    rows = rows_by_path(http, emu, auth)
    assert rows[PROTOCOL]["dateFileUpdated"] == "2017-06-15T13:06:07Z"
    assert rows[PROTOCOL]["drsObjectCreated"] == "Y"
    emu.manifest_bool_drs = True
    emu.manifest_no_drs = {"SDY1/StudyFiles/Study_design.txt"}
    rows = rows_by_path(http, emu, auth)
    assert rows[PROTOCOL]["drsObjectCreated"] is True
    assert rows["SDY1/StudyFiles/Study_design.txt"]["drsObjectCreated"] is False
    emu.manifest_bool_drs = emu.manifest_datetime_dates = False
    assert rows_by_path(http, emu, auth)[PROTOCOL]["dateFileUpdated"] == "2017-06-15"


def test_manifest_null_md5(http, emu, auth):
    """Paths in manifest_null_md5 report a null generatedMD5; the others keep theirs."""
    emu.manifest_null_md5 = {PROTOCOL}
    rows = rows_by_path(http, emu, auth)
    assert rows[PROTOCOL]["generatedMD5"] is None
    assert rows["SDY1/Protocols/SDY1_protocol.pdf"]["generatedMD5"] is not None


def test_manifest_no_drs_marks_the_row_and_hides_its_drs_routes(http, emu, auth):
    """A path in manifest_no_drs is "N" and its shortcut and GA4GH routes answer 404."""
    emu.manifest_no_drs = {"/" + PROTOCOL}
    row = rows_by_path(http, emu, auth)[PROTOCOL]
    assert row["drsObjectCreated"] == "N"
    object_id = row["fileUUID"]
    assert shortcut(http, emu, auth, "s3", object_id).status_code == 404
    assert drs_object(http, emu, auth, object_id).status_code == 404
    assert drs_access(http, emu, auth, object_id, "s3").status_code == 404
    other = str(file_uuid("SDY1/Protocols/SDY1_protocol.pdf"))
    assert drs_object(http, emu, auth, other).status_code == 200


def test_manifest_extra_fields_and_md5_overrides(http, emu, auth):
    """Extra fields are added to every row; md5_overrides still changes one row's MD5."""
    emu.manifest_extra_fields = {"studyTitle": "x", "fileSource": None}
    emu.md5_overrides[PROTOCOL] = "0" * 32
    rows = rows_by_path(http, emu, auth)
    assert list(rows[PROTOCOL]) == [*ROW_FIELDS, "studyTitle", "fileSource"]
    assert rows[PROTOCOL]["generatedMD5"] == "0" * 32


def test_manifest_follows_file_changes(http, emu, auth, today_tree):
    """A file replaced upstream gets its new size, MD5 and date."""
    write_file(today_tree, PROTOCOL, b"replaced", mtime=datetime(2026, 3, 4, 5, 6, tzinfo=UTC))
    row = rows_by_path(http, emu, auth)[PROTOCOL]
    assert (row["filesizeBytes"], row["generatedMD5"]) == (8, md5_hex(b"replaced"))
    assert row["dateFileUpdated"] == "2026-03-04"


def test_manifest_unavailable_and_latency_still_apply(http, emu, auth):
    """manifest_available and latency work in today's world too."""
    emu.latency = 0.2
    start = time.monotonic()
    assert manifest(http, emu, auth).status_code == 200
    assert time.monotonic() - start >= 0.2
    emu.latency = 0.0
    emu.manifest_available = False
    assert manifest(http, emu, auth).status_code == 503


def test_study_summary_names_the_current_release(http, emu, auth):
    """The summary's latest release comes from the study root's DR58 files."""
    doc = http.get(f"{emu.query_url}/api/study/summary/SDY1", headers=auth, timeout=10).json()
    assert doc["latestDataReleaseVersion"] == "DR58"


# -- DRS: the shortcut and GA4GH ------------------------------------------------------


def test_service_info_describes_a_drs_service(http, emu):
    """/ga4gh/drs/v1/service-info names a GA4GH DRS service (no key needed to describe it)."""
    reply = http.get(f"{emu.drs_url}/ga4gh/drs/v1/service-info", timeout=10)
    assert reply.status_code == 200
    doc = reply.json()
    assert doc["type"]["group"] == "org.ga4gh" and doc["type"]["artifact"] == "drs"
    assert {"id", "name", "organization", "version"} <= set(doc)


def test_a_drs_object_matches_the_manifest_row(http, emu, auth, today_tree):
    """The DrsObject of a fileUUID has its name, size, md5 and both access methods."""
    row = rows_by_path(http, emu, auth)[PROTOCOL]
    reply = drs_object(http, emu, auth, row["fileUUID"])
    assert reply.status_code == 200
    doc = reply.json()
    assert list(doc) == [
        "id", "name", "self_uri", "size", "created_time", "checksums", "access_methods",
    ]  # fmt: skip
    assert doc["id"] == row["fileUUID"]
    assert doc["name"] == "SDY1_protocol.pdf"
    assert doc["self_uri"] == f"drs://127.0.0.1:{emu.port}/{row['fileUUID']}"
    assert doc["self_uri"] == emu.drs_uri(row["fileUUID"])
    assert doc["size"] == row["filesizeBytes"]
    assert doc["created_time"] == "2017-06-15T13:06:07Z"
    assert doc["checksums"] == [{"type": "md5", "checksum": row["generatedMD5"]}]
    assert doc["access_methods"] == [
        {"type": "s3", "access_id": "s3"},
        {"type": "https", "access_id": "stream"},
    ]


@pytest.mark.parametrize("access_id", ["s3", "stream"])
def test_drs_access_gives_a_link_whose_bytes_match_the_md5(http, emu, auth, access_id):
    """/access/{id} answers {url, headers}; the link downloads bytes with the object's md5."""
    object_id = str(file_uuid("SDY1/ResultFiles/Flow_cytometry_result/02054141.001.52628.fcs"))
    checksum = drs_object(http, emu, auth, object_id).json()["checksums"][0]["checksum"]
    reply = drs_access(http, emu, auth, object_id, access_id)
    assert reply.status_code == 200
    doc = reply.json()
    assert list(doc) == ["url", "headers"] and doc["headers"] == []
    blob = http.get(doc["url"], timeout=10)
    assert blob.status_code == 200
    assert md5_hex(blob.content) == checksum
    assert blob.headers["ETag"] == f'"{checksum}"'


def test_drs_errors_use_the_drs_shape(http, emu, auth):
    """An unknown object or access id is 404 with {"msg", "status_code"}."""
    unknown = drs_object(http, emu, auth, str(uuid.uuid4()))
    assert unknown.status_code == 404
    assert set(unknown.json()) == {"msg", "status_code"}
    assert unknown.json()["status_code"] == 404
    bad_access = drs_access(http, emu, auth, str(file_uuid(PROTOCOL)), "ftp")
    assert bad_access.status_code == 404
    assert set(bad_access.json()) == {"msg", "status_code"}


def test_drs_routes_need_a_valid_key(http, emu, key):
    """GA4GH objects and access follow the same key rules (401 without, revoked, expired)."""
    object_id = str(file_uuid(PROTOCOL))
    assert drs_object(http, emu, {}, object_id).status_code == 401
    assert drs_access(http, emu, {}, object_id, "s3").status_code == 401
    emu.revoke_api_key(key)
    assert drs_object(http, emu, bearer(key), object_id).status_code == 401


def test_drs_lookups_follow_files_that_move_or_vanish(http, emu, auth, today_tree, tmp_path):
    """After the manifest named a file, a deleted file is 404, a symlink out of the docroot
    is not served, and a file added later is found."""
    rows = rows_by_path(http, emu, auth)
    gone = rows["SDY1/StudyFiles/Study_design.txt"]["fileUUID"]
    escaped = rows["SDY1/ResultFiles/HAI_result/hai_results.txt"]["fileUUID"]
    (today_tree / "SDY1/StudyFiles/Study_design.txt").unlink()
    outside = tmp_path / "outside.txt"
    outside.write_text("not for ImmPort users")
    hai = today_tree / "SDY1/ResultFiles/HAI_result/hai_results.txt"
    hai.unlink()
    hai.symlink_to(outside)
    write_file(today_tree, "SDY1/StudyFiles/late.txt", b"late")
    assert drs_object(http, emu, auth, gone).status_code == 404
    assert drs_object(http, emu, auth, escaped).status_code == 404
    assert drs_object(http, emu, auth, str(file_uuid("SDY1/StudyFiles/late.txt"))).ok


def test_drs_inline_access_url(http, emu, auth, today_tree):
    """drs_inline_access_url puts working links in access_methods instead of access ids."""
    emu.drs_inline_access_url = True
    doc = drs_object(http, emu, auth, str(file_uuid(PROTOCOL))).json()
    assert [m["type"] for m in doc["access_methods"]] == ["s3", "https"]
    for method in doc["access_methods"]:
        assert "access_id" not in method
        blob = http.get(method["access_url"]["url"], timeout=10)
        assert blob.content == (today_tree / PROTOCOL).read_bytes()
    browse_only = bearer(emu.add_api_key(scopes=("browse",)))
    doc = drs_object(http, emu, browse_only, str(file_uuid(PROTOCOL))).json()
    assert all("access_url" not in m for m in doc["access_methods"])


def test_drs_overrides_make_the_object_disagree_with_the_manifest(http, emu, auth):
    """drs_md5_overrides and drs_size_overrides change what the DrsObject reports."""
    emu.drs_md5_overrides[PROTOCOL] = "f" * 32
    emu.drs_size_overrides[PROTOCOL] = 1
    doc = drs_object(http, emu, auth, str(file_uuid(PROTOCOL))).json()
    assert doc["checksums"][0]["checksum"] == "f" * 32
    assert doc["size"] == 1


def test_drs_requests_are_counted(http, emu, auth):
    """count() totals the GA4GH routes like any other."""
    object_id = str(file_uuid(PROTOCOL))
    drs_object(http, emu, auth, object_id)
    drs_access(http, emu, auth, object_id, "s3")
    drs_access(http, emu, auth, object_id, "stream")
    assert emu.count("/ga4gh/drs/v1/objects") == 3
    assert emu.count(f"/ga4gh/drs/v1/objects/{object_id}/access") == 2


def test_the_shortcut_works_and_links_last_seven_days(http, emu, auth, today_tree):
    """The DRS shortcut answers a link valid for 7 days that streams the file."""
    reply = shortcut(http, emu, auth, "s3", str(file_uuid(PROTOCOL)))
    assert reply.status_code == 200
    url = reply.json()["url"]
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["604800"]
    assert int(query["expires"][0]) >= time.time() + 7 * 86400 - 60
    assert http.get(url, timeout=10).content == (today_tree / PROTOCOL).read_bytes()


def test_link_lifetime_stays_overridable_and_legacy_keeps_five_minutes(http, emu, auth, tree):
    """drs_link_lifetime still sets the expiry; the legacy world's default is 300 s."""
    emu.drs_link_lifetime = 60
    url = shortcut(http, emu, auth, "s3", str(file_uuid(PROTOCOL))).json()["url"]
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["60"]
    assert Emulator(tree, world="legacy").drs_link_lifetime == 300


def test_the_request_log_holds_no_secret(http, emu, key, auth):
    """No key or password lands in requests_log, even one posted as JSON."""
    object_id = str(file_uuid(PROTOCOL))
    manifest(http, emu, auth)
    drs_access(http, emu, auth, object_id, "s3")
    shortcut(http, emu, auth, "s3", object_id)
    emu.allow_password_sign_in = True
    http.post(emu.token_url, json={"username": "alice", "password": PASSWORD}, timeout=10)
    http.post(f"{emu.query_url}/anything", json={"api_key": key.api_key}, headers=auth, timeout=10)
    logged = repr(emu.requests_log)
    assert emu.count("/") == 5
    assert key.api_key not in logged and PASSWORD not in logged
    assert key.api_key not in repr(emu)


# -- the legacy world is untouched ----------------------------------------------------


def test_the_legacy_world_has_no_ga4gh_routes_and_keeps_its_rows(http, tree):
    """world="legacy" serves no GA4GH API and keeps the older manifest row shape."""
    with Emulator(tree, world="legacy", username="alice", password=PASSWORD) as emu:
        token = http.post(
            emu.token_url, data={"username": "alice", "password": PASSWORD}, timeout=10
        ).json()["token"]
        auth = {"Authorization": f"bearer {token}"}
        object_id = str(file_uuid(PROTOCOL))
        assert drs_object(http, emu, auth, object_id).status_code == 404
        rows = rows_by_path(http, emu, auth)
        assert rows[PROTOCOL]["drsObjectCreated"] is True
        assert rows["SDY1/SDY1-DR47_Tab.zip"]["fileType"] == "release_file"
        key = emu.add_api_key()
        assert manifest(http, emu, bearer(key)).status_code == 200


# -- command line ---------------------------------------------------------------------


def start_cli(*args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "IMMPORT_PASSWORD": PASSWORD,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "immsync.testing.emulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )


def read_banner(proc: subprocess.Popen[str]) -> tuple[dict[str, str], list[str]]:
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    lines = []
    while not (line := proc.stdout.readline()).startswith("export IMMPORT_TOKEN_URL="):
        assert line, "the emulator stopped before printing its exports"
        lines.append(line.rstrip("\n"))
    lines.append(line.rstrip("\n"))
    return info, lines


def stop_cli(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    return out + err


def test_cli_serves_today_with_a_key_file_and_never_prints_the_key(today_tree, tmp_path, http):
    """The CLI issues a key, writes its file, prints paste-ready exports, never the key."""
    key_file = tmp_path / "secrets" / "key.json"
    proc = start_cli("--docroot", str(today_tree), "--api-key-file", str(key_file))
    try:
        info, lines = read_banner(proc)
        base = info["base_url"]
        assert info["world"] == "today"
        assert info["api_key_file"] == str(key_file)
        exports = dict(line.removeprefix("export ").split("=", 1) for line in lines[1:])
        assert exports == {
            "IMMPORT_API_KEY_FILE": str(key_file),
            "IMMSYNC_QUERY_API_BASE_URL": f"{base}/data/query",
            "IMMSYNC_DRS_BASE_URL": base,
            "IMMPORT_DATA_API_BASE_URL": f"{base}/data",
            "IMMPORT_TOKEN_URL": f"{base}/auth/token",
        }
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        value = json.loads(key_file.read_text())["api_key"]
        reply = http.get(
            f"{base}/data/query/api/study/manifest/SDY1",
            headers={"Authorization": f"Bearer {value}"},
            timeout=10,
        )
        assert reply.status_code == 200
        refused = http.post(
            f"{base}/auth/token", data={"username": "demo", "password": PASSWORD}, timeout=10
        )
        assert refused.status_code == 400
    finally:
        output = stop_cli(proc)
    assert value not in output and value not in "\n".join(lines)


def test_cli_default_key_file_lives_in_a_temporary_folder_removed_on_exit(today_tree):
    """Without --api-key-file the key file goes to a temporary folder, gone after SIGTERM."""
    proc = start_cli("--docroot", str(today_tree))
    try:
        info, _ = read_banner(proc)
        key_file = Path(info["api_key_file"])
        assert key_file.is_file()
    finally:
        stop_cli(proc)
    assert not key_file.parent.exists()


def test_cli_legacy_mode_signs_in_with_a_password(tree, http):
    """--legacy serves the password world and writes no key file."""
    proc = start_cli("--docroot", str(tree), "--legacy", "--username", "bob")
    try:
        info, lines = read_banner(proc)
        assert info["world"] == "legacy" and "api_key_file" not in info
        assert not any("IMMPORT_API_KEY_FILE" in line for line in lines)
        reply = http.post(
            info["token_url"], data={"username": "bob", "password": PASSWORD}, timeout=10
        )
        assert reply.status_code == 200
    finally:
        output = stop_cli(proc)
    assert PASSWORD not in output


# -- sample data ----------------------------------------------------------------------


def test_today_tree_is_deterministic_small_and_shaped_like_immport(tmp_path):
    """Two builds are identical; the tree has Protocols/, root release files and archive/."""
    one = build_today_tree(tmp_path / "a")
    two = build_today_tree(tmp_path / "b")
    assert one == two == sorted(one)
    total = 0
    for rel in one:
        a, b = tmp_path / "a" / rel, tmp_path / "b" / rel
        assert a.read_bytes() == b.read_bytes()
        assert a.stat().st_mtime == b.stat().st_mtime
        total += a.stat().st_size
    assert total < 3_000_000
    for study in ("SDY1", "SDY269"):
        assert any(p.startswith(f"{study}/Protocols/") for p in one)
        assert f"{study}/{study}-DR58_Tab.zip" in one
        assert f"{study}/{study}-DR58_summary.txt" in one
        assert f"{study}/{study}-DR58_manifest.txt" in one
    archives = [p for p in one if p.startswith("SDY1/archive/")]
    assert "SDY1/archive/SDY1-DR40.zip" in archives and len(archives) >= 4
    root = tmp_path / "a"
    copy = root / "SDY1/Protocols/SDY1_protocol.pdf"
    assert (root / PROTOCOL).read_bytes() == copy.read_bytes()


def test_the_legacy_sample_tree_is_unchanged(tmp_path):
    """build_sample_tree still makes the nine files the legacy tests count."""
    paths = build_sample_tree(tmp_path)
    assert len(paths) == 9
    assert "SDY1/SDY1-DR47_Tab.zip" in paths
    assert not any("/Protocols/" in p or "/archive/" in p for p in paths)


def test_many_files_make_a_large_study_served_in_one_reply(tmp_path, http):
    """build_many_files writes count files of size bytes; the manifest lists each once."""
    paths = build_many_files(tmp_path, "SDY900", 2500, 64, per_folder=1000)
    assert len(paths) == len(set(paths)) == 2500
    assert {(tmp_path / p).stat().st_size for p in paths} == {64}
    assert (tmp_path / paths[7]).read_bytes().startswith(b"SDY900 file 7\n")
    assert len({p.rsplit("/", 1)[0] for p in paths}) == 3
    with Emulator(tmp_path) as emu:
        auth = bearer(emu.add_api_key())
        rows = manifest(http, emu, auth, "SDY900").json()
        assert sorted(r["path"] for r in rows) == sorted(paths)
        assert len({r["generatedMD5"] for r in rows}) == 2500
        assert {r["fileType"] for r in rows} == {"result_file"}


@pytest.mark.slow
def test_a_100000_file_manifest_is_served_in_seconds(tmp_path, http):
    """A 100,000-row manifest answers in well under a minute cold and seconds warm."""
    build_many_files(tmp_path, "SDY999", 100_000, 100)
    with Emulator(tmp_path) as emu:
        auth = bearer(emu.add_api_key())
        start = time.monotonic()
        assert len(manifest(http, emu, auth, "SDY999").json()) == 100_000
        cold = time.monotonic() - start
        start = time.monotonic()
        assert len(manifest(http, emu, auth, "SDY999").json()) == 100_000
        warm = time.monotonic() - start
    assert cold < 60 and warm < 10
