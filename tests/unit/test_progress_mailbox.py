"""A subscriber's mailbox: order, no duplicates, a bound, and never a status change dropped."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from backend.uploads.progress_mailbox import ProgressMailbox


def event(sequence: int, status: str = "UPLOADING", part: int | None = None) -> dict[str, Any]:
    return {"sequence": sequence, "status": status, "part_number": part}


def drain(mailbox: ProgressMailbox) -> list[tuple[int, str]]:
    async def take() -> list[tuple[int, str]]:
        taken = []
        while len(mailbox):
            got = await mailbox.get()
            assert got is not None
            taken.append((got["sequence"], got["status"]))
        return taken

    return asyncio.run(take())


def test_a_subscriber_that_keeps_up_gets_every_event_in_order() -> None:
    mailbox = ProgressMailbox(limit=4)
    for sequence in range(1, 4):
        assert mailbox.put(event(sequence))
    assert drain(mailbox) == [(1, "UPLOADING"), (2, "UPLOADING"), (3, "UPLOADING")]
    assert mailbox.coalesced == 0


def test_duplicates_and_older_events_are_ignored() -> None:
    mailbox = ProgressMailbox(limit=4)
    assert mailbox.put(event(5))
    assert not mailbox.put(event(5))
    assert not mailbox.put(event(3))
    assert drain(mailbox) == [(5, "UPLOADING")]
    assert not mailbox.put(event(4))  # even after the 5 was taken


def test_start_after_the_snapshot_keeps_only_newer_events() -> None:
    mailbox = ProgressMailbox(limit=4)
    for sequence in (3, 4, 5):
        mailbox.put(event(sequence))
    mailbox.start_after(event(4))
    assert not mailbox.put(event(4))
    assert drain(mailbox) == [(5, "UPLOADING")]


def test_a_stalled_subscriber_holds_at_most_the_limit_and_keeps_every_status_change() -> None:
    mailbox = ProgressMailbox(limit=4)
    mailbox.start_after(event(1, "QUEUED"))
    statuses = ["UPLOADING"] * 50 + ["QUEUED"] + ["UPLOADING"] * 50 + ["COMPLETED"]
    for sequence, status in enumerate(statuses, start=2):
        mailbox.put(event(sequence, status))
        assert len(mailbox) <= 4
    taken = drain(mailbox)
    sequences = [s for s, _ in taken]
    assert sequences == sorted(set(sequences))
    # Every move (QUEUED -> UPLOADING -> QUEUED -> UPLOADING -> COMPLETED) is there, the end last.
    moves = [status for index, (_, status) in enumerate(taken) if index == 0 or taken[index - 1][1] != status]
    assert moves == ["UPLOADING", "QUEUED", "UPLOADING", "COMPLETED"]
    assert taken[-1] == (len(statuses) + 1, "COMPLETED")
    assert mailbox.coalesced == len(statuses) - len(taken)


def test_the_first_event_after_the_snapshot_counts_as_a_move_when_its_status_differs() -> None:
    mailbox = ProgressMailbox(limit=1)
    mailbox.put(event(2, "UPLOADING"))
    mailbox.start_after(event(1, "QUEUED"))
    mailbox.put(event(3, "UPLOADING"))  # over the limit: the 2 is the move and stays, with the latest
    assert drain(mailbox) == [(2, "UPLOADING"), (3, "UPLOADING")]


def test_get_waits_for_a_put_and_answers_none_once_ended() -> None:
    async def scenario() -> list[Any]:
        mailbox = ProgressMailbox()
        waiting = asyncio.create_task(mailbox.get())
        await asyncio.sleep(0)  # sync-ok: let the getter start waiting before the put
        assert not waiting.done()
        mailbox.put(event(1))
        first = await waiting
        ended = asyncio.create_task(mailbox.get())
        await asyncio.sleep(0)  # sync-ok: the getter waits on an empty mailbox
        mailbox.end()
        return [first, await ended, mailbox.put(event(2))]

    first, after_end, put_after_end = asyncio.run(scenario())
    assert first["sequence"] == 1
    assert after_end is None
    assert put_after_end is False


def test_a_mailbox_holds_at_least_one_event() -> None:
    with pytest.raises(ValueError):
        ProgressMailbox(limit=0)
