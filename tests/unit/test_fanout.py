"""Shared execution of subscription events (schema/fanout.py), and the library internals it hooks.

The upgrade guard: if strawberry or graphql-core change how an event reaches the executor
(`build_per_event_executor` then `execute_operation`), whether a result's `data` object survives
to the protocol message, or how a protocol message reaches the consumer's `encode_json`, a test
here fails by name instead of the service quietly executing per subscriber again, or sending
something else.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncGenerator
from datetime import timedelta
from typing import Any

import pytest
import strawberry
from strawberry.channels.handlers.ws_handler import ChannelsWebSocketAdapter
from strawberry.schema.config import StrawberryConfig
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import Operation
from strawberry.types.base import get_object_definition
from strawberry.types.execution import ExecutionResult

from backend.uploads.progress import ProgressEvent, progress_sink
from schema import schema as service_schema
from schema.consumers import LegacyWSHandler, TransportWSHandler, UploadGraphQLWSConsumer
from schema.fanout import FanoutExecutor, SharedData, SubscriptionSink, next_message_prefix, shared_message_json
from schema.types import SCALAR_MAP, UploadProgress

EVENTS = [
    ProgressEvent(
        {
            "upload_id": "6a1f4ae5-8a8e-4a4f-9d55-1c2b3d4e5f60",
            "sequence": sequence,
            "status": status,
            "part_number": part,
            "parts_uploaded": part or 0,
            "parts_total": 2,
            "bytes_received": 20,
            "bytes_uploaded": (part or 0) * 10,
            "bytes_total": 20,
            "progress": (part or 0) / 2,
            "error": None,
            "at": "2026-01-01T00:00:00+00:00",
        }
    )
    for sequence, status, part in [
        (1, "UPLOADING", None),
        (2, "UPLOADING", 1),
        (3, "UPLOADING", 2),
        (4, "COMPLETED", None),
    ]
]


class CountingExecutor(FanoutExecutor):
    executions = 0

    def execute_event(self, event: ProgressEvent) -> Any:
        CountingExecutor.executions += 1
        return super().execute_event(event)


@strawberry.type
class Query:
    ok: bool = True


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def upload_progress(self, id: strawberry.ID) -> AsyncGenerator[UploadProgress, None]:
        for event in EVENTS:
            yield event  # type: ignore[misc]


test_schema = strawberry.Schema(
    query=Query,
    subscription=Subscription,
    execution_context_class=CountingExecutor,
    config=StrawberryConfig(scalar_map=SCALAR_MAP),
)

FULL = "subscription($id: ID!) { uploadProgress(id: $id) { sequence status partNumber progress at } }"
# The same document written differently: the same execution key once printed.
FULL_REFORMATTED = """subscription ($id: ID!) {
  uploadProgress(id: $id) {
    sequence
    status
    partNumber
    progress
    at
  }
}"""
NARROW = "subscription($id: ID!) { uploadProgress(id: $id) { sequence status } }"


async def results(query: str, upload_id: str = "u1") -> list[ExecutionResult]:
    stream = await test_schema.subscribe(query, variable_values={"id": upload_id})
    return [result async for result in stream]  # type: ignore[union-attr]


def test_one_execution_per_event_for_subscribers_of_one_document() -> None:
    CountingExecutor.executions = 0
    for event in EVENTS:
        event.renders.clear()

    async def scenario() -> list[list[ExecutionResult]]:
        return list(await asyncio.gather(results(FULL), results(FULL), results(FULL_REFORMATTED), results(NARROW)))

    first, second, reformatted, narrow = asyncio.run(scenario())
    # Four subscribers, two documents: two executions per event, not four.
    assert CountingExecutor.executions == 2 * len(EVENTS)
    for ours, theirs, again in zip(first, second, reformatted, strict=True):
        assert not ours.errors
        assert theirs.data is ours.data and again.data is ours.data  # the very same result object
        assert isinstance(ours.data, SharedData)
    assert [r.data for r in first] == [
        {
            "uploadProgress": {
                "sequence": e["sequence"],
                "status": e["status"],
                "partNumber": e["part_number"],
                "progress": e["progress"],
                "at": "2026-01-01T00:00:00+00:00",
            }
        }
        for e in EVENTS
    ]
    # A different selection set: its own execution and its own shape.
    narrow_shape = [{"uploadProgress": {"sequence": e["sequence"], "status": e["status"]}} for e in EVENTS]
    assert [r.data for r in narrow] == narrow_shape
    assert all(n.data is not f.data for n, f in zip(narrow, first, strict=True))
    assert json.loads(first[0].data.payload_json) == {"data": first[0].data}  # type: ignore[union-attr]


def test_different_variables_are_different_keys() -> None:
    CountingExecutor.executions = 0
    for event in EVENTS:
        event.renders.clear()

    async def scenario() -> list[list[ExecutionResult]]:
        return list(await asyncio.gather(results(FULL, "u1"), results(FULL, "u2")))

    one, two = asyncio.run(scenario())
    assert CountingExecutor.executions == 2 * len(EVENTS)
    assert all(a.data is not b.data for a, b in zip(one, two, strict=True))


def test_upload_progress_fields_are_plain_attributes() -> None:
    """Sharing a result between users is sound only while no field of UploadProgress resolves
    anything (a resolver could read the context, the user). Add one, and this fails."""
    definition = get_object_definition(UploadProgress, strict=True)
    with_resolvers = [field.name for field in definition.fields if field.base_resolver is not None]
    assert with_resolvers == []


def test_the_service_schema_executes_with_the_fanout_executor() -> None:
    assert issubclass(service_schema.execution_context_class, FanoutExecutor)


# --- the protocol side: strawberry's message builders -> the consumer's encode_json -----------


class CapturedSocket:
    """The consumer end of strawberry's ChannelsWebSocketAdapter: what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, text: str) -> None:
        self.sent.append(text)


