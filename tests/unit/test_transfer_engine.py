"""The transfer engine in process: the real local store, an in-memory ledger, no database, no queue.

The engine is handed everything it uses (STYLE 13), so each of its promises is checked here
directly: every part sent once and recorded, a stopped run resumed from its ledger, retryable
failures retried and counted through the retry policy's hooks, refusals final, a lost claim
stopping it and leaving no open object behind.
"""

from __future__ import annotations

import os
import threading
import uuid
import zlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from backend.retries import RetryPolicy
from backend.uploads.errors import ClaimLost
from backend.uploads.storage import PartReceipt, StorageCapabilities, StorageError
from backend.uploads.storage.local import LocalStorage
from backend.uploads.transfer import (
    STAGED_BYTES_MISSING,
    TransferFailed,
    TransferSettings,
    TransferSpec,
    TransferStopped,
    transfer_upload,
)

PART = 64 * 1024
FAST = TransferSettings(concurrency=3, heartbeat_seconds=0.05, retry=RetryPolicy(attempts=3, base=0.0))


class MemoryLedger:
    """The engine's Ledger kept in a dict; `lose_claim_at` makes the Nth record_part raise ClaimLost."""

    def __init__(self, *, lose_claim_at: int | None = None, lose_handle: bool = False) -> None:
        self.recorded: dict[int, PartReceipt] = {}
        self.record_calls: list[int] = []
        self.handle: str | None = None
        self.heartbeats = 0
        self.alive = True
        self.lose_claim_at = lose_claim_at
        self.lose_handle = lose_handle
        self.started_over: list[str] = []

    def parts(self) -> list[PartReceipt]:
        return [self.recorded[n] for n in sorted(self.recorded)]

    def record_part(self, receipt: PartReceipt) -> None:
        self.record_calls.append(receipt.part_number)
        if self.lose_claim_at is not None and len(self.record_calls) >= self.lose_claim_at:
            raise ClaimLost("cancelled")
        self.recorded[receipt.part_number] = receipt

    def set_storage_handle(self, handle: str) -> None:
        if self.lose_handle:
            raise ClaimLost("deleted")
        self.handle = handle

    def heartbeat(self) -> bool:
        self.heartbeats += 1
        return self.alive

    def start_over(self, handle: str) -> None:
        assert handle == self.handle, "only the object the ledger names is started over"
        self.started_over.append(handle)
        self.recorded.clear()
        self.handle = None


