from __future__ import annotations

import strawberry
from asgiref.sync import sync_to_async

from backend.quotas.selectors import quota_usage_for
from backend.uploads.selectors import upload_get_for_user, upload_id_parse, upload_list_for_user
from schema.auth import require_user
from schema.context import Info
from schema.types import BigInt, FileUploadConnection, FileUploadType, Quota, UploadStatus, Viewer
from schema.webhooks import WebhookQuery


@strawberry.type
class Query(WebhookQuery):
    @strawberry.field
    async def upload(self, info: Info, id: strawberry.ID) -> FileUploadType:
        user = require_user(info)
        upload = await sync_to_async(upload_get_for_user)(user=user, upload_id=upload_id_parse(id))
        return FileUploadType.from_model(upload, base_url=info.context.base_url)

    @strawberry.field
    async def uploads(
        self, info: Info, first: int | None = 20, after: str | None = None, status: UploadStatus | None = None
    ) -> FileUploadConnection:
        user = require_user(info)
        page = await sync_to_async(upload_list_for_user)(
            user=user, first=20 if first is None else first, after=after, status=status.value if status else None
        )
        return FileUploadConnection.from_page(page, base_url=info.context.base_url)

    @strawberry.field
    async def me(self, info: Info) -> Viewer:
        user = require_user(info)
        usage = await sync_to_async(quota_usage_for)(user=user)
        limit = None if usage.limit_bytes is None else BigInt(usage.limit_bytes)
        return Viewer(username=user.username, quota=Quota(used_bytes=BigInt(usage.used_bytes), limit_bytes=limit))
