"""Sending a file from disk, streamed (never held in memory), to the service or to the bare view."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from tests.support.client import UPLOAD_MUTATION


def upload_ours(client: httpx.Client, url: str, path: Path, *, headers: dict[str, str]) -> tuple[float, dict]:
    """POST the uploadFile mutation with `path` as the file; returns (seconds request → answer, upload)."""
    operations = {"query": UPLOAD_MUTATION, "variables": {"file": None, "sha256": None}}
    with path.open("rb") as body:
        files = {
            "operations": (None, json.dumps(operations), "application/json"),
            "map": (None, json.dumps({"0": ["variables.file"]}), "application/json"),
            "0": (path.name, body, "application/octet-stream"),
        }
        started = time.perf_counter()
        response = client.post(f"{url}/graphql", files=files, headers=headers)
        elapsed = time.perf_counter() - started
    answer = response.json()
    if response.status_code != 200 or answer.get("errors"):
        raise RuntimeError(f"uploadFile failed: {response.status_code} {answer}")
    return elapsed, answer["data"]["uploadFile"]


def upload_bare(client: httpx.Client, url: str, path: Path) -> float:
    """POST `path` to the bare Django view; returns seconds request → answer."""
    with path.open("rb") as body:
        started = time.perf_counter()
        response = client.post(f"{url}/bench/bare", files={"0": (path.name, body, "application/octet-stream")})
        elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"bare view failed: {response.status_code} {response.text[:300]}")
    return elapsed


def http_client() -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(600.0))
