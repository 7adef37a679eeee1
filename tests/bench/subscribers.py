"""The fan-out benchmarks' subscribers: one Node process of real websocket clients (tests/js/fanout_subscribers.mjs).

Each subscriber is its own TCP websocket speaking graphql-transport-ws (the npm `ws` package,
installed by `make js-deps`) with one `uploadProgress` subscription, and records what the Python
clients used to: per part, its arrival wall time minus the event's `at`; the sequences and statuses
in arrival order; the wall time of its last part. They live in a process of their own, apart from
the driver, and cost a few microseconds of CPU per message, so the figures measure the server
rather than the clients (README, "Fan-out's subscribers").
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from tests.support.client import PROGRESS_SUBSCRIPTION
from tests.support.tusjs import JS_DIR

SCRIPT = JS_DIR / "fanout_subscribers.mjs"


@dataclass
class Seen:
    """What one subscriber received: (arrival - at) per part, sequences, statuses."""

    upload: str
    latencies: dict[int, float] = field(default_factory=dict)
    sequences: list[int] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    last_arrival: float = 0.0
    arrivals: dict[int, float] = field(default_factory=dict)  # per part, wall time: `at` + latency


def node_subscribers_ready() -> str | None:
    """Why the Node subscribers cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (JS_DIR / "node_modules" / "ws").is_dir():
        return "the npm package ws is not installed: run `make js-deps`"
    return None


class Subscribers:
    """`layout` ([(upload id, subscribers)]) opened in a Node process; a context manager that kills it on exit.

    `ready()` returns once every subscriber has its snapshot; `results()` once every subscription
    has completed. Node gives up by itself after `timeout` seconds and says so.
    """

    def __init__(
        self,
        ws_url: str,
        token: str,
        layout: list[tuple[str, int]],
        *,
        log: Path,
        connecting_at_once: int = 50,
        timeout: float = 600,
    ) -> None:
        problem = node_subscribers_ready()
        if problem is not None:
            raise RuntimeError(f"the fan-out benchmarks need Node and the npm package ws: {problem}")
        self.log = log
        self.cpu_seconds = 0.0  # the process's user + system CPU, as it reported at the end
        options = {
            "url": ws_url,
            "token": token,
            "query": PROGRESS_SUBSCRIPTION,
            "uploads": layout,
            "connectingAtOnce": connecting_at_once,
            "timeoutSeconds": timeout,
        }
        self._stderr = log.open("w")
        self.process = subprocess.Popen(
            ["node", str(SCRIPT), json.dumps(options)], stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def _next(self, kind: str) -> dict[str, Any]:
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        for line in stdout:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event["event"] == "error":
                raise RuntimeError(f"the Node subscribers failed: {event['message']}")
            if event["event"] == kind:
                return event
        self.process.wait(10)
        raise RuntimeError(f"the Node subscribers exited {self.process.returncode} before {kind!r}; see {self.log}")

    def ready(self) -> float:
        """Seconds it took to open and subscribe every socket."""
        return float(self._next("ready")["seconds"])

    def results(self) -> list[Seen]:
        done = self._next("done")
        self.process.wait(30)
        self.cpu_seconds = float(done["cpuSeconds"])
        seen = []
        for each in done["subscribers"]:
            at = done["at"][each["upload"]]
            seen.append(
                Seen(
                    upload=each["upload"],
                    latencies={int(number): latency for number, latency in each["parts"].items()},
                    sequences=each["sequences"],
                    statuses=each["statuses"],
                    last_arrival=each["lastArrival"],
                    arrivals={int(number): at[number] + latency for number, latency in each["parts"].items()},
                )
            )
        return seen

    def __enter__(self) -> Subscribers:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()
