"""The process-wide credential re-check of websockets (schema/consumers.py `CredentialWatch`).

What the credential lookups answer is the integration suite's (test_sessions, test_progress: 4403
after a revoked token or an ended session); here, that closing one refused socket never holds up the
re-check of the others: a close waits until its socket is writable, which a reader that stopped
draining never is.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.test import override_settings

from schema.consumers import CredentialWatch


class Socket:
    """A consumer as the watch sees it: a close that finishes, or one that never does (a stalled reader)."""

    def __init__(self, *, stalled: bool) -> None:
        self.stalled = stalled
        self.close_started = asyncio.Event()
        self.closed = asyncio.Event()

    async def refuse_credential(self) -> None:
        self.close_started.set()
        if self.stalled:
            await asyncio.Event().wait()  # never writable again
        self.closed.set()


class Watch(CredentialWatch):
    """The watch with its credential lookups answered by the test: `revoked` holds the refused sockets."""

    def __init__(self) -> None:
        super().__init__()
        self.revoked: set[Any] = set()

    async def _refused(self) -> list[Any]:
        return [consumer for consumer in list(self.sockets) if consumer in self.revoked]


def test_a_close_that_never_finishes_holds_up_neither_the_re_check_nor_other_closes() -> None:
    async def scenario() -> tuple[bool, bool]:
        watch = Watch()
        stalled, healthy, kept = Socket(stalled=True), Socket(stalled=False), Socket(stalled=False)
        for number, socket in enumerate((stalled, healthy, kept)):
            watch.add(socket, token=f"token-{number}", session_key=None, user_id=number)  # type: ignore[arg-type]
        watch.revoked.add(stalled)
        await asyncio.wait_for(stalled.close_started.wait(), timeout=10)
        # A later round refuses another socket while the first close still hangs.
        watch.revoked.add(healthy)
        await asyncio.wait_for(healthy.closed.wait(), timeout=10)
        result = (stalled.closed.is_set(), kept.close_started.is_set())
        for task in (watch.task, *watch.closing):
            if task is not None:
                task.cancel()
        return result

    with override_settings(WS_AUTH_RECHECK_SECONDS=0.01):
        stalled_closed, kept_touched = asyncio.run(scenario())
    assert not stalled_closed
    assert not kept_touched, "a socket whose credential is still valid stays open"
