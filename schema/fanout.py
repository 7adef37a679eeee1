"""Subscription events executed once per document and event, not once per subscriber.

graphql-core runs a subscription's selection set for every event of every subscriber (the spec's
MapSourceToResponseEvent). Here, every subscriber of an upload in this process receives the same
`ProgressEvent` object from the hub (backend/uploads/progress.py). `FanoutExecutor` executes it
once per *execution key* (the operation and its fragments as printed, and the coerced variables)
and keeps the result on the event (`ProgressEvent.renders`), its payload serialized once
(`SharedData.payload_json`); every other subscriber with the same key gets that result. The
websocket consumer's `encode_json` writes each `next` (legacy: `data`) message around the
serialized payload (`shared_message_json`), so the messages differ only in the subscription id.
A different selection set is a different key: its own execution, its own shape.

Sharing is sound because such a result depends on the event, the document and the variables
only: UploadProgress's fields are plain attributes (no resolver reads the context or the user),
and the owner check runs per subscriber in the subscription resolver, at subscribe time.
tests/unit/test_fanout.py fails if UploadProgress gains a field with a resolver, and if the
strawberry internals this relies on change (see the hooks named there).

Past the snapshot, a subscription whose socket can be written at once (`SubscriptionSink`) is
not even woken for an event: the hub calls its sink, which takes the shared result of its key
(executing it once if no subscriber of the key has yet) and writes the message, `prefix` +
payload + `}`, straight to the socket. The bytes are the ones strawberry's handler and
`shared_message_json` would have sent; what the sink cannot send now goes the usual way.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable
from typing import Any, Protocol

from graphql import ExecutionResult, print_ast
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from backend.uploads.progress import ProgressEvent, progress_sink
from schema.types import UploadProgress

# strawberry's encoding (strawberry/http/base.py `encode_json`: json.dumps with these separators),
# so the bytes are the same; one encoder kept, as json.dumps builds one per call when given
# separators (a few microseconds, five times per message).
_dumps = json.JSONEncoder(separators=(",", ":")).encode


class SharedData(dict[str, Any]):
    """A result's `data`, shared by the subscribers of one key, with its `{"data": ...}` payload as JSON."""

    __slots__ = ("payload_json",)

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(data)
        self.payload_json = _dumps({"data": data})


class FanoutExecutor(StrawberryGraphQLCoreExecutionContext):
    """strawberry's graphql-core executor; a `ProgressEvent` is executed once per execution key."""

    _fanout_key: tuple[str, str] | None = None

    def fanout_key(self) -> tuple[str, str]:
        """What a result depends on besides the event: the document as printed and the variables."""
        if self._fanout_key is None:
            definitions = self.fragment_definitions
            fragments = "\n".join(print_ast(definitions[name]) for name in sorted(definitions))
            document = f"{print_ast(self.operation)}\n{fragments}"
            variables = json.dumps(self.variable_values.coerced, sort_keys=True, default=repr)
            self._fanout_key = (document, variables)
        return self._fanout_key

    def build_per_event_executor(self, payload: Any) -> Any:
        if isinstance(payload, ProgressEvent):
            return _SharedEvent(self, payload)
        return super().build_per_event_executor(payload)

    def execute_event(self, event: ProgressEvent) -> Any:
        """graphql-core's per-event execution, with the event as an UploadProgress root value."""
        return super().build_per_event_executor(UploadProgress.from_event(event)).execute_operation(False)


