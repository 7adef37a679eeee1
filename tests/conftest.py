"""Test session set-up: a private Redis and database, and factories for real processes.

Everything the suite needs is started here, on free ports under a temporary directory; nothing
running on the machine is used. The database is a SQLite file, or with `TEST_DATABASE=postgres`
(`make test-postgres`) a fresh database on a private PostgreSQL cluster started for the session.
The shared `stack` and the module stacks use the session's database, as the test process does (it
makes the users and tokens the servers check, and reads the rows the workers write). A test that
makes stacks of its own (`make_stack`) gets a database of its own for the test and its stacks, a
copy of the freshly migrated one (`_test_database`): no other test's rows are there, so no stack's
reaper ever adopts another test's uploads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from backend.stack import redis_embedded_start

_SESSION: dict[str, Any] = {}
# Each stack gets a Redis database of its own (its queue and counters); the suite makes a few hundred.
REDIS_DATABASES = 1024
_REDIS_DBS = iter(range(1, REDIS_DATABASES))


def _xdist_controller(config: pytest.Config) -> bool:
    """True in the process that only hands tests to pytest-xdist's workers (`-n N`): each worker
    sets up a Redis, a database and a root of its own, the controller none."""
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    if "DJANGO_SETTINGS_MODULE" in _SESSION or _xdist_controller(config):
        return
    root = Path(tempfile.mkdtemp(prefix="upload-tests-"))
    database = os.environ.get("TEST_DATABASE", "sqlite")
    if database not in ("sqlite", "postgres"):
        raise pytest.UsageError(f"TEST_DATABASE must be sqlite or postgres, not {database!r}")
    redis_process, redis_url = redis_embedded_start(root / "redis", databases=REDIS_DATABASES, persistent=False)
    _SESSION.update(root=root, redis=redis_process)
    base = redis_url.rsplit("/", 1)[0]
    database_url = f"sqlite:///{root / 'db.sqlite3'}"
    if database == "postgres":
        from tests.support.postgres import postgres_start

        _SESSION["postgres"] = cluster = postgres_start()
        database_url = cluster.database_create("uploads_tests")
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "backend.settings",
            "REDIS_URL": f"{base}/0",
            "DATABASE_URL": database_url,
            "UPLOAD_STAGING_DIR": str(root / "staging"),
            "LOCAL_STORAGE_ROOT": str(root / "bucket"),
            "UPLOAD_STAGING_MIN_FREE_BYTES": "0",
            "UPLOAD_PART_SIZE": str(1024 * 1024),
            "UPLOAD_HEARTBEAT_SECONDS": "1",
            "PROGRESS_RESYNC_SECONDS": "2",
            "UPLOAD_MAX_ACTIVE_PER_USER": "100",
            "DEBUG": "true",
            "LOG_LEVEL": "WARNING",
        }
    )
    _SESSION.update(redis_base=base, DJANGO_SETTINGS_MODULE=True)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)
    _database_template_make(database)


def _database_template_make(database: str) -> None:
    """Keep the migrated, still empty database as the template each test database is copied from."""
    from django.db import connections

    connections.close_all()
    if database == "postgres":
        url = _SESSION["postgres"].database_copy(source="uploads_tests", name="uploads_template")
        _SESSION["database_template"] = url
    else:
        template = Path(_SESSION["root"]) / "template.sqlite3"
        shutil.copyfile(Path(_SESSION["root"]) / "db.sqlite3", template)
        _SESSION["database_template"] = template
    _SESSION["database"] = database


_DATABASE_NUMBERS = iter(range(1, 100_000))


def _close_this_threads_connection() -> None:
    """Close this thread's default connection; none is in use where an event loop runs on the thread.

    Playwright's sync API (tests/browser) keeps a loop running on the test's thread, where Django
    refuses even a close (SynchronousOnlyOperation); the browser tests reach the database from
    threads of their own (`off_the_loop`), which open connections to whatever database is current.
    """
    from django.core.exceptions import SynchronousOnlyOperation
    from django.db import connections

    with suppress(SynchronousOnlyOperation):
        connections["default"].close()


@contextmanager
def _database_of_its_own() -> Iterator[str]:
    """Point this process (and, through DATABASE_URL, the stacks made meanwhile) at a fresh copy of the template."""
    from django.conf import settings
    from django.db import connections

    number = next(_DATABASE_NUMBERS)
    if _SESSION["database"] == "postgres":
        name = f"uploads_test_{number}"
        url = _SESSION["postgres"].database_copy(source="uploads_template", name=name)
    else:
        path = Path(_SESSION["root"]) / f"db-{number}.sqlite3"
        shutil.copyfile(_SESSION["database_template"], path)
        name, url = str(path), f"sqlite:///{path}"
    saved_url, saved_name = os.environ["DATABASE_URL"], settings.DATABASES["default"]["NAME"]
    _close_this_threads_connection()
    os.environ["DATABASE_URL"] = url
    settings.DATABASES["default"]["NAME"] = connections["default"].settings_dict["NAME"] = name
    try:
        yield url
    finally:
        _close_this_threads_connection()
        os.environ["DATABASE_URL"] = saved_url
        settings.DATABASES["default"]["NAME"] = connections["default"].settings_dict["NAME"] = saved_name


@pytest.fixture(autouse=True)
def _test_database(request: pytest.FixtureRequest) -> Iterator[None]:
    """A database of its own for each test that makes its own stacks (see the module docstring)."""
    if "make_stack" not in request.fixturenames:
        yield
        return
    for shared in ("stack", "target"):
        if shared in request.fixturenames:
            request.getfixturevalue(shared)  # made on the session's database, before the switch
    with _database_of_its_own():
        yield


def pytest_unconfigure(config: pytest.Config) -> None:
    if _xdist_controller(config):
        return
    redis_process = _SESSION.get("redis")
    if redis_process is not None:
        redis_process.terminate()
        redis_process.wait(10)
    cluster = _SESSION.get("postgres")
    if cluster is not None:
        from django.db import connections

        connections.close_all()
        cluster.stop()
    _leftover_processes_stop()
    root = _SESSION.get("root")
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


def _leftover_processes_stop() -> None:
    """Stop servers, workers or schedulers a test forgot, so none outlives the run; name them."""
    import psutil

    leftovers = psutil.Process().children(recursive=True)
    for process in leftovers:
        try:
            print(f"\nleft running by a test, now killed: {' '.join(process.cmdline())[:160]}")
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(leftovers, timeout=10)


@pytest.fixture(scope="session")
def session_root() -> Path:
    return Path(_SESSION["root"])


# --- users ------------------------------------------------------------------------------------


@dataclass
class ApiUser:
    username: str
    token: str
    user: Any

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def make_user() -> Callable[[], ApiUser]:
    from backend.tokens.services import token_create, user_get_or_create

    def make(username: str | None = None) -> ApiUser:
        name = username or f"user-{uuid.uuid4().hex[:10]}"
        user = user_get_or_create(username=name, create=True)
        return ApiUser(username=name, token=token_create(user=user), user=user)

    return make


@pytest.fixture
def api_user(make_user: Callable[[], ApiUser]) -> ApiUser:
    return make_user()


# --- real processes ---------------------------------------------------------------------------


@dataclass
class Stack:
    """A server and workers sharing one Redis database (its queue) with nobody else."""

    env: dict[str, str]
    root: Path
    server: Any = None
    servers: list[Any] = field(default_factory=list)
    workers: list[Any] = field(default_factory=list)
    cron: Any = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.ws_url

    def add_worker(self, faults: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Any:
        from tests.support.processes import Worker

        index = len(self.workers)
        worker = Worker(env={**self.env, **(env or {})}, log=self.root / f"worker-{index}.log", faults=faults).start()
        self.workers.append(worker)
        return worker

    def add_server(self) -> Any:
        """One more server on the same database, Redis and staging: a scaled-out web tier."""
        from tests.support.processes import Server

        server = Server(env=self.env, log=self.root / f"server-{len(self.servers)}.log").start()
        self.servers.append(server)
        return server

    def add_worker_pool(self, workers: int) -> Any:
        """`rqworker-pool` with `workers` UploadWorkers, as `make run` starts them (no fault hooks)."""
        from tests.support.processes import WORKER_POOL, Worker

        command = [*WORKER_POOL, "--num-workers", str(workers)]
        pool = Worker(env=self.env, log=self.root / f"worker-{len(self.workers)}.log", command=command).start()
        self.workers.append(pool)
        return pool

    def add_webhook_worker(self, workers: int = 1, env: dict[str, str] | None = None) -> Any:
        """The webhook workers as `make run` starts them: a pool on the `webhooks` queue, with RQ's scheduler."""
        from backend.stack import webhook_pool_command
        from tests.support.processes import Worker

        log = self.root / f"webhook-worker-{len(self.workers)}.log"
        pool = Worker(env={**self.env, **(env or {})}, log=log, command=webhook_pool_command(workers)).start()
        self.workers.append(pool)
        return pool

    def start_cron(self) -> Any:
        """Run the periodic-jobs scheduler (reaper, sweep) for this stack."""
        from tests.support.processes import Cron

        self.cron = Cron(env=self.env, log=self.root / "cron.log").start()
        return self.cron

    def stop(self) -> None:
        if self.cron is not None:
            self.cron.stop()
        for worker in self.workers:
            worker.stop()
        for server in self.servers:
            server.stop()


