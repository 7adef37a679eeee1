"""Names: what a client calls its file, and where the server puts it."""

from __future__ import annotations

import unicodedata
import uuid

MAX_FILENAME_BYTES = 255


def filename_sanitise(raw: str | None) -> str:
    """A safe base name: no directories, no control characters, NFC-normalised, at most 255 bytes."""
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = name.strip().strip(".").strip()
    encoded = name.encode("utf-8")
    if len(encoded) > MAX_FILENAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        ext = ext if dot and len(ext.encode()) <= 16 else ""
        budget = MAX_FILENAME_BYTES - len(ext.encode()) - (1 if ext else 0)
        stem = (stem if ext else name).encode("utf-8")[:budget].decode("utf-8", "ignore")
        name = f"{stem}.{ext}" if ext else stem
    return name or "upload"


def storage_key_for(upload_id: uuid.UUID) -> str:
    """The object key: chosen by the server, never derived from what the client sent."""
    return f"uploads/{upload_id.hex[:2]}/{upload_id}"
