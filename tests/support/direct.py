"""A direct-to-bucket client over the public API: createUpload(mode: DIRECT), then each part put
straight to its presigned URL with httpx, confirmed, and the upload completed (CONTRACT section 9)."""

from __future__ import annotations

import base64
import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.support.client import data_of, graphql

DIRECT_FIELDS = """id filename size sha256 status mode bytesReceived bytesUploaded partsUploaded partsTotal partSize
progress error storageKey storageBackend contentType expiresAt downloadUrl"""
CREATE = f"""mutation($input: CreateUploadInput!) {{ createUpload(input: $input) {{ {DIRECT_FIELDS} }} }}"""
SIGN = """mutation($id: ID!, $parts: [PartToSign!]!) { signUploadParts(id: $id, parts: $parts) {
  partNumber url expiresAt headers { name value } } }"""
CONFIRM = f"""mutation($id: ID!, $n: Int!, $etag: String!) {{
  confirmUploadPart(id: $id, partNumber: $n, etag: $etag) {{ {DIRECT_FIELDS} }} }}"""
COMPLETE = f"""mutation($id: ID!) {{ completeUpload(id: $id) {{ {DIRECT_FIELDS} }} }}"""


def part_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def direct_create(url: str, headers: dict[str, str], *, filename: str, size: int, sha256: str | None = None) -> Any:
    variables = {"input": {"filename": filename, "size": size, "sha256": sha256, "mode": "DIRECT"}}
    return graphql(url, CREATE, variables, headers=headers)


def direct_sign(url: str, headers: dict[str, str], upload_id: str, parts: list[dict[str, Any]]) -> Any:
    return graphql(url, SIGN, {"id": upload_id, "parts": parts}, headers=headers)


def direct_confirm(url: str, headers: dict[str, str], upload_id: str, number: int, etag: str) -> Any:
    return graphql(url, CONFIRM, {"id": upload_id, "n": number, "etag": etag}, headers=headers)


def direct_complete(url: str, headers: dict[str, str], upload_id: str) -> Any:
    return graphql(url, COMPLETE, {"id": upload_id}, headers=headers)


def put_part(signed: dict[str, Any], data: bytes, client: httpx.Client | None = None) -> str:
    """PUT one part to its presigned URL with the headers it was signed with; the ETag the bucket answers."""
    send = client or httpx
    response = send.put(signed["url"], content=data, headers={h["name"]: h["value"] for h in signed["headers"]})
    assert response.status_code == 200, response.text
    return response.headers["etag"]


def direct_upload(
    url: str,
    headers: dict[str, str],
    content: bytes,
    *,
    filename: str = "direct.bin",
    sha256: str | None = None,
    concurrency: int = 4,
) -> dict[str, Any]:
    """The whole flow for `content`; returns completeUpload's answer (QUEUED)."""
    upload = data_of(direct_create(url, headers, filename=filename, size=len(content), sha256=sha256))["createUpload"]
    part_size = upload["partSize"]
    chunks = {n: content[(n - 1) * part_size : n * part_size] for n in range(1, upload["partsTotal"] + 1)}
    wanted = [{"partNumber": n, "sha256": part_sha256(data)} for n, data in chunks.items()]
    signed = data_of(direct_sign(url, headers, upload["id"], wanted))["signUploadParts"] if wanted else []

    def send(part: dict[str, Any]) -> None:
        number = part["partNumber"]
        with httpx.Client(timeout=120) as client:
            etag = put_part(part, chunks[number], client)
        data_of(direct_confirm(url, headers, upload["id"], number, etag))

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(send, signed))
    return data_of(direct_complete(url, headers, upload["id"]))["completeUpload"]
