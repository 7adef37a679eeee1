"""The ASGI application serving /uploads/: tus 1.0.0 requests onto the resumable-upload services.

Each request: the method (or `X-HTTP-Method-Override`), `Tus-Resumable` (412 without 1.0.0,
OPTIONS excepted), the caller (bearer token or session; 401 without), then one service call.
Bodies (PATCH, and POST with creation-with-upload) stream into the chunk appender as they
arrive, about a MiB at a time, one write in flight while the next MiB is received: uvicorn
stops reading the socket while the app does not ask for more, so a slow disk slows the client
(backpressure) instead of filling memory. Service calls run on a thread pool of this module's own,
never on the event loop.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from importlib import import_module
from typing import Any, TypeVar

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import User
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.db import close_old_connections, connections

from backend.limits import BodyGuard
from backend.logs import upload_log_bind
from backend.tokens.services import token_user
from backend.tus.answers import Answer, asgi_send_args, capabilities, cors_headers
from backend.tus.protocol import (
    OFFSET_OCTET_STREAM,
    PATH_PREFIX,
    VERSION,
    HeaderError,
    concat_parse,
    http_date,
    integer_parse,
    metadata_format,
    metadata_parse,
    upload_id_from_path,
)
from backend.uploads.errors import BadUserInput, Gone, Unauthenticated, UploadError
from backend.uploads.models import ConcatRole, FileUpload, UploadStatus
from backend.uploads.resumable.checksums import ChunkChecksum, checksum_parse
from backend.uploads.services import concatenation, resumable
from backend.uploads.services.chunks import ChunkAppend, chunk_append_begin

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Bytes handed to the writer per pool call (at most twice that per upload in memory). Handed over as
# soon as they are there, never held waiting for more: a slow client's bytes reach staging at once.
FLUSH_BYTES = 1024 * 1024
Scope = dict[str, Any]


POOL_THREADS = 16
# How long a pool thread keeps its database connection between calls (the configured CONN_MAX_AGE
# when that is longer). Opening one cost a PATCH more than all its queries: two a PATCH, about 1.5 ms
# of CPU each on SQLite (its functions registered, the WAL pragmas), a connection set-up on
# PostgreSQL. Django's advice to disable persistent connections under ASGI is about its own
# per-request threads, whose connections nothing would ever close; these threads are at most
# POOL_THREADS and live as long as the process. A connection that broke is still closed after the
# call, and with CONN_HEALTH_CHECKS checked before it is used again.
POOL_CONN_MAX_AGE_SECONDS = 300


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="tus", initializer=_pool_thread_start)


def _pool_thread_start() -> None:
    """Give this thread's connections (Django keeps one per thread) their longer life."""
    for alias in connections:
        wrapper = connections[alias]
        max_age = wrapper.settings_dict["CONN_MAX_AGE"]
        if max_age is not None and max_age < POOL_CONN_MAX_AGE_SECONDS:
            wrapper.settings_dict = {**wrapper.settings_dict, "CONN_MAX_AGE": POOL_CONN_MAX_AGE_SECONDS}


