"""tus 1.0.0 headers: parsing and formatting, pure (https://tus.io/protocols/resumable-upload)."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from datetime import datetime
from email.utils import format_datetime
from urllib.parse import urlsplit

from backend.uploads.resumable.checksums import ALGORITHMS

VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
)
CHECKSUM_ALGORITHMS = ",".join(ALGORITHMS)
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
MAX_INTEGER = 2**63 - 1
PATH_PREFIX = "/uploads"
_UPLOAD_PATH = re.compile(r"^/uploads/([0-9a-fA-F-]{32,36})/?$")
_DIGITS = re.compile(r"^[0-9]{1,19}$")
_KEY = re.compile(r"^[!-+\--~]+$")  # printable ASCII without space and comma


class HeaderError(ValueError):
    """A tus header the protocol does not allow (400)."""


def integer_parse(value: str | None, name: str) -> int | None:
    """A non-negative integer header (Upload-Length, Upload-Offset); None when absent."""
    if value is None:
        return None
    if not _DIGITS.match(value.strip()) or int(value) > MAX_INTEGER:
        raise HeaderError(f"{name} must be a non-negative integer, not {value[:40]!r}")
    return int(value)


def metadata_parse(value: str | None) -> dict[str, str | None]:
    """Upload-Metadata: `key base64,key base64,key`; keys unique, values base64 (decoded as UTF-8).

    A value that does not decode as UTF-8 is kept as None (present, not usable as text).
    """
    if value is None or not value.strip():
        return {}
    pairs: dict[str, str | None] = {}
    for item in value.split(","):
        key, _, encoded = item.strip().partition(" ")
        if not key or not _KEY.match(key):
            raise HeaderError(f"Upload-Metadata has a malformed key {key[:40]!r}")
        if key in pairs:
            raise HeaderError(f"Upload-Metadata names {key!r} twice")
        try:
            raw = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise HeaderError(f"Upload-Metadata value of {key!r} is not base64") from exc
        try:
            pairs[key] = raw.decode("utf-8")
        except UnicodeDecodeError:
            pairs[key] = None
    return pairs


def metadata_format(pairs: dict[str, str | None]) -> str:
    """The header value for `pairs` (what HEAD answers: re-encoded, so nothing raw is echoed)."""
    items = []
    for key, text in pairs.items():
        items.append(key if not text else f"{key} {base64.b64encode(text.encode()).decode()}")
    return ",".join(items)


def upload_id_from_path(path: str) -> uuid.UUID | None:
    """The upload id of `/uploads/<id>`; None for anything else."""
    match = _UPLOAD_PATH.match(path)
    if match is None:
        return None
    try:
        return uuid.UUID(match.group(1))
    except ValueError:
        return None


def concat_parse(value: str | None) -> tuple[str, list[uuid.UUID]] | None:
    """Upload-Concat: ("partial", []) or ("final", [ids of the partial uploads, in order]).

    Each partial upload is named by its URL, absolute or relative (`/uploads/<id>`).
    """
    if value is None:
        return None
    value = value.strip()
    if value == "partial":
        return "partial", []
    kind, _, urls = value.partition(";")
    if kind != "final":
        raise HeaderError("Upload-Concat must be `partial` or `final;<url> <url>...`")
    ids = []
    for url in urls.split():
        upload_id = upload_id_from_path(urlsplit(url).path)
        if upload_id is None:
            raise HeaderError(f"Upload-Concat names {url[:80]!r}, which is not an upload URL of this server")
        ids.append(upload_id)
    if not ids:
        raise HeaderError("Upload-Concat: final names no partial upload")
    return "final", ids


def http_date(moment: datetime) -> str:
    """RFC 9110 date (Upload-Expires): `Wed, 25 Jun 2014 16:00:00 GMT`."""
    return format_datetime(moment, usegmt=True)
