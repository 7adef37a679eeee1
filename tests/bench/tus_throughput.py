"""Resumable uploads: tus-js-client against this server and against the reference tus server.

- `tus_throughput_1GiB`: tus-js-client 4.3.1 (npm, in Node) sends 1 GiB in 8 MiB chunks to our
  /uploads/ and, alternately, to `@tus/server` 2.4.5 with `@tus/file-store` 2.1.1 (the reference
  Node implementation) on the same machine; MiB/s from the client's start to its onSuccess.
  Our server runs without workers: what is timed is receiving (staging, hashing, offsets).
- `tus_server_rss_1GiB`: our server's peak RSS during one of those uploads (the reference
  server's, beside it, for information).
- `tus_patch_vs_upload_file_1GiB`: one raw PATCH of the whole file (httpx streaming it from disk)
  against `uploadFile` of the same file on the same server, MiB/s each.
- `tus_resent_after_abort_MiB`: tus-js-client aborted halfway through 256 MiB and resumed from
  its URL: the bytes it sends again (what it had sent at the abort minus the offset HEAD
  answered), against one chunk.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx

from tests.bench.client import http_client, upload_ours
from tests.bench.results import Figure, figure, median
from tests.bench.server_memory import peak_rss_mib
from tests.bench.stack import Bench, MiB
from tests.support.processes import wait_until
from tests.support.tusjs import JS_DIR, last_event, node_ready, tus_js

SIZE = 1024 * MiB
CHUNK = 8 * MiB
ROUNDS = 2


class ReferenceServer:
    """`@tus/server` with `@tus/file-store` in Node, on a free port."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.process = subprocess.Popen(
            ["node", str(JS_DIR / "tus_reference_server.mjs"), "0", str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        self.port = json.loads(line)["port"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/files"

    def clear(self) -> None:
        for entry in self.directory.iterdir():
            entry.unlink(missing_ok=True)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _tus_seconds(options: dict) -> float:
    events = tus_js(options, timeout=900)
    return float(last_event(events, "success")["seconds"])


def _timed_with_rss(pid: int, options: dict) -> tuple[float, float]:
    """(peak RSS of `pid` in MiB, seconds tus-js-client took) for one upload with `options`."""
    seconds: list[float] = []
    rss = peak_rss_mib(pid, lambda: seconds.append(_tus_seconds(options)))
    return rss, seconds[0]


def _patch_seconds(url: str, path: Path, headers: dict[str, str]) -> float:
    size = path.stat().st_size
    created = httpx.post(
        f"{url}/uploads/", headers={**headers, "Tus-Resumable": "1.0.0", "Upload-Length": str(size)}, timeout=60
    )
    location = created.headers["Location"]
    patch_headers = {
        **headers,
        "Tus-Resumable": "1.0.0",
        "Upload-Offset": "0",
        "Content-Type": "application/offset+octet-stream",
        "Content-Length": str(size),
    }
    with http_client() as client, path.open("rb") as body:
        started = time.perf_counter()
        answer = client.patch(location, headers=patch_headers, content=_read(body))
        elapsed = time.perf_counter() - started
    if answer.status_code != 204:
        raise RuntimeError(f"PATCH failed: {answer.status_code} {answer.text[:300]}")
    return elapsed


def _read(body):
    while chunk := body.read(MiB):
        yield chunk


def run(bench: Bench) -> list[Figure]:
    problem = node_ready()
    if problem is not None:
        raise RuntimeError(f"tus benchmarks need tus-js-client and @tus/server: {problem}")
    path = bench.file(SIZE)
    reference = ReferenceServer(bench.root / "reference")
    ours_rates, reference_rates, ours_rss, reference_rss = [], [], [], []
    patch_rates, upload_file_rates = [], []
    try:
        with bench.stack(workers=0) as stack:
            small = bench.file(1 * MiB)
            warm = {"file": str(small), "chunkSize": CHUNK}
            tus_js({**warm, "endpoint": f"{stack.url}/uploads/", "token": bench.token})
            tus_js({**warm, "endpoint": reference.endpoint})
            for _ in range(ROUNDS):
                mine = {
                    "file": str(path),
                    "chunkSize": CHUNK,
                    "endpoint": f"{stack.url}/uploads/",
                    "token": bench.token,
                }
                rss, seconds = _timed_with_rss(stack.server_pid, mine)
                ours_rss.append(rss)
                ours_rates.append(SIZE / MiB / seconds)
                bench.clear_staging()
                theirs = {"file": str(path), "chunkSize": CHUNK, "endpoint": reference.endpoint}
                rss, seconds = _timed_with_rss(reference.process.pid, theirs)
                reference_rss.append(rss)
                reference_rates.append(SIZE / MiB / seconds)
                reference.clear()
            for _ in range(ROUNDS):
                patch_rates.append(SIZE / MiB / _patch_seconds(stack.url, path, bench.headers))
                bench.clear_staging()
                with http_client() as client:
                    elapsed, _ = upload_ours(client, stack.url, path, headers=bench.headers)
                upload_file_rates.append(SIZE / MiB / elapsed)
                bench.clear_staging()
            resent = _resent_after_abort(bench, stack.url)
    finally:
        reference.stop()
    return [
        figure(
            "tus_throughput_1GiB",
            ours=median(ours_rates),
            baseline=median(reference_rates),
            unit="MiB/s",
            goal="ratio >= 1.0",
            check=lambda f: (f.ratio or 0) >= 1.0,
            note=f"tus-js-client, {CHUNK // MiB} MiB chunks; baseline @tus/server + @tus/file-store; {ROUNDS} rounds",
        ),
        figure(
            "tus_server_rss_1GiB",
            ours=median(ours_rss),
            baseline=median(reference_rss),
            unit="MiB",
            goal="<= 150 MiB",
            check=lambda f: f.ours <= 150,
            note="peak RSS of the server process; baseline: the reference Node server's",
        ),
        figure(
            "tus_patch_vs_upload_file_1GiB",
            ours=median(patch_rates),
            baseline=median(upload_file_rates),
            unit="MiB/s",
            goal="ratio >= 0.9",
            check=lambda f: (f.ratio or 0) >= 0.9,
            note="one raw PATCH of the whole file; baseline uploadFile (multipart) of the same file",
        ),
        figure(
            "tus_resent_after_abort_MiB",
            ours=resent,
            baseline=CHUNK / MiB,
            unit="MiB",
            goal="<= one chunk",
            check=lambda f: f.ours <= CHUNK / MiB,
            note="256 MiB aborted at half and resumed from its URL; baseline: the chunk size",
        ),
    ]


def _resent_after_abort(bench: Bench, url: str) -> float:
    path = bench.file(256 * MiB)
    options = {"file": str(path), "chunkSize": CHUNK, "endpoint": f"{url}/uploads/", "token": bench.token}
    aborted = last_event(tus_js({**options, "abortAfterBytes": 128 * MiB + 3 * MiB}), "aborted")
    # The server finishes the cut-off PATCH (commits what arrived, frees the lock) a moment later.
    wait_until(
        lambda: httpx.head(aborted["url"], headers={**bench.headers, "Tus-Resumable": "1.0.0"}).status_code == 200,
        timeout=30,
    )
    events = tus_js({**options, "uploadUrl": aborted["url"]})
    resumed_at = last_event(events, "head")["offset"]
    last_event(events, "success")
    bench.clear_staging()
    return max(0, aborted["bytesSent"] - resumed_at) / MiB
