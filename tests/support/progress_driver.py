"""Drive uploads' progress from the test process, the way a transfer job does, without a bucket.

The rows are real (made by the mutation on a stack without workers); the moves go through the real
services (claim, one recorded part per step, complete), each committed and then published by the
job's publisher (`progress_publisher`) on the stack's Redis. So a test controls exactly how many
events a subscriber must relay and how fast, and the server under test cannot tell them from a
worker's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any


@contextmanager
def publishing_to(redis_url: str) -> Iterator[None]:
    """This process's channel layer on `redis_url`, with one job publisher, while the block runs."""
    from django.conf import settings
    from django.test import override_settings

    from backend.uploads.progress import progress_publisher

    layers = {
        alias: {**conf, "CONFIG": {**conf.get("CONFIG", {}), "hosts": [redis_url]}}
        for alias, conf in settings.CHANNEL_LAYERS.items()
    }
    with override_settings(CHANNEL_LAYERS=layers), progress_publisher():
        yield


def drive_parts(
    upload_ids: Sequence[str],
    *,
    parts: int,
    part_size: int,
    per_second: float | None = None,
    after_part: Callable[[int], Any] | None = None,
) -> dict[str, int]:
    """Claim each upload, record `parts` parts on each (paced to `per_second` steps when given),
    complete. Call inside `publishing_to`. Returns each upload's final sequence."""
    from backend.uploads import services
    from backend.uploads.models import FileUpload
    from backend.uploads.storage import PartReceipt

    claims: dict[str, uuid.UUID] = {}
    for upload_id in upload_ids:
        claimed = services.upload_claim(upload_id=uuid.UUID(upload_id))
        if claimed is None:
            raise RuntimeError(f"upload {upload_id} could not be claimed")
        claims[upload_id] = claimed[1]
    started = time.monotonic()
    for number in range(1, parts + 1):
        for upload_id in upload_ids:
            receipt = PartReceipt(part_number=number, size=part_size, etag="driven")
            services.upload_record_part(upload_id=uuid.UUID(upload_id), claim=claims[upload_id], receipt=receipt)
        if after_part is not None:
            after_part(number)
        if per_second is not None:
            delay = started + number / per_second - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # sync-ok: pacing the emitter to its rate, not waiting for anything
    for upload_id in upload_ids:
        services.upload_complete(upload_id=uuid.UUID(upload_id), claim=claims[upload_id])
    return {upload_id: FileUpload.objects.get(id=upload_id).sequence for upload_id in upload_ids}
