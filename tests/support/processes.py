"""Real processes for integration tests: the ASGI server, RQ workers, and waiting on conditions."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import redis
from rq import Worker as RQWorker
from rq.job import Job

from backend.stack import free_port, redis_embedded_start

ROOT = Path(__file__).resolve().parents[2]
UPLOAD_WORKER = "backend.uploads.worker.UploadWorker"
T = TypeVar("T")


def wait_until(predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)  # sync-ok: the poll interval of wait_until, which waits on the condition


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@dataclass
class Server:
    """uvicorn serving backend.asgi on a free TCP port."""

    env: dict[str, str]
    log: Path
    server: str = "uvicorn"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def start(self) -> Server:
        if self.server == "daphne":
            args = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "backend.asgi:application"]
        else:
            args = [
                sys.executable,
                "-m",
                "uvicorn",
                "backend.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--lifespan",
                "off",
                "--log-level",
                "warning",
                "--ws-per-message-deflate",
                "false",
            ]
        self.process = _spawn(args, self.env, self.log)
        wait_until(self._healthy, timeout=30, what=f"server on {self.url} (log {self.log})")
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"server exited with {self.process.returncode}; see {self.log}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        _stop(self.process)

    def kill(self) -> None:
        """SIGKILL the server: it gets no chance to tidy anything up."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def restart(self) -> Server:
        """Stop (SIGTERM: uvicorn closes its websockets) and start again on the same port."""
        self.stop()
        return self.start()


# What `make run` starts: a pool that respawns a worker that dies (no fault hooks in it).
WORKER_POOL = [sys.executable, "manage.py", "rqworker-pool", "default", "--worker-class", UPLOAD_WORKER]


@dataclass
class Worker:
    """One real RQ worker process (forking a work horse per job), optionally with storage faults.

    `command` may instead run a whole worker pool (WORKER_POOL plus `--num-workers N`).
    """

    env: dict[str, str]
    log: Path
    faults: dict[str, Any] | None = None
    process: subprocess.Popen[bytes] | None = None
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "tests.support.worker"])

    def start(self) -> Worker:
        env = dict(self.env)
        if self.faults:
            env["TEST_STORAGE_FAULTS"] = json.dumps(self.faults)
        self.process = _spawn(self.command, env, self.log)
        return self

    def current_job(self) -> Job | None:
        """The RQ job this worker is running now; None while it is idle or not yet registered."""
        assert self.process is not None
        with redis.Redis.from_url(self.env["REDIS_URL"]) as connection:
            for registered in RQWorker.all(connection=connection):
                if registered.pid == self.process.pid:
                    return registered.get_current_job()
        return None

    def kill(self) -> None:
        """SIGKILL the worker and its work horse (which RQ puts in a session of its own)."""
        if self.process and self.process.poll() is None:
            victims = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
            for victim in victims:
                with contextlib.suppress(psutil.NoSuchProcess):
                    victim.kill()
            psutil.wait_procs(victims, timeout=10)
            self.process.wait(10)

    def stop(self) -> None:
        _stop(self.process)


@dataclass
class Cron:
    """The periodic-jobs scheduler (the reaper and the sweep), as `make run` starts it."""

    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Cron:
        self.process = _spawn([sys.executable, "manage.py", "rqcron", "backend.uploads.cron"], self.env, self.log)
        return self

    def stop(self) -> None:
        _stop(self.process)


@dataclass
class RedisServer:
    """A redis-server of a test's own, which the test may stop and start again on the same port."""

    directory: Path
    persistent: bool = True
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process, _ = redis_embedded_start(self.directory, port=self.port, persistent=self.persistent)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it with `sig`: SIGTERM lets it write its files, SIGKILL does not."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    except ProcessLookupError:
        pass
