"""An ASGI middleware that bounds request bodies before Django reads them.

Django's ASGI handler spools the whole body before any upload handler runs, so the limits must be
enforced here (CONTRACT section 4):

- a multipart body needs a Content-Length (411 `LENGTH_REQUIRED`), is refused from it when it is over
  `UPLOAD_MAX_BYTES` plus the envelope allowance (413 `FILE_TOO_LARGE`), when staging is short of
  space (507 `INSUFFICIENT_STORAGE`), or when it is over the sender's free quota plus the envelope
  allowance (413 `QUOTA_EXCEEDED`, backend/quotas/requests.py);
- any other body is at most `GRAPHQL_MAX_OPERATIONS_BYTES` (400 `BAD_REQUEST`), refused from its
  Content-Length or, without one (chunked), as soon as more bytes arrive;
- a body that stalls for `REQUEST_IDLE_TIMEOUT_SECONDS` is cut off (408 `REQUEST_TIMEOUT`).

A body cut off part-way is handed to Django as a client disconnect, so Django drops its spooled
copy and answers nothing; the refusal is sent from here. Staging is not touched: files are staged
only when the view parses a body that arrived whole.
"""

from __future__ import annotations

import asyncio
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from backend.http_errors import error_body
from backend.quotas.requests import quota_room_for_request
from backend.tokens.bearer import BEARER_USER_SCOPE_KEY
from backend.uploads.staging import staging_short_of_space

ENVELOPE_ALLOWANCE = 1024 * 1024

Scope = dict[str, Any]
Refusal = tuple[int, str, str]


class RequestLimits:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin1").lower(): v.decode("latin1") for k, v in scope["headers"]}
        refusal = _refusal_from_headers(headers) or await _quota_refusal(headers, scope)
        if refusal is not None:
            await _respond(send, refusal)
            return
        multipart = headers.get("content-type", "").lower().startswith("multipart/")
        guard = BodyGuard(
            receive,
            send,
            max_bytes=None if multipart else settings.GRAPHQL_MAX_OPERATIONS_BYTES,
            idle_timeout=settings.REQUEST_IDLE_TIMEOUT_SECONDS,
        )
        await self.app(scope, guard.receive, guard.send)
        if guard.refusal is not None and not guard.response_started:
            await _respond(send, guard.refusal)


class BodyGuard:
    """Wraps `receive` while the body arrives: counts its bytes and times out a stalled client.

    The idle timeout is one timer per request, re-armed only when it fires, rather than a timeout
    around every chunk: a large upload arrives in thousands of chunks, and a timeout context per
    chunk measurably slowed it. When the timer finds `receive` waiting longer than the timeout, it
    cancels that wait; the guard turns the cancellation into a disconnect for Django.

    Once the body is complete, `receive` passes through untouched (Django then waits on it for the
    client's disconnect for as long as the view runs, which is not a stall).
    """

    def __init__(self, receive: Any, send: Any, *, max_bytes: int | None, idle_timeout: float) -> None:
        self._receive = receive
        self._send = send
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout
        self.received = 0
        self.body_complete = False
        self.refusal: Refusal | None = None
        self.response_started = False
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Task[Any] | None = None
        self._waiting_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timed_out = False

    async def receive(self) -> dict[str, Any]:
        if self.body_complete:
            return await self._receive()
        if self.refusal is not None:
            return {"type": "http.disconnect"}
        self._waiter = asyncio.current_task()
        self._waiting_since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._waiting_since + self.idle_timeout, self._check_idle)
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            if not self._timed_out or self._waiter is None:
                raise
            self._waiter.uncancel()
            self.refusal = (
                408,
                "REQUEST_TIMEOUT",
                f"no part of the request body arrived for {self.idle_timeout:g} seconds",
            )
            return {"type": "http.disconnect"}
        finally:
            self._waiter = None
        if message["type"] != "http.request":
            self._disarm()
            return message
        self.received += len(message.get("body", b""))
        if self.max_bytes is not None and self.received > self.max_bytes:
            self._disarm()
            self.refusal = (400, "BAD_REQUEST", f"the request body is over {self.max_bytes} bytes")
            return {"type": "http.disconnect"}
        if not message.get("more_body", False):
            self._disarm()
            self.body_complete = True
        return message

    def _check_idle(self) -> None:
        self._timer = None
        if self._waiter is None:
            return  # between chunks: the next receive arms the timer again
        deadline = self._waiting_since + self.idle_timeout
        if self._loop.time() >= deadline:
            self._timed_out = True
            self._waiter.cancel()
        else:
            self._timer = self._loop.call_at(deadline, self._check_idle)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)


def _refusal_from_headers(headers: dict[str, str]) -> Refusal | None:
    length = headers.get("content-length")
    if length is not None and not length.isdigit():
        return 400, "BAD_REQUEST", "Content-Length is not a number"
    multipart = headers.get("content-type", "").lower().startswith("multipart/")
    if not multipart:
        if length is not None and int(length) > settings.GRAPHQL_MAX_OPERATIONS_BYTES:
            return 400, "BAD_REQUEST", f"the request body is over {settings.GRAPHQL_MAX_OPERATIONS_BYTES} bytes"
        return None
    if length is None:
        return 411, "LENGTH_REQUIRED", "a multipart upload needs a Content-Length header"
    if int(length) > settings.UPLOAD_MAX_BYTES + ENVELOPE_ALLOWANCE:
        return 413, "FILE_TOO_LARGE", f"uploads are limited to {settings.UPLOAD_MAX_BYTES} bytes"
    if staging_short_of_space() is not None:
        return 507, "INSUFFICIENT_STORAGE", "the server is short of staging space; try again later"
    return None


async def _quota_refusal(headers: dict[str, str], scope: Scope) -> Refusal | None:
    """413 QUOTA_EXCEEDED for a multipart body that could not fit in its sender's quota.

    The sender a bearer token names is left in the scope for the view (BEARER_USER_SCOPE_KEY)
    when it was looked up here (a body over 1 MiB).
    """
    if not headers.get("content-type", "").lower().startswith("multipart/"):
        return None
    if int(headers["content-length"]) <= ENVELOPE_ALLOWANCE:
        # No quota room is below 0, so this body could not be refused here: skip the lookups (a
        # thread and a database connection per request); the view authenticates the request
        # itself, and `quota_reserve` checks the file once staged.
        return None
    user, room = await sync_to_async(quota_room_for_request)(headers=headers)
    if headers.get("authorization"):
        scope[BEARER_USER_SCOPE_KEY] = (headers["authorization"], user)
    if room is not None and int(headers["content-length"]) > room + ENVELOPE_ALLOWANCE:
        return 413, "QUOTA_EXCEEDED", f"this upload would pass your quota: {room} bytes are free"
    return None


async def _respond(send: Any, refusal: Refusal) -> None:
    status, code, message = refusal
    body = error_body(code, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
