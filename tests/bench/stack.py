"""Everything a benchmark runs against, started by the benchmark itself.

One private temporary directory (SQLite database, staging, bucket, the bare view's files, test
files), one private redis-server, a migrated database and a user with a token. `Bench.stack()`
starts a server (uvicorn or daphne) and RQ workers on a Redis database of their own, so each
figure's queue is private. Nothing already running on the machine is used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.stack import redis_embedded_start
from tests.support.processes import ROOT, Server, Worker

MiB = 1024 * 1024


@dataclass
class Stack:
    """A server and workers sharing one Redis database with nobody else."""

    env: dict[str, str]
    root: Path
    server: Server
    workers: list[Worker] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.ws_url

    @property
    def server_pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.server.stop()


# Each stack gets a Redis database of its own; a whole `make bench` makes a few dozen stacks.
BENCH_DATABASES = 256


class Bench:
    """The private environment of one `make bench` run; use as a context manager."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="upload-bench-"))
        self.redis_process: subprocess.Popen[bytes] | None = None
        self.redis_base = ""
        self.env: dict[str, str] = {}
        self._next_db = iter(range(1, BENCH_DATABASES))
        self._files: dict[int, Path] = {}
        self.token = ""
        self.user: Any = None

    def __enter__(self) -> Bench:
        self.redis_process, redis_url = redis_embedded_start(self.root / "redis", databases=BENCH_DATABASES)
        self.redis_base = redis_url.rsplit("/", 1)[0]
        (self.root / "bare").mkdir()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.bench.settings",
            # Database 0 belongs to this process (no worker listens to it).
            "REDIS_URL": f"{self.redis_base}/0",
            "DATABASE_URL": f"sqlite:///{self.root / 'db.sqlite3'}",
            "UPLOAD_STAGING_DIR": str(self.root / "staging"),
            "LOCAL_STORAGE_ROOT": str(self.root / "bucket"),
            "BENCH_BARE_DIR": str(self.root / "bare"),
            "UPLOAD_STAGING_MIN_FREE_BYTES": "0",
            "UPLOAD_MAX_ACTIVE_PER_USER": "100000",
            "DEBUG": "false",
            "SECRET_KEY": "benchmark-only-secret-key-" + os.urandom(16).hex(),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "LOG_LEVEL": "WARNING",
        }
        os.environ.update(self.env)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=self.env, check=True
        )
        import django

        django.setup()
        from backend.tokens.services import token_create, user_get_or_create

        self.user = user_get_or_create(username="bench", create=True)
        self.token = token_create(user=self.user)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.redis_process is not None:
            self.redis_process.terminate()
            self.redis_process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @contextmanager
    def stack(self, *, env: dict[str, str] | None = None, workers: int = 0, server: str = "uvicorn") -> Iterator[Stack]:
        """A server (and `workers` RQ workers) on a Redis database of its own; stopped on exit."""
        db = next(self._next_db)
        root = self.root / f"stack-{db}"
        root.mkdir()
        stack_env = {**self.env, "REDIS_URL": f"{self.redis_base}/{db}", **(env or {})}
        stack = Stack(env=stack_env, root=root, server=Server(env=stack_env, log=root / "server.log", server=server))
        try:
            stack.server.start()
            for index in range(workers):
                stack.workers.append(Worker(env=stack_env, log=root / f"worker-{index}.log").start())
            yield stack
        finally:
            stack.stop()

    def file(self, size: int) -> Path:
        """A file of `size` random bytes on disk, made once per run (written in 8 MiB pieces).

        Synced before it is used, so the writeback of the new file's dirty pages (up to 512 MiB)
        is not left to happen during the first timed rounds, which would then measure whichever
        side ran beside it (the service's request goes first in each round of upload_answer; in
        one run its first 512 MiB round took 3.1 s against 1.0 and 1.3 s for the next two).
        """
        if size not in self._files:
            path = self.root / "files" / f"{size}.bin"
            path.parent.mkdir(exist_ok=True)
            with path.open("wb") as out:
                left = size
                while left:
                    chunk = min(left, 8 * MiB)
                    out.write(os.urandom(chunk))
                    left -= chunk
                out.flush()
                os.fsync(out.fileno())
            self._files[size] = path
        return self._files[size]

    def clear_bare(self) -> None:
        """Delete what the bare view stored, so runs do not fill the disk."""
        shutil.rmtree(self.root / "bare" / "stored", ignore_errors=True)

    def clear_staging(self) -> None:
        """Delete staged bytes no worker will transfer (figures that run without workers)."""
        staging = self.root / "staging"
        if staging.is_dir():
            for entry in staging.iterdir():
                if entry.is_file():
                    entry.unlink(missing_ok=True)

    def sha256(self, path: Path) -> str:
        digest = hashlib.sha256()
        with path.open("rb") as source:
            while chunk := source.read(8 * MiB):
                digest.update(chunk)
        return digest.hexdigest()

    def transfer_in_process(self, path: Path, *, sha256: str) -> tuple[float, Any]:
        """Run the real transfer job for `path` here, with the storage backend settings name.

        The file is staged as a hard link (staging costs nothing) and accepted with `upload_create`;
        `jobs.upload_transfer` then does everything a worker does (claim, ledger, progress events,
        parts, completion). Returns (seconds the job took, the COMPLETED row).
        """
        from backend.uploads import jobs, services
        from backend.uploads.models import FileUpload, UploadStatus
        from backend.uploads.sniffing import SNIFF_BYTES
        from backend.uploads.staging import INCOMING, StagedFile, staging_dir

        incoming = staging_dir() / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        staged = incoming / f"{uuid.uuid4().hex}.part"
        os.link(path, staged)
        with path.open("rb") as source:
            head = source.read(SNIFF_BYTES)
        size = path.stat().st_size
        file = StagedFile(
            path=staged, name=path.name, size=size, sha256=sha256, head=head, content_type="application/octet-stream"
        )
        upload = services.upload_create(user=self.user, file=file, sha256=None)
        started = time.perf_counter()
        jobs.upload_transfer(str(upload.id))
        elapsed = time.perf_counter() - started
        row = FileUpload.objects.get(id=upload.id)
        if row.status != UploadStatus.COMPLETED:
            raise RuntimeError(f"transfer ended {row.status}: {row.error}")
        return elapsed, row