class _SharedEvent:
    """Stands in for graphql-core's per-event executor: `execute_operation` is all it is asked for
    (graphql/execution/execute.py `execute_subscription_event`)."""

    __slots__ = ("event", "executor")

    def __init__(self, executor: FanoutExecutor, event: ProgressEvent) -> None:
        self.executor = executor
        self.event = event

    def execute_operation(self, serially: bool | None = None) -> Any:
        key = self.executor.fanout_key()
        sink = progress_sink.get()
        if sink is not None and type(sink) is SubscriptionSink and sink.executor is None:
            sink.executor, sink.key = self.executor, key  # this subscription's own (it runs in its task)
        shared = self.event.renders.get(key)
        if shared is not None:
            return shared
        result = self.executor.execute_event(self.event)
        if self.executor.is_awaitable(result):
            return self._settle(key, result)
        return self._keep(key, result)

    async def _settle(self, key: tuple[str, str], pending: Awaitable[ExecutionResult]) -> ExecutionResult:
        return self._keep(key, await pending)

    def _keep(self, key: tuple[str, str], result: ExecutionResult) -> ExecutionResult:
        if result.errors or result.data is None:
            return result  # not shared: each subscriber executes and reports its own errors
        shared = ExecutionResult(data=SharedData(result.data), errors=None)
        self.event.renders[key] = shared
        return shared


def shared_message_json(message: Any) -> str | None:
    """The JSON of a protocol message whose payload is exactly `{"data": SharedData}`, else None.

    The keys keep the message's own order (graphql-transport-ws builds `id, type, payload`,
    legacy graphql-ws `type, id, payload`); only the payload's JSON is reused.
    """
    if type(message) is not dict:
        return None
    payload = message.get("payload")
    if type(payload) is not dict or len(payload) != 1:
        return None
    data = payload.get("data")
    if not isinstance(data, SharedData):
        return None
    members = [
        f"{_dumps(key)}:{data.payload_json if key == 'payload' else _dumps(value)}" for key, value in message.items()
    ]
    return "{" + ",".join(members) + "}"


# --- writing past the subscription's task ------------------------------------------------------


class DirectSocket(Protocol):
    def send_now(self, text: str) -> bool:
        """Write the text message `text` to the socket there and then, without suspending; False when
        that cannot be done now (nothing was written)."""


def next_message_prefix(protocol: str, operation_id: str) -> str:
    """What comes before the payload in a `next` (graphql-transport-ws) or `data` (legacy graphql-ws)
    message of `operation_id`: the members strawberry's handlers put there, in their order."""
    if protocol == "graphql-transport-ws":
        return f'{{"id":{_dumps(operation_id)},"type":"next","payload":'
    return f'{{"type":"data","id":{_dumps(operation_id)},"payload":'


class SubscriptionSink:
    """One subscription's sink (backend/uploads/progress.py `ProgressSink`): it renders an event as
    the subscription's own execution would (its execution key's shared result) and writes the
    message to the socket at once, or declines.

    `executor` is the subscription's FanoutExecutor, bound when its first event (the snapshot) is
    executed in its task; until then, and once the operation ends (`active` False: completed, a
    client's `complete` or `stop`, the socket gone), it declines. A result that is not shared
    (errors) is declined too, and so is everything after it: that subscription goes the usual way.
    """

    __slots__ = ("active", "executor", "key", "prefix", "socket")

    def __init__(self, socket: DirectSocket, prefix: str) -> None:
        self.socket = socket
        self.prefix = prefix
        self.executor: FanoutExecutor | None = None
        self.key: tuple[str, str] | None = None  # the executor's fanout_key()
        self.active = True

    def __call__(self, event: ProgressEvent) -> bool:
        executor = self.executor
        if not self.active or executor is None:
            return False
        shared: Any = event.renders.get(self.key)
        if shared is None:
            # What raises here (or in the write) the hub catches: it lets this sink go, and the
            # subscription's own task meets the event (and reports its error) the usual way.
            rendered = _SharedEvent(executor, event).execute_operation()
            if not isinstance(rendered, ExecutionResult) or not isinstance(rendered.data, SharedData):
                if inspect.iscoroutine(rendered):
                    rendered.close()  # never started: an execution that awaits something is not for here
                self.active = False
                return False
            shared = rendered
        return self.socket.send_now(f"{self.prefix}{shared.data.payload_json}}}")
