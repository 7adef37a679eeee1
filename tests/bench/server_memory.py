"""Server peak RSS while it receives one large upload, ours against the bare view.

The peak is the kernel's high-water mark (VmHWM in /proc/<pid>/status), reset to the current RSS
just before the request by writing 5 to /proc/<pid>/clear_refs; a 10 ms psutil poll runs beside it
in case the reset is not allowed. Bodies are streamed from a file on disk by the client.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import psutil

from tests.bench.client import http_client, upload_bare, upload_ours
from tests.bench.results import Figure, figure, median
from tests.bench.stack import Bench, MiB

GOAL_MIB = 150
UVICORN_SIZE, UVICORN_ROUNDS = 1024 * MiB, 2
DAPHNE_SIZE = 256 * MiB


def peak_rss_mib(pid: int, action: Callable[[], object]) -> float:
    """The highest resident set size of `pid` (MiB) while `action` runs."""
    status = Path(f"/proc/{pid}/status")
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    process = psutil.Process(pid)
    polled = [process.memory_info().rss]
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.01):
            try:
                polled.append(process.memory_info().rss)
            except psutil.NoSuchProcess:
                return

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        action()
    finally:
        done.set()
        poller.join()
    peak = max(polled)
    if reset:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) * 1024)
    return peak / MiB


def _measure(bench: Bench, *, server: str, size: int, rounds: int) -> tuple[list[float], list[float]]:
    path = bench.file(size)
    ours, bare = [], []
    with bench.stack(workers=0, server=server) as stack, http_client() as client:
        # Warm both paths with a small file so imports are not counted as the upload's memory.
        small = bench.file(1 * MiB)
        upload_ours(client, stack.url, small, headers=bench.headers)
        upload_bare(client, stack.url, small)
        for _ in range(rounds):
            ours.append(
                peak_rss_mib(stack.server_pid, lambda: upload_ours(client, stack.url, path, headers=bench.headers))
            )
            bare.append(peak_rss_mib(stack.server_pid, lambda: upload_bare(client, stack.url, path)))
            bench.clear_bare()
            bench.clear_staging()
    return ours, bare


def run(bench: Bench) -> list[Figure]:
    ours, bare = _measure(bench, server="uvicorn", size=UVICORN_SIZE, rounds=UVICORN_ROUNDS)
    figures = [
        figure(
            "server_peak_rss_1GiB_uvicorn",
            ours=median(ours),
            baseline=median(bare),
            unit="MiB",
            goal=f"<= {GOAL_MIB} MiB",
            check=lambda f: f.ours <= GOAL_MIB,
            note=f"{UVICORN_ROUNDS} rounds; whole-process peak, Django included",
        ),
    ]
    d_ours, d_bare = _measure(bench, server="daphne", size=DAPHNE_SIZE, rounds=1)
    figures.append(
        figure(
            "server_peak_rss_256MiB_daphne",
            ours=d_ours[0],
            baseline=d_bare[0],
            unit="MiB",
            goal="info (daphne buffers bodies)",
            check=None,
            note="once each; daphne is selectable, not the default",
        )
    )
    return figures
