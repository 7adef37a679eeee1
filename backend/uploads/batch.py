"""Several files in one request (`uploadFiles`): all accepted or none.

Each file goes through `upload_create`, the one way a staged file becomes an upload (type check,
active-uploads limit, quota, the row, the rename into staging, the transfer queued after commit),
all inside one transaction. The checks see the rows of the files before them (the active count
and the quota sum run in the same transaction), so the batch as a whole must fit. When one file is
refused, the transaction rolls every row back, no transfer is queued (they wait for the commit),
the files already moved into staging are deleted here, and the rest are still in `incoming/` for
the view to discard: nothing of a refused batch remains.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction

from backend.uploads.errors import BadUserInput, UploadError
from backend.uploads.models import FileUpload
from backend.uploads.services import upload_create
from backend.uploads.staging import StagedFile, staging_delete


def upload_create_batch(*, user: User, files: list[StagedFile]) -> list[FileUpload]:
    """Accept every file of `files` as its own upload, or none; the uploads in the order given.

    A refusal is the first refused file's error, its message naming the file.
    """
    if not files:
        raise BadUserInput("files must hold at least one file")
    created: list[FileUpload] = []
    try:
        with transaction.atomic():
            for index, file in enumerate(files):
                try:
                    created.append(upload_create(user=user, file=file, sha256=None))
                except UploadError as exc:
                    raise type(exc)(f"file {index + 1} ({file.name}): {exc.message}; no file was accepted") from exc
    except BaseException:
        for upload in created:
            staging_delete(upload.id)
        raise
    return created