async def _run(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`func` on the pool; the thread's database connection is then handled as Django does after a
    request (closed past its maximum age or when broken), since no request signals run here."""
    return await asyncio.get_running_loop().run_in_executor(_pool(), partial(_closing, func, *args, **kwargs))


def _closing(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    try:
        return func(*args, **kwargs)
    finally:
        close_old_connections()


def is_tus_path(path: str) -> bool:
    return path == PATH_PREFIX or path.startswith(PATH_PREFIX + "/")


class TusRouter:
    """HTTP for /uploads goes to the tus application; everything else to `fallback` (Django)."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback
        self.tus = TusApplication()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and is_tus_path(scope["path"]):
            await self.tus(scope, receive, send)
        else:
            await self.fallback(scope, receive, send)


class TusApplication:
    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        request = ASGIRequest(scope, io.BytesIO())
        headers = request.headers
        origin = headers.get("Origin")
        method = (headers.get("X-HTTP-Method-Override") or scope["method"]).upper()
        guard = BodyGuard(receive, send, max_bytes=None, idle_timeout=settings.REQUEST_IDLE_TIMEOUT_SECONDS)
        try:
            answer = await self._answer(request, method, guard)
        except Exception as exc:
            answer = Answer.for_error(exc) or _unexpected(exc)
        if answer is None:
            return  # the client went away mid-body; there is no one to answer
        start, body = asgi_send_args(answer, origin=origin, head=method == "HEAD")
        await send(start)
        await send(body)

    async def _answer(self, request: ASGIRequest, method: str, guard: BodyGuard) -> Answer | None:
        path = request.path
        upload_id = upload_id_from_path(path)
        collection = path.rstrip("/") == PATH_PREFIX
        if not collection and upload_id is None:
            return Answer.refusal(404, "NOT_FOUND", "no such upload")
        if method == "OPTIONS":
            preflight = cors_headers(request.headers.get("Origin"), preflight=True)
            return Answer(204, {**capabilities(), **preflight})
        if request.headers.get("Tus-Resumable", "").strip() != VERSION:
            return Answer.refusal(
                412, "PRECONDITION_FAILED", f"send Tus-Resumable: {VERSION}", {"Tus-Version": VERSION}
            )
        if collection:
            user = await _run(_authenticate, request)
            if method != "POST":
                return _not_allowed("OPTIONS, POST")
            return await self._create(request, user, guard)
        assert upload_id is not None
        upload_log_bind(upload_id)
        # Each of these authenticates in its one pool call (a hop and a connection fewer per request).
        if method == "HEAD":
            return await _run(_head, request, upload_id)
        if method == "PATCH":
            return await self._patch(request, upload_id, guard)
        if method == "DELETE":
            await _run(_as_caller, request, resumable.resumable_terminate, upload_id=upload_id)
            return Answer(204)
        await _run(_authenticate, request)
        return _not_allowed("OPTIONS, HEAD, PATCH, DELETE")

    # --- the requests -----------------------------------------------------------------------

    async def _create(self, request: ASGIRequest, user: User, guard: BodyGuard) -> Answer | None:
        headers = request.headers
        base_url = _base_url(request)  # a Host this server does not serve is refused before anything is made
        concat = concat_parse(headers.get("Upload-Concat"))
        metadata = metadata_parse(headers.get("Upload-Metadata"))
        for key in ("filename", "name", "sha256"):
            if key in metadata and metadata[key] is None:
                raise HeaderError(f"Upload-Metadata {key} is not UTF-8 text")
        filename = metadata.get("filename") or metadata.get("name")
        sha256 = metadata.get("sha256")
        length = integer_parse(headers.get("Upload-Length"), "Upload-Length")
        deferred = headers.get("Upload-Defer-Length")
        if deferred is not None and deferred.strip() != "1":
            raise HeaderError("Upload-Defer-Length must be 1")
        body_length, has_body = _body_of(request)
        checksum = _checksum_of(request)
        common = {"tus_metadata": metadata_format(metadata), "concat_header": headers.get("Upload-Concat", "")}
        if concat is not None and concat[0] == "final":
            if length is not None or deferred is not None or has_body:
                raise HeaderError("a final upload takes no Upload-Length, Upload-Defer-Length or body")
            upload = await _run(
                concatenation.resumable_concatenate,
                user=user,
                partial_ids=concat[1],
                filename=filename,
                sha256=sha256,
                **common,
            )
            return self._created(base_url, upload)
        if (length is None) == (deferred is None):
            raise HeaderError("send exactly one of Upload-Length and Upload-Defer-Length: 1")
        if has_body and _content_type(request) != OFFSET_OCTET_STREAM:
            return _wrong_content_type()
        upload = await _run(
            resumable.resumable_create,
            user=user,
            filename=filename,
            size=length,
            sha256=sha256,
            partial=concat is not None,
            **common,
        )
        upload_log_bind(upload.id)
        if has_body:
            append = await _run(
                chunk_append_begin,
                user=user,
                upload_id=upload.id,
                offset=0,
                chunk_length=body_length,
                checksum=checksum,
            )
            result = await self._receive_into(append, guard)
            if isinstance(result, Answer) or result is None:
                return result
            upload = result
        return self._created(base_url, upload)

    def _created(self, base_url: str, upload: FileUpload) -> Answer:
        headers = {"Location": f"{base_url}{PATH_PREFIX}/{upload.id}", **_offset_headers(upload)}
        return Answer(201, headers)

    async def _patch(self, request: ASGIRequest, upload_id: Any, guard: BodyGuard) -> Answer | None:
        begun = await _run(_patch_begin, request, upload_id)
        if isinstance(begun, Answer):
            return begun
        result = await self._receive_into(begun, guard)
        if isinstance(result, Answer) or result is None:
            return result
        return Answer(204, _offset_headers(result))

    async def _receive_into(self, append: ChunkAppend, guard: BodyGuard) -> FileUpload | Answer | None:
        """Stream the request body into `append`; the upload once finished, or what to answer if not."""
        keeper = asyncio.create_task(_keep_lock(append))
        try:
            whole, last = await _stream(append, guard)
            if whole:
                # The last bytes, the commit and the answer's row in one pool call.
                return await _run(append.finish, *last, reread=False)
            await _run(append.abort)
        except BaseException:
            await _run(append.close)
            raise
        finally:
            keeper.cancel()
        if guard.refusal is not None:
            status, code, message = guard.refusal
            return Answer.refusal(status, code, message, {"Connection": "close"})
        return None


def _as_caller(request: ASGIRequest, func: Callable[..., T], /, **kwargs: Any) -> T:
    """`func(user=<the caller>, **kwargs)`: the authentication and the call in one pool call."""
    return func(user=_authenticate(request), **kwargs)


def _head(request: ASGIRequest, upload_id: Any) -> Answer:
    upload = resumable.resumable_get_for_user(user=_authenticate(request), upload_id=upload_id)
    if resumable.resumable_gone(upload):
        raise Gone("this upload was cancelled, has expired or failed")
    headers = _offset_headers(upload)
    if upload.length_deferred:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(upload.size)
    if upload.tus_metadata:
        headers["Upload-Metadata"] = upload.tus_metadata
    if upload.concat_header:
        headers["Upload-Concat"] = upload.concat_header
    return Answer(200, headers)


class _FinalUpload(Exception):
    """A PATCH to a final upload (tus concatenation: it is made whole, never appended to)."""


def _refuse_final(upload: FileUpload) -> None:
    if upload.concat_role == ConcatRole.FINAL:
        raise _FinalUpload


def _patch_begin(request: ASGIRequest, upload_id: Any) -> ChunkAppend | Answer:
    """One pool call: the caller, the PATCH's headers, the upload's lookup and the appender's start
    (in the order their refusals come: 401, then the headers, then the upload)."""
    user = _authenticate(request)
    if _content_type(request) != OFFSET_OCTET_STREAM:
        return _wrong_content_type()
    offset = integer_parse(request.headers.get("Upload-Offset"), "Upload-Offset")
    if offset is None:
        raise HeaderError("a PATCH needs Upload-Offset")
    length = integer_parse(request.headers.get("Upload-Length"), "Upload-Length")
    checksum = _checksum_of(request)
    body_length, _ = _body_of(request)
    try:
        return chunk_append_begin(
            user=user,
            upload_id=upload_id,
            offset=offset,
            chunk_length=body_length,
            upload_length=length,
            checksum=checksum,
            check=_refuse_final,
        )
    except _FinalUpload:
        return Answer.refusal(403, "FORBIDDEN", "a final upload is made by concatenation; it takes no PATCH")


async def _stream(append: ChunkAppend, guard: BodyGuard) -> tuple[bool, list[bytes]]:
    """Feed the body to `append`, one write in flight. (True, the last pieces, not written: the
    caller hands them to `finish`) if it arrived whole; (False, []) if it was cut off."""
    # `pending` is awaited before the next write is handed over, so writes stay in order.
    pending: asyncio.Future[None] | None = None
    buffered: list[bytes] = []
    size = 0
    try:
        while True:
            message = await guard.receive()
            cut_off = message["type"] == "http.disconnect"
            if chunk := message.get("body", b""):
                buffered.append(chunk)
                size += len(chunk)
            more = message.get("more_body", False) and not cut_off
            if not more and not cut_off:
                return True, buffered
            if buffered and (size >= FLUSH_BYTES or not more):
                pieces, buffered, size = buffered, [], 0
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(_run(append.write, *pieces))
            if not more:
                # What arrived before a cut is written too: `abort` then commits it.
                return False, []
    finally:
        if pending is not None:
            await pending


async def _keep_lock(append: ChunkAppend) -> None:
    """Renew the writer lock while the body arrives, however slowly (a dead process stops renewing)."""
    while True:
        await asyncio.sleep(settings.UPLOAD_LOCK_TTL_SECONDS / 3)  # sync-ok: the lock's renewal period
        await _run(append.lock.renew)


def _authenticate(request: ASGIRequest) -> User:
    """The caller from a bearer token (which decides when present) or the session cookie."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        user = token_user(token=token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if user is None:
            raise Unauthenticated("the bearer token is invalid, expired or revoked")
        return user
    key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    if key:
        request.session = import_module(settings.SESSION_ENGINE).SessionStore(key)
        session_user = auth.get_user(request)  # type: ignore[arg-type]
        if session_user.is_authenticated:
            return session_user  # type: ignore[return-value]
    raise Unauthenticated("authentication required: send Authorization: Bearer <token>")


def _base_url(request: ASGIRequest) -> str:
    """Where clients reach this server: PUBLIC_BASE_URL, else the (forwarded) scheme and host."""
    if settings.PUBLIC_BASE_URL:
        return settings.PUBLIC_BASE_URL
    try:
        return f"{request.scheme}://{request.get_host()}"
    except DisallowedHost as exc:
        raise BadUserInput("the Host header names a host this server does not serve") from exc


def _offset_headers(upload: FileUpload) -> dict[str, str]:
    receiving = upload.status == UploadStatus.RECEIVING
    headers = {"Upload-Offset": str(upload.bytes_received if receiving else upload.size)}
    if receiving and upload.expires_at is not None:
        headers["Upload-Expires"] = http_date(upload.expires_at)
    return headers


def _content_type(request: ASGIRequest) -> str:
    return request.headers.get("Content-Type", "").split(";")[0].strip().lower()


def _body_of(request: ASGIRequest) -> tuple[int | None, bool]:
    """(Content-Length or None when chunked, whether a body comes)."""
    length = integer_parse(request.headers.get("Content-Length"), "Content-Length")
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if chunked:
        return None, True
    return (length or 0), bool(length)


def _checksum_of(request: ASGIRequest) -> ChunkChecksum | None:
    header = request.headers.get("Upload-Checksum")
    return checksum_parse(header) if header is not None else None


def _wrong_content_type() -> Answer:
    message = f"the body must be sent as Content-Type: {OFFSET_OCTET_STREAM}"
    return Answer.refusal(415, "UNSUPPORTED_MEDIA_TYPE", message)


def _not_allowed(allowed: str) -> Answer:
    return Answer.refusal(405, "BAD_REQUEST", "this method is not part of the tus protocol here", {"Allow": allowed})


def _unexpected(exc: Exception) -> Answer:
    if isinstance(exc, UploadError):
        return Answer.refusal(400, exc.code, exc.message)
    logger.error("unexpected error handling a tus request", exc_info=exc)
    return Answer.refusal(500, "INTERNAL_SERVER_ERROR", "Internal server error")
