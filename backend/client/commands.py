"""One function per COMMAND: call the API, show the result, return the exit status.

Exit statuses: 0 success, 1 failure (a server error, an upload not COMPLETED, a bad download),
2 usage errors (argparse's own, and FILE arguments that cannot be read).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from backend.client.api import ApiError, Endpoint, UploadApi
from backend.client.display import (
    print_api_error,
    print_error,
    print_json,
    print_upload,
    print_upload_line,
    print_upload_table,
    transfer_bar,
    upload_display,
)
from backend.client.files import download_verified
from backend.client.uploading import UploadRun

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def command_upload(*, endpoint: Endpoint, files: list[str], as_json: bool, direct: bool = False) -> int:
    """Upload every FILE; 0 only if every one ends COMPLETED."""
    unreadable = [path for path in files if not os.path.isfile(path) or not os.access(path, os.R_OK)]
    for path in unreadable:
        print_error("USAGE", f"{path}: not a readable file")
    if unreadable:
        return EXIT_USAGE
    run = UploadRun(endpoint=endpoint, paths=files, display=upload_display(as_json=as_json), direct=direct)
    outcomes = asyncio.run(run.run())
    for outcome in outcomes:
        upload = outcome.upload
        if outcome.error is not None:
            print_api_error(outcome.error)
        elif upload is not None and upload["status"] != "COMPLETED":
            reason = f": {upload['error']}" if upload.get("error") else ""
            print_error(upload["status"], f"{outcome.path} ({upload['id']}){reason}")
    if as_json:
        print_json(
            {
                "uploads": [o.upload for o in outcomes if o.upload is not None],
                "errors": [
                    {"file": o.path, "code": o.error.code, "message": o.error.message}
                    for o in outcomes
                    if o.error is not None
                ],
            }
        )
    else:
        for outcome in outcomes:
            if outcome.completed:
                assert outcome.upload is not None
                print(f"{outcome.path}: COMPLETED as {outcome.upload['id']}", flush=True)
    return EXIT_OK if all(o.completed for o in outcomes) else EXIT_FAILED


def command_status(*, endpoint: Endpoint, upload_id: str, as_json: bool) -> int:
    upload = _call(endpoint, lambda api: api.upload_get(upload_id=upload_id))
    if as_json:
        print_json(upload)
    else:
        print_upload(upload)
    return EXIT_OK


def command_list(*, endpoint: Endpoint, status: str | None, limit: int | None, as_json: bool) -> int:
    uploads = _call(endpoint, lambda api: api.uploads_list(status=status, limit=limit))
    if as_json:
        print_json(uploads)
    else:
        print_upload_table(uploads)
    return EXIT_OK


def command_cancel(*, endpoint: Endpoint, upload_id: str, as_json: bool) -> int:
    return _show_changed(_call(endpoint, lambda api: api.upload_cancel(upload_id=upload_id)), as_json=as_json)


def command_retry(*, endpoint: Endpoint, upload_id: str, as_json: bool) -> int:
    return _show_changed(_call(endpoint, lambda api: api.upload_retry(upload_id=upload_id)), as_json=as_json)


def command_delete(*, endpoint: Endpoint, upload_id: str, as_json: bool) -> int:
    deleted = _call(endpoint, lambda api: api.upload_delete(upload_id=upload_id))
    if as_json:
        print_json({"id": upload_id, "deleted": deleted})
    else:
        print(f"{upload_id}: deleted")
    return EXIT_OK if deleted else EXIT_FAILED


def command_download(*, endpoint: Endpoint, upload_id: str, output: str | None, as_json: bool) -> int:
    """Fetch a COMPLETED upload's bytes from its downloadUrl and check them against its sha256.

    Without `-o`, the file goes to the upload's filename in the current directory and an
    existing file there is not overwritten; `-o PATH` writes (or replaces) PATH, `-o -` stdout.
    """
    upload = _call(endpoint, lambda api: api.upload_get(upload_id=upload_id))
    if upload["status"] != "COMPLETED" or not upload.get("downloadUrl"):
        raise ApiError(
            "INVALID_STATE", f"upload {upload_id} is {upload['status']}: only a COMPLETED upload can be downloaded"
        )
    destination = output or upload["filename"]
    if output is None and os.path.exists(destination):
        raise ApiError("FILE_EXISTS", f"{destination} already exists; choose where to write with -o PATH")
    with transfer_bar(name=upload["filename"], total=upload["size"], visible=destination != "-") as on_received:
        written = download_verified(
            url=upload["downloadUrl"],
            destination=destination,
            sha256=upload["sha256"],
            size=upload["size"],
            on_received=on_received,
        )
    if written is not None:
        if as_json:
            print_json({"id": upload_id, "path": str(written), "size": upload["size"], "sha256": upload["sha256"]})
        else:
            print(f"{written}: {upload['size']} bytes, sha256 {upload['sha256']} verified")
    return EXIT_OK


def _show_changed(upload: dict[str, Any], *, as_json: bool) -> int:
    if as_json:
        print_json(upload)
    else:
        print_upload_line(upload)
    return EXIT_OK


def _call(endpoint: Endpoint, call: Any) -> Any:
    """Run one API call in a fresh session; raises `ApiError`."""

    async def run() -> Any:
        async with UploadApi(endpoint) as api:
            return await call(api)

    return asyncio.run(run())
