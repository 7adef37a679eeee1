"""The transfer engine: copies a staged file into the bucket part by part.

Up to `UPLOAD_PART_CONCURRENCY` parts are in flight, each read from staging only when its turn
comes, so memory stays near (concurrency + 1) x part size whatever the file size. A part that
fails is tried again on its own (backoff with jitter) while the others go on. Each confirmed part
enters the ledger before the next is counted; a run started again for the same upload reconciles
the ledger with what the store lists and sends only the rest. An open object the store can take
no more calls for (spent: aborted or expired behind the service's back, or completed into an
object the store's check refused) is started over once per run: it is aborted (best effort), its
ledger forgotten, a new object opened and every part sent again from staging (`_Run.at_most_twice`).
A pipelined round (`transfer_arrived_parts`) never starts an object over: it stops, and the
transfer after RECEIVING does. A part only the store lists is recorded only once its listing is
checked against the staged bytes (`_Run.reconcile`).

The engine knows neither the service layer nor the queue: its caller (`jobs.upload_transfer`)
hands it what to copy (`TransferSpec`), a narrow `Ledger` (the parts confirmed so far, record a
part, set the store's handle, heartbeat, start over), a stop check, and its settings. With the local store
and an in-memory ledger it runs in a unit test (tests/unit/test_transfer_engine.py).
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

from tenacity import RetryCallState

from backend.retries import RetryPolicy
from backend.uploads.errors import ClaimLost
from backend.uploads.parts import part_range
from backend.uploads.storage import PartFromFile, PartReceipt, Storage, StorageError, storage_retrying

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TransferFailed(Exception):
    """The transfer cannot finish: a part ran out of attempts or the store refused for good."""


class ObjectSpent(TransferFailed):
    """The store's open object can take no more calls (StorageError.spent): the transfer may start
    the object over, once per run; raised out of a run, it fails the transfer like any TransferFailed."""


class TransferStopped(Exception):
    """The transfer must stop before its next part (cancelled, claim lost, worker stopping)."""


STAGED_BYTES_MISSING = (
    "the staged bytes of this upload are gone: this worker does not find them in its UPLOAD_STAGING_DIR,"
    " which every server and worker must share"
)

# Set by the worker's SIGTERM handler: finish the parts in flight, start no new ones. The engine
# never reads it itself: the job's stop check does.
stop_requested = threading.Event()


@dataclass(frozen=True)
class TransferSpec:
    """What to copy: one upload as the engine needs it (the job builds it from the row)."""

    upload_id: uuid.UUID
    key: str
    size: int
    part_size: int
    parts_total: int
    content_type: str
    metadata: dict[str, str]
    handle: str | None = None  # the open store object an earlier run started, if any


@dataclass(frozen=True)
class TransferSettings:
    """How to copy: parts in flight, the heartbeat interval, the retry policy, an artificial pause per part.

    `retry` is the one policy for every store call of the transfer (each part, and start, list,
    complete); the storage factory gives the backends the same one for the calls they retry.
    """

    concurrency: int = 4
    heartbeat_seconds: float = 5.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    part_delay_ms: int = 0


class Ledger(Protocol):
    """The transfer's record of itself, kept by its caller (the upload row and its part ledger).

    Each write raises ClaimLost once the run no longer owns the upload (cancelled, deleted,
    taken by another run): the engine then stops.
    """

    def parts(self) -> list[PartReceipt]:
        """Every part recorded so far, in part order."""

    def record_part(self, receipt: PartReceipt) -> None:
        """Record one part the store confirmed. Idempotent per part number."""

    def set_storage_handle(self, handle: str) -> None:
        """Record the open store object this run started."""

    def heartbeat(self) -> bool:
        """Say the run is alive; False once the run no longer owns the upload."""

    def start_over(self, handle: str) -> None:
        """Forget the spent open object `handle` and every part recorded for it: what follows is a
        new transfer of the same bytes, its counters from 0 (the object is started over)."""


def _no_counts(amounts: Mapping[str, int]) -> None:
    return None


def transfer_upload(
    *,
    spec: TransferSpec,
    source: Path,
    storage: Storage,
    ledger: Ledger,
    should_stop: Callable[[], bool],
    config: TransferSettings,
    part_from_file: PartFromFile | None = None,
    count: Callable[[Mapping[str, int]], None] = _no_counts,
) -> PartReceipt | None:
    """Copy the staged bytes at `source` into the store and assemble the object `spec` describes.

    `should_stop` is asked before each part is started; `part_from_file` is the store's optional
    capability of taking a part straight from the staged file (the factory resolves it); `count`
    adds to the metrics counters (part_attempts, part_failures, parts_confirmed, bytes_transferred)
    from the retry policy's hooks. Raises TransferFailed, TransferStopped or ClaimLost; returns
    once the object is whole.

    An object of one part that no earlier run opened is stored with one plain put, as boto3's
    `upload_file` does below its multipart threshold: no open object, no listing, no assembly.
    Its part is not recorded here: the receipt is returned, for the caller to record with the
    completion in one write. Otherwise every part is in the ledger and None is returned.
    """
    if not source.exists():
        # The web process that accepted the upload staged it; a worker that cannot see it is most
        # likely not sharing the staging directory. Say so, without naming the server's paths.
        raise TransferFailed(STAGED_BYTES_MISSING)
    run = _Run(
        spec=spec,
        storage=storage,
        ledger=ledger,
        should_stop=should_stop,
        config=config,
        part_from_file=part_from_file,
        count=count,
    )
    if spec.size == 0:
        run.call_store(
            lambda: storage.put_object(key=spec.key, data=b"", content_type=spec.content_type, metadata=spec.metadata)
        )
        return None
    if spec.parts_total == 1 and spec.handle is None:
        return run.put_whole(source)

    fd = os.open(source, os.O_RDONLY)
    try:
        run.at_most_twice(partial(run.send_object, fd=fd))
    finally:
        os.close(fd)
    return None


def transfer_arrived_parts(
    *,
    spec: TransferSpec,
    source: Path,
    storage: Storage,
    ledger: Ledger,
    should_stop: Callable[[], bool],
    config: TransferSettings,
    arrived: Callable[[], int],
    part_from_file: PartFromFile | None = None,
    count: Callable[[Mapping[str, int]], None] = _no_counts,
) -> int:
    """Send the whole parts of an upload whose bytes are still arriving; never complete the object.

    `arrived()` answers how many whole parts (each exactly `spec.part_size`) staging holds now;
    parts 1..arrived() that neither the ledger nor the store confirm are sent. `arrived()` is
    asked again whenever a part in flight finishes, and the parts that arrived meanwhile join
    the ones in flight (up to the concurrency), so a client sending steadily keeps every slot
    busy. The run returns once no part is in flight and nothing new has arrived: it sends what
    is there and never waits for more. `spec.size` is not used (the length may not be known
    yet). The object is opened if `spec.handle` is None. Returns the number of parts sent.
    Raises as `transfer_upload` does, but for a spent object: the round then stops (a warning, no
    start over, so the counters of the RECEIVING upload never go back) and returns; the transfer
    after RECEIVING meets the spent object again and starts it over as a new transfer.
    """
    whole = arrived()
    if whole < 1:
        return 0
    if not source.exists():
        raise TransferFailed(STAGED_BYTES_MISSING)
    # Part ranges are computed against the bytes known whole so far, which every part sent lies in.
    run = _Run(
        spec=replace(spec, size=whole * spec.part_size),
        storage=storage,
        ledger=ledger,
        should_stop=should_stop,
        config=config,
        part_from_file=part_from_file,
        count=count,
    )
    sent = 0

    def send_arrived(handle: str) -> None:
        nonlocal whole, sent
        confirmed = run.reconcile(handle=handle, fd=fd)
        due = deque(n for n in range(1, whole + 1) if n not in confirmed)
        sent += len(due)

        def newly_arrived() -> list[int]:
            nonlocal whole, sent
            now = arrived()
            if now <= whole:
                return []
            fresh = [n for n in range(whole + 1, now + 1) if n not in confirmed]
            whole = now
            run.spec = replace(run.spec, size=whole * spec.part_size)
            sent += len(fresh)
            return fresh

        run.send_parts(handle=handle, fd=fd, pending=due, refill=newly_arrived)

    fd = os.open(source, os.O_RDONLY)
    try:
        send_arrived(run.open_object())
    except ObjectSpent as exc:
        # Not started over here: the counters of a RECEIVING upload must not go back (CONTRACT
        # section 3). The round stops; the transfer that runs once every byte is in finds the
        # object spent and starts it over, as a new transfer (UPLOADING -> QUEUED -> UPLOADING).
        logger.warning(
            "upload %s: the store's open object is spent (%s); the pipelined round stops, and the transfer"
            " after RECEIVING starts the object over",
            spec.upload_id,
            exc,
        )
    finally:
        os.close(fd)
    return sent


@dataclass
class _Run:
    """One call of `transfer_upload`: what it was handed, shared by its steps."""

    spec: TransferSpec
    storage: Storage
    ledger: Ledger
    should_stop: Callable[[], bool]
    config: TransferSettings
    part_from_file: PartFromFile | None
    count: Callable[[Mapping[str, int]], None]
    opened: str | None = None  # the handle of the object this run opened, if it opened one

    def open_object(self) -> str:
        """The store's handle for this object: the one an earlier run opened, or a new one recorded now."""
        spec, storage = self.spec, self.storage
        if spec.handle is not None:
            return spec.handle
        handle = self.call_store(
            lambda: storage.start(key=spec.key, content_type=spec.content_type, metadata=spec.metadata)
        )
        try:
            self.ledger.set_storage_handle(handle)
        except ClaimLost:
            # Cancelled or deleted meanwhile: no row will ever name this object, so abort it now.
            storage.abort(key=spec.key, handle=handle)
            raise
        self.opened = handle
        return handle

    def at_most_twice(self, send: Callable[[str], None]) -> None:
        """`send(handle)` in the object the run opens; if the store's object turns out spent
        (ObjectSpent: aborted or expired behind the service's back, or completed into an object
        the store's check refused), start the object over once and send again. A second spent
        object fails the transfer."""
        handle = self.open_object()
        try:
            send(handle)
            return
        except ObjectSpent as exc:
            logger.warning(
                "upload %s: the store's open object %s is spent (%s); starting the object over",
                self.spec.upload_id,
                handle,
                exc,
            )
        self.abort_quietly(handle)
        self.ledger.start_over(handle)
        self.spec = replace(self.spec, handle=None)
        handle = self.open_object()
        try:
            send(handle)
        except ObjectSpent as exc:
            raise TransferFailed(f"{exc} (the object had been started over once already)") from exc

    def abort_quietly(self, handle: str) -> None:
        """Best effort: abort the spent object before it is forgotten, so none of its parts stay
        behind if the store was wrong to call it gone (no row names it afterwards). NoSuchUpload,
        the usual answer, is no error (`Storage.abort` is idempotent); any other failure is logged."""
        try:
            self.storage.abort(key=self.spec.key, handle=handle)
        except StorageError as exc:
            logger.info("upload %s: the spent object %s could not be aborted: %s", self.spec.upload_id, handle, exc)

    def send_object(self, handle: str, *, fd: int) -> None:
        """Every part the ledger and the store do not both confirm, then the object assembled."""
        spec = self.spec
        confirmed = self.reconcile(handle=handle, fd=fd)
        pending = deque(n for n in range(1, spec.parts_total + 1) if n not in confirmed)
        self.send_parts(handle=handle, fd=fd, pending=pending)
        receipts = self.ledger.parts()
        if [r.part_number for r in receipts] != list(range(1, spec.parts_total + 1)):
            raise TransferFailed("the part ledger is incomplete after every part was sent")
        self.call_store(lambda: self.storage.complete(key=spec.key, handle=handle, parts=receipts, size=spec.size))

    def reconcile(self, *, handle: str, fd: int) -> set[int]:
        """Part numbers both the ledger and the store confirm, and the parts only the store lists
        that hold exactly the staged bytes (recorded now, with the receipt the store gives them
        checked against those bytes: `Storage.listed_part_verified`). Any other listed part is
        sent again. An object this run opened holds nothing yet: the store is not asked."""
        spec = self.spec
        if handle == self.opened:
            return set()
        ledger = {r.part_number for r in self.ledger.parts()}
        listed = self.call_store(lambda: self.storage.list_parts(key=spec.key, handle=handle))
        confirmed = set()
        for receipt in listed:
            try:
                offset, length = part_range(part_number=receipt.part_number, size=spec.size, part_size=spec.part_size)
            except ValueError:
                continue
            if receipt.size != length:
                continue
            if receipt.part_number not in ledger:
                # Only after a crash or a lost answer: reading the part back from staging is rare.
                verified = self.storage.listed_part_verified(
                    handle=handle, receipt=receipt, data=os.pread(fd, length, offset)
                )
                if verified is None:
                    logger.info(
                        "upload %s part %d: what the store lists is not the staged bytes; sent again",
                        spec.upload_id,
                        receipt.part_number,
                    )
                    continue
                self.ledger.record_part(verified)
            confirmed.add(receipt.part_number)
        return confirmed

    def put_whole(self, source: Path) -> PartReceipt:
        """The one part of a small object in one plain put, in this thread; its receipt is not recorded."""
        if self.should_stop():
            raise TransferStopped("the transfer was asked to stop")
        fd = os.open(source, os.O_RDONLY)
        try:
            return self.send_part(number=1, put=partial(self.put_object, fd=fd))
        finally:
            os.close(fd)

    def send_parts(
        self, *, handle: str, fd: int, pending: deque[int], refill: Callable[[], list[int]] | None = None
    ) -> None:
        """Send `pending` with up to `concurrency` parts in flight. `refill` (pipelining) is asked for
        more part numbers whenever `pending` is empty and a slot is free; it answers [] for none."""
        if len(pending) == 1 and refill is None:
            # One part left (a resumed run): no thread pool for it.
            if self.should_stop():
                raise TransferStopped("the transfer was asked to stop")
            number = pending.popleft()
            self.ledger.record_part(self.send_part(number=number, put=partial(self.put_part, handle=handle, fd=fd)))
            return
        concurrency = max(1, self.config.concurrency)
        heartbeat_every = self.config.heartbeat_seconds
        last_beat = time.monotonic()
        failure: BaseException | None = None
        stopping = False
        confirmed: list[PartReceipt] = []
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="part") as pool:
            in_flight: dict[Future[PartReceipt], int] = {}
            while True:
                if refill is not None and not pending and len(in_flight) < concurrency and not stopping and not failure:
                    pending.extend(refill())
                while pending and len(in_flight) < concurrency and not stopping and failure is None:
                    if self.should_stop():
                        stopping = True
                        break
                    number = pending.popleft()
                    # A fresh copy of this thread's context per part, so its log lines carry the upload id.
                    put = partial(self.put_part, handle=handle, fd=fd)
                    future = pool.submit(contextvars.copy_context().run, self.send_part, number=number, put=put)
                    in_flight[future] = number
                # The parts just confirmed enter the ledger once their successors are on the way:
                # no thread of the pool waits for a ledger write.
                for receipt in confirmed:
                    try:
                        self.ledger.record_part(receipt)
                    except ClaimLost as exc:
                        failure = failure or exc
                confirmed.clear()
                if not in_flight:
                    break
                done, _ = wait(in_flight, timeout=heartbeat_every, return_when=FIRST_COMPLETED)
                for future in done:
                    in_flight.pop(future)
                    try:
                        confirmed.append(future.result())
                    except Exception as exc:
                        # Any error, not only a failed part: raised below, once the parts confirmed
                        # with it (this round or still in flight) are in the ledger.
                        failure = failure or exc
                if time.monotonic() - last_beat >= heartbeat_every:
                    last_beat = time.monotonic()
                    if not self.ledger.heartbeat():
                        stopping = True
        if failure is not None:
            raise failure
        if stopping:
            raise TransferStopped("the transfer was asked to stop")

    def send_part(self, *, number: int, put: Callable[..., PartReceipt]) -> PartReceipt:
        """`put(number=number)` under the retry policy; its attempts and failures, counted by the
        policy's hooks, go to the counters with its confirmation: one round trip per part."""
        tried = {"part_attempts": 0, "part_failures": 0}
        confirmed: dict[str, int] = {}

        def attempted(state: RetryCallState) -> None:
            tried["part_attempts"] += 1

        def failed(state: RetryCallState) -> None:
            tried["part_failures"] += 1

        def retrying(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            logger.info(
                "upload %s part %d attempt %d failed: %s", self.spec.upload_id, number, state.attempt_number, error
            )

        attempts = storage_retrying(self.config.retry, before=attempted, after=failed, before_sleep=retrying)
        try:
            receipt: PartReceipt = attempts(put, number=number)
            confirmed = {"parts_confirmed": 1, "bytes_transferred": receipt.size}
        except StorageError as exc:
            if exc.spent:
                raise ObjectSpent(f"part {number}: {exc}") from exc
            if not exc.retryable:
                raise TransferFailed(f"part {number}: {exc}") from exc
            tries = self.config.retry.attempts
            raise TransferFailed(f"part {number} failed {tries} times; last error: {exc}") from exc
        finally:
            counts = {name: amount for name, amount in {**tried, **confirmed}.items() if amount}
            if counts:
                self.count(counts)
        return receipt

    def put_part(self, *, handle: str, number: int, fd: int) -> PartReceipt:
        """One attempt at part `number`: straight from the staged file if the store can, else its bytes."""
        self.part_delay()
        spec, storage = self.spec, self.storage
        offset, length = part_range(part_number=number, size=spec.size, part_size=spec.part_size)
        if self.part_from_file is not None:
            return self.part_from_file.put_part_from_file(
                key=spec.key, handle=handle, part_number=number, offset=offset, length=length, source_fd=fd
            )
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise StorageError(f"the staged file ends before part {number} does", retryable=False)
        return storage.put_part(key=spec.key, handle=handle, part_number=number, offset=offset, data=data)

    def put_object(self, *, number: int, fd: int) -> PartReceipt:
        """One attempt at a one-part object (`number` is 1): its bytes in one plain put."""
        self.part_delay()
        spec = self.spec
        data = os.pread(fd, spec.size, 0)
        if len(data) != spec.size:
            raise StorageError(f"the staged file ends before part {number} does", retryable=False)
        return self.storage.put_object(key=spec.key, data=data, content_type=spec.content_type, metadata=spec.metadata)

    def part_delay(self) -> None:
        if self.config.part_delay_ms:
            time.sleep(self.config.part_delay_ms / 1000)  # sync-ok: UPLOAD_PART_DELAY_MS, a deliberate pause per part

    def call_store(self, call: Callable[[], T]) -> T:
        """Run a whole-object store call (start, list, complete, put) with the same retry policy as parts."""
        try:
            result: T = storage_retrying(self.config.retry)(call)
            return result
        except StorageError as exc:
            if exc.spent:
                raise ObjectSpent(str(exc)) from exc
            raise TransferFailed(str(exc)) from exc