class FlakyStore(LocalStorage):
    """The local store taking parts as bytes only, failing parts as `failures` says (part -> how many times).

    It is handed to the engine without its part-copy capability (`_run`), so every part goes through `put_part`.
    """

    def __init__(self, root: Path, *, failures: Mapping[int, int] | None = None, retryable: bool = True) -> None:
        super().__init__(root=root)
        self.failures = dict(failures or {})
        self.retryable = retryable
        self.puts: list[int] = []

    def put_part(self, *, key: str, handle: str, part_number: int, offset: int, data: bytes) -> PartReceipt:
        self.puts.append(part_number)
        if self.failures.get(part_number, 0) > 0:
            self.failures[part_number] -= 1
            raise StorageError(f"injected failure of part {part_number}", retryable=self.retryable)
        return super().put_part(key=key, handle=handle, part_number=part_number, offset=offset, data=data)

    def put_object(self, *, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> PartReceipt:
        if data:  # a one-part file's plain put is its part 1
            self.puts.append(1)
            if self.failures.get(1, 0) > 0:
                self.failures[1] -= 1
                raise StorageError("injected failure of part 1", retryable=self.retryable)
        return super().put_object(key=key, data=data, content_type=content_type, metadata=metadata)


def _staged(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "staged"
    path.write_bytes(data)
    return path, data


def _spec(size: int, *, handle: str | None = None) -> TransferSpec:
    parts_total = max(1, -(-size // PART)) if size else 0
    return TransferSpec(
        upload_id=uuid.uuid4(),
        key=f"uploads/{uuid.uuid4().hex}",
        size=size,
        part_size=PART,
        parts_total=parts_total,
        content_type="application/octet-stream",
        metadata={"sha256": "", "filename": "f.bin"},
        handle=handle,
    )


def _run(store: Any, spec: TransferSpec, source: Path, ledger: MemoryLedger, **kwargs: Any) -> Counter[str]:
    counts: Counter[str] = Counter()
    caps = StorageCapabilities.of(store)
    transfer_upload(
        spec=spec,
        source=source,
        storage=caps.core,
        part_from_file=kwargs.pop("part_from_file", None if isinstance(store, FlakyStore) else caps.part_from_file),
        ledger=ledger,
        should_stop=kwargs.pop("should_stop", lambda: False),
        config=kwargs.pop("config", FAST),
        count=counts.update,
        **kwargs,
    )
    return counts


@pytest.mark.parametrize("from_file", [True, False], ids=["part-copy", "bytes"])
def test_every_part_is_sent_once_recorded_and_assembled(tmp_path: Path, from_file: bool) -> None:
    source, data = _staged(tmp_path, 5 * PART + 17)
    store = LocalStorage(root=tmp_path / "bucket")
    spec, ledger = _spec(len(data)), MemoryLedger()
    extra = {} if from_file else {"part_from_file": None}
    counts = _run(store, spec, source, ledger, **extra)
    assert store.object_path(spec.key).read_bytes() == data
    assert sorted(ledger.record_calls) == [1, 2, 3, 4, 5, 6], "each part recorded exactly once"
    assert ledger.handle is not None and store.temporary_entries() == [], "the open object is gone once complete"
    assert counts == Counter(part_attempts=6, parts_confirmed=6, bytes_transferred=len(data))


def test_a_stopped_run_is_resumed_from_its_ledger_sending_only_the_rest(tmp_path: Path) -> None:
    source, data = _staged(tmp_path, 6 * PART)
    store = FlakyStore(tmp_path / "bucket")
    spec, ledger = _spec(len(data)), MemoryLedger()
    one_at_a_time = TransferSettings(concurrency=1, heartbeat_seconds=5, retry=RetryPolicy(attempts=1))
    # The stop check is asked before each part starts: let two parts go, then stop.
    asked = iter([False, False, True])
    with pytest.raises(TransferStopped):
        _run(store, spec, source, ledger, config=one_at_a_time, should_stop=lambda: next(asked))
    assert sorted(ledger.recorded) == [1, 2]
    store.puts.clear()
    resumed = TransferSpec(**{**spec.__dict__, "handle": ledger.handle})
    _run(store, resumed, source, ledger)
    assert sorted(store.puts) == [3, 4, 5, 6], "the confirmed parts are not sent again"
    assert store.object_path(spec.key).read_bytes() == data


def test_parts_only_the_store_lists_are_recorded_when_resuming(tmp_path: Path) -> None:
    """A run that died between the store's answer and its ledger write: the store's word counts."""
    source, data = _staged(tmp_path, 3 * PART)
    store = FlakyStore(tmp_path / "bucket")
    spec = _spec(len(data))
    handle = store.start(key=spec.key, content_type="", metadata={})
    store.put_part(key=spec.key, handle=handle, part_number=2, offset=PART, data=data[PART : 2 * PART])
    store.puts.clear()
    ledger = MemoryLedger()
    _run(store, TransferSpec(**{**spec.__dict__, "handle": handle}), source, ledger)
    assert sorted(store.puts) == [1, 3]
    assert sorted(ledger.record_calls) == [1, 2, 3]
    assert store.object_path(spec.key).read_bytes() == data


def test_retryable_failures_are_retried_and_counted_through_the_policy_hooks(tmp_path: Path) -> None:
    source, data = _staged(tmp_path, 3 * PART)
    store = FlakyStore(tmp_path / "bucket", failures={2: 2})
    spec, ledger = _spec(len(data)), MemoryLedger()
    counts = _run(store, spec, source, ledger)
    assert store.puts.count(2) == 3 and store.puts.count(1) == 1
    assert counts["part_attempts"] == 5 and counts["part_failures"] == 2 and counts["parts_confirmed"] == 3
    assert store.object_path(spec.key).read_bytes() == data


def test_a_part_out_of_attempts_fails_the_transfer_naming_it(tmp_path: Path) -> None:
    source, _ = _staged(tmp_path, 3 * PART)
    store = FlakyStore(tmp_path / "bucket", failures={3: 99})
    with pytest.raises(TransferFailed, match=r"^part 3 failed 3 times; last error: injected failure of part 3$"):
        _run(store, _spec(3 * PART), source, MemoryLedger())
    assert store.puts.count(3) == 3


class BrokenPartStore(FlakyStore):
    """Part 2 raises an error that is no StorageError (a bug, a library's surprise); part 1 is
    confirmed only once part 2 has raised, so the engine sees the failure first or with it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.broken = threading.Event()

    def put_part(self, *, key: str, handle: str, part_number: int, offset: int, data: bytes) -> PartReceipt:
        if part_number == 2:
            self.broken.set()
            raise RuntimeError("not a storage error")
        assert self.broken.wait(timeout=30), "part 2 never ran"
        return super().put_part(key=key, handle=handle, part_number=part_number, offset=offset, data=data)


def test_a_part_confirmed_with_an_unexpected_error_is_still_recorded(tmp_path: Path) -> None:
    source, _ = _staged(tmp_path, 2 * PART)
    store, ledger = BrokenPartStore(tmp_path / "bucket"), MemoryLedger()
    with pytest.raises(RuntimeError, match="not a storage error"):
        _run(store, _spec(2 * PART), source, ledger)
    assert sorted(ledger.recorded) == [1], "the store confirmed part 1: the ledger says so at once"


def test_a_refusal_is_not_retried(tmp_path: Path) -> None:
    source, _ = _staged(tmp_path, 2 * PART)
    store = FlakyStore(tmp_path / "bucket", failures={1: 99}, retryable=False)
    with pytest.raises(TransferFailed, match=r"^part 1: injected failure of part 1$"):
        _run(store, _spec(2 * PART), source, MemoryLedger())
    assert store.puts.count(1) == 1


def test_a_claim_lost_at_a_ledger_write_stops_the_transfer(tmp_path: Path) -> None:
    source, _ = _staged(tmp_path, 4 * PART)
    store = LocalStorage(root=tmp_path / "bucket")
    spec = _spec(4 * PART)
    with pytest.raises(ClaimLost):
        _run(store, spec, source, MemoryLedger(lose_claim_at=2))
    assert not store.object_path(spec.key).exists()


def test_a_claim_lost_before_the_handle_is_recorded_aborts_the_new_object(tmp_path: Path) -> None:
    source, _ = _staged(tmp_path, 2 * PART)
    store = LocalStorage(root=tmp_path / "bucket")
    with pytest.raises(ClaimLost):
        _run(store, _spec(2 * PART), source, MemoryLedger(lose_handle=True))
    assert store.temporary_entries() == [], "no row will ever name that object: it is aborted at once"


def test_a_failed_heartbeat_stops_before_the_next_part(tmp_path: Path) -> None:
    source, _ = _staged(tmp_path, 8 * PART)
    store = FlakyStore(tmp_path / "bucket")
    ledger = MemoryLedger()
    ledger.alive = False
    slow = TransferSettings(concurrency=1, heartbeat_seconds=0.0, retry=RetryPolicy(attempts=1), part_delay_ms=1)
    with pytest.raises(TransferStopped):
        _run(store, _spec(8 * PART), source, ledger, config=slow)
    assert ledger.heartbeats >= 1 and len(store.puts) < 8


def test_the_empty_file_is_one_plain_put(tmp_path: Path) -> None:
    source, _ = _staged(tmp_path, 0)
    store = FlakyStore(tmp_path / "bucket")
    spec, ledger = _spec(0), MemoryLedger()
    _run(store, spec, source, ledger)
    assert store.object_path(spec.key).read_bytes() == b""
    assert store.puts == [] and ledger.handle is None


def test_a_one_part_file_is_one_plain_put_whose_receipt_is_left_to_the_caller(tmp_path: Path) -> None:
    source, data = _staged(tmp_path, PART - 5)
    store = FlakyStore(tmp_path / "bucket", failures={1: 1})
    spec, ledger, counts = _spec(len(data)), MemoryLedger(), Counter[str]()
    receipt = transfer_upload(
        spec=spec,
        source=source,
        storage=store,
        ledger=ledger,
        should_stop=lambda: False,
        config=FAST,
        count=counts.update,
    )
    assert store.object_path(spec.key).read_bytes() == data
    assert receipt is not None and (receipt.part_number, receipt.size) == (1, len(data))
    assert receipt.etag == f"{zlib.crc32(data):08x}"
    assert ledger.handle is None and store.temporary_entries() == [], "no open object, nothing to assemble"
    assert ledger.record_calls == [], "the caller records the only part with the completion, in one write"
    assert store.puts == [1, 1], "a retryable failure of the put is retried like a part"
    assert counts == Counter(part_attempts=2, part_failures=1, parts_confirmed=1, bytes_transferred=len(data))


def test_a_one_part_file_stops_before_its_put_when_asked(tmp_path: Path) -> None:
    source, _ = _staged(tmp_path, 10)
    store = FlakyStore(tmp_path / "bucket")
    spec = _spec(10)
    with pytest.raises(TransferStopped):
        _run(store, spec, source, MemoryLedger(), should_stop=lambda: True)
    assert store.puts == [] and not store.object_path(spec.key).exists()


def test_a_one_part_file_an_earlier_run_opened_is_finished_in_that_object(tmp_path: Path) -> None:
    source, data = _staged(tmp_path, 100)
    store = FlakyStore(tmp_path / "bucket")
    spec = _spec(len(data))
    handle = store.start(key=spec.key, content_type="", metadata={})
    ledger = MemoryLedger()
    receipt = transfer_upload(
        spec=TransferSpec(**{**spec.__dict__, "handle": handle}),
        source=source,
        storage=store,
        ledger=ledger,
        should_stop=lambda: False,
        config=FAST,
    )
    assert receipt is None and ledger.record_calls == [1]
    assert store.object_path(spec.key).read_bytes() == data and store.temporary_entries() == []


def test_missing_staged_bytes_fail_with_the_shared_staging_hint(tmp_path: Path) -> None:
    store = LocalStorage(root=tmp_path / "bucket")
    with pytest.raises(TransferFailed) as failed:
        _run(store, _spec(PART), tmp_path / "nowhere", MemoryLedger())
    assert str(failed.value) == STAGED_BYTES_MISSING


# --- an open object the store can take no more calls for (StorageError.spent) ------------------


def test_a_resumed_object_removed_behind_the_runs_back_is_started_over(tmp_path: Path) -> None:
    source, data = _staged(tmp_path, 4 * PART)
    store = FlakyStore(tmp_path / "bucket")
    spec, ledger = _spec(len(data)), MemoryLedger()
    one_at_a_time = TransferSettings(concurrency=1, heartbeat_seconds=5, retry=RetryPolicy(attempts=1))
    asked = iter([False, False, True])
    with pytest.raises(TransferStopped):
        _run(store, spec, source, ledger, config=one_at_a_time, should_stop=lambda: next(asked))
    spent = ledger.handle
    assert spent is not None and sorted(ledger.recorded) == [1, 2]
    # The open object goes (aborted, expired) while nobody runs: the store lists nothing for it
    # and refuses its parts as spent.
    (entry,) = [e for e in store.temporary_entries() if e.handle == spent]
    store.temporary_remove(name=entry.name)
    store.puts.clear()

    _run(store, TransferSpec(**{**spec.__dict__, "handle": spent}), source, ledger)
    assert ledger.started_over == [spent], "started over once, from the spent object"
    assert ledger.handle not in (None, spent)
    assert sorted(store.puts) == [1, 2, 3, 4], "every part again: the ledger of the spent object is forgotten"
    assert sorted(ledger.recorded) == [1, 2, 3, 4]
    assert store.object_path(spec.key).read_bytes() == data and store.temporary_entries() == []


class SpentAtAssembly(FlakyStore):
    """A store whose `complete` refuses the object `refusals` times as spent (the check after
    Complete found other bytes and removed it), as the S3 backend does on a corrupted part."""

    def __init__(self, root: Path, *, refusals: int) -> None:
        super().__init__(root)
        self.refusals = refusals
        self.completes: list[str] = []

    def complete(self, *, key: str, handle: str, parts: list[PartReceipt], size: int) -> None:
        self.completes.append(handle)
        if self.refusals > 0:
            self.refusals -= 1
            self.abort(key=key, handle=handle)
            raise StorageError(
                "the assembled object's checksum is not that of the parts sent", retryable=False, spent=True
            )
        super().complete(key=key, handle=handle, parts=parts, size=size)


def test_an_object_refused_at_assembly_is_started_over_once_and_completes(tmp_path: Path) -> None:
    source, data = _staged(tmp_path, 3 * PART + 1)
    store, ledger = SpentAtAssembly(tmp_path / "bucket", refusals=1), MemoryLedger()
    spec = _spec(len(data))
    counts = _run(store, spec, source, ledger)
    first, second = store.completes
    assert first != second and ledger.started_over == [first] and ledger.handle == second
    assert sorted(store.puts) == [1, 1, 2, 2, 3, 3, 4, 4], "each part once in each object"
    assert store.object_path(spec.key).read_bytes() == data
    assert counts["parts_confirmed"] == 8


def test_an_object_spent_again_after_starting_over_fails_the_transfer(tmp_path: Path) -> None:
    source, _ = _staged(tmp_path, 2 * PART)
    store, ledger = SpentAtAssembly(tmp_path / "bucket", refusals=2), MemoryLedger()
    with pytest.raises(
        TransferFailed, match=r"checksum is not that of the parts sent \(the object had been started over"
    ):
        _run(store, _spec(2 * PART), source, ledger)
    assert len(store.completes) == 2 and len(ledger.started_over) == 1


def test_a_spent_error_is_never_retryable() -> None:
    assert not StorageError("gone", retryable=True, spent=True).retryable
    assert StorageError("busy", retryable=True).retryable and not StorageError("busy", retryable=True).spent
