"""The engine's pipelined rounds (`transfer_arrived_parts`) with the local store and an in-memory ledger."""

from __future__ import annotations

import os
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
    answers = iter([2, 4, 4])

    def arrived() -> int:
        whole = next(answers)
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
