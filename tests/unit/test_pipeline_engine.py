"""The engine's pipelined rounds (`transfer_arrived_parts`) with the local store and an in-memory ledger."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

from backend.uploads.storage import PartReceipt
from backend.uploads.storage.local import LocalStorage
from backend.uploads.transfer import TransferSettings, TransferSpec, transfer_arrived_parts, transfer_upload

PART = 64 * 1024


class MemoryLedger:
    def __init__(self) -> None:
        self.receipts: dict[int, PartReceipt] = {}
        self.handle: str | None = None
        self.recorded: list[int] = []

    def parts(self) -> list[PartReceipt]:
        return [self.receipts[n] for n in sorted(self.receipts)]

    def record_part(self, receipt: PartReceipt) -> None:
        self.receipts[receipt.part_number] = receipt
        self.recorded.append(receipt.part_number)

    def set_storage_handle(self, handle: str) -> None:
        self.handle = handle

    def heartbeat(self) -> bool:
        return True

    def start_over(self, handle: str) -> None:
        assert handle == self.handle
        self.receipts.clear()
        self.handle = None


def _spec(size: int, handle: str | None = None) -> TransferSpec:
    parts_total = -(-size // PART)
    return TransferSpec(
        upload_id=uuid.uuid4(),
        key="piped.bin",
        size=size,
        part_size=PART,
        parts_total=parts_total,
        content_type="application/octet-stream",
        metadata={},
        handle=handle,
    )


def test_rounds_send_only_whole_parts_as_they_arrive_and_the_last_run_completes(tmp_path: Path) -> None:
    data = os.urandom(5 * PART + 100)
    staged = tmp_path / "staged"
    store = LocalStorage(root=tmp_path / "bucket")
    ledger = MemoryLedger()
    config = TransferSettings(concurrency=2, heartbeat_seconds=1)
    # The client has sent 2.5 parts; more arrive while the first round runs (the engine asks again).
    staged.write_bytes(data[: 2 * PART + PART // 2])
    answers = iter([2, 4])

    def arrived() -> int:
        whole = next(answers, 4)
        with staged.open("ab") as f:
            f.write(data[staged.stat().st_size : whole * PART + PART // 2])
        return whole

    sent = transfer_arrived_parts(
        spec=_spec(len(data)),
        source=staged,
        storage=store,
        ledger=ledger,
        should_stop=lambda: False,
        config=config,
        arrived=arrived,
    )
    assert sent == 4 and sorted(ledger.recorded) == [1, 2, 3, 4]
    assert ledger.handle is not None
    assert not store.object_path("piped.bin").exists(), "a pipelined round never completes the object"

    # Nothing new: a round opens nothing and sends nothing.
    assert (
        transfer_arrived_parts(
            spec=_spec(len(data), ledger.handle),
            source=staged,
            storage=store,
            ledger=ledger,
            should_stop=lambda: False,
            config=config,
            arrived=lambda: 4,
        )
        == 0
    )

    staged.write_bytes(data)
    transfer_upload(
        spec=_spec(len(data), ledger.handle),
        source=staged,
        storage=store,
        ledger=ledger,
        should_stop=lambda: False,
        config=config,
    )
    assert sorted(ledger.recorded) == [1, 2, 3, 4, 5, 6], "the final run sends only what is left"
    assert store.object_path("piped.bin").read_bytes() == data


def test_no_whole_part_yet_opens_nothing(tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    staged.write_bytes(b"x" * (PART - 1))
    ledger = MemoryLedger()
    sent = transfer_arrived_parts(
        spec=_spec(3 * PART),
        source=staged,
        storage=LocalStorage(root=tmp_path / "bucket"),
        ledger=ledger,
        should_stop=lambda: False,
        config=TransferSettings(),
        arrived=lambda: 0,
    )
    assert sent == 0 and ledger.handle is None


class _GatedStore(LocalStorage):
    """Part 1 is held until part 2 has started (or 5 s passed): what it saw is kept."""

    def __init__(self, root: Path) -> None:
        super().__init__(root=root)
        self.part_two_started = threading.Event()
        self.overlapped = False

    def put_part(self, *, key: str, handle: str, part_number: int, offset: int, data: bytes) -> PartReceipt:
        if part_number == 2:
            self.part_two_started.set()
        if part_number == 1:
            self.overlapped = self.part_two_started.wait(5)
        return super().put_part(key=key, handle=handle, part_number=part_number, offset=offset, data=data)


def test_a_part_that_arrives_while_another_is_in_flight_is_sent_beside_it(tmp_path: Path) -> None:
    # One part is in when the run starts; the second arrives while the first is still in flight.
    # It goes out at once in the free slot, not after the first part's round ends.
    data = os.urandom(2 * PART)
    staged = tmp_path / "staged"
    staged.write_bytes(data)
    answers = iter([1])
    store = _GatedStore(tmp_path / "bucket")
    ledger = MemoryLedger()
    sent = transfer_arrived_parts(
        spec=_spec(len(data)),
        source=staged,
        storage=store,
        ledger=ledger,
        should_stop=lambda: False,
        config=TransferSettings(concurrency=2, heartbeat_seconds=1),
        arrived=lambda: next(answers, 2),
    )
    assert sent == 2 and sorted(ledger.recorded) == [1, 2]
    assert store.overlapped, "part 2 waited for part 1's round to end"


def test_a_round_whose_object_is_gone_stops_and_the_transfer_after_receiving_starts_it_over(tmp_path: Path) -> None:
    data = os.urandom(4 * PART)
    staged = tmp_path / "staged"
    staged.write_bytes(data[: 2 * PART])
    store = LocalStorage(root=tmp_path / "bucket")
    ledger = MemoryLedger()
    config = TransferSettings(concurrency=2, heartbeat_seconds=1)
    common = {"source": staged, "storage": store, "ledger": ledger, "should_stop": lambda: False, "config": config}
    assert transfer_arrived_parts(spec=_spec(len(data)), arrived=lambda: 2, **common) == 2
    gone = ledger.handle
    (entry,) = [e for e in store.temporary_entries() if e.handle == gone]
    store.temporary_remove(name=entry.name)  # expired or aborted between two rounds

    # The round meets the spent object and stops: no start over while RECEIVING, so the ledger
    # (and the counters it stands for) keep what they had.
    staged.write_bytes(data[: 3 * PART])
    ledger.recorded.clear()
    assert transfer_arrived_parts(spec=_spec(len(data), gone), arrived=lambda: 3, **common) == 0
    assert ledger.handle == gone and ledger.recorded == [] and sorted(ledger.receipts) == [1, 2]

    # The transfer once every byte is in starts the object over and sends every part.
    staged.write_bytes(data)
    transfer_upload(spec=_spec(len(data), gone), **common)
    assert ledger.handle not in (None, gone) and sorted(ledger.recorded) == [1, 2, 3, 4]
    assert store.object_path("piped.bin").read_bytes() == data
