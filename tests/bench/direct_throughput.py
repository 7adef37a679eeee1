"""Direct-to-bucket uploads: 512 MiB put straight to a moto server through presigned URLs.

- `direct_throughput_512MiB`: the client side of CONTRACT section 9 against a real server (one
  worker), written as a good client is (tests/bench/direct_client.py): createUpload(mode: DIRECT);
  parts hashed and signed ahead in batches (signUploadParts); `CONCURRENCY` PUTs to moto always in
  flight on keep-alive connections; each part confirmed (confirmUploadPart: the server's ListParts
  check, ledger and event) beside the PUTs, not between them; then completeUpload. MiB/s from the
  first request to completeUpload's answer (every byte in the bucket and checked), after one small
  upload has warmed the server up.
  Baseline: boto3's `upload_file` of the same file, same part size, concurrency and per-part
  SHA-256. Rounds alternate; medians; each object is deleted after its round (moto keeps objects in
  memory).
- `direct_server_cpu_s_per_GiB`: the web server process's CPU seconds (user + system, psutil) per
  GiB during a direct upload, against the same server receiving the same file with `uploadFile`.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from boto3.s3.transfer import TransferConfig

from tests.bench.client import http_client, upload_ours
from tests.bench.direct_client import DirectClient
from tests.bench.results import Figure, figure, median
from tests.bench.stack import Bench, MiB
from tests.support.moto import Moto, moto_start
from tests.support.processes import wait_until

SIZE = 512 * MiB
ROUNDS = 2
PART = 8 * MiB
CONCURRENCY = 4
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


def _direct_once(client: DirectClient, path: Path) -> tuple[float, str]:
    """(seconds from createUpload to completeUpload's answer, the upload's id)."""
    started = time.perf_counter()
    upload_id = client.upload(path)
    return time.perf_counter() - started, upload_id


def _completed(upload_id: str) -> Any:
    from backend.uploads.models import FileUpload

    def done() -> Any:
        row = FileUpload.objects.get(id=upload_id)
        if row.status == "FAILED":
            raise RuntimeError(f"upload {upload_id} failed: {row.error}")
        return row if row.status == "COMPLETED" else None

    return wait_until(done, timeout=600, what=f"upload {upload_id} to complete")


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def run(bench: Bench) -> list[Figure]:
    path = bench.file(SIZE)
    moto: Moto = moto_start(bench.root, "moto-direct")
    try:
        client = moto.client()
        bucket = f"bench-direct-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        env = {
            **CREDENTIALS,
            "STORAGE_BACKEND": "s3",
            "S3_BUCKET": bucket,
            "S3_ENDPOINT_URL": moto.url,
            "S3_REGION": "us-east-1",
            "UPLOAD_PART_SIZE": str(PART),
            "UPLOAD_PART_CONCURRENCY": str(CONCURRENCY),
        }
        config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=CONCURRENCY)
        ours, base, cpu_direct, cpu_single = [], [], [], []
        with bench.stack(env=env, workers=1) as stack:
            # The server's first request pays its start-up (the S3 clients, the schema, the URL
            # conf: about half a second); boto3's client has made its first call too (create_bucket).
            with DirectClient(stack.url, bench.headers, concurrency=CONCURRENCY) as direct:
                warm = direct.upload(bench.file(MiB))
            client.delete_object(Bucket=bucket, Key=_completed(warm).storage_key)
            for _ in range(ROUNDS):
                before = _cpu(stack.server_pid)
                with DirectClient(stack.url, bench.headers, concurrency=CONCURRENCY) as direct:
                    elapsed, upload_id = _direct_once(direct, path)
                cpu_direct.append((_cpu(stack.server_pid) - before) / (SIZE / 1024**3))
                ours.append(SIZE / MiB / elapsed)
                client.delete_object(Bucket=bucket, Key=_completed(upload_id).storage_key)

                key = f"baseline/{uuid.uuid4().hex}"
                started = time.perf_counter()
                client.upload_file(str(path), bucket, key, ExtraArgs={"ChecksumAlgorithm": "SHA256"}, Config=config)
                base.append(SIZE / MiB / (time.perf_counter() - started))
                client.delete_object(Bucket=bucket, Key=key)

                with http_client() as http:
                    before = _cpu(stack.server_pid)
                    _, single = upload_ours(http, stack.url, path, headers=bench.headers)
                    cpu_single.append((_cpu(stack.server_pid) - before) / (SIZE / 1024**3))
                client.delete_object(Bucket=bucket, Key=_completed(single["id"]).storage_key)
    finally:
        moto.stop()
    shape = f"{PART // MiB} MiB parts, {CONCURRENCY} at a time, SHA-256 per part"
    return [
        figure(
            "direct_throughput_512MiB",
            ours=median(ours),
            baseline=median(base),
            unit="MiB/s",
            goal="ratio >= 0.9",
            check=lambda f: (f.ratio or 0) >= 0.9,
            note=f"{ROUNDS} rounds; parts signed ahead in batches, confirmed beside the PUTs; vs upload_file, {shape}",
        ),
        figure(
            "direct_server_cpu_s_per_GiB",
            ours=median(cpu_direct),
            baseline=median(cpu_single),
            unit="CPU s/GiB",
            goal="report",
            check=None,
            note="web server process, direct upload (sign, confirm, complete) vs uploadFile of the same file",
        ),
    ]
