"""A direct-to-bucket client written the way a good one is (CONTRACT section 9), for the benchmark.

What it does that a naive client does not:
- one keep-alive HTTP client per thread, made before the clock starts (a new `httpx.Client` per
  request costs a TCP connection and an SSL context, about as much CPU as the request itself);
- a signer thread hashes parts ahead of the PUTs, straight from the page cache (a memoryview of the
  mapped file: no copy), and signs them in batches (a small first batch so the first PUTs start at
  once, then `SIGN_BATCH` parts per `signUploadParts`), at most `SIGN_AHEAD` signed parts waiting,
  so URLs are used well within their TTL (and a URL close to expiry is signed again before its PUT);
- `concurrency` PUT lanes, each with its own connection to the bucket, re-reading its part (pread,
  like boto3's ReadFileChunk) and sending it in one write: there are always `concurrency` PUTs in
  flight while parts are left;
- each part's confirmation goes to a small pool of confirmers, so the next PUT starts at once
  instead of waiting for the server's ListParts check; the confirmations ask only for the fields a
  progress bar needs.
"""

from __future__ import annotations

import base64
import hashlib
import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.support.direct import COMPLETE, CREATE

SIGN = """mutation($id: ID!, $parts: [PartToSign!]!) { signUploadParts(id: $id, parts: $parts) {
  partNumber url expiresAt headers { name value } } }"""
CONFIRM = """mutation($id: ID!, $n: Int!, $etag: String!) {
  confirmUploadPart(id: $id, partNumber: $n, etag: $etag) { id partsUploaded bytesReceived } }"""
SIGN_BATCH = 16
SIGN_AHEAD = 2 * SIGN_BATCH
CONFIRMERS = 2
# A URL this close to its expiry is signed again before its PUT.
EXPIRY_MARGIN = timedelta(seconds=60)


@dataclass(frozen=True)
class _Part:
    number: int
    checksum: str
    url: str
    headers: dict[str, str]
    expires_at: datetime


class _GraphQL:
    """One keep-alive connection to the server's /graphql per thread that uses it."""

    def __init__(self, url: str, headers: dict[str, str], stack: ExitStack) -> None:
        self.url = f"{url}/graphql"
        self.headers = headers
        self._stack = stack
        self._local = threading.local()
        self._lock = threading.Lock()

    def client(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            with self._lock:
                client = self._stack.enter_context(httpx.Client(timeout=60, headers=self.headers))
            self._local.client = client
        return client

    def __call__(self, query: str, variables: dict[str, Any]) -> Any:
        body = self.client().post(self.url, json={"query": query, "variables": variables}).json()
        if body.get("errors"):
            raise RuntimeError(f"direct upload refused: {body['errors']}")
        return body["data"]


def _batches(numbers: list[int], first: int) -> Iterator[list[int]]:
    start, size = 0, first
    while start < len(numbers):
        yield numbers[start : start + size]
        start, size = start + size, SIGN_BATCH


def _sha256(data: bytes | memoryview) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class DirectClient:
    """Uploads files with createUpload(mode: DIRECT), presigned PUTs, confirmations and completeUpload."""

    def __init__(self, url: str, headers: dict[str, str], *, concurrency: int) -> None:
        self.concurrency = concurrency
        self._stack = ExitStack()
        self.graphql = _GraphQL(url, headers, self._stack)
        # The connections are opened by the first request, as boto3's pool does; the clients (and
        # their SSL contexts) exist before any clock starts.
        self.lanes = [self._stack.enter_context(httpx.Client(timeout=120)) for _ in range(concurrency)]
        self.confirmers = ThreadPoolExecutor(max_workers=CONFIRMERS, thread_name_prefix="confirm")
        for _ in range(CONFIRMERS):
            self.confirmers.submit(self.graphql.client).result()
        self.graphql.client()

    def close(self) -> None:
        self.confirmers.shutdown()
        self._stack.close()

    def __enter__(self) -> DirectClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def upload(self, path: Path) -> str:
        """Send `path`; returns the upload's id once completeUpload has answered (QUEUED)."""
        size = path.stat().st_size
        variables = {"input": {"filename": path.name, "size": size, "mode": "DIRECT"}}
        upload = self.graphql(CREATE, variables)["createUpload"]
        upload_id, part_size = upload["id"], upload["partSize"]
        numbers = list(range(1, upload["partsTotal"] + 1))
        fd = os.open(path, os.O_RDONLY)
        whole = mmap.mmap(fd, 0, prot=mmap.PROT_READ) if size else None
        mapped = memoryview(whole) if whole is not None else memoryview(b"")
        signed: queue.Queue[_Part | None] = queue.Queue(maxsize=SIGN_AHEAD)
        confirmations: list[Future[Any]] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def read(number: int) -> bytes:
            return os.pread(fd, part_size, (number - 1) * part_size)

        def digest(number: int) -> str:
            start = (number - 1) * part_size
            return _sha256(mapped[start : start + part_size])

        def sign(checksums: dict[int, str]) -> list[_Part]:
            wanted = [{"partNumber": n, "sha256": c} for n, c in checksums.items()]
            answer = self.graphql(SIGN, {"id": upload_id, "parts": wanted})["signUploadParts"]
            return [
                _Part(
                    number=p["partNumber"],
                    checksum=checksums[p["partNumber"]],
                    url=p["url"],
                    headers={h["name"]: h["value"] for h in p["headers"]},
                    expires_at=datetime.fromisoformat(p["expiresAt"]),
                )
                for p in answer
            ]

        def guarded(work: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    work()
                except BaseException as exc:
                    failures.append(exc)
                    stop.set()
                    raise

            return run

        def offer(item: _Part | None) -> bool:
            """Queue `item` for the lanes; False once the upload is being abandoned."""
            while not stop.is_set():
                try:
                    signed.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        def take() -> _Part | None:
            while not stop.is_set():
                try:
                    return signed.get(timeout=0.5)
                except queue.Empty:
                    continue
            return None

        def signer() -> None:
            for batch in _batches(numbers, first=self.concurrency):
                for part in sign({n: digest(n) for n in batch}):
                    if not offer(part):
                        return
            for _ in range(self.concurrency):
                offer(None)

        def confirm(number: int, etag: str) -> None:
            self.graphql(CONFIRM, {"id": upload_id, "n": number, "etag": etag})

        def lane(http: httpx.Client) -> Callable[[], None]:
            def run() -> None:
                while (part := take()) is not None:
                    if part.expires_at - datetime.now(UTC) < EXPIRY_MARGIN:
                        (part,) = sign({part.number: part.checksum})
                    put = http.put(part.url, content=read(part.number), headers=part.headers)
                    put.raise_for_status()
                    confirmations.append(self.confirmers.submit(confirm, part.number, put.headers["etag"]))

            return run

        threads = [threading.Thread(target=guarded(signer), name="sign")]
        threads += [threading.Thread(target=guarded(lane(http)), name=f"put-{i}") for i, http in enumerate(self.lanes)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if failures:
                raise failures[0]
            for confirmation in confirmations:
                confirmation.result()
        finally:
            mapped.release()
            if whole is not None:
                whole.close()
            os.close(fd)
        self.graphql(COMPLETE, {"id": upload_id})
        return str(upload_id)
