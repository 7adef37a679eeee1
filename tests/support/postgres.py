"""A private PostgreSQL server for a test session: `initdb` in a temporary directory, a free port.

Never a server that happens to run on the machine. `initdb` and `postgres` refuse to run as root,
and CI runs as root: then every server command runs as the `postgres` system user (`runuser`), on a
directory that user owns. The cluster trades durability for speed (no fsync); it is thrown away.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from backend.stack import free_port

SERVER_USER = "postgres"


def postgres_bindir() -> Path:
    """The directory of `initdb`, `pg_ctl` and `postgres`: PATH first, else Debian's newest version."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)],
    )
    if not versions:
        raise RuntimeError("no PostgreSQL server binaries (initdb): install them, e.g. apt-get install postgresql")
    return versions[-1]


@dataclass
class PostgresCluster:
    root: Path
    port: int
    bindir: Path
    run_as: list[str]

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self.run_as, *args], cwd=self.root, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stdout}{result.stderr}")

    def database_create(self, name: str) -> str:
        """A new empty database on this cluster; its URL (the superuser, trust authentication)."""
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def database_copy(self, *, source: str, name: str) -> str:
        """A new database copied from `source` (which no one may be connected to); its URL."""
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as c:
            c.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def postgres_start() -> PostgresCluster:
    """initdb a new cluster under a fresh temporary directory and start it on 127.0.0.1:<free port>."""
    bindir = postgres_bindir()
    # Outside the session's own temporary directory: that one is private to the current user.
    root = Path(tempfile.mkdtemp(prefix="upload-tests-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, user=SERVER_USER, group=SERVER_USER)
        run_as = ["runuser", "-u", SERVER_USER, "--"]
    cluster = PostgresCluster(root=root, port=free_port(), bindir=bindir, run_as=run_as)
    cluster._run(
        str(bindir / "initdb"),
        "-D",
        str(cluster.data),
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--no-locale",
        "--no-sync",
    )
    options = " ".join(
        [
            f"-p {cluster.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={root}",
            # Many processes at once (servers, workers, their part threads), each connection short-lived.
            "-c max_connections=300",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
        ]
    )
    log = root / "postgres.log"
    try:
        cluster._run(str(bindir / "pg_ctl"), "-D", str(cluster.data), "-l", str(log), "-o", options, "-w", "start")
    except RuntimeError as exc:
        server_log = log.read_text() if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"{exc}\n{server_log}") from None
    return cluster
