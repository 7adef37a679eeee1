from __future__ import annotations

import strawberry
from asgiref.sync import sync_to_async
from strawberry.file_uploads import Upload

from backend.logs import upload_log_bind
from backend.uploads.errors import BadUserInput
from backend.uploads.models import UploadMode
from backend.uploads.resumable.appending import chunk_append_file
from backend.uploads.resumable.services import resumable_create
from backend.uploads.selectors import upload_id_parse
from backend.uploads.services import upload_cancel, upload_create, upload_delete, upload_retry
from backend.uploads.staging import StagedFile
from schema.auth import require_user
from schema.context import Info
from schema.types import BigInt, FileUploadType
from schema.webhooks import WebhookMutation


@strawberry.input
class CreateUploadInput:
    filename: str
    size: BigInt | None = None
    sha256: str | None = None
    mode: UploadMode | None = UploadMode.RESUMABLE


@strawberry.type
class Mutation(WebhookMutation):
    @strawberry.mutation
    async def upload_file(self, info: Info, file: Upload, sha256: str | None = None) -> FileUploadType:
        user = require_user(info)
        if not isinstance(file, StagedFile):
            raise BadUserInput("file must be a file part of a multipart request")
        upload = await sync_to_async(upload_create)(user=user, file=file, sha256=sha256)
        return FileUploadType.from_model(upload, base_url=info.context.base_url)

    @strawberry.mutation
    async def cancel_upload(self, info: Info, id: strawberry.ID) -> FileUploadType:
        user = require_user(info)
        upload_id = upload_id_parse(id)
        upload_log_bind(upload_id)
        upload = await sync_to_async(upload_cancel)(user=user, upload_id=upload_id)
        return FileUploadType.from_model(upload, base_url=info.context.base_url)

    @strawberry.mutation
    async def retry_upload(self, info: Info, id: strawberry.ID) -> FileUploadType:
        user = require_user(info)
        upload_id = upload_id_parse(id)
        upload_log_bind(upload_id)
        upload = await sync_to_async(upload_retry)(user=user, upload_id=upload_id)
        return FileUploadType.from_model(upload, base_url=info.context.base_url)

    @strawberry.mutation
    async def delete_upload(self, info: Info, id: strawberry.ID) -> bool:
        user = require_user(info)
        upload_id = upload_id_parse(id)
        upload_log_bind(upload_id)
        return await sync_to_async(upload_delete)(user=user, upload_id=upload_id)

    @strawberry.mutation
    async def create_upload(self, info: Info, input: CreateUploadInput) -> FileUploadType:
        user = require_user(info)
        if input.mode == UploadMode.DIRECT:
            raise BadUserInput("direct-to-bucket uploads are not available on this server yet")
        if input.mode not in (None, UploadMode.RESUMABLE):
            raise BadUserInput("mode SINGLE is uploadFile's; createUpload makes RESUMABLE uploads")
        upload = await sync_to_async(resumable_create)(
            user=user, filename=input.filename, size=input.size, sha256=input.sha256
        )
        return FileUploadType.from_model(upload, base_url=info.context.base_url)

    @strawberry.mutation
    async def upload_chunk(self, info: Info, id: strawberry.ID, offset: BigInt, chunk: Upload) -> FileUploadType:
        user = require_user(info)
        upload_id = upload_id_parse(id)
        upload_log_bind(upload_id)
        if not isinstance(chunk, StagedFile):
            raise BadUserInput("chunk must be a file part of a multipart request")
        if offset < 0:
            raise BadUserInput("offset must not be negative")
        upload = await sync_to_async(chunk_append_file, thread_sensitive=False)(
            user=user, upload_id=upload_id, offset=offset, path=chunk.path
        )
        return FileUploadType.from_model(upload, base_url=info.context.base_url)
