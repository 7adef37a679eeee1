"""Bucket set-up (`manage.py s3_setup`): create the bucket if asked, ship the lifecycle rule
that aborts incomplete multipart uploads as a backstop (NOTES, "S3 multipart"), and the CORS rule
browsers need to put parts straight into the bucket (direct uploads) and read each part's ETag.

Kept apart from the backend (`s3.py`): the service never calls this while it runs.
"""

from __future__ import annotations

from typing import Any, Protocol

from backend.uploads.storage.s3 import S3StorageError, s3_call

# Every key this service writes starts so (`naming.storage_key_for`): the rule touches nothing else.
LIFECYCLE_PREFIX = "uploads/"
LIFECYCLE_RULE_ID = "abort-incomplete-multipart-uploads"
_LIFECYCLE_UNSUPPORTED = frozenset({"NotImplemented", "MalformedXML", "InvalidRequest", "InvalidArgument", "501"})


class S3BucketAPI(Protocol):
    """The calls `s3_bucket_setup` makes (beyond the backend's own)."""

    def create_bucket(self, **kwargs: Any) -> dict[str, Any]: ...
    def head_bucket(self, **kwargs: Any) -> dict[str, Any]: ...
    def get_bucket_lifecycle_configuration(self, **kwargs: Any) -> dict[str, Any]: ...
    def put_bucket_lifecycle_configuration(self, **kwargs: Any) -> dict[str, Any]: ...
    def get_bucket_cors(self, **kwargs: Any) -> dict[str, Any]: ...
    def put_bucket_cors(self, **kwargs: Any) -> dict[str, Any]: ...


CORS_RULE_ID = "upload-service-direct-uploads"


def cors_rules_with_direct_uploads(*, rules: list[dict[str, Any]], origins: list[str]) -> list[dict[str, Any]]:
    """`rules` with this service's rule for `origins` added or replaced; others kept.

    Browsers PUT parts to presigned URLs (with `x-amz-checksum-sha256`) and must read each answer's
    `ETag`, which S3 hides from scripts unless the rule exposes it: without it every multipart
    upload from a browser fails (NOTES, "Direct-to-bucket"). GET and HEAD serve `downloadUrl`s.
    """
    ours = {
        "ID": CORS_RULE_ID,
        "AllowedOrigins": list(origins),
        "AllowedMethods": ["PUT", "GET", "HEAD"],
        "AllowedHeaders": ["*"],
        "ExposeHeaders": ["ETag"],
        "MaxAgeSeconds": 3600,
    }
    return [rule for rule in rules if rule.get("ID") != CORS_RULE_ID] + [ours]


def s3_bucket_cors(*, client: S3BucketAPI, bucket: str, origins: list[str]) -> str:
    """Put the direct-upload CORS rule for `origins` on the bucket; one line saying what was done."""
    if not origins:
        return (
            "no CORS rule: set CORS_ALLOWED_ORIGINS (or pass --cors-origin) to let browsers upload straight "
            "to the bucket"
        )
    try:
        current = s3_call("GetBucketCors", lambda: client.get_bucket_cors(Bucket=bucket), bucket=bucket)
        rules = list(current.get("CORSRules", []))
    except S3StorageError as exc:
        if exc.code != "NoSuchCORSConfiguration":
            raise
        rules = []
    configuration = {"CORSRules": cors_rules_with_direct_uploads(rules=rules, origins=origins)}
    s3_call(
        "PutBucketCors",
        lambda: client.put_bucket_cors(Bucket=bucket, CORSConfiguration=configuration),
        bucket=bucket,
    )
    return f"CORS rule {CORS_RULE_ID!r}: {', '.join(origins)} may PUT parts and read their ETag"


def lifecycle_rules_with_abort(*, rules: list[dict[str, Any]], days: int) -> list[dict[str, Any]]:
    """`rules` with this service's AbortIncompleteMultipartUpload rule added or replaced; others kept."""
    ours = {
        "ID": LIFECYCLE_RULE_ID,
        "Status": "Enabled",
        "Filter": {"Prefix": LIFECYCLE_PREFIX},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days},
    }
    return [rule for rule in rules if rule.get("ID") != LIFECYCLE_RULE_ID] + [ours]


def s3_bucket_setup(
    *, client: S3BucketAPI, bucket: str, region: str | None, create_bucket: bool, days: int
) -> list[str]:
    """Create the bucket if asked and it is missing, then put the abort rule where the store supports it.

    Returns what was done, one line each. Raises StorageError when the bucket is missing (and
    not to be created) or the store refuses access.
    """
    report = []
    try:
        s3_call("HeadBucket", lambda: client.head_bucket(Bucket=bucket), bucket=bucket)
        report.append(f"bucket {bucket!r} exists")
    except S3StorageError as exc:
        if not (create_bucket and exc.code in ("404", "NoSuchBucket")):
            raise
        params: dict[str, Any] = {"Bucket": bucket}
        if region and region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3_call("CreateBucket", lambda: client.create_bucket(**params), bucket=bucket)
        report.append(f"bucket {bucket!r} created")

    try:
        current = s3_call(
            "GetBucketLifecycleConfiguration",
            lambda: client.get_bucket_lifecycle_configuration(Bucket=bucket),
            bucket=bucket,
        )
        rules = list(current.get("Rules", []))
    except S3StorageError as exc:
        if exc.code in _LIFECYCLE_UNSUPPORTED:
            return [*report, _lifecycle_unsupported(bucket, exc)]
        if exc.code != "NoSuchLifecycleConfiguration":
            raise
        rules = []
    try:
        response = s3_call(
            "PutBucketLifecycleConfiguration",
            lambda: client.put_bucket_lifecycle_configuration(
                Bucket=bucket, LifecycleConfiguration={"Rules": lifecycle_rules_with_abort(rules=rules, days=days)}
            ),
            bucket=bucket,
        )
    except S3StorageError as exc:
        if exc.code in _LIFECYCLE_UNSUPPORTED:
            return [*report, _lifecycle_unsupported(bucket, exc)]
        raise
    server = str(response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("server", ""))
    if "minio" in server.lower():
        # MinIO stores the rule but never applies AbortIncompleteMultipartUpload (minio#15681).
        return [
            *report,
            "MinIO accepted the lifecycle rule but does not apply AbortIncompleteMultipartUpload: it expires "
            "stale multipart uploads by its own setting (`mc admin config set ALIAS api stale_uploads_expiry=24h`)",
        ]
    report.append(
        f"lifecycle rule {LIFECYCLE_RULE_ID!r}: multipart uploads under {LIFECYCLE_PREFIX!r} "
        f"left incomplete are aborted {days} day(s) after they start"
    )
    return report


def _lifecycle_unsupported(bucket: str, exc: S3StorageError) -> str:
    return (
        f"this store does not support lifecycle rules on {bucket!r} ({exc.code}): abort stale multipart "
        "uploads with the store's own setting; the service aborts those it cancels or expires itself"
    )
