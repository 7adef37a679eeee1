"""RECEIVING events: published as bytes arrive, coalesced to at most four a second per upload.

CONTRACT section 3: one event when a chunk has been written and, within a long chunk, one per
part-size of new bytes; at most four a second per upload, the latest state winning. Each
published event bumps the upload's `sequence` in the same UPDATE that records the offset (or a
trailing one), and goes out through this process's `progress.ProgressPublisher`, so RECEIVING
events and the transfer's share the upload's one sequence. A chunk that lands inside the quarter second after an
event schedules one trailing event, which reads the row then: the latest state wins.
"""

from __future__ import annotations

import threading
import time
import uuid
from functools import cache

from django.db import close_old_connections
from django.db.models import F
from django.utils import timezone

from backend.uploads.models import FileUpload, UploadStatus
from backend.uploads.progress import ProgressPublisher, progress_event

MIN_INTERVAL_SECONDS = 0.25

_lock = threading.Lock()
_last: dict[uuid.UUID, float] = {}
_trailing: dict[uuid.UUID, threading.Timer] = {}


def receiving_event_due(upload_id: uuid.UUID) -> bool:
    """Whether an event may go out now; if so it is counted as sent (the caller publishes it).

    If not, one trailing event is scheduled for when the interval has passed.
    """
    now = time.monotonic()
    with _lock:
        last = _last.get(upload_id, 0.0)
        if now - last >= MIN_INTERVAL_SECONDS:
            _last[upload_id] = now
            if len(_last) > 10_000:
                _forget_old(now)
            return True
        if upload_id not in _trailing:
            timer = threading.Timer(last + MIN_INTERVAL_SECONDS - now, _trailing_publish, args=(upload_id,))
            timer.daemon = True
            _trailing[upload_id] = timer
            timer.start()
        return False


@cache
def _publisher() -> ProgressPublisher:
    """This process's publisher of RECEIVING events: one event loop thread and one Redis pool.

    Handing it an event costs the writer nothing: a chunk's bytes never wait for Redis (through
    `progress_publish` each event would open a loop and a connection on the writer's thread).
    """
    return ProgressPublisher().start()


def receiving_publish(upload: FileUpload) -> None:
    """Publish `upload`'s state (its `sequence` was bumped in the committed UPDATE), without waiting."""
    _publisher().publish(progress_event(upload))


def _trailing_publish(upload_id: uuid.UUID) -> None:
    with _lock:
        _trailing.pop(upload_id, None)
        _last[upload_id] = time.monotonic()
    try:
        rows = FileUpload.objects.filter(id=upload_id, status=UploadStatus.RECEIVING)
        if rows.update(sequence=F("sequence") + 1, updated_at=timezone.now()):
            upload = FileUpload.objects.filter(id=upload_id).first()
            if upload is not None:
                receiving_publish(upload)
    finally:
        close_old_connections()


def _forget_old(now: float) -> None:
    for key in [k for k, at in _last.items() if now - at > 60]:
        del _last[key]
