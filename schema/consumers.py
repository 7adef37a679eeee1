"""The websocket side of /graphql: subscriptions over graphql-transport-ws (and legacy graphql-ws)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from importlib import import_module
from typing import Any, cast
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from channels.auth import get_user
from channels.exceptions import StopConsumer
from django.conf import settings
from django.http import parse_cookie
from django.http.request import validate_host
from strawberry.channels import GraphQLWSConsumer
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from websockets.exceptions import InvalidState

from backend.event_loops import per_event_loop
from backend.redis_errors import REDIS_UNREACHABLE
from backend.tokens.bearer import bearer_token
from backend.tokens.services import token_user, token_users
from backend.uploads.progress import progress_layer_probe, progress_sink
from schema.context import Context
from schema.fanout import SubscriptionSink, next_message_prefix, shared_message_json
from schema.validation import json_decode

try:
    from uvicorn.protocols.websockets import websockets_sansio_impl
except ImportError:  # another server (daphne): every message goes through the ASGI send
    websockets_sansio_impl = None  # type: ignore[assignment]
# uvicorn's default websocket protocol (with websockets installed), the one `send_now` writes to.
SansIOProtocol: Any = getattr(websockets_sansio_impl, "WebSocketsSansIOProtocol", None)

logger = logging.getLogger(__name__)

# How long a client refused while Redis is away is asked to wait before it connects again.
RETRY_AFTER_SECONDS = 2


class SocketClosed(Exception):
    """The server closed the socket under the application (its keepalive gave up on a client that
    stopped reading, or the client went away): nothing more can be sent on it. Expected, so the
    operations on the socket end quietly instead of logging a traceback each."""


class _SinksOfOperations:
    """What both protocol handlers add for the sinks: each operation's sink, by operation id, and
    its stop when the client ends the operation (`complete`, legacy `stop`) or the socket ends,
    before strawberry's cleanup cancels the task, so no message of the operation goes out after it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sinks: dict[str, SubscriptionSink] = {}

    async def cleanup_operation(self, operation_id: str) -> None:
        sink = self.sinks.pop(operation_id, None)
        if sink is not None:
            sink.active = False
        await super().cleanup_operation(operation_id)  # type: ignore[misc]


class TransportWSHandler(_SinksOfOperations, BaseGraphQLTransportWSHandler[Any, Any]):
    """graphql-transport-ws, closing with 4400 on any malformed message.

    strawberry catches a missing key but not a message of the wrong shape (a JSON array, a payload
    that is a string): the TypeError would end the handler and leave the socket open and deaf.
    """

    async def handle_message(self, message: Any) -> None:
        try:
            await super().handle_message(message)
        except (TypeError, AttributeError, ValueError):
            await self.handle_invalid_message("Failed to parse message")

    async def handle_connection_init(self, message: Any) -> None:
        await super().handle_connection_init(message)
        # strawberry keeps the init timeout's task, cancelled by now, for the socket's whole life.
        self.connection_init_timeout_task = None

    async def handle_task_exception(self, error: Exception) -> None:
        if not isinstance(error, SocketClosed):
            await super().handle_task_exception(error)

    async def run_operation(self, operation: Any) -> None:
        """The operation's task, with the subscription's sink (see `_with_sink`)."""
        async with _with_sink(self, "graphql-transport-ws", operation.id):
            await super().run_operation(operation)


class LegacyWSHandler(_SinksOfOperations, BaseGraphQLWSHandler[Any, Any]):
    """Legacy graphql-ws, which ignores what it cannot parse: a message of the wrong shape too."""

    async def handle_message(self, message: Any) -> None:
        with contextlib.suppress(TypeError, AttributeError, ValueError):
            await super().handle_message(message)

    async def handle_async_results(self, operation_id: str, *args: Any, **kwargs: Any) -> None:
        async with _with_sink(self, "graphql-ws", operation_id):
            with contextlib.suppress(SocketClosed):
                await super().handle_async_results(operation_id, *args, **kwargs)