def _new_stack(
    session_root: Path,
    *,
    env: dict[str, str] | None,
    workers: int,
    faults: dict[str, Any] | None,
    server: str,
    redis_url: str | None = None,
) -> Stack:
    from tests.support.processes import Server

    db = next(_REDIS_DBS)
    root = session_root / f"stack-{db}"
    root.mkdir()
    stack_env = {**os.environ, "REDIS_URL": redis_url or f"{_SESSION['redis_base']}/{db}", **(env or {})}
    stack = Stack(env=stack_env, root=root)
    stack.server = Server(env=stack_env, log=root / "server.log", server=server).start()
    stack.servers.append(stack.server)
    for _ in range(workers):
        stack.add_worker(faults=faults)
    return stack


@pytest.fixture(scope="session")
def stack(session_root: Path) -> Iterator[Stack]:
    """The shared default stack: one server, two workers, default settings."""
    shared = _new_stack(session_root, env=None, workers=2, faults=None, server="uvicorn")
    yield shared
    shared.stop()


@pytest.fixture
def make_stack(session_root: Path) -> Iterator[Callable[..., Stack]]:
    """A private stack with its own settings, workers and storage faults; stopped after the test.

    `redis_url` gives it a Redis of its own (a test that stops Redis must not stop everyone's).
    """
    made: list[Stack] = []

    def make(
        env: dict[str, str] | None = None,
        workers: int = 1,
        faults: dict[str, Any] | None = None,
        server: str = "uvicorn",
        redis_url: str | None = None,
    ) -> Stack:
        new = _new_stack(session_root, env=env, workers=workers, faults=faults, server=server, redis_url=redis_url)
        made.append(new)
        return new

    yield make
    for each in made:
        each.stop()
