"""The command-line client end to end: `python -m backend.client` as a real subprocess against a
real server, real RQ workers and Redis; its stdout is a pipe, so it prints plain lines."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from backend.client.api import UPLOAD_FIELDS
from backend.stack import free_port
from backend.uploads.models import FileUpload
from tests.support.client import data_of, upload_file
from tests.support.processes import wait_until
from tests.support.uploads import Gate

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
# A transfer held at a gate after the last byte: without pipelining (UPLOAD_PIPELINE), whose run
# would reach the gate while the bytes still arrive, before the upload is UPLOADING.
ONE_PART_AT_A_TIME = {"UPLOAD_PART_CONCURRENCY": "1", "UPLOAD_PIPELINE": "false"}


def cli_env(extra: dict[str, str] | None = None, *, cwd: Path | None = None) -> dict[str, str]:
    """The client's environment; its place store (resumable uploads) beside `cwd`, never the user's cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("UPLOAD_URL", "UPLOAD_TOKEN")}
    cache = {"XDG_CACHE_HOME": str(cache_of(cwd))} if cwd is not None else {}
    return {**env, "PYTHONPATH": str(ROOT), **cache, **(extra or {})}


def cache_of(cwd: Path) -> Path:
    return cwd.with_name(f"{cwd.name}-cache")


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the client to the end; cwd is the test's own directory (no var/dev-credentials there)."""
    return subprocess.run(
        [sys.executable, "-m", "backend.client", *args],
        cwd=cwd,
        env=cli_env(env, cwd=cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_file(directory: Path, name: str, size: int) -> tuple[Path, bytes]:
    content = os.urandom(size)
    path = directory / name
    path.write_bytes(content)
    return path, content


def status_of(upload_id: str) -> str:
    return FileUpload.objects.get(id=upload_id).status


class Running:
    """A client process whose stdout and stderr are read as they come, to react to what it says."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "backend.client", *args],
            cwd=cwd,
            env=cli_env(cwd=cwd),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.out = {"stdout": bytearray(), "stderr": bytearray()}
        self.readers = [
            threading.Thread(target=self._read, args=(name, getattr(self.process, name)), daemon=True)
            for name in self.out
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, name: str, stream: Any) -> None:
        while chunk := os.read(stream.fileno(), 4096):
            self.out[name].extend(chunk)

    def text(self, name: str) -> str:
        return bytes(self.out[name]).decode()

    def wait_for(self, name: str, text: str, after: int = 0) -> int:
        """Wait until `text` shows on stream `name` past offset `after`; the offset after it."""

        def seen() -> int:
            if self.process.poll() is not None and text not in self.text(name)[after:]:
                raise AssertionError(f"client exited with {self.process.returncode}: {self.out}")
            found = self.text(name).find(text, after)
            return found + len(text) if found >= 0 else 0

        return wait_until(seen, timeout=30, what=f"{text!r} on {name}: {self.out}")

    def answer(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode())
        self.process.stdin.flush()

    def finish(self) -> int:
        code = self.process.wait(60)
        for reader in self.readers:
            reader.join(10)
        return code


def test_upload_two_files_json_and_plain_lines_with_options_after_the_command(stack, api_user, tmp_path) -> None:
    first, first_bytes = write_file(tmp_path, "first.bin", 2 * MIB + 4321)
    second, second_bytes = write_file(tmp_path, "second.bin", 700_000)

    result = cli(
        "--url", stack.url, "--token", api_user.token, "--json", "upload", str(first), str(second), cwd=tmp_path
    )

    assert result.returncode == 0, result
    document = json.loads(result.stdout)
    assert document["errors"] == []
    uploads = document["uploads"]
    assert [u["filename"] for u in uploads] == ["first.bin", "second.bin"]
    assert [u["status"] for u in uploads] == ["COMPLETED", "COMPLETED"]
    assert [u["sha256"] for u in uploads] == [hashlib.sha256(b).hexdigest() for b in (first_bytes, second_bytes)]
    assert [(u["size"], u["bytesUploaded"], u["partsUploaded"]) for u in uploads] == [
        (len(first_bytes), len(first_bytes), 3),
        (len(second_bytes), len(second_bytes), 1),
    ]
    assert all(set(u) == set(UPLOAD_FIELDS) and u["downloadUrl"] for u in uploads)
    assert [status_of(u["id"]) for u in uploads] == ["COMPLETED", "COMPLETED"]

    # The common options after COMMAND, and plain progress lines since stdout is not a terminal.
    result = cli("upload", str(first), "--url", stack.url, "--token", api_user.token, cwd=tmp_path)
    assert result.returncode == 0, result
    # Accepted once the last byte is in: QUEUED, or already further on (the parts sent while the
    # bytes arrived leave little to do, and the pipeline run takes the transfer over at once).
    assert re.search(r"first\.bin: (QUEUED|UPLOADING|COMPLETED) as ", result.stdout), result.stdout
    assert "first.bin: COMPLETED 3/3 parts 100%" in result.stdout
    assert "\x1b[" not in result.stdout  # no terminal control sequences on a pipe


def test_failing_upload_exits_1_and_shows_the_error_then_retry(make_stack, api_user, tmp_path) -> None:
    failing = make_stack(faults={"always_fail_part": 1}, env={"UPLOAD_PART_RETRIES": "2"})
    path, _ = write_file(tmp_path, "doomed.bin", MIB + 10)

    result = cli("upload", str(path), "--json", "--url", failing.url, "--token", api_user.token, cwd=tmp_path)

    assert result.returncode == 1, result
    (upload,) = json.loads(result.stdout)["uploads"]
    assert upload["status"] == "FAILED"
    assert "injected permanent failure of part 1" in upload["error"]
    assert f"FAILED: {path} ({upload['id']}): " in result.stderr
    assert "injected permanent failure of part 1" in result.stderr

    retried = cli("retry", upload["id"], "--json", "--url", failing.url, "--token", api_user.token, cwd=tmp_path)
    assert retried.returncode == 0, retried
    assert json.loads(retried.stdout)["status"] == "QUEUED"
    wait_until(lambda: status_of(upload["id"]) == "FAILED", what="the retried upload to fail again")
    status = cli("status", upload["id"], "--url", failing.url, "--token", api_user.token, cwd=tmp_path)
    assert status.returncode == 0, status
    assert "status          FAILED" in status.stdout
    assert "attempts        2" in status.stdout


def test_refused_files_do_not_stop_the_others(make_stack, api_user, tmp_path) -> None:
    small_limit = make_stack(env={"UPLOAD_MAX_BYTES": str(MIB)})
    # Over the limit, far or by a little: refused from Upload-Length, before a byte is sent.
    huge, _ = write_file(tmp_path, "huge.bin", 24 * MIB)
    big, _ = write_file(tmp_path, "big.bin", MIB + 300_000)
    small, _ = write_file(tmp_path, "small.bin", 1000)
    auth = ["--url", small_limit.url, "--token", api_user.token]

    result = cli("upload", str(huge), str(big), str(small), "--json", *auth, cwd=tmp_path)

    assert result.returncode == 1, result
    document = json.loads(result.stdout)
    assert [(u["filename"], u["status"]) for u in document["uploads"]] == [("small.bin", "COMPLETED")], result
    errors = {e["file"]: e["code"] for e in document["errors"]}
    assert errors[str(huge)] == "FILE_TOO_LARGE", result
    assert errors[str(big)] == "FILE_TOO_LARGE"
    assert len(errors) == 2
    assert f"FILE_TOO_LARGE: {big}: " in result.stderr
    assert not FileUpload.objects.filter(owner=api_user.user).exclude(filename="small.bin").exists()


def test_status_list_download_delete(stack, api_user, tmp_path) -> None:
    (tmp_path / "src").mkdir()
    path, content = write_file(tmp_path / "src", "photo.bin", MIB + 99)
    auth = ["--url", stack.url, "--token", api_user.token]
    uploaded = cli(*auth, "--json", "upload", str(path), cwd=tmp_path)
    assert uploaded.returncode == 0, uploaded
    upload_id = json.loads(uploaded.stdout)["uploads"][0]["id"]

    status = cli(*auth, "--json", "status", upload_id, cwd=tmp_path)
    assert status.returncode == 0, status
    assert json.loads(status.stdout)["status"] == "COMPLETED"
    human = cli("status", upload_id, *auth, cwd=tmp_path)
    assert f"id              {upload_id}" in human.stdout
    assert "size            1048675 (1.0 MiB)" in human.stdout
    # A reader that goes away (`| head`) ends the client quietly, with no error about its own output.
    piped = subprocess.Popen(
        [sys.executable, "-m", "backend.client", "status", upload_id, *auth],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert piped.stdout is not None and piped.stderr is not None
    piped.stdout.close()
    assert (piped.wait(60), piped.stderr.read()) == (1, "")

    listed = cli("list", "--json", *auth, cwd=tmp_path)
    assert listed.returncode == 0, listed
    uploads = json.loads(listed.stdout)
    assert [u["id"] for u in uploads] == [upload_id]  # this user's uploads only
    assert set(uploads[0]) == set(UPLOAD_FIELDS)
    assert json.loads(cli("list", "--json", "--status", "FAILED", *auth, cwd=tmp_path).stdout) == []
    table = cli("list", *auth, cwd=tmp_path)
    assert table.stdout.split("\t")[:2] == [upload_id, "COMPLETED"]

    downloaded = cli("download", upload_id, *auth, cwd=tmp_path)
    assert downloaded.returncode == 0, downloaded
    assert (tmp_path / "photo.bin").read_bytes() == content
    again = cli("download", upload_id, *auth, cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.startswith("FILE_EXISTS: ")
    elsewhere = cli("download", upload_id, "-o", str(tmp_path / "copy"), *auth, cwd=tmp_path)
    assert elsewhere.returncode == 0, elsewhere
    assert (tmp_path / "copy").read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "photo.bin", "src"]  # no partial files left

    deleted = cli("delete", upload_id, *auth, cwd=tmp_path)
    assert deleted.returncode == 0, deleted
    assert not FileUpload.objects.filter(id=upload_id).exists()
    gone = cli("status", upload_id, *auth, cwd=tmp_path)
    assert gone.returncode == 1
    assert gone.stderr.startswith("NOT_FOUND: ")
    malformed = cli("cancel", "not-a-uuid", *auth, cwd=tmp_path)
    assert (malformed.returncode, malformed.stderr.split(":")[0]) == (1, "BAD_USER_INPUT")


def test_cancel_and_retry_an_upload_in_flight(make_stack, api_user, tmp_path) -> None:
    # The worker waits at part 2 until the cancel is in: the CLI's start-up time cannot race it.
    gate = Gate(tmp_path / "gate", part=2)
    slow = make_stack(env={"UPLOAD_PART_CONCURRENCY": "1"}, faults=gate.plan)
    auth = ["--url", slow.url, "--token", api_user.token]
    upload = data_of(upload_file(slow.url, os.urandom(4 * MIB), headers=api_user.headers))["uploadFile"]
    gate.reached()
    assert status_of(upload["id"]) == "UPLOADING"

    cancelled = cli("cancel", upload["id"], "--json", *auth, cwd=tmp_path)
    gate.open()
    assert cancelled.returncode == 0, cancelled
    assert json.loads(cancelled.stdout)["status"] == "CANCELLED"
    again = cli("cancel", upload["id"], *auth, cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.startswith("INVALID_STATE: ")
    not_yet = cli("download", upload["id"], *auth, cwd=tmp_path)
    assert (not_yet.returncode, not_yet.stderr.split(":")[0]) == (1, "INVALID_STATE")

    retried = cli("retry", upload["id"], *auth, cwd=tmp_path)
    assert retried.returncode == 0, retried
    assert retried.stdout.startswith(f"{upload['id']}  QUEUED 0/4 parts 0%")
    wait_until(lambda: status_of(upload["id"]) == "COMPLETED", what="the retried upload to complete")


def test_ctrl_c_asks_and_cancels_only_when_told(make_stack, api_user, tmp_path) -> None:
    # The worker holds part 2 through the whole conversation: the upload cannot end before the cancel.
    gate = Gate(tmp_path / "gate", part=2)
    slow = make_stack(env=ONE_PART_AT_A_TIME, faults=gate.plan)
    path, _ = write_file(tmp_path, "big.bin", 12 * MIB)
    client = Running(["upload", str(path), "--url", slow.url, "--token", api_user.token], cwd=tmp_path)
    gate.reached()
    client.wait_for("stdout", "big.bin: UPLOADING")

    client.process.send_signal(signal.SIGINT)
    seen = client.wait_for("stderr", "Cancel 1 upload(s) in flight? [y/N] ")
    client.answer("n\n")
    seen = client.wait_for("stderr", "continuing", after=seen)
    upload_id = str(FileUpload.objects.get(owner=api_user.user).id)
    assert status_of(upload_id) == "UPLOADING"

    client.process.send_signal(signal.SIGINT)
    client.wait_for("stderr", "Cancel 1 upload(s) in flight? [y/N] ", after=seen)
    client.answer("y\n")

    try:
        assert client.finish() == 1, client.out
    finally:
        gate.open()
    assert status_of(upload_id) == "CANCELLED"
    assert f"CANCELLED: {path} ({upload_id})" in client.text("stderr")
    assert "big.bin: CANCELLED" in client.text("stdout")


def test_progress_survives_a_server_restart(make_stack, api_user, tmp_path) -> None:
    # The worker holds part 2 until the server is down and up again: the restart lands mid-transfer.
    gate = Gate(tmp_path / "gate", part=2)
    slow = make_stack(env=ONE_PART_AT_A_TIME, faults=gate.plan)
    path, _ = write_file(tmp_path, "long.bin", 8 * MIB)
    client = Running(["upload", str(path), "--url", slow.url, "--token", api_user.token], cwd=tmp_path)
    gate.reached()
    client.wait_for("stdout", "long.bin: UPLOADING")

    # The websocket drops with the server; the client reconnects.
    slow.server.stop()
    upload = FileUpload.objects.get(owner=api_user.user)
    assert upload.status == "UPLOADING"
    slow.server.start()  # the same port, and still the stack's: its teardown stops it
    gate.open()

    assert client.finish() == 0, client.out
    # Only a progress event says this: the stream was followed again after the restart.
    assert "long.bin: COMPLETED 8/8 parts 100%" in client.text("stdout")
    assert f"{path}: COMPLETED as {upload.id}" in client.text("stdout")


def test_credentials_errors_and_sources(stack, api_user, tmp_path) -> None:
    name = f"{uuid.uuid4().hex}.bin"  # nobody else's upload has this name
    path, _ = write_file(tmp_path, name, 1000)

    # A token may start with "-" (URL-safe base64): it is still the value of --token.
    bad = cli("--url", stack.url, "--token", "-not-a-real-token-0123456789abcdefgh", "upload", str(path), cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.startswith("UNAUTHENTICATED: ")
    assert not FileUpload.objects.filter(filename=name).exists()
    none = cli("--url", stack.url, "list", cwd=tmp_path)
    assert none.returncode == 1
    assert none.stderr.startswith("UNAUTHENTICATED: ")
    assert "HINT: no token" in none.stderr

    from_env = cli(
        "upload", str(path), "--json", cwd=tmp_path, env={"UPLOAD_URL": stack.url, "UPLOAD_TOKEN": api_user.token}
    )
    assert from_env.returncode == 0, from_env
    assert json.loads(from_env.stdout)["uploads"][0]["status"] == "COMPLETED"

    # `make run`'s development credentials, for a server on this machine, when no token is given.
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "dev-credentials").write_text(
        json.dumps({"username": "dev", "password": "x", "token": api_user.token})
    )
    dev = cli("list", "--json", cwd=tmp_path, env={"UPLOAD_URL": stack.url})
    assert dev.returncode == 0, dev
    assert [u["filename"] for u in json.loads(dev.stdout)] == [name]


def test_usage_and_connection_errors(tmp_path) -> None:
    assert cli(cwd=tmp_path).returncode == 2
    assert cli("status", cwd=tmp_path).returncode == 2
    missing = cli("--url", "http://127.0.0.1:1", "--token", "t", "upload", str(tmp_path / "nope.bin"), cwd=tmp_path)
    assert missing.returncode == 2
    assert "nope.bin: not a readable file" in missing.stderr
    nobody = cli("--url", f"http://127.0.0.1:{free_port()}", "--token", "t", "list", cwd=tmp_path)
    assert nobody.returncode == 1
    assert nobody.stderr.startswith("CONNECTION_FAILED: ")
    assert "Traceback" not in nobody.stderr
    help_text = cli("--help", cwd=tmp_path).stdout
    assert "UPLOAD_URL" in help_text and "UPLOAD_TOKEN" in help_text and "dev-credentials" in help_text
