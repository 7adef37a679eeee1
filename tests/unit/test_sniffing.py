"""Content types come from the leading bytes, not from what the client claims."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import pytest

from backend.uploads.sniffing import OCTET_STREAM, SNIFF_BYTES, content_type_allowed, content_type_sniff


def png_bytes() -> bytes:
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (png_bytes(), "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00", "image/jpeg"),
        (b"\xff\xd8\xff\xe1\x00\x18Exif\x00\x00", "image/jpeg"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\n", "application/pdf"),
        (zip_bytes(), "application/zip"),
        (b"PK\x03\x04" + b"\x00" * 60, "application/zip"),
        (b"GIF89a\x01\x00\x01\x00\x00\x00\x00", "image/gif"),
    ],
)
def test_magic_numbers(head: bytes, expected: str) -> None:
    assert content_type_sniff(head) == expected


def test_magic_wins_over_a_misleading_name_or_text() -> None:
    # A PNG that starts like a text file would not be a PNG: the signature decides.
    assert content_type_sniff(png_bytes() + b"hello world" * 100) == "image/png"


@pytest.mark.parametrize(
    "head",
    [b"hello world\n", "naïve café, 日本語\n".encode(), b"a,b,c\n1,2,3\n" * 500],
)
def test_utf8_text_without_nul_is_text(head: bytes) -> None:
    assert content_type_sniff(head) == "text/plain"


def test_text_cut_inside_a_multibyte_character_is_still_text() -> None:
    head = ("x" * (SNIFF_BYTES - 1) + "é").encode()[:SNIFF_BYTES]
    assert head[-1:] == b"\xc3"
    assert content_type_sniff(head) == "text/plain"


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"\x00\x01\x02\x03" * 64,
        b"text with a nul\x00 inside",
        b"plain start, then \x80\x81 invalid utf-8 in the middle of the text",
        bytes(range(256)) * 4,
    ],
)
def test_unknown_binary_is_octet_stream(head: bytes) -> None:
    assert content_type_sniff(head) == OCTET_STREAM


@pytest.mark.parametrize(
    ("content_type", "patterns", "allowed"),
    [
        ("image/png", ["*"], True),
        ("application/octet-stream", ["*"], True),
        ("image/png", ["image/*"], True),
        ("image/jpeg", ["image/*", "video/mp4"], True),
        ("video/mp4", ["image/*", "video/mp4"], True),
        ("video/webm", ["image/*", "video/mp4"], False),
        ("application/pdf", ["image/*"], False),
        ("text/plain", [" Image/* ", " text/plain "], True),
        ("image/png", [], False),
        ("image/png", ["", "  "], False),
        ("imagex/png", ["image/*"], False),
    ],
)
def test_allowed_patterns(content_type: str, patterns: list[str], allowed: bool) -> None:
    assert content_type_allowed(content_type, patterns) is allowed
