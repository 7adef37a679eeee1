from __future__ import annotations

import strawberry
from asgiref.sync import sync_to_async
from strawberry.file_uploads import Upload

from backend.logs import upload_log_bind
from backend.uploads.batch import upload_create_batch
from backend.uploads.errors import BadUserInput
from backend.uploads.models import UploadMode
from backend.uploads.selectors import upload_id_parse
from backend.uploads.services import upload_cancel, upload_create, upload_delete, upload_retry
from backend.uploads.services.chunks import chunk_append_file
from backend.uploads.services.direct import direct_create
from backend.uploads.services.resumable import resumable_create
from backend.uploads.staging import StagedFile
from schema.auth import require_user
from schema.context import Info
from schema.direct import DirectMutation
from schema.types import BigInt, FileUploadType
from schema.webhooks import WebhookMutation


@strawberry.input
class CreateUploadInput:
    filename: str
    size: BigInt | None = None
    sha256: str | None = None
    mode: UploadMode | None = UploadMode.RESUMABLE


@strawberry.type
class Mutation(WebhookMutation, DirectMutation):
    @strawberry.mutation
    async def upload_file(self, info: Info, file: Upload, sha256: str | None = None) -> FileUploadType:
        user = require_user(info)
        if not isinstance(file, StagedFile):
            raise BadUserInput("file must be a file part of a multipart request")
        upload = await sync_to_async(upload_create)(user=user, file=file, sha256=sha256)
        return FileUploadType.from_model(upload, base_url=info.context.base_url)

    @strawberry.mutation
    async def upload_files(self, info: Info, files: list[Upload]) -> list[FileUploadType]:
        user = require_user(info)
        staged: list[StagedFile] = [file for file in files if isinstance(file, StagedFile)]
        if len(staged) != len(files):
            raise BadUserInput("files must all be file parts of a multipart request")
        uploads = await sync_to_async(upload_create_batch)(user=user, files=staged)
        return [FileUploadType.from_model(upload, base_url=info.context.base_url) for upload in uploads]

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
            if input.size is None:
                raise BadUserInput("a DIRECT upload needs its size")
            direct = await sync_to_async(direct_create)(
                user=user, filename=input.filename, size=input.size, sha256=input.sha256
            )
            return FileUploadType.from_model(direct, base_url=info.context.base_url)
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
