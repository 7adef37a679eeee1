"""Pipelining (issue 19): how long COMPLETED follows the last byte of a 1 GiB tus upload.

A real server and one real worker; the client sends the file with tus PATCHes of 128 MiB at a
steady pace (a client slower than the bucket, as one on a real network is; the pace is the point
of the measure, not a synchronisation). Ours: the upload pipelined (whole parts sent while it
arrives). Baseline: the same upload with UPLOAD_PIPELINE=false, whose transfer of the whole file
starts after the last byte.

- `pipelined_tail_1GiB_{local,s3}`: seconds from the answer to the last PATCH to COMPLETED
  (`completedAt` as the worker wrote it; same machine, same clock). Goal: at most about two parts'
  time, a ratio <= 0.1 against the baseline.
- `pipelined_end_to_end_1GiB_{local,s3}`: seconds from the first byte to COMPLETED, against the
  receive time alone (first byte to the last PATCH's answer) of the same pipelined upload:
  <= 1.1.
S3 is a moto server in its own process, holding objects in memory (MOTO_S3_DEFAULT_KEY_BUFFER_SIZE
above the object's size: by default moto spills every value over 5 MiB to a temporary file, and
its parts and its assembly then wait on the disk); each object is deleted after use.

Each figure's note splits the tail: from the last byte to the last part confirmed (what pipelining
decides), and from there to COMPLETED (the store assembling the object, and the bookkeeping). moto
assembles a multipart object in Python, copying all of its bytes (seconds for 1 GiB); real S3's
CompleteMultipartUpload copies nothing, so on moto the second share is moto's, in both runs alike.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.bench.results import Figure, figure
from tests.bench.stack import Bench, MiB
from tests.support.client import graphql
from tests.support.moto import CREDENTIALS, moto_start
from tests.support.processes import wait_until

SIZE = 1024 * MiB
PATCH = 128 * MiB
PIECE = MiB
# Paces the client keeps: below what each store takes here (local: the page cache; moto: about
# 70-100 MiB/s with four parts in flight), so pipelining can keep up, as with a real client.
PACE = {"local": 200 * MiB, "s3": 50 * MiB}


@dataclass
class Timed:
    first_byte: float
    last_answer: float
    completed: float
    last_part: float

    @property
    def assembly(self) -> float:
        """Last part confirmed -> COMPLETED: the store's assembly and the bookkeeping."""
        return self.completed - max(self.last_part, self.last_answer)

    @property
    def tail(self) -> float:
        return self.completed - self.last_answer

    @property
    def receive(self) -> float:
        return self.last_answer - self.first_byte

    @property
    def end_to_end(self) -> float:
        return self.completed - self.first_byte


def _paced(path: Path, offset: int, length: int, started: float, pace: int) -> Iterator[bytes]:
    """The bytes [offset, offset + length) of `path`, a MiB at a time, never ahead of `pace` bytes/s."""
    with path.open("rb") as source:
        source.seek(offset)
        sent = 0
        while sent < length:
            data = source.read(min(PIECE, length - sent))
            ahead = started + (offset + sent + len(data)) / pace - time.time()
            if ahead > 0:
                time.sleep(ahead)  # sync-ok: the client's pace is what this figure is about
            sent += len(data)
            yield data


def _tus_upload(url: str, headers: dict[str, str], path: Path, pace: int) -> Timed:
    tus = {"Tus-Resumable": "1.0.0", **headers}
    with httpx.Client(timeout=600) as client:
        created = client.post(f"{url}/uploads/", headers={**tus, "Upload-Length": str(SIZE)})
        assert created.status_code == 201, created.text
        location = created.headers["Location"]
        first_byte = time.time()
        for offset in range(0, SIZE, PATCH):
            length = min(PATCH, SIZE - offset)
            answer = client.patch(
                location,
                headers={
                    **tus,
                    "Content-Type": "application/offset+octet-stream",
                    "Upload-Offset": str(offset),
                    "Content-Length": str(length),
                },
                content=_paced(path, offset, length, first_byte, pace),
            )
            assert answer.status_code == 204, answer.text
        last_answer = time.time()
    upload_id = location.rsplit("/", 1)[1]
    row = _wait_completed(upload_id)
    last_part = max(p.created_at for p in row.parts.all())
    return Timed(
        first_byte=first_byte,
        last_answer=last_answer,
        completed=row.completed_at.timestamp(),
        last_part=last_part.timestamp(),
    )


