"""GraphQL helpers for resumable uploads: createUpload and uploadChunk over real HTTP."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.support.client import UPLOAD_FIELDS, graphql

RESUMABLE_FIELDS = UPLOAD_FIELDS + " mode bytesReceived expiresAt resumeUrl partSize"
CREATE = f"""mutation($input: CreateUploadInput!) {{ createUpload(input: $input) {{ {RESUMABLE_FIELDS} }} }}"""
CHUNK = f"""mutation($id: ID!, $offset: BigInt!, $chunk: Upload!) {{
  uploadChunk(id: $id, offset: $offset, chunk: $chunk) {{ {RESUMABLE_FIELDS} }} }}"""
QUERY = f"query($id: ID!) {{ upload(id: $id) {{ {RESUMABLE_FIELDS} }} }}"


def create_upload(url: str, headers: dict[str, str], **fields: Any) -> httpx.Response:
    return graphql(url, CREATE, {"input": fields}, headers)


def upload_chunk(url: str, headers: dict[str, str], upload_id: str, offset: int, chunk: bytes) -> httpx.Response:
    operations = {"query": CHUNK, "variables": {"id": upload_id, "offset": offset, "chunk": None}}
    files = {
        "operations": (None, json.dumps(operations), "application/json"),
        "map": (None, json.dumps({"0": ["variables.chunk"]}), "application/json"),
        "0": ("chunk", chunk, "application/octet-stream"),
    }
    return httpx.post(f"{url}/graphql", files=files, headers=headers, timeout=120)
