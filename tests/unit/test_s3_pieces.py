"""The pure pieces of the S3 backend: checksums, ETags, names, error classes, client settings."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError
from botocore.utils import parse_timestamp
from django.core.exceptions import ImproperlyConfigured

from backend.uploads.storage.s3 import (
    S3Storage,
    composite_checksum,
    content_disposition,
    etag_md5,
    metadata_decode,
    metadata_encode,
    multipart_etag,
    part_checksum,
    receipt_checksum_param,
    s3_client_error,
    s3_error_retryable,
)
from backend.uploads.storage.s3_bucket import LIFECYCLE_RULE_ID, lifecycle_rules_with_abort
from backend.uploads.storage.s3_client import s3_client_config, s3_timestamp_parse


def test_part_checksum_follows_the_configured_algorithm() -> None:
    assert part_checksum(algorithm="SHA256", data=b"") == (
        "ChecksumSHA256",
        "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
    )
    assert part_checksum(algorithm="SHA256", data=b"abc") == (
        "ChecksumSHA256",
        base64.b64encode(hashlib.sha256(b"abc").digest()).decode(),
    )
    # CRC32 of "hello" is 0x3610a686, sent big-endian in base64.
    assert part_checksum(algorithm="CRC32", data=b"hello") == ("ChecksumCRC32", "NhCmhg==")
    assert part_checksum(algorithm="NONE", data=b"hello") is None
    with pytest.raises(ValueError):
        part_checksum(algorithm="MD5", data=b"")


def test_receipt_checksum_goes_back_into_complete() -> None:
    assert receipt_checksum_param("SHA256:abc=") == {"ChecksumSHA256": "abc="}
    assert receipt_checksum_param("CRC32:NhCmhg==") == {"ChecksumCRC32": "NhCmhg=="}
    # The local backend's receipts and empty ones carry nothing S3 knows.
    assert receipt_checksum_param("crc32:3610a686") == {}
    assert receipt_checksum_param("") == {}
    assert receipt_checksum_param("SHA256:") == {}


def test_composite_checksum_is_the_digest_of_the_part_digests() -> None:
    one, two = hashlib.sha256(b"first part").digest(), hashlib.sha256(b"second").digest()
    receipts = [f"SHA256:{base64.b64encode(d).decode()}" for d in (one, two)]
    assert (
        composite_checksum(part_checksums=receipts)
        == base64.b64encode(hashlib.sha256(one + two).digest()).decode() + "-2"
    )
    crc = [f"CRC32:{part_checksum(algorithm='CRC32', data=d)[1]}" for d in (b"a", b"b")]  # type: ignore[index]
    joined = base64.b64decode(crc[0][6:]) + base64.b64decode(crc[1][6:])
    assert composite_checksum(part_checksums=crc) == part_checksum(algorithm="CRC32", data=joined)[1] + "-2"  # type: ignore[index]
    # A part without its checksum (known from a listing), mixed algorithms, or none at all: no answer.
    assert composite_checksum(part_checksums=[receipts[0], ""]) is None
    assert composite_checksum(part_checksums=[receipts[0], crc[0]]) is None
    assert composite_checksum(part_checksums=[]) is None


def test_part_md5_when_asked_and_always_without_a_part_checksum() -> None:
    # Not by default: a part is then checked by its MD5 only when its answer carries no checksum.
    assert not S3Storage(client=object(), bucket="b").part_md5  # type: ignore[arg-type]
    assert S3Storage(client=object(), bucket="b", verify_part_etags=True).part_md5  # type: ignore[arg-type]
    none = S3Storage(client=object(), bucket="b", checksum_algorithm="NONE", verify_part_etags=False)  # type: ignore[arg-type]
    assert none.part_md5


def test_etags() -> None:
    assert etag_md5('"5D41402ABC4B2A76B9719D911017C592"') == "5d41402abc4b2a76b9719d911017c592"
    assert etag_md5("5d41402abc4b2a76b9719d911017c592") == "5d41402abc4b2a76b9719d911017c592"
    # The worked example in Cloudflare R2's multipart documentation, which mirrors S3's rule.
    parts = ['"bce6bf66aeb76c7040fdd5f4eccb78e6"', "8165449fc15bbf43d3b674595cbcc406"]
    assert multipart_etag(part_etags=parts) == "f77dc0eecdebcd774a2a22cb393ad2ff-2"


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("report.pdf", "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"),
        ("my file.txt", "attachment; filename=\"my file.txt\"; filename*=UTF-8''my%20file.txt"),
        ("résumé.pdf", "attachment; filename=\"resume.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"),
        ('a"b\\c;d%e.txt', "attachment; filename=\"a_b_c_d_e.txt\"; filename*=UTF-8''a%22b%5Cc%3Bd%25e.txt"),
        ("日本.txt", "attachment; filename=\"__.txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt"),
        ("😀", "attachment; filename=\"_\"; filename*=UTF-8''%F0%9F%98%80"),
    ],
)
def test_content_disposition_is_safe_for_any_name(filename: str, expected: str) -> None:
    header = content_disposition(filename=filename)
    assert header == expected
    assert header.isascii() and "\r" not in header and "\n" not in header


def test_metadata_is_ascii_and_round_trips() -> None:
    metadata = {"sha256": "ab" * 32, "Filename": "naïve 100% «report».pdf"}
    encoded = metadata_encode(metadata)
    assert encoded["sha256"] == "ab" * 32
    assert all(v.isascii() for v in encoded.values())
    assert set(encoded) == {"sha256", "filename"}, "S3 keeps metadata keys in lower case"
    assert metadata_decode(encoded) == {"sha256": "ab" * 32, "filename": "naïve 100% «report».pdf"}
    assert metadata_encode({"filename": "plain name.txt"}) == {"filename": "plain name.txt"}


@pytest.mark.parametrize(
    ("code", "status", "retryable"),
    [
        ("InternalError", 500, True),
        ("ServiceUnavailable", 503, True),
        ("SlowDown", 503, True),
        ("503", 503, True),
        ("Throttling", 400, True),
        ("RequestTimeout", 400, True),
        ("BadDigest", 400, True),
        ("XAmzContentSHA256Mismatch", 400, True),
        ("TooManyRequests", 429, True),
        ("AccessDenied", 403, False),
        ("InvalidAccessKeyId", 403, False),
        ("SignatureDoesNotMatch", 403, False),
        ("NoSuchBucket", 404, False),
        ("NoSuchUpload", 404, False),
        ("InvalidPart", 400, False),
        ("EntityTooSmall", 400, False),
        ("InvalidArgument", 400, False),
    ],
)
def test_which_errors_are_retried(code: str, status: int, retryable: bool) -> None:
    assert s3_error_retryable(code=code, status=status) is retryable


def _client_error(code: str, status: int, message: str = "") -> ClientError:
    response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "Op")  # type: ignore[arg-type]


def test_error_messages_name_the_cause() -> None:
    denied = s3_client_error("UploadPart (part 2)", _client_error("AccessDenied", 403, "Access Denied"), bucket="b")
    assert not denied.retryable and denied.code == "AccessDenied"
    assert str(denied).startswith("UploadPart (part 2): the store answered 403 AccessDenied: Access Denied")
    assert "check the credentials and the bucket policy" in str(denied)

    missing = s3_client_error("CreateMultipartUpload", _client_error("NoSuchBucket", 404), bucket="b")
    assert not missing.retryable and "bucket 'b' does not exist" in str(missing)
    # A HEAD answer has no body: botocore gives the status as the code.
    head = s3_client_error("HeadBucket", _client_error("404", 404, "Not Found"), bucket="b")
    assert str(head).startswith("HeadBucket: the store answered 404: Not Found") and "does not exist" in str(head)

    busy = s3_client_error("UploadPart (part 1)", _client_error("SlowDown", 503), bucket="b")
    assert busy.retryable and not busy.spent


def test_a_multipart_upload_gone_is_spent_and_nothing_else_is() -> None:
    gone = s3_client_error("ListParts", _client_error("NoSuchUpload", 404, "no such upload"), bucket="b")
    assert gone.spent and not gone.retryable and gone.code == "NoSuchUpload"
    assert "aborted, completed, or expired" in str(gone)
    for code, status in [("NoSuchKey", 404), ("AccessDenied", 403), ("InternalError", 500), ("InvalidPart", 400)]:
        assert not s3_client_error("Op", _client_error(code, status), bucket="b").spent, code


def test_client_config_leaves_retries_to_the_engine() -> None:
    config = s3_client_config(
        region="eu-west-1", request_checksum_calculation="when_required", max_pool_connections=6, path_style=True
    )
    assert config.retries == {"mode": "standard", "total_max_attempts": 1}
    assert config.request_checksum_calculation == "when_required"
    assert config.max_pool_connections == 6
    assert config.s3 == {"addressing_style": "path", "payload_signing_enabled": False}
    assert config.connect_timeout and config.read_timeout
    aws = s3_client_config(
        region=None, request_checksum_calculation="when_supported", max_pool_connections=10, path_style=False
    )
    assert aws.s3 == {"addressing_style": "auto", "payload_signing_enabled": False}
    with pytest.raises(ImproperlyConfigured, match="S3_REQUEST_CHECKSUM_CALCULATION"):
        s3_client_config(region=None, request_checksum_calculation="always", max_pool_connections=10, path_style=False)


def test_backend_refuses_settings_it_cannot_honour() -> None:
    with pytest.raises(ImproperlyConfigured, match="S3_CHECKSUM_ALGORITHM"):
        S3Storage(client=object(), bucket="b", checksum_algorithm="MD5")  # type: ignore[arg-type]
    with pytest.raises(ImproperlyConfigured, match="S3_SSE"):
        S3Storage(client=object(), bucket="b", sse="SSE-C")  # type: ignore[arg-type]
    with pytest.raises(ImproperlyConfigured, match="S3_SSE_KMS_KEY_ID"):
        S3Storage(client=object(), bucket="b", sse="AES256", sse_kms_key_id="key")  # type: ignore[arg-type]
    # With SSE-KMS the ETag is no MD5: only the checksum is compared.
    assert not S3Storage(client=object(), bucket="b", sse="aws:kms").etags_are_md5  # type: ignore[arg-type]
    assert S3Storage(client=object(), bucket="b", sse="AES256").etags_are_md5  # type: ignore[arg-type]


def test_lifecycle_rule_is_added_once_and_other_rules_kept() -> None:
    other = {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 30}}
    rules = lifecycle_rules_with_abort(rules=[other], days=2)
    assert rules[0] == other
    assert rules[1]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 2}
    again = lifecycle_rules_with_abort(rules=rules, days=5)
    assert [r["ID"] for r in again] == ["logs", LIFECYCLE_RULE_ID]
    assert again[1]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 5}


@pytest.mark.parametrize(
    "value", ["2026-12-01T15:08:43.000Z", "2026-12-01T15:08:43Z", "Tue, 01 Dec 2026 15:08:43 GMT", 1796137723]
)
def test_timestamps_are_the_instants_botocore_reads(value: object) -> None:
    parsed = s3_timestamp_parse(value)
    assert parsed == parse_timestamp(value) == datetime(2026, 12, 1, 15, 8, 43, tzinfo=UTC)
