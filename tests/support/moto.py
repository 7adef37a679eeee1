"""A moto S3 server in its own process, speaking real HTTP: for the S3 tests and the benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx

from backend.stack import free_port
from backend.uploads.storage.s3_client import s3_client_create
from tests.support.processes import ROOT, wait_until


@dataclass
class Moto:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, **credentials: str) -> Any:
        session = boto3.session.Session(
            aws_access_key_id=credentials.get("key", "test"), aws_secret_access_key=credentials.get("secret", "test")
        )
        return s3_client_create(endpoint_url=self.url, region="us-east-1", session=session)


def moto_start(root: Path, name: str, env: dict[str, str] | None = None) -> Moto:
    """A moto S3 server in a process of its own on a free port; its output goes to `<root>/<name>.log`."""
    port = free_port()
    log = root / f"{name}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"moto exited with {process.returncode}; see {log}")
        try:
            return httpx.get(f"{url}/moto-api/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=30, what=f"moto server on {url}")
    return Moto(url=url, process=process, log=log)


def moto_stop(moto: Moto) -> None:
    moto.process.terminate()
    try:
        moto.process.wait(10)
    except subprocess.TimeoutExpired:
        moto.process.kill()
        moto.process.wait(10)