SHARED_PAYLOAD = '{"data":{"uploadProgress":{"sequence":7,"shared":true}}}'


def shared_result() -> ExecutionResult:
    data = SharedData({"uploadProgress": {"sequence": 7}})
    # A payload only the shared path writes: the message must be built around it, not re-encoded.
    data.payload_json = SHARED_PAYLOAD
    return ExecutionResult(data=data, errors=None)


def adapter() -> tuple[ChannelsWebSocketAdapter, CapturedSocket, UploadGraphQLWSConsumer]:
    consumer = UploadGraphQLWSConsumer(schema=service_schema)
    socket = CapturedSocket()
    return ChannelsWebSocketAdapter(consumer, consumer, socket), socket, consumer  # type: ignore[arg-type]


def test_graphql_transport_ws_next_reuses_the_serialized_payload() -> None:
    websocket, socket, consumer = adapter()
    handler = TransportWSHandler(
        view=consumer,
        websocket=websocket,
        context=None,
        root_value=None,
        schema=service_schema,
        connection_init_wait_timeout=timedelta(seconds=1),
    )
    operation = Operation(handler, "sub-1", "subscription { x }", None, None)
    asyncio.run(operation.send_next(shared_result()))
    assert socket.sent == ['{"id":"sub-1","type":"next","payload":' + SHARED_PAYLOAD + "}"]


def _legacy_handler() -> tuple[LegacyWSHandler, Any]:
    """A legacy graphql-ws handler on a recording socket."""
    websocket, socket, consumer = adapter()
    handler = LegacyWSHandler(
        view=consumer,
        websocket=websocket,
        context=None,
        root_value=None,
        schema=service_schema,
        keep_alive=False,
        keep_alive_interval=None,
    )
    return handler, socket


def test_legacy_graphql_ws_data_reuses_the_serialized_payload() -> None:
    handler, socket = _legacy_handler()
    asyncio.run(handler.send_data_message(shared_result(), "sub-1"))
    assert socket.sent == ['{"type":"data","id":"sub-1","payload":' + SHARED_PAYLOAD + "}"]


def test_a_payload_with_errors_or_extensions_is_encoded_as_usual() -> None:
    data = SharedData({"uploadProgress": None})
    assert shared_message_json({"id": "1", "type": "next", "payload": {"data": data, "errors": []}}) is None
    assert shared_message_json({"id": "1", "type": "next", "payload": {"data": {"a": 1}}}) is None
    assert shared_message_json({"type": "connection_ack"}) is None
    message = {"id": 'quote"d', "type": "next", "payload": {"data": SharedData({"uploadProgress": {"sequence": 1}})}}
    assert json.loads(shared_message_json(message) or "") == message


# --- the sinks: the hub writing past the subscription's task (schema/consumers.py send_now) ----


class CapturedDirectSocket:
    """What a sink asks its socket to write at once (`send_now`), answering as told."""

    def __init__(self, *, takes: bool = True) -> None:
        self.takes = takes
        self.sent: list[str] = []

    def send_now(self, text: str) -> bool:
        if self.takes:
            self.sent.append(text)
        return self.takes


def bound_sink(query: str, socket: CapturedDirectSocket, prefix: str) -> SubscriptionSink:
    """A sink bound, as in a subscription's task, to the executor of `query`'s first event."""
    sink = SubscriptionSink(socket, prefix)

    async def first_event() -> None:
        progress_sink.set(sink)  # this task's own context, as the protocol handler sets it
        stream = await test_schema.subscribe(query, variable_values={"id": "u1"})
        await anext(stream)  # type: ignore[arg-type]
        await stream.aclose()  # type: ignore[union-attr]

    asyncio.run(first_event())
    assert sink.executor is not None
    return sink


