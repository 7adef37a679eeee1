"""A real webhook receiver on loopback: an HTTP server in a thread that answers as a test scripts it.

Every request is kept (headers, body, arrival time, what was answered) and checked with the
`standardwebhooks` verifier against the endpoint's secret, as a real receiver would. The script is
a list of answers taken in order, the last repeating: an HTTP status ("500", "200", "302 URL"),
or "hang" (say nothing until the test ends or `hang_seconds` pass, then drop the connection).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from backend.stack import free_port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    answer: str
    verified: bool | None = None  # None until a secret is known

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    script: list[str] = field(default_factory=lambda: ["200"])
    port: int = field(default_factory=free_port)
    hang_seconds: float = 60.0
    secret: str | None = None
    received: list[Received] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _release: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    hanging: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks?source=uploads"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._changed:
                    answer = receiver.script[min(len(receiver.received), len(receiver.script) - 1)]
                    entry = Received(
                        headers={k.lower(): v for k, v in self.headers.items()},
                        body=body,
                        at=time.time(),
                        answer=answer,
                    )
                    entry.verified = receiver._verify(entry)
                    receiver.received.append(entry)
                    if answer == "hang":
                        receiver.hanging += 1
                    receiver._changed.notify_all()
                if answer == "hang":
                    receiver._release.wait(receiver.hang_seconds)
                    with receiver._changed:
                        receiver.hanging -= 1
                        receiver._changed.notify_all()
                    self.close_connection = True
                    return
                status, _, location = answer.partition(" ")
                self.send_response(int(status))
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _verify(self, entry: Received) -> bool | None:
        if self.secret is None:
            return None
        try:
            Webhook(self.secret).verify(entry.body, entry.headers)
        except WebhookVerificationError:
            return False
        return True

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        """Block until `count` requests have arrived; all of them so far."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.received) >= count, timeout=timeout):
                raise AssertionError(f"the receiver got {len(self.received)} requests, not {count}, in {timeout}s")
            return list(self.received)
