"""A real RQ worker for the tests (`python -m tests.support.worker`).

Its test doubles are chosen by settings naming classes by dotted path (tests/support/doubles.py):
with TEST_STORAGE_FAULTS or TEST_STORAGE_LOG the storage backend is wrapped by the fault-injecting
store (STORAGE_WRAPPER), with TEST_DROP_PROGRESS the job publishes through the dropping publisher
(PROGRESS_PUBLISHER). S3 faults on the wire (TEST_S3_FAULTS) are botocore event hooks on the
backend's real client (below).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import django
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError, ReadTimeoutError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")
if os.environ.get("TEST_STORAGE_FAULTS") or os.environ.get("TEST_STORAGE_LOG"):
    os.environ.setdefault("STORAGE_WRAPPER", "tests.support.doubles.FaultyStorage")
if os.environ.get("TEST_DROP_PROGRESS"):
    os.environ.setdefault("PROGRESS_PUBLISHER", "tests.support.doubles.DroppingPublisher")
django.setup()

import django_rq  # noqa: E402

from backend.uploads.storage import get_storage  # noqa: E402
from backend.uploads.worker import UploadWorker  # noqa: E402

# --- S3 faults on the wire --------------------------------------------------------------------
# TEST_S3_FAULTS (JSON) injects faults into the S3 backend's UploadPart requests through botocore
# event hooks on its real client: `before-send.s3.UploadPart` answers a request itself, drops it,
# or changes its body after signing; `after-call.s3.UploadPart` sees each answer. Requests are
# numbered from 1 in each work horse. TEST_S3_LOG gets one JSON line per UploadPart request:
# part, request, pid, thread, start, end (time.time()), fault, status (None when nothing answered).
#   {"every": 5, "kinds": ["500", "reset", "503"]}  requests 1, 6, 11, ... fail, the kinds in turn:
#       "500" / "503"  an S3 error answer (InternalError / SlowDown) in place of sending
#       "404"          S3's NoSuchUpload answer (moto answers an aborted upload's UploadPart with a 500)
#       "reset"        the connection drops before the store sees the request
#       "lost"         the store keeps the part but the answer is lost (dropped after the call)
#       "corrupt"      one byte of the body is flipped after signing (the store sees other bytes)
#   {"requests": {"2": "corrupt", "4": "lost"}}    these requests get these kinds
#   {"status": 403, "parts": [3]}  UploadPart of part 3 (every part without "parts") answers 403
#   {"crash_after": 3}             the work horse dies (os._exit) as soon as the store has confirmed
#                                  3 UploadPart requests, before the ledger hears of the 3rd
#   {"crash_after": 3, "crash_mark": PATH}  the same, and the dying horse creates PATH first: a horse
#                                  that finds PATH at its first request injects nothing at all
#                                  (no fault, no crash), so only the first run meets the plan
#   {"outage_while": PATH, "outage_kind": "503"}  while the file PATH exists, every S3 request
#                                  (any operation) fails: "500"/"503" answers, or "timeout" raises
#                                  botocore's ReadTimeoutError, as a store that never answered
#   "kinds" may also name "timeout" (a read timeout on that request).
# TEST_S3_OPS_LOG gets one JSON line per answered S3 request of any operation, in the order the
# answers came: op (botocore's operation name), part (UploadPart only), status, code (an error
# answer's code), pid. A request that got no answer (a dropped connection) has no line.

_S3_ERROR_ANSWERS = {
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchUpload", "The specified upload does not exist."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


class _AnswerBody:
    """The `raw` of an AWSResponse: a body botocore reads through `stream()`."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self.body


def _s3_error_answer(url: str, status: int) -> AWSResponse:
    code, message = _S3_ERROR_ANSWERS[status]
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>injected</RequestId></Error>"
    ).encode()
    headers = {"Content-Type": "application/xml", "Content-Length": str(len(body))}
    return AWSResponse(url, status, headers, _AnswerBody(body))


def s3_operations_log(storage: Any, log_path: str) -> None:
    """Log every answered S3 request of the backend's client to `log_path` (TEST_S3_OPS_LOG)."""
    lock = threading.Lock()

    def after_call(http_response: Any, parsed: dict[str, Any], model: Any, **kwargs: Any) -> None:
        line: dict[str, Any] = {"op": model.name, "status": http_response.status_code, "pid": os.getpid()}
        if model.name == "UploadPart":
            line["part"] = int(parse_qs(urlsplit(http_response.url).query)["partNumber"][0])
        code = parsed.get("Error", {}).get("Code")
        if code:
            line["code"] = code
        with lock, open(log_path, "a") as log:
            log.write(json.dumps(line) + "\n")

    storage.client.meta.events.register("after-call.s3", after_call)


