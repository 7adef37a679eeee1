from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry
from asgiref.sync import sync_to_async
from django.conf import settings

from backend.logs import upload_log_bind
from backend.uploads.progress import progress_stream
from backend.uploads.selectors import upload_get_for_user, upload_id_parse
from schema.auth import require_user
from schema.context import Info
from schema.types import UploadProgress


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def upload_progress(self, info: Info, id: strawberry.ID) -> AsyncGenerator[UploadProgress, None]:
        user = require_user(info)
        upload_id = upload_id_parse(id)
        upload_log_bind(upload_id)
        # The owner check, once per subscriber; the row itself is not kept (an idle subscription
        # holds as little as it can: README, Subscriptions at scale).
        upload_id = (await sync_to_async(upload_get_for_user)(user=user, upload_id=upload_id)).id
        del user
        # Each event goes out as the hub's shared object: schema/fanout.py executes it once per
        # document for every subscriber of this process (an UploadProgress as far as GraphQL knows).
        async for event in progress_stream(upload_id=upload_id, resync_seconds=settings.PROGRESS_RESYNC_SECONDS):
            yield event  # type: ignore[misc]
            del event
