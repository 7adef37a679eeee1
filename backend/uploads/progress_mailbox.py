"""One subscriber's pending progress events: in order, without duplicates, bounded.

The hub hands every event of an upload to each of its subscribers' mailboxes without waiting for
any of them; each subscriber's own task takes from its mailbox as fast as its socket drains. A
subscriber that keeps up never has more than a few events pending and gets every one. One that
falls behind (a stalled socket) holds at most `limit` events: past that, the oldest pending event
that is not a status change is dropped (the latest state wins, so `sequence` skips, as CONTRACT
section 3 allows under overload). A status change (an event whose status differs from the one
before it) is never dropped, nor is the latest event, so the terminal event always arrives.

While its reader waits with nothing pending, an event may go past the mailbox (`pass_by`): the
hub hands it to the subscriber's socket at once, and the mailbox only records it as given, so
order and the duplicate check hold across both ways.

Pure: no I/O, no clock; `get` is the only coroutine.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

# Pending events a subscriber may hold before its non-status events are coalesced. A live
# subscriber has 1 or 2 pending at most; a transfer's parts arrive in bursts of
# UPLOAD_PART_CONCURRENCY (4 by default), so this never coalesces a subscriber that keeps up.
MAILBOX_LIMIT = 16

EventT = TypeVar("EventT", bound=Mapping[str, Any])


class ProgressMailbox(Generic[EventT]):
    __slots__ = ("_ended", "_last_sequence", "_last_status", "_pending", "_waiter", "coalesced", "limit")

    def __init__(self, *, limit: int = MAILBOX_LIMIT) -> None:
        if limit < 1:
            raise ValueError("a mailbox holds at least one event")
        self.limit = limit
        # (event, is a status change), oldest first, sequences strictly increasing.
        self._pending: deque[tuple[EventT, bool]] = deque()
        self._last_sequence: int | None = None
        self._last_status: str | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self.coalesced = 0  # events dropped so far (for tests and metrics)

    def __len__(self) -> int:
        return len(self._pending)

    def start_after(self, event: Mapping[str, Any]) -> None:
        """The subscriber has (or is about to) send `event` itself (its snapshot): keep only newer ones."""
        sequence = event["sequence"]
        while self._pending and self._pending[0][0]["sequence"] <= sequence:
            self._pending.popleft()
        if self._last_sequence is None or self._last_sequence <= sequence:
            self._last_sequence, self._last_status = sequence, event["status"]
        if self._pending:
            first, _ = self._pending[0]
            self._pending[0] = (first, first["status"] != event["status"])

    def put(self, event: EventT) -> bool:
        """Add `event` unless it is not newer than the last one put; False when it was ignored."""
        if self._ended or (self._last_sequence is not None and event["sequence"] <= self._last_sequence):
            return False
        change = event["status"] != self._last_status
        self._last_sequence, self._last_status = event["sequence"], event["status"]
        self._pending.append((event, change))
        if len(self._pending) > self.limit:
            self._coalesce()
        self._wake()
        return True

    def pass_by(self, event: EventT, send: Callable[[EventT], bool]) -> bool:
        """Give `event` to `send` instead of queueing it, if that keeps the order; True when handled.

        Only while the reader waits in `get` with nothing pending (everything before this event is
        already out); and only if `send` takes it there and then (True), without suspending. Then
        the event counts as given, as if the reader had taken it. An event not newer than the last
        one is handled by being ignored. False: nothing changed, `put` it.
        """
        waiter = self._waiter
        if self._pending or self._ended or waiter is None or waiter.done():
            return False
        sequence = event["sequence"]
        if self._last_sequence is not None and sequence <= self._last_sequence:
            return True
        if not send(event):
            return False
        self._last_sequence, self._last_status = sequence, event["status"]
        return True

    def end(self) -> None:
        """No more events will come (the upload is gone): `get` answers None once the pending are taken."""
        self._ended = True
        self._wake()

    async def get(self) -> EventT | None:
        """The oldest pending event, waiting for one; None once ended and empty."""
        while not self._pending:
            if self._ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        event, _ = self._pending.popleft()
        return event

    def _coalesce(self) -> None:
        # Drop the oldest event that is neither a status change nor the latest. Dropping it never
        # changes whether its successor is a status change: both have the status of its predecessor.
        last = len(self._pending) - 1
        for index, (_, change) in enumerate(self._pending):
            if index == last:
                return  # every pending event is a status change: keep them all (a handful at most)
            if not change:
                del self._pending[index]
                self.coalesced += 1
                return

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
