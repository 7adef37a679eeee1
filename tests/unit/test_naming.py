"""filename_sanitise: a client's file name becomes a safe base name; storage keys ignore it."""

from __future__ import annotations

import unicodedata
import uuid

import pytest

from backend.uploads.naming import MAX_FILENAME_BYTES, filename_sanitise, storage_key_for


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("/absolute/path/to/photo.jpg", "photo.jpg"),
        ("C:\\Users\\ann\\Desktop\\notes.txt", "notes.txt"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("mixed/dirs\\and/file.tar.gz", "file.tar.gz"),
        ("  spaced name.txt  ", "spaced name.txt"),
        ("naïve café.txt", "naïve café.txt"),
    ],
)
def test_only_the_base_name_remains(raw: str, expected: str) -> None:
    assert filename_sanitise(raw) == expected


def test_control_characters_are_removed() -> None:
    assert filename_sanitise("a\x00b\nc\td\x1b[31m\x7f.txt") == "abcd[31m.txt"


def test_bidi_override_is_removed() -> None:
    # U+202E would make "evil\u202etxt.exe" display as "evilexe.txt".
    assert filename_sanitise("evil\u202etxt.exe") == "eviltxt.exe"


def test_names_are_nfc_normalised() -> None:
    decomposed = "cafe\u0301.txt"
    assert filename_sanitise(decomposed) == "caf\u00e9.txt"
    assert unicodedata.is_normalized("NFC", filename_sanitise(decomposed))


@pytest.mark.parametrize("raw", [None, "", "   ", "/", "\\", "dir/", "..", "...", "\x00\x01"])
def test_nothing_usable_becomes_upload(raw: str | None) -> None:
    assert filename_sanitise(raw) == "upload"


def test_long_ascii_name_keeps_its_extension_within_255_bytes() -> None:
    name = filename_sanitise("a" * 400 + ".txt")
    assert len(name.encode()) == MAX_FILENAME_BYTES
    assert name.endswith(".txt")


@pytest.mark.parametrize("char", ["é", "日", "😀"])
def test_long_multibyte_name_is_cut_on_a_character_boundary(char: str) -> None:
    name = filename_sanitise(char * 300 + ".jpeg")
    encoded = name.encode("utf-8")
    assert len(encoded) <= MAX_FILENAME_BYTES
    assert len(encoded) > MAX_FILENAME_BYTES - len(char.encode()) - len(".jpeg")
    assert name.endswith(".jpeg")
    assert set(name.removesuffix(".jpeg")) == {char}


def test_long_multibyte_name_without_extension() -> None:
    name = filename_sanitise("日本語" * 100)
    assert len(name.encode()) <= MAX_FILENAME_BYTES
    assert name.encode().decode() == name
    assert "日本語".startswith(name[:3])


def test_a_very_long_extension_is_not_kept_whole() -> None:
    name = filename_sanitise("x" * 300 + "." + "y" * 40)
    assert len(name.encode()) <= MAX_FILENAME_BYTES


def test_exactly_255_bytes_is_kept_as_is() -> None:
    raw = "é" * 125 + "a.txt"  # 250 + 5 bytes
    assert len(raw.encode()) == MAX_FILENAME_BYTES
    assert filename_sanitise(raw) == raw


def test_storage_key_comes_from_the_id_only() -> None:
    upload_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    key = storage_key_for(upload_id)
    assert key == f"uploads/12/{upload_id}"
    assert ".." not in key
