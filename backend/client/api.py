"""The service's public GraphQL API, as the command-line client calls it (gql over httpx and websockets).

Nothing here knows about Django or the server's code: only the contract's schema, so the client
works against any deployment. Every failure the server reports comes out as `ApiError(code,
message)`, with the contract's code; failures to reach the server use client-side codes
(`CONNECTION_FAILED`, `BAD_RESPONSE`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from gql import Client, GraphQLRequest
from gql.transport.exceptions import (
    TransportError,
    TransportProtocolError,
    TransportQueryError,
    TransportServerError,
)
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport
from websockets.exceptions import ConnectionClosed

from backend.retries import RetryPolicy

UPLOAD_FIELDS = (
    "id",
    "filename",
    "contentType",
    "size",
    "sha256",
    "status",
    "mode",
    "bytesReceived",
    "bytesUploaded",
    "partsUploaded",
    "partsTotal",
    "progress",
    "attempts",
    "error",
    "storageBackend",
    "storageKey",
    "downloadUrl",
    "createdAt",
    "updatedAt",
    "completedAt",
    "expiresAt",
    "resumeUrl",
    "partSize",
)
PROGRESS_FIELDS = (
    "uploadId",
    "sequence",
    "status",
    "partNumber",
    "partsUploaded",
    "partsTotal",
    "bytesUploaded",
    "bytesTotal",
    "progress",
    "error",
    "at",
)
TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
# The server refuses more than this many uploads per page (BAD_USER_INPUT above it).
PAGE_SIZE = 100
# Reconnecting the progress stream, through the service's one retry policy: waits of 1, 2, 4, 8, 8 s
# at most and at least half that (a server restart takes seconds; ~12 s of trying at the least).
RECONNECT = RetryPolicy(base=1.0, cap=8.0, jitter=0.5)

_UPLOAD = " ".join(UPLOAD_FIELDS)
UPLOAD_GET = f"query Upload($id: ID!) {{ upload(id: $id) {{ {_UPLOAD} }} }}"
UPLOADS_PAGE = (
    "query Uploads($first: Int!, $after: String, $status: UploadStatus) {"
    " uploads(first: $first, after: $after, status: $status) {"
    f" totalCount pageInfo {{ hasNextPage endCursor }} edges {{ node {{ {_UPLOAD} }} }} }} }}"
)
UPLOAD_CANCEL = f"mutation CancelUpload($id: ID!) {{ cancelUpload(id: $id) {{ {_UPLOAD} }} }}"
UPLOAD_RETRY = f"mutation RetryUpload($id: ID!) {{ retryUpload(id: $id) {{ {_UPLOAD} }} }}"
UPLOAD_DELETE = "mutation DeleteUpload($id: ID!) { deleteUpload(id: $id) }"
UPLOAD_PROGRESS = (
    f"subscription UploadProgress($id: ID!) {{ uploadProgress(id: $id) {{ {' '.join(PROGRESS_FIELDS)} }} }}"
)

_QUERY_TIMEOUT = httpx.Timeout(30.0)


class ApiError(Exception):
    """A failure with the contract's error code (or a client-side one) and a message for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Endpoint:
    """Where the service is and who the caller is."""

    base_url: str
    token: str | None

    @property
    def graphql_url(self) -> str:
        return f"{self.base_url}/graphql"

    @property
    def websocket_url(self) -> str:
        parts = urlsplit(self.graphql_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def endpoint_from(*, url: str, token: str | None) -> Endpoint:
    """An `Endpoint` for a base URL given with or without a trailing `/graphql`."""
    base = url.strip().rstrip("/")
    if base.endswith("/graphql"):
        base = base[: -len("/graphql")]
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ApiError("BAD_URL", f"{url!r} is not an http(s) URL")
    return Endpoint(base_url=base, token=token or None)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and the exceptions it was raised from or during, innermost last."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def websocket_close_code(error: BaseException) -> int | None:
    """The close code the server sent, if `error` comes from a closed websocket."""
    for each in _chain(error):
        if isinstance(each, ConnectionClosed) and each.rcvd is not None:
            return each.rcvd.code
    return None


def api_error_from(error: BaseException, *, where: str) -> ApiError:
    """The `ApiError` a transport or query failure stands for; the first GraphQL error decides."""
    if isinstance(error, ApiError):
        return error
    close_code = websocket_close_code(error)
    if close_code == 4403:
        return ApiError("UNAUTHENTICATED", f"{where} refused the credentials (websocket closed with 4403)")
    if close_code is not None and 4400 <= close_code < 4500:
        return ApiError("BAD_RESPONSE", f"{where} closed the websocket with {close_code}")
    if isinstance(error, TransportQueryError):
        first = (error.errors or [{}])[0]
        if isinstance(first, dict):
            code = (first.get("extensions") or {}).get("code") or "GRAPHQL_ERROR"
            return ApiError(str(code), str(first.get("message") or error))
        return ApiError("GRAPHQL_ERROR", str(first))
    if isinstance(error, TransportServerError):
        return ApiError("BAD_RESPONSE", f"{where} answered HTTP {error.code}: {error}")
    if isinstance(error, TransportProtocolError):
        return ApiError("BAD_RESPONSE", f"{where} did not answer as a GraphQL server: {error}")
    if isinstance(error, TransportError | httpx.HTTPError | OSError | TimeoutError):
        innermost = list(_chain(error))[-1]
        reason = str(innermost) or type(innermost).__name__
        return ApiError("CONNECTION_FAILED", f"cannot reach {where}: {reason}")
    raise error


class UploadApi:
    """Queries and mutations over HTTP, one gql session for the client's lifetime.

    Use as `async with UploadApi(endpoint) as api:`. Methods return the server's JSON objects
    (field names as in the schema) and raise `ApiError`.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._client = Client(
            transport=HTTPXAsyncTransport(url=endpoint.graphql_url, headers=endpoint.headers, timeout=_QUERY_TIMEOUT),
            execute_timeout=None,
        )
        self._session: Any = None

    async def __aenter__(self) -> UploadApi:
        self._session = await self._client.connect_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close_async()

    async def execute(self, document: str, variables: dict[str, Any]) -> dict[str, Any]:
        """Run one query or mutation; its `data`, or ApiError."""
        return await self._execute(document, variables)

    async def _execute(self, document: str, variables: dict[str, Any], **extra: Any) -> dict[str, Any]:
        try:
            return await self._session.execute(GraphQLRequest(document, variable_values=variables), **extra)
        except (TransportError, httpx.HTTPError, OSError) as error:
            raise api_error_from(error, where=self.endpoint.graphql_url) from error

    async def upload_get(self, *, upload_id: str) -> dict[str, Any]:
        return (await self._execute(UPLOAD_GET, {"id": upload_id}))["upload"]

    async def uploads_list(self, *, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The caller's uploads, newest first, following pages until `limit` (None: all of them)."""
        uploads: list[dict[str, Any]] = []
        after: str | None = None
        while limit is None or len(uploads) < limit:
            first = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(uploads))
            page = (await self._execute(UPLOADS_PAGE, {"first": first, "after": after, "status": status}))["uploads"]
            uploads.extend(edge["node"] for edge in page["edges"])
            if not page["pageInfo"]["hasNextPage"] or not page["edges"]:
                break
            after = page["pageInfo"]["endCursor"]
        return uploads

    async def upload_cancel(self, *, upload_id: str) -> dict[str, Any]:
        return (await self._execute(UPLOAD_CANCEL, {"id": upload_id}))["cancelUpload"]

    async def upload_retry(self, *, upload_id: str) -> dict[str, Any]:
        return (await self._execute(UPLOAD_RETRY, {"id": upload_id}))["retryUpload"]

    async def upload_delete(self, *, upload_id: str) -> bool:
        return bool((await self._execute(UPLOAD_DELETE, {"id": upload_id}))["deleteUpload"])


