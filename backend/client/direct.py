"""`upload --direct`: the file's parts go straight to the bucket with presigned URLs (CONTRACT section 9).

createUpload(mode: DIRECT) gives the part size and count; each part is read from the file (pread,
one part in memory per part in flight), its SHA-256 signed in by signUploadParts, PUT to the URL
with the headers it came with, and confirmed with the ETag the bucket answered; completeUpload once
every part is in (the server then completes and verifies the object). `PARALLEL` parts go at once;
a part that fails on the way is signed afresh and sent again, up to `ATTEMPTS` times. An interrupted
direct upload is not resumed by the next run: it starts a new one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Callable

import httpx

from backend.client.api import ApiError, UploadApi

PARALLEL = 4
ATTEMPTS = 4
CREATE = "mutation($input: CreateUploadInput!) { createUpload(input: $input) { id partSize partsTotal } }"
SIGN = """mutation($id: ID!, $parts: [PartToSign!]!) {
  signUploadParts(id: $id, parts: $parts) { partNumber url headers { name value } } }"""
CONFIRM = (
    "mutation($id: ID!, $n: Int!, $etag: String!) { confirmUploadPart(id: $id, partNumber: $n, etag: $etag) { id } }"
)
COMPLETE = "mutation($id: ID!) { completeUpload(id: $id) { id status } }"


def _read_part(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as source:
        data = os.pread(source.fileno(), length, offset)
    if len(data) != length:
        raise OSError(f"{path} changed while it was being sent")
    return data


class DirectSender:
    def __init__(self, api: UploadApi) -> None:
        self.api = api

    async def send(
        self,
        *,
        path: str,
        filename: str,
        sha256: str,
        on_sent: Callable[[int], None],
        on_created: Callable[[str], None],
    ) -> str:
        """Every part into the bucket, then completeUpload; the upload's id."""
        size = os.path.getsize(path)
        created = (
            await self.api.execute(
                CREATE, {"input": {"filename": filename, "size": size, "sha256": sha256, "mode": "DIRECT"}}
            )
        )["createUpload"]
        upload_id, part_size = created["id"], created["partSize"]
        on_created(upload_id)
        numbers = list(range(1, created["partsTotal"] + 1))
        sent: dict[int, int] = {}
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0)) as http:

            async def lane() -> None:
                while numbers:
                    number = numbers.pop(0)
                    offset = (number - 1) * part_size
                    data = await asyncio.to_thread(_read_part, path, offset, min(part_size, size - offset))
                    await self._part(http, upload_id, number, data)
                    sent[number] = len(data)
                    on_sent(sum(sent.values()))

            await asyncio.gather(*(lane() for _ in range(min(PARALLEL, len(numbers)))))
        await self.api.execute(COMPLETE, {"id": upload_id})
        return str(upload_id)

    async def _part(self, http: httpx.AsyncClient, upload_id: str, number: int, data: bytes) -> None:
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        for attempt in range(1, ATTEMPTS + 1):
            signed = (
                await self.api.execute(SIGN, {"id": upload_id, "parts": [{"partNumber": number, "sha256": checksum}]})
            )["signUploadParts"][0]
            headers = {h["name"]: h["value"] for h in signed["headers"]}
            try:
                response = await http.put(signed["url"], content=data, headers=headers)
            except httpx.HTTPError as error:
                if attempt == ATTEMPTS:
                    raise ApiError(
                        "CONNECTION_FAILED", f"part {number}: the bucket cannot be reached: {error}"
                    ) from error
                await asyncio.sleep(0.5 * 2**attempt)  # sync-ok: backoff before sending the part again
                continue
            if response.status_code >= 500 and attempt < ATTEMPTS:
                await asyncio.sleep(0.5 * 2**attempt)  # sync-ok: backoff before sending the part again
                continue
            etag = response.headers.get("etag")
            if response.status_code != 200 or not etag:
                raise ApiError("BAD_RESPONSE", f"part {number}: the bucket answered HTTP {response.status_code}")
            await self.api.execute(CONFIRM, {"id": upload_id, "n": number, "etag": etag})
            return
