"""The running sha256 of each upload this process is receiving, so completing never re-reads the file.

hashlib objects cannot be pickled, so the digest state cannot go to the database or Redis. It
stays in the process that received the bytes, keyed by upload and the offset it covers. The next
chunk, when it reaches the same process (a client sends its chunks one after another, and a
single-process server always sees them all), continues it. A chunk that reaches another process,
or the same one after a restart, finds no state for its offset: that process hashes the staged
bytes up to the offset once (`catch_up_bytes` counts them) and carries on from there. Bytes a chunk
discards (a checksum mismatch) are taken out by going back to a copy made before the chunk.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections import OrderedDict
from typing import Any

READ_SIZE = 1024 * 1024
MAX_KEPT = 1000

_lock = threading.Lock()
_kept: OrderedDict[uuid.UUID, tuple[int, Any]] = OrderedDict()
catch_up_bytes = 0  # staged bytes re-read by this process because a digest state was missing


def running_hash_take(*, upload_id: uuid.UUID, offset: int, fd: int) -> Any:
    """The sha256 state of the upload's first `offset` bytes, from memory or by reading staging."""
    global catch_up_bytes
    with _lock:
        kept = _kept.pop(upload_id, None)
    if kept is not None and kept[0] == offset:
        return kept[1]
    digest = hashlib.sha256()
    position = 0
    while position < offset:
        data = os.pread(fd, min(READ_SIZE, offset - position), position)
        if not data:
            raise OSError(f"staging holds {position} bytes of upload {upload_id}, fewer than its offset {offset}")
        digest.update(data)
        position += len(data)
    with _lock:
        catch_up_bytes += offset
    return digest


def running_hash_keep(*, upload_id: uuid.UUID, offset: int, digest: Any) -> None:
    with _lock:
        _kept[upload_id] = (offset, digest)
        _kept.move_to_end(upload_id)
        while len(_kept) > MAX_KEPT:
            _kept.popitem(last=False)


def running_hash_forget(upload_id: uuid.UUID) -> None:
    with _lock:
        _kept.pop(upload_id, None)