def _wait_completed(upload_id: str) -> Any:
    from backend.uploads.models import FileUpload, UploadStatus

    def done() -> Any:
        row = FileUpload.objects.filter(id=upload_id).first()
        if row is not None and row.status in (UploadStatus.FAILED, UploadStatus.CANCELLED):
            raise RuntimeError(f"upload ended {row.status}: {row.error}")
        return row if row is not None and row.status == UploadStatus.COMPLETED else None

    return wait_until(done, timeout=900, interval=0.05, what=f"upload {upload_id} COMPLETED")


def _delete(bench: Bench, url: str) -> None:
    """Delete the bench user's uploads through the stack's own API (its storage backend), so moto's
    memory and the disk stay flat."""
    from backend.uploads.models import FileUpload

    for upload_id in FileUpload.objects.filter(owner=bench.user).values_list("id", flat=True):
        answer = graphql(url, "mutation($id: ID!) { deleteUpload(id: $id) }", {"id": str(upload_id)}, bench.headers)
        assert answer.json().get("data", {}).get("deleteUpload"), answer.text


def _measure(bench: Bench, kind: str, env: dict[str, str]) -> tuple[Timed, Timed]:
    path = bench.file(SIZE)
    runs = {}
    for pipelined in (True, False):
        with bench.stack(env={**env, "UPLOAD_PIPELINE": str(pipelined).lower()}, workers=1) as stack:
            runs[pipelined] = _tus_upload(stack.url, bench.headers, path, PACE[kind])
            _delete(bench, stack.url)
    return runs[True], runs[False]


def _figures(kind: str, ours: Timed, baseline: Timed) -> list[Figure]:
    pace = f"client paced at {PACE[kind] // MiB} MiB/s in 128 MiB PATCHes, one worker, default parts"
    split = (
        f"tail split: last byte -> last part {ours.tail - ours.assembly:.2f} s, then the store's assembly and"
        f" bookkeeping {ours.assembly:.2f} s"
        f" (baseline {baseline.tail - baseline.assembly:.2f} + {baseline.assembly:.2f} s)"
    )
    receive = f"receive {ours.receive:.2f} s pipelined, {baseline.receive:.2f} s without"
    return [
        figure(
            f"pipelined_tail_1GiB_{kind}",
            ours=ours.tail,
            baseline=baseline.tail,
            unit="s",
            goal="ratio <= 0.1",
            check=lambda f: (f.ratio if f.ratio is not None else 1) <= 0.1,
            note=f"last PATCH answered -> COMPLETED; baseline UPLOAD_PIPELINE=false; {pace}; {split}",
        ),
        figure(
            f"pipelined_end_to_end_1GiB_{kind}",
            ours=ours.end_to_end,
            baseline=ours.receive,
            unit="s",
            goal="ratio <= 1.1",
            check=lambda f: (f.ratio or 99) <= 1.1,
            note=f"first byte -> COMPLETED against first byte -> last PATCH answered; {pace}; {receive}",
        ),
    ]


def run(bench: Bench) -> list[Figure]:
    """The local figures, then the S3 ones (each pair measured alone: a failure of one keeps the other)."""
    return run_local(bench) + run_s3(bench)


def run_local(bench: Bench) -> list[Figure]:
    ours, baseline = _measure(bench, "local", {})
    return _figures("local", ours, baseline)


def run_s3(bench: Bench) -> list[Figure]:
    moto = moto_start(bench.root, "moto-pipelining", env={"MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(4 * SIZE)})
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        moto.client().create_bucket(Bucket=bucket)
        env = {
            "STORAGE_BACKEND": "s3",
            "S3_BUCKET": bucket,
            "S3_ENDPOINT_URL": moto.url,
            "S3_REGION": "us-east-1",
            **CREDENTIALS,
        }
        ours, baseline = _measure(bench, "s3", env)
    finally:
        moto.stop()
    return _figures("s3", ours, baseline)
