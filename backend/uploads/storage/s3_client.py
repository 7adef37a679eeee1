"""The one place that builds boto3 S3 clients: endpoint, region, credentials, retries, timeouts.

Credentials come from the standard AWS chain (environment, shared config and credentials files,
container or instance roles); nothing here reads a key. The S3 backend gets the clients injected
and never builds one itself.

botocore's own retries are off (`total_max_attempts=1`): the transfer engine already retries each
part with backoff and jitter, and a botocore retry underneath would multiply the attempts and hide
them from the ledger and the logs. So every part attempt the engine counts is exactly one HTTP
request. (`max_attempts` in botocore's `retries` dict counts *retries*, not attempts: `max_attempts=1`
would still send each request twice; `total_max_attempts` counts the first request too.)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.handlers import convert_body_to_file_like_object
from botocore.utils import parse_timestamp
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

CONNECT_TIMEOUT_SECONDS = 10
# Time allowed for one socket read, i.e. for the store to answer after a part's last byte; S3
# answers UploadPart within seconds, and a stalled connection must fail so the part is retried.
READ_TIMEOUT_SECONDS = 60
REQUEST_CHECKSUM_CALCULATIONS = ("when_required", "when_supported")


def s3_client_config(
    *, region: str | None, request_checksum_calculation: str, max_pool_connections: int, path_style: bool
) -> Config:
    """The botocore configuration every S3 client of this service uses."""
    if request_checksum_calculation not in REQUEST_CHECKSUM_CALCULATIONS:
        raise ImproperlyConfigured(
            f"S3_REQUEST_CHECKSUM_CALCULATION must be one of {', '.join(REQUEST_CHECKSUM_CALCULATIONS)}"
        )
    return Config(
        region_name=region,
        signature_version="s3v4",
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        tcp_keepalive=True,
        max_pool_connections=max_pool_connections,
        request_checksum_calculation=request_checksum_calculation,
        response_checksum_validation="when_required",
        s3={
            # S3-compatible stores (MinIO, Ceph, moto) behind a custom endpoint expect path-style
            # URLs; AWS itself picks virtual-hosted style.
            "addressing_style": "path" if path_style else "auto",
            # Every part this service sends carries its checksum (S3_CHECKSUM_ALGORITHM, or its
            # Content-MD5 without one), which the signature covers and the store verifies: hashing
            # the body once more for the signature (botocore does so over plain HTTP) adds CPU, not safety.
            "payload_signing_enabled": False,
        },
    )


def s3_timestamp_parse(value: Any) -> datetime:
    """botocore's timestamp parser, with the ISO 8601 form S3 answers in XML (ListParts' LastModified,
    one per part) read by the standard library: botocore's default (dateutil) takes about 100 us for
    each, which was a tenth of the server's CPU per part confirmation. Anything else (RFC 1123
    headers, epoch numbers) goes to botocore's parser as before."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    return parse_timestamp(value)


def s3_client_create(
    *,
    endpoint_url: str | None,
    region: str | None,
    request_checksum_calculation: str = "when_required",
    max_pool_connections: int = 10,
    session: boto3.session.Session | None = None,
) -> Any:
    """A boto3 S3 client for `endpoint_url` (None: AWS), credentials from the standard chain."""
    session = session or boto3.session.Session()
    # The parsers of every client this session makes from now on (ResponseParserFactory.set_parser_defaults).
    session._session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=s3_timestamp_parse)
    config = s3_client_config(
        region=region,
        request_checksum_calculation=request_checksum_calculation,
        max_pool_connections=max_pool_connections,
        path_style=endpoint_url is not None,
    )
    client = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
    # A part's bytes are sent as the bytes they are: botocore would wrap them in a BytesIO, which
    # http.client then sends 16 KiB at a time (512 sends and GIL hand-offs per 8 MiB part) after
    # an `Expect: 100-continue` round trip; as bytes they go in one sendall. Nothing rewinds a
    # body here (botocore's retries are off) and every part carries its checksum, so botocore never
    # reads it. A file-like Body (boto3's upload_file) is sent as before.
    for operation in ("UploadPart", "PutObject"):
        client.meta.events.unregister(f"before-parameter-build.s3.{operation}", convert_body_to_file_like_object)
    return client


def s3_clients_from_settings() -> tuple[Any, Any]:
    """(client for transfers, client for presigning on S3_PUBLIC_ENDPOINT_URL), one credential chain."""
    if not settings.S3_BUCKET:
        raise ImproperlyConfigured("STORAGE_BACKEND=s3 needs S3_BUCKET")
    session = boto3.session.Session()
    # Every part in flight holds a connection; a little headroom for list/complete/abort calls.
    pool = max(10, settings.UPLOAD_PART_CONCURRENCY + 2)
    client = s3_client_create(
        endpoint_url=settings.S3_ENDPOINT_URL,
        region=settings.S3_REGION,
        request_checksum_calculation=settings.S3_REQUEST_CHECKSUM_CALCULATION,
        max_pool_connections=pool,
        session=session,
    )
    if settings.S3_PUBLIC_ENDPOINT_URL == settings.S3_ENDPOINT_URL:
        return client, client
    presigner = s3_client_create(
        endpoint_url=settings.S3_PUBLIC_ENDPOINT_URL,
        region=settings.S3_REGION,
        request_checksum_calculation=settings.S3_REQUEST_CHECKSUM_CALCULATION,
        session=session,
    )
    return client, presigner
