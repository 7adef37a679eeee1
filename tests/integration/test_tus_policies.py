"""What the tus routes refuse and expose: limits before any byte, the sniffed type, expiry, CORS, proxies."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
from django.utils import timezone

from backend.uploads.models import FileUpload
from tests.support.client import UPLOAD_QUERY, data_of, graphql
from tests.support.processes import ROOT
from tests.support.tus import TUS, code_of, metadata, tus_create, tus_head, tus_patch

MIB = 1024 * 1024
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + bytes(9000)


def _staging(tmp_path: Path) -> Path:
    return tmp_path / "staging"


def test_size_active_uploads_and_quota_are_checked_from_upload_length(make_stack, api_user, tmp_path) -> None:
    staging = _staging(tmp_path)
    env = {
        "UPLOAD_STAGING_DIR": str(staging),
        "UPLOAD_MAX_BYTES": str(10 * MIB),
        "UPLOAD_MAX_ACTIVE_PER_USER": "2",
        "UPLOAD_QUOTA_BYTES": str(6 * MIB),
    }
    stack = make_stack(env=env, workers=0)
    too_big = tus_create(stack.url, api_user.headers, length=10 * MIB + 1)
    assert (too_big.status_code, code_of(too_big)) == (413, "FILE_TOO_LARGE")
    over_quota = tus_create(stack.url, api_user.headers, length=6 * MIB + 1)
    assert (over_quota.status_code, code_of(over_quota)) == (413, "QUOTA_EXCEEDED")
    assert tus_create(stack.url, api_user.headers, length=3 * MIB).status_code == 201
    assert tus_create(stack.url, api_user.headers, length=3 * MIB).status_code == 201
    busy = tus_create(stack.url, api_user.headers, length=1)
    assert (busy.status_code, code_of(busy)) == (429, "TOO_MANY_ACTIVE_UPLOADS")
    # Partial uploads are not counted as active uploads (the quota still counts their bytes).
    partial = tus_create(stack.url, api_user.headers, length=0, Upload_Concat="partial")
    assert partial.status_code == 201, partial.text
    assert FileUpload.objects.filter(owner=api_user.user).count() == 3
    assert sorted(p.name for p in staging.iterdir() if p.is_file()) == sorted(
        str(u.id) for u in FileUpload.objects.filter(owner=api_user.user)
    ), "refused creations stored nothing"


def test_a_deferred_length_reserves_quota_when_it_is_set(make_stack, api_user, tmp_path) -> None:
    stack = make_stack(env={"UPLOAD_STAGING_DIR": str(_staging(tmp_path)), "UPLOAD_QUOTA_BYTES": "100"}, workers=0)
    location = tus_create(stack.url, api_user.headers, Upload_Defer_Length="1").headers["Location"]
    refused = tus_patch(location, api_user.headers, 0, b"x" * 10, Upload_Length="101")
    assert (refused.status_code, code_of(refused)) == (413, "QUOTA_EXCEEDED")
    assert tus_head(location, api_user.headers).headers["Upload-Defer-Length"] == "1"
    assert tus_patch(location, api_user.headers, 0, b"x" * 10, Upload_Length="100").status_code == 204


def test_the_content_type_is_judged_on_the_first_bytes(make_stack, api_user, tmp_path) -> None:
    staging = _staging(tmp_path)
    stack = make_stack(env={"UPLOAD_STAGING_DIR": str(staging), "UPLOAD_ALLOWED_TYPES": "image/*"}, workers=0)
    text = b"just some text, " * 1000
    location = tus_create(stack.url, api_user.headers, length=len(text) * 10).headers["Location"]
    refused = tus_patch(location, api_user.headers, 0, text)
    assert (refused.status_code, code_of(refused)) == (415, "UNSUPPORTED_MEDIA_TYPE")
    row = FileUpload.objects.get(id=location.rsplit("/", 1)[1])
    assert (row.status, row.content_type) == ("FAILED", "text/plain") and "UNSUPPORTED_MEDIA_TYPE" in row.error
    assert not (staging / str(row.id)).exists()
    assert tus_head(location, api_user.headers).status_code == 410

    # The type may come with the first bytes over several chunks; a small file is judged at its end.
    image = tus_create(stack.url, api_user.headers, length=len(PNG)).headers["Location"]
    assert tus_patch(image, api_user.headers, 0, PNG[:100]).status_code == 204
    assert tus_patch(image, api_user.headers, 100, PNG[100:]).status_code == 204
    assert FileUpload.objects.get(id=image.rsplit("/", 1)[1]).content_type == "image/png"
    tiny = tus_create(stack.url, api_user.headers, length=5).headers["Location"]
    assert tus_patch(tiny, api_user.headers, 0, b"hello").status_code == 415


def test_a_declared_sha256_is_checked_when_the_last_byte_arrives(stack, api_user) -> None:
    wrong = hashlib.sha256(b"not this").hexdigest()
    location = tus_create(stack.url, api_user.headers, length=6, Upload_Metadata=metadata(sha256=wrong)).headers[
        "Location"
    ]
    assert tus_patch(location, api_user.headers, 0, b"abc").status_code == 204
    last = tus_patch(location, api_user.headers, 3, b"def")
    assert (last.status_code, code_of(last)) == (460, "CHECKSUM_MISMATCH")
    upload = data_of(graphql(stack.url, UPLOAD_QUERY, {"id": location.rsplit("/", 1)[1]}, api_user.headers))["upload"]
    assert upload["status"] == "FAILED" and "CHECKSUM_MISMATCH" in upload["error"]
    malformed = tus_create(stack.url, api_user.headers, length=6, Upload_Metadata=metadata(sha256="abc"))
    assert (malformed.status_code, code_of(malformed)) == (400, "BAD_REQUEST")


def test_an_upload_with_no_new_bytes_expires_and_the_sweep_removes_its_bytes(make_stack, api_user, tmp_path) -> None:
    staging = _staging(tmp_path)
    stack = make_stack(env={"UPLOAD_STAGING_DIR": str(staging), "UPLOAD_RECEIVING_TTL": "600"}, workers=0)
    idle = tus_create(stack.url, api_user.headers, length=100).headers["Location"]
    asked = tus_create(stack.url, api_user.headers, length=100).headers["Location"]
    for location in (idle, asked):
        before = timezone.now()
        assert tus_patch(location, api_user.headers, 0, b"x" * 10).status_code == 204
        expires = FileUpload.objects.get(id=location.rsplit("/", 1)[1]).expires_at
        assert before + timedelta(seconds=600) <= expires <= timezone.now() + timedelta(seconds=600)
    # Ten minutes without a byte, without waiting them: the deadline each chunk set is moved back.
    rows = FileUpload.objects.filter(id__in=[loc.rsplit("/", 1)[1] for loc in (idle, asked)])
    rows.update(expires_at=timezone.now() - timedelta(seconds=1))

    # A request to an expired upload finds it gone, and it expires right then.
    assert tus_head(asked, api_user.headers).status_code == 410
    assert not (staging / asked.rsplit("/", 1)[1]).exists()
    # The sweep expires the one nobody asked about.
    idle_id = idle.rsplit("/", 1)[1]
    assert (staging / idle_id).exists()
    swept = subprocess.run(
        [sys.executable, "manage.py", "sweep_uploads"],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert idle_id in swept.stdout
    assert not (staging / idle_id).exists()
    row = FileUpload.objects.get(id=idle_id)
    assert row.status == "FAILED" and row.error.startswith("expired")
    patch = tus_patch(idle, api_user.headers, 10, b"y")
    assert (patch.status_code, code_of(patch)) == (410, "GONE")


def test_cors_exposes_the_tus_headers_to_allowed_origins(make_stack, api_user) -> None:
    stack = make_stack(env={"CORS_ALLOWED_ORIGINS": "https://app.example"}, workers=0)
    preflight = httpx.options(
        f"{stack.url}/uploads/",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "tus-resumable,upload-length,upload-metadata,authorization",
        },
        timeout=10,
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"tus-resumable", "upload-length", "upload-metadata", "upload-offset", "authorization"} <= allowed
    assert "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
    created = tus_create(stack.url, {**api_user.headers, "Origin": "https://app.example"}, length=10)
    exposed = {h.strip().lower() for h in created.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"location", "upload-offset", "upload-length", "upload-expires", "tus-resumable"} <= exposed
    foreign = tus_create(stack.url, {**api_user.headers, "Origin": "https://evil.example"}, length=10)
    assert "Access-Control-Allow-Origin" not in foreign.headers


def test_location_is_https_behind_a_tls_proxy(make_stack, api_user) -> None:
    proxied = make_stack(env={"SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https"}, workers=0)
    headers = {**api_user.headers, "X-Forwarded-Proto": "https", "Host": "localhost"}
    created = tus_create(proxied.url, headers, length=10)
    assert created.headers["Location"].startswith("https://localhost/uploads/")
    resume = graphql(
        proxied.url,
        'mutation { createUpload(input: {filename: "a", size: 1}) { resumeUrl } }',
        None,
        headers,
    )
    assert data_of(resume)["createUpload"]["resumeUrl"].startswith("https://localhost/uploads/")
    public = make_stack(env={"PUBLIC_BASE_URL": "https://uploads.example.com/"}, workers=0)
    location = tus_create(public.url, api_user.headers, length=10).headers["Location"]
    assert location.startswith("https://uploads.example.com/uploads/")
    unknown_host = tus_create(public.url, {**api_user.headers, "Host": "evil.example"}, length=10)
    assert unknown_host.status_code == 201, "PUBLIC_BASE_URL names the host; the request's is not used"
    plain = make_stack(workers=0)
    before = FileUpload.objects.filter(owner=api_user.user).count()
    bad_host = tus_create(plain.url, {**api_user.headers, "Host": "evil.example"}, length=10)
    assert (bad_host.status_code, code_of(bad_host)) == (400, "BAD_REQUEST")
    assert FileUpload.objects.filter(owner=api_user.user).count() == before, "nothing made for a refused request"
    assert httpx.options(f"{plain.url}/uploads/", headers=TUS, timeout=10).status_code == 204
    assert os.environ.get("PUBLIC_BASE_URL") is None


def test_the_session_cookie_is_a_credential_too_and_a_token_decides(stack, make_user) -> None:
    from tests.integration.test_sessions import browser_login, make_password_user

    password = "correct horse battery staple"
    owner = make_password_user(password)
    browser = browser_login(stack.url, owner, password)
    try:
        created = browser.http.post("/uploads/", headers={**TUS, "Upload-Length": "3"})
        assert created.status_code == 201, created.text
        location = created.headers["Location"]
        patched = browser.http.patch(
            location,
            headers={**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"},
            content=b"abc",
        )
        assert patched.status_code == 204
        assert FileUpload.objects.get(id=location.rsplit("/", 1)[1]).owner_id == owner.pk
        # A bearer token of someone else decides over the cookie: their request does not find it.
        other = make_user()
        head = browser.http.head(location, headers={**TUS, **other.headers})
        assert head.status_code == 404
    finally:
        browser.http.close()