def s3_faults_install(storage: Any, plan: dict[str, Any], log_path: str | None) -> None:
    """Register the UploadPart hooks `plan` asks for on the S3 backend's client."""
    every = int(plan.get("every", 0))
    kinds = list(plan.get("kinds", ["500"]))
    by_request = {int(n): kind for n, kind in plan.get("requests", {}).items()}
    status = plan.get("status")
    status_parts = {int(n) for n in plan.get("parts", [])}
    crash_after = plan.get("crash_after")
    crash_mark = plan.get("crash_mark")
    outage_flag = plan.get("outage_while")
    outage_kind = str(plan.get("outage_kind", "503"))
    lock = threading.Lock()
    counts = {"requests": 0, "confirmed": 0, "quiet": 0}
    current = threading.local()

    def record(status_code: int | None) -> None:
        if log_path:
            line = json.dumps({**current.request, "end": time.time(), "status": status_code})
            with lock, open(log_path, "a") as log:
                log.write(line + "\n")

    def before_send(request: Any, **kwargs: Any) -> AWSResponse | None:
        part = int(parse_qs(urlsplit(request.url).query)["partNumber"][0])
        with lock:
            if counts["requests"] == 0:
                # This work horse's first request (each horse starts from the parent's counts).
                counts["quiet"] = bool(crash_mark and os.path.exists(crash_mark))
            counts["requests"] += 1
            number = counts["requests"]
        fault = None
        if counts["quiet"]:
            pass
        elif outage_flag and os.path.exists(outage_flag):
            fault = outage_kind
        elif status is not None and (not status_parts or part in status_parts):
            fault = str(status)
        elif every and (number - 1) % every == 0:
            fault = kinds[((number - 1) // every) % len(kinds)]
        else:
            fault = by_request.get(number)
        current.request = {
            "part": part,
            "request": number,
            "pid": os.getpid(),
            "thread": threading.get_ident(),
            "start": time.time(),
            "fault": fault,
        }
        if fault == "corrupt":
            body = bytearray(request.body.read() if hasattr(request.body, "read") else request.body)
            body[len(body) // 2] ^= 0xFF
            request.body = bytes(body)
        elif fault in ("403", "404", "500", "503"):
            return _s3_error_answer(request.url, int(fault))
        elif fault == "reset":
            record(None)
            raise ConnectionClosedError(endpoint_url=request.url)
        elif fault == "timeout":
            record(None)
            raise ReadTimeoutError(endpoint_url=request.url)
        return None

    def before_send_other(request: Any, **kwargs: Any) -> AWSResponse | None:
        """The outage for every operation but UploadPart (which `before_send` handles and logs)."""
        if not outage_flag or not os.path.exists(outage_flag) or "partNumber=" in request.url:
            return None
        if outage_kind == "timeout":
            raise ReadTimeoutError(endpoint_url=request.url)
        return _s3_error_answer(request.url, int(outage_kind))

    def after_call(http_response: Any, **kwargs: Any) -> None:
        if current.request["fault"] == "lost":
            record(None)
            raise ConnectionClosedError(endpoint_url=http_response.url)
        record(http_response.status_code)
        if http_response.status_code == 200:
            with lock:
                counts["confirmed"] += 1
                confirmed = counts["confirmed"]
            if crash_after is not None and confirmed >= int(crash_after) and not counts["quiet"]:
                if crash_mark:
                    Path(crash_mark).touch()
                os._exit(17)

    events = storage.client.meta.events
    events.register("before-send.s3.UploadPart", before_send)
    events.register("after-call.s3.UploadPart", after_call)
    events.register("before-send.s3", before_send_other)


def main() -> None:
    s3_plan = json.loads(os.environ.get("TEST_S3_FAULTS", "{}"))
    if s3_plan or os.environ.get("TEST_S3_LOG"):
        store = get_storage()
        s3_faults_install(getattr(store, "inner", store), s3_plan, os.environ.get("TEST_S3_LOG"))
    if os.environ.get("TEST_S3_OPS_LOG"):
        store = get_storage()
        s3_operations_log(getattr(store, "inner", store), os.environ["TEST_S3_OPS_LOG"])
    worker = UploadWorker([django_rq.get_queue("default")], connection=django_rq.get_connection("default"))
    worker.work(with_scheduler=False)


if __name__ == "__main__":
    main()
