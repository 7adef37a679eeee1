"""Sending one file resumably: the tus 1.0.0 requests `upload` makes, and where it keeps its place.

A file goes to `/uploads/` (CONTRACT section 8): POST creates the upload (Upload-Length, and
Upload-Metadata with the filename and the whole file's sha256, which the server checks before
QUEUED), then PATCHes of at most `CHUNK_BYTES` carry the bytes, each streamed from the file a MiB
at a time (never a chunk in memory). The upload's URL is written to the place store
(`backend.client.places`) as soon as the server gives it, so a run stopped any way at all
(Ctrl-C, a crash, SIGKILL) leaves it behind, and the next run for the same file asks the server
with HEAD where it stopped and sends only the rest.

A failed request is tried again under the service's one retry policy (`RETRY`, tenacity): connection errors, 5xx,
409 (another offset than ours: the HEAD before the next try tells the right one) and 423 (a
PATCH whose connection broke can hold the upload's lock a moment longer). Before each new try the
offset is read again with HEAD, because a PATCH cut off midway keeps what arrived. The attempts
count per chunk: a connection that keeps dropping but lets bytes through still gets the file there.
Every other refusal is final and comes out as `ApiError` with the server's code.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from backend.client.api import ApiError, Endpoint
from backend.client.places import PlaceStore
from backend.retries import RetryPolicy

TUS_VERSION = "1.0.0"
CHUNK_BYTES = 32 * 1024 * 1024
READ_BYTES = 1024 * 1024
PROBE_BYTES = 64 * 1024
# Statuses worth another try: an offset that moved (409), a lock still held (423), a server in trouble.
_RETRY_STATUSES = frozenset({409, 423, 500, 502, 503, 504})
# Failures after which the next run should take the upload up again (the server may be back by then).
_KEEP_PLACE = frozenset({"CONNECTION_FAILED", "BAD_RESPONSE"})
_TIMEOUT = httpx.Timeout(30.0, read=300.0)


# The service's one retry policy (backend.retries), patient enough for a network gone for about half a
# minute; longer than that, the run stops and running it again resumes.
RETRY = RetryPolicy(attempts=8, base=0.5, cap=10.0)


class Retryable(Exception):
    """A request that failed in a way another try can mend (see the module's docstring)."""


def place_key(*, endpoint: Endpoint, size: int, sha256: str) -> str:
    """What identifies "the same file to the same server": its size and whole-file digest."""
    return f"{endpoint.base_url} {size} {sha256}"


def _metadata(**values: str) -> str:
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in values.items())


def _refusal(response: httpx.Response, *, what: str) -> ApiError:
    """The server's JSON refusal as an ApiError (its contract code), or a BAD_RESPONSE."""
    try:
        first = response.json()["errors"][0]
        return ApiError(str(first["extensions"]["code"]), str(first["message"]))
    except (ValueError, KeyError, IndexError, TypeError):
        return ApiError("BAD_RESPONSE", f"{what} answered HTTP {response.status_code}")


def upload_id_of(url: str) -> str:
    """The upload's GraphQL id: the last segment of its tus URL."""
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]


