"""S3 throughput for 512 MiB to a moto server in its own process, against boto3's `upload_file`.

Ours: the real transfer job run in this process (`Bench.transfer_in_process`) with the S3 backend:
claim, ledger rows, progress events, per-part SHA-256 (no MD5: moto answers each part with its
checksum, and `S3_VERIFY_PART_ETAG` is off by default), completion with its checksum check.
Baseline: `upload_file` of the same file on a client configured the same way (`s3_client_create`),
with the same part size, concurrency and checksum (`ChecksumAlgorithm=SHA256`); also reported
against boto3's default TransferConfig (8 MiB parts, 10 threads, no explicit checksum). The file is
in the page cache for all three. Rounds alternate; medians. moto keeps what it receives in memory,
so each object is deleted right after its round.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from django.conf import settings
from django.test import override_settings

from tests.bench.results import Figure, figure, median
from tests.bench.stack import Bench, MiB
from tests.support.moto import Moto, moto_start

SIZE = 512 * MiB
ROUNDS = 2
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


@contextmanager
def _s3_settings(moto: Moto, bucket: str) -> Iterator[None]:
    """This process's settings, and storage backend, pointed at `bucket` on `moto`."""
    from backend.uploads.storage import get_capabilities

    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    get_capabilities.cache_clear()
    try:
        with override_settings(
            STORAGE_BACKEND="s3",
            S3_BUCKET=bucket,
            S3_ENDPOINT_URL=moto.url,
            S3_PUBLIC_ENDPOINT_URL=moto.url,
            S3_REGION="us-east-1",
        ):
            yield
    finally:
        get_capabilities.cache_clear()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _ours_once(bench: Bench, client: Any, bucket: str, path: Path, sha256: str) -> float:
    elapsed, row = bench.transfer_in_process(path, sha256=sha256)
    client.delete_object(Bucket=bucket, Key=row.storage_key)
    return SIZE / MiB / elapsed


def _upload_file_once(client: Any, bucket: str, path: Path, config: TransferConfig, extra: dict[str, str]) -> float:
    key = f"baseline/{uuid.uuid4().hex}"
    started = time.perf_counter()
    client.upload_file(str(path), bucket, key, ExtraArgs=extra, Config=config)
    elapsed = time.perf_counter() - started
    client.delete_object(Bucket=bucket, Key=key)
    return SIZE / MiB / elapsed


def run(bench: Bench) -> list[Figure]:
    path = bench.file(SIZE)
    sha256 = bench.sha256(path)
    moto = moto_start(bench.root, "moto")
    try:
        client = moto.client()
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        same = TransferConfig(
            multipart_threshold=settings.UPLOAD_PART_SIZE,
            multipart_chunksize=settings.UPLOAD_PART_SIZE,
            max_concurrency=settings.UPLOAD_PART_CONCURRENCY,
        )
        same_extra = {"ChecksumAlgorithm": settings.S3_CHECKSUM_ALGORITHM}
        ours, base, default = [], [], []
        with _s3_settings(moto, bucket):
            for _ in range(ROUNDS):
                ours.append(_ours_once(bench, client, bucket, path, sha256))
                base.append(_upload_file_once(client, bucket, path, same, same_extra))
                default.append(_upload_file_once(client, bucket, path, TransferConfig(), {}))
    finally:
        moto.stop()
    shape = f"{settings.UPLOAD_PART_SIZE // MiB} MiB parts, {settings.UPLOAD_PART_CONCURRENCY} at a time"
    return [
        figure(
            "s3_throughput_512MiB",
            ours=median(ours),
            baseline=median(base),
            unit="MiB/s",
            goal="ratio >= 0.95",
            check=lambda f: (f.ratio or 0) >= 0.95,
            note=f"{ROUNDS} rounds; baseline upload_file, {shape}, {settings.S3_CHECKSUM_ALGORITHM} per part",
        ),
        figure(
            "s3_throughput_512MiB_vs_default",
            ours=median(ours),
            baseline=median(default),
            unit="MiB/s",
            goal="info",
            check=None,
            note="baseline upload_file with the default TransferConfig (8 MiB parts, 10 threads)",
        ),
    ]
