"""Local files: hashing what is sent, and downloading what was stored with its digest checked."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import httpx

from backend.client.api import ApiError

CHUNK_SIZE = 1024 * 1024


def file_sha256(*, path: str, on_read: Callable[[int], None] | None = None) -> str:
    """The lowercase hex sha256 of the file at `path`; `on_read` gets the bytes hashed so far."""
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_SIZE):
            digest.update(chunk)
            done += len(chunk)
            if on_read is not None:
                on_read(done)
    return digest.hexdigest()


def download_verified(
    *,
    url: str,
    destination: str,
    sha256: str,
    size: int,
    on_received: Callable[[int], None] | None = None,
) -> Path | None:
    """Fetch `url` into `destination` ("-" for stdout) and check its size and sha256.

    The bytes go to a temporary file beside the destination, which replaces it only once the
    digest matches: a failed or corrupt download never leaves a partial file under the name asked
    for. `url` is the upload's `downloadUrl`, which carries its own credentials (a signed token or
    a presigned S3 URL), so no Authorization header is sent: a presigned URL would refuse it.
    Raises `ApiError` (CONNECTION_FAILED, BAD_RESPONSE, CHECKSUM_MISMATCH).
    """
    if destination == "-":
        _fetch(url=url, out=sys.stdout.buffer, sha256=sha256, size=size, on_received=on_received)
        return None
    target = Path(destination)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            _fetch(url=url, out=out, sha256=sha256, size=size, on_received=on_received)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return target


def _fetch(*, url: str, out: BinaryIO, sha256: str, size: int, on_received: Callable[[int], None] | None) -> None:
    digest = hashlib.sha256()
    received = 0
    try:
        with httpx.stream("GET", url, timeout=httpx.Timeout(30.0), follow_redirects=True) as response:
            if response.status_code != 200:
                raise ApiError("BAD_RESPONSE", f"the download URL answered HTTP {response.status_code}")
            for chunk in response.iter_bytes(CHUNK_SIZE):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
                if on_received is not None:
                    on_received(received)
    except httpx.HTTPError as error:
        raise ApiError("CONNECTION_FAILED", f"download failed: {str(error) or type(error).__name__}") from error
    out.flush()
    if received != size or digest.hexdigest() != sha256.lower():
        raise ApiError(
            "CHECKSUM_MISMATCH",
            f"downloaded {received} bytes with sha256 {digest.hexdigest()}, expected {size} bytes with sha256 {sha256}",
        )
