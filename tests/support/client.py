"""A small GraphQL client over real HTTP and websockets, speaking the multipart request spec."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import websockets

UPLOAD_FIELDS = """id filename contentType size sha256 status bytesUploaded partsUploaded partsTotal progress
attempts error storageBackend storageKey downloadUrl createdAt updatedAt completedAt"""
UPLOAD_MUTATION = (
    f"mutation($file: Upload!, $sha256: String) {{ uploadFile(file: $file, sha256: $sha256) {{ {UPLOAD_FIELDS} }} }}"
)
UPLOAD_QUERY = f"query($id: ID!) {{ upload(id: $id) {{ {UPLOAD_FIELDS} }} }}"
PROGRESS_SUBSCRIPTION = """subscription($id: ID!) { uploadProgress(id: $id) {
  uploadId sequence status partNumber partsUploaded partsTotal bytesReceived bytesUploaded bytesTotal progress
  error at } }"""


def graphql(
    url: str, query: str, variables: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{url}/graphql", json={"query": query, "variables": variables or {}}, headers=headers, timeout=30
    )


def upload_file(
    url: str,
    content: bytes,
    *,
    filename: str = "file.bin",
    headers: dict[str, str] | None = None,
    sha256: str | None = None,
) -> httpx.Response:
    """Send `content` with the uploadFile mutation as a spec-conformant multipart request."""
    operations = {"query": UPLOAD_MUTATION, "variables": {"file": None, "sha256": sha256}}
    files = {
        "operations": (None, json.dumps(operations), "application/json"),
        "map": (None, json.dumps({"0": ["variables.file"]}), "application/json"),
        "0": (filename, content, "application/octet-stream"),
    }
    return httpx.post(f"{url}/graphql", files=files, headers=headers, timeout=120)


def data_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert response.status_code == 200, body
    assert not body.get("errors"), body
    return body["data"]


def error_codes(response: httpx.Response) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in response.json().get("errors") or []]


class Subscriber:
    """One graphql-transport-ws connection; subscriptions on it by id."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._next_id = 0

    async def subscribe(self, upload_id: str, query: str = PROGRESS_SUBSCRIPTION) -> str:
        self._next_id += 1
        sub_id = str(self._next_id)
        await self.ws.send(
            json.dumps({"id": sub_id, "type": "subscribe", "payload": {"query": query, "variables": {"id": upload_id}}})
        )
        return sub_id

    async def receive(self) -> dict[str, Any]:
        while True:
            message = json.loads(await self.ws.recv())
            if message["type"] == "ping":
                await self.ws.send(json.dumps({"type": "pong"}))
                continue
            return message

    async def events_until_complete(
        self, sub_id: str, events: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """The uploadProgress payloads of `sub_id` until its `complete` (other ids are skipped).

        Each is appended to `events` (a new list by default) as it arrives, so a caller whose
        connection drops midway keeps those received before.
        """
        events = [] if events is None else events
        while True:
            message = await self.receive()
            if message.get("id") != sub_id:
                continue
            if message["type"] == "complete":
                return events
            if message["type"] == "error":
                raise AssertionError(f"subscription error: {message}")
            assert message["type"] == "next", message
            assert not message["payload"].get("errors"), message
            events.append(message["payload"]["data"]["uploadProgress"])


@asynccontextmanager
async def subscriber(
    ws_url: str, token: str | None, *, payload: dict[str, Any] | None = None, open_timeout: float = 10
) -> AsyncIterator[Subscriber]:
    async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"], open_timeout=open_timeout) as ws:
        init_payload = payload if payload is not None else {"authorization": f"Bearer {token}"}
        await ws.send(json.dumps({"type": "connection_init", "payload": init_payload}))
        ack = json.loads(await ws.recv())
        assert ack["type"] == "connection_ack", ack
        yield Subscriber(ws)


async def follow_progress(
    ws_url: str, token: str, upload_id: str, *, retry_for: float = 30.0
) -> list[list[dict[str, Any]]]:
    """Follow `uploadProgress(upload_id)` to its end as a client would across a server restart.

    When the connection drops (or cannot be made) before the subscription completes, connect again
    and subscribe again, for up to `retry_for` seconds per outage. Returns the events of each
    subscription in order, one list per connection.
    """
    runs: list[list[dict[str, Any]]] = []
    outage_since: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        events: list[dict[str, Any]] = []
        try:
            async with subscriber(ws_url, token) as sub:
                outage_since = None
                runs.append(events)
                await sub.events_until_complete(await sub.subscribe(upload_id), events)
                return runs
        except (OSError, websockets.exceptions.WebSocketException):
            outage_since = outage_since or loop.time()
            if loop.time() - outage_since > retry_for:
                raise
            await asyncio.sleep(0.1)  # sync-ok: a client's reconnect backoff; the next attempt checks the server