@contextlib.asynccontextmanager
async def _with_sink(
    handler: TransportWSHandler | LegacyWSHandler, protocol: str, operation_id: str
) -> AsyncIterator[None]:
    """Run an operation's task with a sink for its subscription, when its socket can take direct writes.

    The sink is this task's `progress_sink` (the task's own context: strawberry's handler starts
    every operation on a task of its own), so the operation's progress stream hands it to the hub
    once its snapshot is out. It stops when the task ends (after the terminal `next` and the
    `complete`) and when the handler cleans the operation up, whichever comes first.
    """
    consumer = cast(UploadGraphQLWSConsumer, handler.view)
    if consumer.direct_server is None:
        yield
        return
    sink = SubscriptionSink(consumer, next_message_prefix(protocol, operation_id))
    sinks: dict[str, SubscriptionSink] = handler.sinks
    sinks[operation_id] = sink
    progress_sink.set(sink)
    try:
        yield
    finally:
        sink.active = False
        if sinks.get(operation_id) is sink:
            del sinks[operation_id]


class _Inbox:
    """strawberry's per-socket message queue (`put_nowait`, `get`) without asyncio.Queue's three
    deques: one list and one waiter, about 2 KiB less for every open socket."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class UploadGraphQLWSConsumer(GraphQLWSConsumer):
    """Authenticates at `connection_init` (bearer token in the payload, else the session cookie)."""

    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.message_queue = _Inbox()  # type: ignore[assignment]
        self.socket_closed = False
        # The server has decided to close the socket (its close may still wait to be written):
        # `send_now` writes nothing from then on.
        self.closing = False
        self.direct_server: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one socket; while the channel layer's Redis is unreachable, refuse it cleanly.

        Channels' AsyncConsumer would give every socket a channel of its own on the layer (a Redis
        SUBSCRIBE, a queue and a reader task per socket) and a second task per message; nothing
        here uses that channel (the process's ProgressHub holds the one channel subscriptions
        need), so this loop reads the socket's ASGI events in the socket's own task instead.
        Before the handshake, one round trip to the layer's Redis (`progress_layer_probe`) stands
        in for the refusal the channel gave: with Redis down the handshake is answered 503 with
        Retry-After (ASGI's `websocket.http.response` extension: uvicorn), or, on a server without
        it (daphne), accepted and closed at once with 1000 (daphne's websocket library allows no
        other standard code, 1013 "try again later" included). Either way the client may
        reconnect, and succeeds once Redis is back.
        """
        self.scope = scope
        self.channel_layer = None
        self.asgi_send = send
        self.base_send = self._send_to_socket
        self.direct_server = _direct_server(send)
        try:
            await progress_layer_probe()
        except REDIS_UNREACHABLE as exc:
            logger.warning("websocket refused: the channel layer's Redis is unreachable: %s", exc)
            await self._refuse_until_redis(scope=scope, receive=receive, send=send)
            return
        with contextlib.suppress(StopConsumer):
            while True:
                await self.dispatch(await receive())

    async def _send_to_socket(self, message: dict[str, Any]) -> None:
        """The server's `send`; a socket the server closed under us raises SocketClosed (quietly, once).

        uvicorn refuses a send on a socket it has closed: ClientDisconnected (an OSError) once the
        connection is gone, a RuntimeError while its own close is still under way (its keepalive
        closed a socket whose kernel buffers are full, and cannot flush them). Either way the
        strawberry handler is told the socket is gone, so it ends every operation on it at once.
        A close on a closed socket has nothing left to do.
        """
        closing = message["type"] == "websocket.close"
        if closing:
            self.closing = True
        if self.socket_closed:
            if closing:
                return
            raise SocketClosed
        try:
            await self.asgi_send(message)
        except (OSError, RuntimeError) as exc:
            if not closing and message["type"] != "websocket.send":
                raise  # a handshake message out of place: a bug here, not the socket going away
            self.socket_closed = True
            self.message_queue.put_nowait({"message": None, "disconnected": True})
            if not closing:
                raise SocketClosed from exc

    def send_now(self, text: str) -> bool:
        """Write the text message `text` at once, exactly as uvicorn's `send` would, when that needs no
        waiting; False (nothing written) when it would wait or fail, or on another server.

        uvicorn's websockets-sansio `send` of a `websocket.send` is: wait until the transport is
        writable, refuse if the connection is gone or closing, then `conn.send_text` and one
        `transport.write`, without suspending. So when the transport is writable and neither side has
        closed (nor has this side decided to: `closing`), the same two calls here send the same
        bytes in the same place of the stream (the loop runs one thing at a time, so no other
        message can be half-written). Writable is uvicorn's own bound: the transport holds under
        its high-water mark (64 KiB) unsent. Past it a client reads slower than it is sent to; its
        events then go through its mailbox (which coalesces them, CONTRACT section 3) and uvicorn's
        send, which waits until the client drains: the same bound either way.
        tests/unit/test_fanout.py fails by name if uvicorn's `send` changes.
        """
        server = self.direct_server
        if server is None or self.closing or self.socket_closed or server.close_sent or server.disconnected:
            return False
        transport = server.transport
        if not server.writable.is_set() or transport.is_closing():
            return False
        try:
            server.conn.send_text(text.encode())
        except InvalidState:  # the client's close arrived: the usual way reports the socket gone
            return False
        transport.write(b"".join(server.conn.data_to_send()))
        return True

    async def _refuse_until_redis(self, *, scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return  # the client went away first
        if "websocket.http.response" in scope.get("extensions", {}):
            body = b"the service is starting or restarting; try again later"
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
            ]
            await send({"type": "websocket.http.response.start", "status": 503, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
            return
        # The subprotocol the client asked for is echoed: a browser fails a handshake without it,
        # and would report 1006 (abnormal) instead of this close.
        subprotocol = await self.pick_websocket_subprotocol(self)
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        await send({"type": "websocket.close", "code": 1000, "reason": "try again later"})

    def decode_json(self, data: str | bytes) -> object:
        return json_decode(data)

    def encode_json(self, data: object) -> str | bytes:
        """A `next`/`data` message of a shared subscription result reuses its serialized payload."""
        shared = shared_message_json(data)
        return shared if shared is not None else super().encode_json(data)

    async def get_context(self, request: Any, response: Any) -> Context:  # type: ignore[override]
        return Context(request=request, ws=request)

    async def on_ws_connect(self, context: Context) -> None:  # type: ignore[override]
        params = context.connection_params if isinstance(context.connection_params, dict) else {}
        authorization = next((v for k, v in params.items() if str(k).lower() == "authorization"), None)
        token: str | None = None
        session_key: str | None = None
        if authorization is not None:
            token = bearer_token(str(authorization))
            user = await sync_to_async(token_user)(token=token) if token else None
        else:
            session_key = _session_key(self.scope)
            user = await _session_user(session_key)
        if user is None:
            self.credential_refused = True
            raise ConnectionRejectionError({"message": "authentication failed"})
        context.user = user
        credential_watch().add(self, token=token, session_key=session_key, user_id=user.pk)

    async def disconnect(self, code: int) -> None:
        credential_watch().discard(self)
        with contextlib.suppress(SocketClosed):  # the handler ended on a send the server refused
            await super().disconnect(code)

    async def refuse_credential(self) -> None:
        """The socket's credential stopped being valid: close it with 4403."""
        self.credential_refused = True
        await self.close()

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close 4403 after a refused credential on both protocols.

        graphql-transport-ws already closes with 4403; strawberry's legacy graphql-ws handler sends
        `connection_error` and then closes with 1011 (internal error), which the contract replaces.
        """
        # First: the close below may wait (uvicorn's send waits while the socket is paused), and
        # nothing may be written past the decision meanwhile. strawberry's own closes (4400, 4408,
        # 4409, 4429, ...) come here too (its channels adapter calls this `close`).
        self.closing = True
        if getattr(self, "credential_refused", False):
            code, reason = 4403, "Forbidden"
        await super().close(code=code, reason=reason)

    def is_websocket_origin_allowed(self, request: Any, origin: str) -> bool:
        """A browser's Origin must name a host of ALLOWED_HOSTS (no Origin: a non-browser client)."""
        hostname = urlsplit(origin).hostname
        if hostname and ":" in hostname:
            hostname = f"[{hostname}]"  # ALLOWED_HOSTS spells IPv6 hosts with brackets
        return bool(hostname and validate_host(hostname, settings.ALLOWED_HOSTS))


async def _refuse_quietly(consumer: UploadGraphQLWSConsumer) -> None:
    with contextlib.suppress(Exception):
        await consumer.refuse_credential()


class CredentialWatch:
    """The sockets of this process and their credentials, re-checked together every
    WS_AUTH_RECHECK_SECONDS; a socket whose credential stopped being valid (revoked, expired, user
    deactivated, session ended) is closed with 4403.

    One task for the whole process, and one query for all its bearer tokens (each session read
    once), instead of a task and a query per socket: an idle socket holds only its entry here.
    """

    def __init__(self) -> None:
        self.sockets: weakref.WeakKeyDictionary[UploadGraphQLWSConsumer, tuple[str | None, str | None, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self.task: asyncio.Task[None] | None = None
        # The closes under way: each on its own task, so one socket that does not drain (a close
        # waits until the socket is writable) holds up neither the re-check nor the other closes.
        self.closing: set[asyncio.Task[None]] = set()

    def add(
        self, consumer: UploadGraphQLWSConsumer, *, token: str | None, session_key: str | None, user_id: Any
    ) -> None:
        """Watch `consumer`'s credential, of user `user_id`: its bearer `token`, else its session."""
        self.sockets[consumer] = (token, session_key, user_id)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())

    def discard(self, consumer: UploadGraphQLWSConsumer) -> None:
        self.sockets.pop(consumer, None)

    async def _run(self) -> None:
        while self.sockets:  # ends with the last socket; the next one starts it again
            await asyncio.sleep(settings.WS_AUTH_RECHECK_SECONDS)
            try:
                refused = await self._refused()
            except Exception:
                logger.warning("re-checking websocket credentials failed; trying again later", exc_info=True)
                continue
            for consumer in refused:
                if consumer in self.sockets:
                    self.discard(consumer)
                    # Decided now, though the close runs on its own task (a turn later, or later
                    # still if the socket is paused): the hub writes nothing to it from here on.
                    consumer.closing = True
                    closing = asyncio.create_task(_refuse_quietly(consumer))
                    self.closing.add(closing)
                    closing.add_done_callback(self.closing.discard)

    async def _refused(self) -> list[UploadGraphQLWSConsumer]:
        watched = list(self.sockets.items())
        tokens = {token for _, (token, _, _) in watched if token is not None}
        live = await sync_to_async(token_users)(tokens=tokens) if tokens else {}
        sessions: dict[str | None, Any] = {}
        refused = []
        for consumer, (token, session_key, user_id) in watched:
            if token is not None:
                still = live.get(token)
            else:
                if session_key not in sessions:
                    user = await _session_user(session_key)
                    sessions[session_key] = user.pk if user is not None else None
                still = sessions[session_key]
            if still != user_id:
                refused.append(consumer)
        return refused


# The credential watch of the running event loop (one per server process).
credential_watch = per_event_loop(CredentialWatch)


def _direct_server(send: Any) -> Any:
    """The uvicorn connection behind the ASGI `send`, when `send_now` may write to it directly: its
    websockets-sansio protocol (uvicorn's default with websockets installed) and nothing else."""
    server = getattr(send, "__self__", None)
    if SansIOProtocol is None or type(server) is not SansIOProtocol:
        return None
    # Its own `send`, not one wrapped or replaced on the way (a middleware's would be another function).
    return server if getattr(send, "__func__", None) is getattr(SansIOProtocol, "send", None) else None


def _session_key(scope: dict[str, Any]) -> str | None:
    """The session cookie of the handshake, if any.

    Read here rather than by Channels' AuthMiddlewareStack, whose three middleware (cookies, session,
    user) each keep a copy of the scope and their own objects for the socket's whole life: about
    4 KiB per socket, for a session that only a cookie-authenticated socket needs, once at init.
    """
    cookies = "; ".join(value.decode("latin1") for name, value in scope.get("headers", ()) if name == b"cookie")
    return parse_cookie(cookies).get(settings.SESSION_COOKIE_NAME) if cookies else None


async def _session_user(session_key: str | None) -> Any:
    """The active user of session `session_key` as its store holds it now (a logout deletes it), or None."""
    if not session_key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = await get_user({"session": store})
    return user if user.is_authenticated and user.is_active else None
