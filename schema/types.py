"""GraphQL types of CONTRACT section 2, built from the models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

from backend.uploads import models
from backend.uploads.parts import progress_fraction
from backend.uploads.selectors import UploadPage, upload_download_url

BigInt = NewType("BigInt", int)

# The schema maps BigInt to this definition (StrawberryConfig.scalar_map, strawberry's typed way:
# a wrapped NewType is not a type to mypy).
SCALAR_MAP: dict[object, ScalarDefinition] = {
    BigInt: strawberry.scalar(
        name="BigInt",
        serialize=int,
        parse_value=int,
        description="Byte counts as a JSON number (exact up to 2^53)",
    )
}

# strawberry.enum registers the GraphQL enum on the class itself and returns that class; the
# plain alias keeps UploadStatus a type to mypy.
UploadStatus = models.UploadStatus
strawberry.enum(UploadStatus, name="UploadStatus")
UploadMode = models.UploadMode
strawberry.enum(UploadMode, name="UploadMode")


def resume_url_for(upload: models.FileUpload, *, base_url: str | None) -> str | None:
    """The absolute tus URL of a RESUMABLE upload while it is RECEIVING (CONTRACT section 8)."""
    if upload.mode != models.UploadMode.RESUMABLE or upload.status != models.UploadStatus.RECEIVING:
        return None
    return f"{base_url or ''}/uploads/{upload.id}"


@strawberry.type(name="FileUpload")
class FileUploadType:
    id: strawberry.ID
    filename: str
    content_type: str
    size: BigInt
    sha256: str | None
    status: UploadStatus
    mode: UploadMode
    bytes_received: BigInt
    bytes_uploaded: BigInt
    parts_uploaded: int
    parts_total: int
    progress: float
    attempts: int
    error: str | None
    storage_backend: str
    storage_key: str
    download_url: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    expires_at: datetime | None
    resume_url: str | None
    part_size: BigInt

    @classmethod
    def from_model(cls, upload: models.FileUpload, *, base_url: str | None) -> FileUploadType:
        return cls(
            id=strawberry.ID(str(upload.id)),
            filename=upload.filename,
            content_type=upload.content_type,
            size=BigInt(upload.known_size),
            sha256=upload.sha256,
            status=models.UploadStatus(upload.status),
            mode=models.UploadMode(upload.mode),
            bytes_received=BigInt(upload.bytes_received),
            bytes_uploaded=BigInt(upload.bytes_uploaded),
            parts_uploaded=upload.parts_uploaded,
            parts_total=upload.parts_total,
            progress=progress_fraction(
                bytes_uploaded=upload.bytes_uploaded,
                size=upload.known_size,
                completed=upload.status == models.UploadStatus.COMPLETED,
            ),
            attempts=upload.attempts,
            error=upload.error,
            storage_backend=upload.storage_backend,
            storage_key=upload.storage_key,
            download_url=upload_download_url(upload=upload, base_url=base_url),
            created_at=upload.created_at,
            updated_at=upload.updated_at,
            completed_at=upload.completed_at,
            expires_at=upload.expires_at if upload.status == models.UploadStatus.RECEIVING else None,
            resume_url=resume_url_for(upload, base_url=base_url),
            part_size=BigInt(upload.part_size),
        )


@strawberry.type
class UploadProgress:
    upload_id: strawberry.ID
    sequence: int
    status: UploadStatus
    part_number: int | None
    parts_uploaded: int
    parts_total: int
    bytes_received: BigInt
    bytes_uploaded: BigInt
    bytes_total: BigInt
    progress: float
    error: str | None
    at: datetime

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> UploadProgress:
        return cls(
            upload_id=strawberry.ID(event["upload_id"]),
            sequence=event["sequence"],
            status=models.UploadStatus(event["status"]),
            part_number=event["part_number"],
            parts_uploaded=event["parts_uploaded"],
            parts_total=event["parts_total"],
            # Events published before bytes_received existed carried none: the whole file was in.
            bytes_received=BigInt(event.get("bytes_received", event["bytes_total"])),
            bytes_uploaded=BigInt(event["bytes_uploaded"]),
            bytes_total=BigInt(event["bytes_total"]),
            progress=event["progress"],
            error=event["error"],
            at=datetime.fromisoformat(event["at"]),
        )


@strawberry.type
class Quota:
    used_bytes: BigInt
    limit_bytes: BigInt | None  # None: unlimited


@strawberry.type
class Viewer:
    username: str
    quota: Quota


@strawberry.type
class FileUploadEdge:
    cursor: str
    node: FileUploadType


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class FileUploadConnection:
    edges: list[FileUploadEdge]
    page_info: PageInfo
    total_count: int

    @classmethod
    def from_page(cls, page: UploadPage, *, base_url: str | None) -> FileUploadConnection:
        edges = [
            FileUploadEdge(cursor=cursor, node=FileUploadType.from_model(upload, base_url=base_url))
            for upload, cursor in zip(page.uploads, page.cursors, strict=True)
        ]
        return cls(
            edges=edges,
            page_info=PageInfo(has_next_page=page.has_next_page, end_cursor=page.cursors[-1] if page.cursors else None),
            total_count=page.total_count,
        )
