"""Logs of the real server and worker processes with LOG_FORMAT=json: every line one JSON object,
and every line about an upload carrying its id, from our code, RQ's worker and uvicorn alike."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from backend.uploads.models import FileUpload, UploadStatus
from tests.support.client import UPLOAD_FIELDS, data_of, graphql, upload_file
from tests.support.processes import wait_until

MIB = 1024 * 1024


def _lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a process's output, each parsed as one JSON object (fails on any other line)."""
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        records.append(record)
    return records


def _about(records: list[dict[str, Any]], upload_id: str) -> list[dict[str, Any]]:
    return [r for r in records if upload_id in r["message"] or r.get("upload_id") == upload_id]


def test_json_logs_put_the_upload_id_on_every_line_about_it(make_stack, api_user) -> None:
    # Part 2 fails once: the engine logs the retry from a part thread.
    stack = make_stack(env={"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}, faults={"fail_part": {"2": 1}})
    worker_log = stack.root / "worker-0.log"
    kept = data_of(upload_file(stack.url, os.urandom(3 * MIB), headers=api_user.headers))["uploadFile"]["id"]
    wait_until(lambda: FileUpload.objects.get(id=kept).status == UploadStatus.COMPLETED, what="completion")
    wait_until(
        lambda: any(r.get("upload_id") == kept and "Job OK" in r["message"] for r in _lines(worker_log)),
        what="RQ's Job OK line",
    )
    gone = data_of(upload_file(stack.url, b"short-lived", headers=api_user.headers))["uploadFile"]["id"]
    deleted = graphql(stack.url, "mutation($id: ID!) { deleteUpload(id: $id) }", {"id": gone}, api_user.headers)
    assert data_of(deleted) == {"deleteUpload": True}
    status = graphql(stack.url, f"query($id: ID!) {{ upload(id: $id) {{ {UPLOAD_FIELDS} }} }}", {"id": kept})
    assert status.status_code == 200

    server = _lines(stack.root / "server.log")
    worker = _lines(worker_log)
    for records in (server, worker):
        for upload_id in (kept, gone):
            for record in _about(records, upload_id):
                assert record.get("upload_id") == upload_id, record

    def has(records: list[dict[str, Any]], upload_id: str, logger: str, text: str) -> bool:
        return any(r.get("upload_id") == upload_id and r["logger"] == logger and text in r["message"] for r in records)

    # The web: the service that created it, and the delete mutation.
    assert has(server, kept, "backend.uploads.services", "accepted")
    assert has(server, gone, "backend.uploads.services", "deleted")
    # uvicorn's access log goes through the same JSON formatter.
    assert any(r["logger"] == "uvicorn.access" and "POST /graphql" in r["message"] for r in server)
    # The job: RQ's worker taking it, our job body, a part thread, RQ's Job OK.
    assert has(worker, kept, "rq.worker", "upload_transfer")
    assert has(worker, kept, "backend.uploads.transfer", "part 2 attempt 1 failed")
    assert has(worker, kept, "backend.uploads.services", "completed")