class ResumableSender:
    """Sends files to one endpoint's `/uploads/`; use as `async with ResumableSender(...) as sender:`."""

    def __init__(self, endpoint: Endpoint, places: PlaceStore, *, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.endpoint = endpoint
        self.places = places
        self.chunk_bytes = chunk_bytes
        headers = {**endpoint.headers, "Tus-Resumable": TUS_VERSION}
        self._http = httpx.AsyncClient(headers=headers, timeout=_TIMEOUT)

    async def __aenter__(self) -> ResumableSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def send(
        self,
        *,
        path: str,
        filename: str,
        sha256: str,
        on_sent: Callable[[int], None],
        on_resumed: Callable[[int], None],
        on_created: Callable[[str], None],
    ) -> str:
        """Send the file at `path` (resuming an earlier run's upload of it); the upload's id.

        `on_created(id)` is called as soon as the upload exists on the server, `on_resumed(offset)`
        when an earlier run's upload is taken up at `offset`, `on_sent(bytes)` as bytes go out.
        Returns once the server has every byte (the upload QUEUED, or refused: then ApiError).
        """
        size = os.path.getsize(path)
        key = place_key(endpoint=self.endpoint, size=size, sha256=sha256)
        url, offset = await self._resume(key, size)
        if url is None:
            url = await self._create(filename=filename, size=size, sha256=sha256)
            offset = 0
            self.places.put(key, url)
        else:
            on_resumed(offset)
        on_created(upload_id_of(url))
        on_sent(offset)
        try:
            while offset < size:  # an empty file is complete once created
                offset = await self._advance(url, offset, path=path, size=size, on_sent=on_sent)
        except ApiError as error:
            if error.code not in _KEEP_PLACE:
                self.places.drop(key)  # refused for good: the next run starts a new upload
            raise
        self.places.drop(key)
        return upload_id_of(url)

    async def terminate(self, *, upload_id: str) -> None:
        """DELETE the upload (tus termination): CANCELLED, its received bytes removed at once."""
        url = f"{self.endpoint.base_url}/uploads/{upload_id}"

        async def delete() -> None:
            response = await self._http.delete(url)
            if response.status_code in _RETRY_STATUSES:  # 423: the PATCH just stopped still holds the lock
                raise Retryable(f"DELETE answered {response.status_code}")
            if response.status_code not in (204, 404, 410):
                raise _refusal(response, what=url)

        await self._retrying(delete)
        self.places.forget_url(url)

    # --- the steps ---------------------------------------------------------------------------

    async def _resume(self, key: str, size: int) -> tuple[str | None, int]:
        """An earlier run's upload of this file and the server's offset, or (None, 0)."""
        url = self.places.get(key)
        if url is None:
            return None, 0
        try:
            offset = await self._retrying(self._head, url, size)
        except ApiError as error:
            if error.code not in ("GONE", "NOT_FOUND", "BAD_RESPONSE"):
                raise
            self.places.drop(key)  # expired, cancelled, someone else's, finished: start afresh
            return None, 0
        if offset >= size and size > 0:
            self.places.drop(key)  # every byte was in already (and the answer lost): a new upload
            return None, 0
        return url, offset

    async def _create(self, *, filename: str, size: int, sha256: str) -> str:
        collection = f"{self.endpoint.base_url}/uploads/"
        headers = {"Upload-Length": str(size), "Upload-Metadata": _metadata(filename=filename, sha256=sha256)}

        async def create() -> str:
            response = await self._http.post(collection, headers=headers)
            if response.status_code in _RETRY_STATUSES:
                raise Retryable(f"POST answered {response.status_code}")
            if response.status_code != 201 or "Location" not in response.headers:
                raise _refusal(response, what=collection)
            return urljoin(collection, response.headers["Location"])

        return await self._retrying(create)

    async def _head(self, url: str, size: int) -> int:
        response = await self._http.head(url)
        if response.status_code in _RETRY_STATUSES:
            raise Retryable(f"HEAD answered {response.status_code}")
        if response.status_code in (404, 410):
            code = "GONE" if response.status_code == 410 else "NOT_FOUND"
            raise ApiError(code, f"the upload at {url} is gone (expired, cancelled or not yours)")
        offset = response.headers.get("Upload-Offset", "")
        if response.status_code != 200 or not offset.isdigit():
            raise ApiError("BAD_RESPONSE", f"HEAD {url} answered HTTP {response.status_code}")
        if response.headers.get("Upload-Length") not in (None, str(size)):
            raise ApiError("BAD_RESPONSE", f"the upload at {url} is not {size} bytes long")
        return int(offset)

    async def _advance(self, url: str, offset: int, *, path: str, size: int, on_sent: Callable[[int], None]) -> int:
        """One chunk from `offset`, tried again from the server's offset while it fails retryably."""
        state = {"offset": offset, "stale": False}

        async def attempt() -> int:
            if state["stale"]:
                state["offset"] = await self._head(url, size)
                on_sent(state["offset"])
            start = state["offset"]
            # After a failure the first PATCH is small: if the server still holds the lock of the PATCH
            # that broke (423), only these bytes were sent for nothing.
            chunk = PROBE_BYTES if state["stale"] else self.chunk_bytes
            length = min(chunk, size - start)
            headers = {
                "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": str(start),
                "Content-Length": str(length),
            }
            body = _file_range(path, start, length, on_sent)
            state["stale"] = True
            response = await self._http.patch(url, headers=headers, content=body)
            if response.status_code in _RETRY_STATUSES:
                raise Retryable(f"PATCH answered {response.status_code}")
            if response.status_code != 204:
                raise _refusal(response, what=url)
            new_offset = int(response.headers.get("Upload-Offset", start + length))
            on_sent(new_offset)
            return new_offset

        return await self._retrying(attempt)

    async def _retrying(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return await RETRY.async_retrying(retry_on=(Retryable, httpx.TransportError))(call, *args)
        except httpx.TransportError as error:
            reason = str(error) or type(error).__name__
            raise ApiError("CONNECTION_FAILED", f"cannot reach {self.endpoint.base_url}: {reason}") from error
        except Retryable as error:
            raise ApiError("BAD_RESPONSE", f"{self.endpoint.base_url} kept answering: {error}") from error


async def _file_range(path: str, start: int, length: int, on_sent: Callable[[int], None]) -> AsyncIterator[bytes]:
    """`length` bytes of the file from `start`, a MiB at a time; `on_sent` gets the absolute offset."""
    with open(path, "rb") as file:
        file.seek(start)
        done = 0
        while done < length:
            data = file.read(min(READ_BYTES, length - done))
            if not data:
                raise ApiError("FILE_ERROR", f"{path} got shorter while it was being sent")
            done += len(data)
            yield data
            on_sent(start + done)