@dataclass
class ProgressFeed:
    """`uploadProgress` subscriptions sharing one graphql-transport-ws connection.

    The connection opens on the first subscription. When it drops, every subscription on it fails
    with a connection error; `follow` then opens a new connection and subscribes again. That is
    safe because each subscription starts with a snapshot of the absolute state.
    """

    endpoint: Endpoint
    reconnect_attempts: int = 5
    _client: Any = None
    _session: Any = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def __aenter__(self) -> ProgressFeed:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._drop(self._session)

    async def _connect(self) -> Any:
        async with self._lock:
            if self._session is None:
                transport = WebsocketsTransport(
                    url=self.endpoint.websocket_url,
                    init_payload={"authorization": f"Bearer {self.endpoint.token}"} if self.endpoint.token else {},
                    subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
                )
                client = Client(transport=transport, execute_timeout=None)
                try:
                    self._session = await client.connect_async()
                except (TimeoutError, TransportError, OSError) as error:
                    raise api_error_from(error, where=self.endpoint.websocket_url) from error
                self._client = client
            return self._session

    async def _drop(self, session: Any) -> None:
        """Forget `session` if it is still the current one (another follower may have replaced it)."""
        async with self._lock:
            if session is None or session is not self._session:
                return
            client, self._client, self._session = self._client, None, None
        with contextlib.suppress(TransportError, OSError):
            await client.close_async()

    async def follow(self, *, upload_id: str) -> AsyncIterator[dict[str, Any]]:
        """The upload's progress events (absolute state, `sequence` increasing) until a terminal one.

        Reconnects after a lost connection (a few attempts with backoff, reset by every event);
        raises `ApiError` when the server refuses the subscription or cannot be reached.
        """
        last_sequence = -1
        failures = 0
        while True:
            session = await self._connect_with_retries(failures)
            try:
                request = GraphQLRequest(UPLOAD_PROGRESS, variable_values={"id": upload_id})
                # aclosing: leaving early (a terminal event, Ctrl-C) still ends the subscription.
                async with contextlib.aclosing(session.subscribe(request)) as events:
                    async for data in events:
                        event = data["uploadProgress"]
                        failures = 0
                        # A resubscription's snapshot may repeat the last event seen: skip it.
                        if event["sequence"] <= last_sequence and event["status"] not in TERMINAL_STATUSES:
                            continue
                        last_sequence = max(last_sequence, event["sequence"])
                        yield event
                        if event["status"] in TERMINAL_STATUSES:
                            return
            except TransportQueryError as error:
                raise api_error_from(error, where=self.endpoint.websocket_url) from error
            except (TransportError, OSError) as error:
                await self._drop(session)
                failures += 1
                if failures > self.reconnect_attempts or _refused(error):
                    raise api_error_from(error, where=self.endpoint.websocket_url) from error
                continue
            # The stream completed before a terminal status (a server going away): subscribe again
            # for a fresh snapshot, but not forever.
            failures += 1
            if failures > self.reconnect_attempts:
                raise ApiError("BAD_RESPONSE", f"the progress stream of {upload_id} kept ending before a final status")

    async def _connect_with_retries(self, failures: int) -> Any:
        """Connect under the service's one retry policy; the `failures` already seen count against it."""
        if failures:
            await asyncio.sleep(RECONNECT.delay(attempt=failures))  # sync-ok: backoff before reconnecting
        policy = replace(RECONNECT, attempts=max(1, self.reconnect_attempts + 1 - failures))
        retrying = policy.async_retrying(
            retry_on=ApiError, give_up=lambda error: _refused(error.__cause__ or error), failed_before=failures
        )
        return await retrying(self._connect)


def _refused(error: BaseException) -> bool:
    """Whether the server closed the websocket on purpose (4xxx): trying again would not help."""
    code = websocket_close_code(error)
    return code is not None and 4400 <= code < 4500