def test_a_sink_writes_the_bytes_strawberry_would_send_on_each_protocol() -> None:
    """The same message, byte for byte, as strawberry's handler and encode_json make for a subscriber
    of the same document; a second sink of the key shares the first one's execution."""
    for event in EVENTS:
        event.renders.clear()
    for protocol, sent_by_strawberry in (
        ("graphql-transport-ws", _transport_ws_next),
        ("graphql-ws", _legacy_data),
    ):
        socket = CapturedDirectSocket()
        sink = bound_sink(FULL, socket, next_message_prefix(protocol, 'op"1'))
        other = bound_sink(FULL_REFORMATTED, CapturedDirectSocket(), next_message_prefix(protocol, "2"))
        CountingExecutor.executions = 0
        assert sink(EVENTS[2]) and other(EVENTS[2])
        assert CountingExecutor.executions <= 1, "one execution for the key, shared"
        shared = EVENTS[2].renders[sink.executor.fanout_key()]  # type: ignore[union-attr]
        assert socket.sent == [sent_by_strawberry('op"1', shared)]
        assert json.loads(socket.sent[0])["payload"] == {"data": shared.data}


def _transport_ws_next(op_id: str, result: ExecutionResult) -> str:
    websocket, socket, consumer = adapter()
    handler = TransportWSHandler(
        view=consumer,
        websocket=websocket,
        context=None,
        root_value=None,
        schema=service_schema,
        connection_init_wait_timeout=timedelta(seconds=1),
    )
    asyncio.run(Operation(handler, op_id, "subscription { x }", None, None).send_next(result))
    (text,) = socket.sent
    return text


def _legacy_data(op_id: str, result: ExecutionResult) -> str:
    handler, socket = _legacy_handler()
    asyncio.run(handler.send_data_message(result, op_id))
    (text,) = socket.sent
    return text


def test_a_sink_declines_what_it_cannot_send_now() -> None:
    for event in EVENTS:
        event.renders.clear()
    unbound = SubscriptionSink(CapturedDirectSocket(), next_message_prefix("graphql-transport-ws", "1"))
    assert not unbound(EVENTS[1]), "no executor yet: the snapshot has not gone out"
    full = CapturedDirectSocket(takes=False)
    assert not bound_sink(FULL, full, "")(EVENTS[1]) and full.sent == []
    stopped = bound_sink(FULL, CapturedDirectSocket(), "")
    stopped.active = False  # the operation ended, or its client completed it
    assert not stopped(EVENTS[1])
    # An event the execution cannot take raises: the hub lets the sink go (ProgressHub.deliver), and
    # the subscription's own task meets the event on the usual way, which reports it
    # (tests/unit/test_progress_stream.py: a sink that raises).
    broken = bound_sink(FULL, CapturedDirectSocket(), "")
    malformed = ProgressEvent({key: value for key, value in EVENTS[1].items() if key != "at"})
    with pytest.raises(Exception):  # noqa: B017 - whatever the execution raises
        broken(malformed)


def test_uvicorn_send_is_what_send_now_does_without_waiting() -> None:
    """`UploadGraphQLWSConsumer.send_now` repeats uvicorn's websockets-sansio `send` of a
    `websocket.send` (the checks, then these two calls) without its one wait. If uvicorn changes
    it, this fails: read the new `send` and make `send_now` do what it does."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    source = inspect.getsource(WebSocketsSansIOProtocol.send)
    for line in (
        "await self.writable.wait()",
        "if self.disconnected:",
        "elif not self.close_sent and self.initial_response is None:",
        'if message["type"] == "websocket.send":',
        "self.conn.send_text(text_data.encode())",
        "output = self.conn.data_to_send()",
        'self.transport.write(b"".join(output))',
        "except InvalidState:",
    ):
        assert line in source, line
    assert source.count("await ") == 1, "send suspends only while the transport is not writable"


def test_each_operation_runs_on_a_task_of_its_own_started_where_its_sink_is_set() -> None:
    """The sink is a context variable of the operation's task: strawberry must start each operation
    as its own task, from the methods the consumer's handlers override."""
    from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
    from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler

    transport = inspect.getsource(BaseGraphQLTransportWSHandler.handle_subscribe)
    assert "asyncio.create_task(self.run_operation(operation))" in transport
    legacy = inspect.getsource(BaseGraphQLWSHandler.handle_start)
    assert "self.handle_async_results(" in legacy and "asyncio.create_task(result_handler)" in legacy
    assert list(inspect.signature(BaseGraphQLWSHandler.handle_async_results).parameters)[:2] == ["self", "operation_id"]
    for handler in (BaseGraphQLTransportWSHandler, BaseGraphQLWSHandler):
        assert list(inspect.signature(handler.cleanup_operation).parameters) == ["self", "operation_id"]
