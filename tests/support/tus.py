"""Raw tus 1.0.0 requests over real HTTP (httpx), for the protocol and hostile-input tests."""

from __future__ import annotations

import base64
from typing import Any

import httpx

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {"Content-Type": "application/offset+octet-stream"}


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def tus_create(url: str, headers: dict[str, str], *, length: int | None = None, **extra: Any) -> httpx.Response:
    sent = {**TUS, **headers, **{k.replace("_", "-"): str(v) for k, v in extra.items() if k != "content"}}
    if length is not None:
        sent["Upload-Length"] = str(length)
    content = extra.get("content")
    if content is not None:
        sent.update(OCTETS)
    return httpx.post(f"{url}/uploads/", headers=sent, content=content, timeout=60)


def tus_patch(location: str, headers: dict[str, str], offset: int, content: bytes, **extra: str) -> httpx.Response:
    sent = {
        **TUS,
        **OCTETS,
        **headers,
        "Upload-Offset": str(offset),
        **{k.replace("_", "-"): v for k, v in extra.items()},
    }
    return httpx.patch(location, headers=sent, content=content, timeout=60)


def tus_head(location: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.head(location, headers={**TUS, **headers}, timeout=30)


def tus_delete(location: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.delete(location, headers={**TUS, **headers}, timeout=30)


def code_of(response: httpx.Response) -> str:
    return response.json()["errors"][0]["extensions"]["code"]
