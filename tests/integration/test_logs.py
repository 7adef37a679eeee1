"""Logs of the real server and worker processes with LOG_FORMAT=json: every line one JSON object,
and every line about an upload carrying its id, from our code, RQ's worker and uvicorn alike."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from backend.uploads.models import FileUpload, UploadStatus
from tests.support.client import UPLOAD_FIELDS, data_of, error_codes, graphql, upload_file
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
    # No credentials: the contract's answer is 200 with the field's UNAUTHENTICATED (section 4).
    assert (status.status_code, error_codes(status)) == (200, ["UNAUTHENTICATED"]), status.text

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


def test_answers_the_contract_names_are_logged_as_one_line_without_a_traceback(make_stack, api_user) -> None:
    """Malformed ids, unknown uploads, missing credentials and bad documents, over HTTP and over a
    websocket: each is one INFO line with its code on the server, never ERROR, never a traceback."""
    import asyncio
    import uuid

    from tests.support.client import UPLOAD_QUERY, error_codes, subscriber

    stack = make_stack(env={"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}, workers=0)
    for bad_id in range(30):
        assert error_codes(graphql(stack.url, UPLOAD_QUERY, {"id": f"bad-{bad_id}"}, api_user.headers)) == [
            "BAD_USER_INPUT"
        ]
    assert error_codes(graphql(stack.url, UPLOAD_QUERY, {"id": str(uuid.uuid4())}, api_user.headers)) == ["NOT_FOUND"]
    assert error_codes(graphql(stack.url, UPLOAD_QUERY, {"id": str(uuid.uuid4())})) == ["UNAUTHENTICATED"]
    assert error_codes(graphql(stack.url, "{ uploads(", {}, api_user.headers)) == ["GRAPHQL_PARSE_FAILED"]
    assert error_codes(graphql(stack.url, "{ nope }", {}, api_user.headers)) == ["GRAPHQL_VALIDATION_FAILED"]

    async def subscribe_to_a_malformed_id() -> dict[str, Any]:
        async with subscriber(stack.ws_url, api_user.token) as sub:
            await sub.subscribe("not-an-id")
            return await asyncio.wait_for(sub.receive(), 30)

    answer = asyncio.run(subscribe_to_a_malformed_id())
    assert answer["type"] == "next" and answer["payload"]["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", answer

    def coded_lines() -> list[dict[str, Any]]:
        return [r for r in _lines(stack.root / "server.log") if r["message"].startswith("GraphQL error ")]

    def error_lines() -> list[dict[str, Any]]:
        return [
            r for r in _lines(stack.root / "server.log") if r["logger"] in ("schema.errors", "strawberry.execution")
        ]

    wait_until(lambda: len(error_lines()) >= 35, timeout=10, what="the server's log lines for the errors")
    records = _lines(stack.root / "server.log")
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], records
    assert not [r for r in records if "Traceback" in json.dumps(r) or r.get("exc_info")], records
    codes = [r["message"].split()[2] for r in coded_lines()]
    assert codes.count("BAD_USER_INPUT") == 31 and {"NOT_FOUND", "UNAUTHENTICATED"} <= set(codes), codes
    assert {"GRAPHQL_PARSE_FAILED", "GRAPHQL_VALIDATION_FAILED"} <= set(codes), codes
    assert {r["level"] for r in coded_lines()} == {"INFO"}
