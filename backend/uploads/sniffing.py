"""The content type of an upload, judged from its first bytes rather than from what the client claims."""

from __future__ import annotations

import fnmatch

import puremagic

OCTET_STREAM = "application/octet-stream"
ZIP = "application/zip"
SNIFF_BYTES = 8192


def content_type_sniff(head: bytes) -> str:
    """The MIME type the leading bytes show; text/plain for NUL-free UTF-8; else octet-stream."""
    if not head:
        return OCTET_STREAM
    try:
        matches = puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        matches = []
    named = [m for m in matches if m.mime_type]
    if named:
        top = max(m.confidence for m in named)
        best = [m for m in named if m.confidence == top]
        # Every zip-based format (docx, jar, odt, ...) shares the zip signature, so a tie that
        # includes zip says only "a zip"; naming the first tied format would be a guess.
        if any(m.mime_type == ZIP for m in best):
            return ZIP
        return str(best[0].mime_type)
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            # A multi-byte character cut by the sniffing window still counts as text.
            if exc.start < len(head) - 4:
                return OCTET_STREAM
        return "text/plain"
    return OCTET_STREAM


def content_type_allowed(content_type: str, patterns: list[str]) -> bool:
    """Whether `content_type` matches one of the `UPLOAD_ALLOWED_TYPES` patterns (`image/*`, `*`)."""
    return any(fnmatch.fnmatchcase(content_type, p.strip().lower()) for p in patterns if p.strip())
