"""The direct-to-bucket part of the schema: signing, confirming and completing parts (CONTRACT section 9).

`createUpload(mode: DIRECT)` is in `mutations.py` beside the resumable kind; these three need a
DIRECT upload that is RECEIVING.
"""

from __future__ import annotations

from datetime import datetime

import strawberry
from asgiref.sync import sync_to_async

from backend.logs import upload_log_bind
from backend.uploads.selectors import upload_id_parse
from backend.uploads.services.direct import PartToSign, SignedPart, direct_sign
from backend.uploads.services.direct_parts import direct_complete, direct_confirm
from schema.auth import require_user
from schema.context import Info
from schema.types import FileUploadType


@strawberry.input(name="PartToSign")
class PartToSignInput:
    part_number: int
    sha256: str | None = None  # base64 of the part's SHA-256 digest


@strawberry.type
class HttpHeader:
    name: str
    value: str


@strawberry.type
class PresignedPart:
    part_number: int
    url: str
    headers: list[HttpHeader]
    expires_at: datetime

    @classmethod
    def from_signed(cls, signed: SignedPart) -> PresignedPart:
        return cls(
            part_number=signed.part_number,
            url=signed.url,
            headers=[HttpHeader(name=k, value=v) for k, v in signed.headers.items()],
            expires_at=signed.expires_at,
        )


@strawberry.type
class DirectMutation:
    @strawberry.mutation
    async def sign_upload_parts(
        self, info: Info, id: strawberry.ID, parts: list[PartToSignInput]
    ) -> list[PresignedPart]:
        user = require_user(info)
        upload_id = upload_id_parse(id)
        upload_log_bind(upload_id)
        wanted = [PartToSign(part_number=p.part_number, sha256=p.sha256) for p in parts]
        signed = await sync_to_async(direct_sign)(user=user, upload_id=upload_id, parts=wanted)
        return [PresignedPart.from_signed(s) for s in signed]

    @strawberry.mutation
    async def confirm_upload_part(self, info: Info, id: strawberry.ID, part_number: int, etag: str) -> FileUploadType:
        user = require_user(info)
        upload_id = upload_id_parse(id)
        upload_log_bind(upload_id)
        upload = await sync_to_async(direct_confirm)(user=user, upload_id=upload_id, part_number=part_number, etag=etag)
        return FileUploadType.from_model(upload, base_url=info.context.base_url)

    @strawberry.mutation
    async def complete_upload(self, info: Info, id: strawberry.ID) -> FileUploadType:
        user = require_user(info)
        upload_id = upload_id_parse(id)
        upload_log_bind(upload_id)
        upload = await sync_to_async(direct_complete)(user=user, upload_id=upload_id)
        return FileUploadType.from_model(upload, base_url=info.context.base_url)
