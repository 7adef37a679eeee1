"""A real RQ worker for the tests, with optional faults injected around the storage backend.

TEST_STORAGE_FAULTS (JSON) sets the plan; every put_part (or put_part_from_file) call is appended to TEST_STORAGE_LOG
(one JSON line each: part, attempt, pid, the object's key, time) so a test can count which parts of
which upload were sent, by which work horse, and how often.
  {"fail_part": {"2": 2}}     part 2 fails its first 2 attempts with a retryable error
  {"always_fail_part": 3}     part 3 fails every attempt
  {"fatal_part": 1}           part 1 fails with a non-retryable error
  {"crash_after_parts": 2}    the work horse dies (os._exit) when a 3rd put_part starts
  {"outage_while": PATH}      every put_part fails (retryable) while the file PATH exists: a store
                              outage the test starts and ends by creating and removing PATH
  {"slow_part": {"2": 6}}     part 2's first attempt takes 6 s more before the store answers
  {"slow_complete": 6}        complete takes 6 s more (a store assembling a large object)
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import django
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError, ReadTimeoutError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")
django.setup()

import django_rq  # noqa: E402

from backend.uploads import jobs  # noqa: E402
from backend.uploads import storage as storage_module  # noqa: E402
from backend.uploads.services import actions, sweep, transitions  # noqa: E402
from backend.uploads.storage import PartReceipt, Storage, StorageError  # noqa: E402
from backend.uploads.worker import UploadWorker  # noqa: E402


class FaultyStorage:
    """Passes every call to the real backend, failing some put_part calls as the plan says."""

    def __init__(self, inner: Storage, plan: dict[str, Any], log_path: str | None) -> None:
        self.inner = inner
        self.plan = plan
        self.log_path = log_path
        self.name = inner.name
        self.min_part_size = inner.min_part_size
        self.lock = threading.Lock()
        self.attempts: dict[int, int] = {}
        self.started = 0

    def __getattr__(self, name: str) -> Any:
        if name == "put_part_from_file":
            # The same faults on the path the engine takes when the backend has it (local disk);
            # a backend without it (S3) stays without it here too.
            put_part_from_file = self.inner.put_part_from_file

            def faulty(*, key: str, part_number: int, **kwargs: Any) -> PartReceipt:
                self._inject(key, part_number)
                return put_part_from_file(key=key, part_number=part_number, **kwargs)

            return faulty
        return getattr(self.inner, name)

    def complete(self, **kwargs: Any) -> None:
        time.sleep(float(self.plan.get("slow_complete", 0)))  # sync-ok: the injected slowness itself
        self.inner.complete(**kwargs)

    def put_part(self, *, key: str, handle: str, part_number: int, offset: int, data: bytes) -> PartReceipt:
        self._inject(key, part_number)
        return self.inner.put_part(key=key, handle=handle, part_number=part_number, offset=offset, data=data)

    def _inject(self, key: str, part_number: int) -> None:
        """Log the attempt, then fail it, or kill the process, as the plan says."""
        with self.lock:
            self.started += 1
            attempt = self.attempts[part_number] = self.attempts.get(part_number, 0) + 1
            crash_after = self.plan.get("crash_after_parts")
            if crash_after is not None and self.started > crash_after:
                os._exit(17)
            if self.log_path:
                with open(self.log_path, "a") as log:
                    entry = {"part": part_number, "attempt": attempt, "pid": os.getpid(), "key": key, "at": time.time()}
                    log.write(json.dumps(entry) + "\n")
        if self.plan.get("outage_while") and os.path.exists(self.plan["outage_while"]):
            raise StorageError(f"injected store outage: part {part_number} not stored", retryable=True)
        if attempt <= int(self.plan.get("fail_part", {}).get(str(part_number), 0)):
            raise StorageError(f"injected failure of part {part_number} attempt {attempt}", retryable=True)
        if self.plan.get("always_fail_part") == part_number:
            raise StorageError(f"injected permanent failure of part {part_number}", retryable=True)
        if self.plan.get("fatal_part") == part_number:
            raise StorageError("injected refusal: access denied", retryable=False)
        if attempt == 1 and str(part_number) in self.plan.get("slow_part", {}):
            time.sleep(float(self.plan["slow_part"][str(part_number)]))  # sync-ok: the injected slowness itself


# --- dropped progress events ------------------------------------------------------------------
# TEST_DROP_PROGRESS (JSON) makes this worker skip publishing some progress events while the rows
# still change as usual, as if the channel layer had lost them; each skipped event is appended to
# TEST_DROP_PROGRESS_LOG (one JSON line) so a test can prove the drop happened.
#   {"statuses": ["COMPLETED"]}   every event carrying one of these statuses
#   {"sequences": [3, 4]}         the events with these sequence numbers
#   {"parts": [2]}                the events reporting these part numbers


def progress_drops_install(plan: dict[str, Any], log_path: str | None) -> None:
    """Wrap the progress_publish that services calls after each commit with one that drops per `plan`."""
    statuses = set(plan.get("statuses", []))
    sequences = {int(n) for n in plan.get("sequences", [])}
    parts = {int(n) for n in plan.get("parts", [])}
    publish = transitions.progress_publish

    def publish_or_drop(upload: Any, *, part_number: int | None = None) -> None:
        if upload.status in statuses or upload.sequence in sequences or part_number in parts:
            if log_path:
                with open(log_path, "a") as log:
                    record = {"upload_id": str(upload.id), "sequence": upload.sequence, "status": upload.status}
                    log.write(json.dumps({**record, "part_number": part_number}) + "\n")
            return
        publish(upload, part_number=part_number)

    transitions.progress_publish = publish_or_drop  # type: ignore[assignment]


# --- S3 faults on the wire --------------------------------------------------------------------
# TEST_S3_FAULTS (JSON) injects faults into the S3 backend's UploadPart requests through botocore
# event hooks on its real client: `before-send.s3.UploadPart` answers a request itself, drops it,
# or changes its body after signing; `after-call.s3.UploadPart` sees each answer. Requests are
# numbered from 1 in each work horse. TEST_S3_LOG gets one JSON line per UploadPart request:
# part, request, pid, thread, start, end (time.time()), fault, status (None when nothing answered).
#   {"every": 5, "kinds": ["500", "reset", "503"]}  requests 1, 6, 11, ... fail, the kinds in turn:
#       "500" / "503"  an S3 error answer (InternalError / SlowDown) in place of sending
#       "reset"        the connection drops before the store sees the request
#       "lost"         the store keeps the part but the answer is lost (dropped after the call)
#       "corrupt"      one byte of the body is flipped after signing (the store sees other bytes)
#   {"requests": {"2": "corrupt", "4": "lost"}}    these requests get these kinds
#   {"status": 403, "parts": [3]}  UploadPart of part 3 (every part without "parts") answers 403
#   {"crash_after": 3}             the work horse dies (os._exit) as soon as the store has confirmed
#                                  3 UploadPart requests, before the ledger hears of the 3rd
#   {"outage_while": PATH, "outage_kind": "503"}  while the file PATH exists, every S3 request
#                                  (any operation) fails: "500"/"503" answers, or "timeout" raises
#                                  botocore's ReadTimeoutError, as a store that never answered
#   "kinds" may also name "timeout" (a read timeout on that request).

_S3_ERROR_ANSWERS = {
    403: ("AccessDenied", "Access Denied"),
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


def s3_faults_install(storage: Any, plan: dict[str, Any], log_path: str | None) -> None:
    """Register the UploadPart hooks `plan` asks for on the S3 backend's client."""
    every = int(plan.get("every", 0))
    kinds = list(plan.get("kinds", ["500"]))
    by_request = {int(n): kind for n, kind in plan.get("requests", {}).items()}
    status = plan.get("status")
    status_parts = {int(n) for n in plan.get("parts", [])}
    crash_after = plan.get("crash_after")
    outage_flag = plan.get("outage_while")
    outage_kind = str(plan.get("outage_kind", "503"))
    lock = threading.Lock()
    counts = {"requests": 0, "confirmed": 0}
    current = threading.local()

    def record(status_code: int | None) -> None:
        if log_path:
            line = json.dumps({**current.request, "end": time.time(), "status": status_code})
            with lock, open(log_path, "a") as log:
                log.write(line + "\n")

    def before_send(request: Any, **kwargs: Any) -> AWSResponse | None:
        part = int(parse_qs(urlsplit(request.url).query)["partNumber"][0])
        with lock:
            counts["requests"] += 1
            number = counts["requests"]
        fault = None
        if outage_flag and os.path.exists(outage_flag):
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
        elif fault in ("403", "500", "503"):
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
            if crash_after is not None and confirmed >= int(crash_after):
                os._exit(17)

    events = storage.client.meta.events
    events.register("before-send.s3.UploadPart", before_send)
    events.register("after-call.s3.UploadPart", after_call)
    events.register("before-send.s3", before_send_other)


def main() -> None:
    plan = json.loads(os.environ.get("TEST_STORAGE_FAULTS", "{}"))
    log_path = os.environ.get("TEST_STORAGE_LOG")
    if plan or log_path:
        faulty = FaultyStorage(storage_module.get_storage(), plan, log_path)
        for module in (storage_module, jobs, actions, sweep):
            module.get_storage = lambda: faulty  # type: ignore[attr-defined]
    drops = json.loads(os.environ.get("TEST_DROP_PROGRESS", "{}"))
    if drops:
        progress_drops_install(drops, os.environ.get("TEST_DROP_PROGRESS_LOG"))
    s3_plan = json.loads(os.environ.get("TEST_S3_FAULTS", "{}"))
    if s3_plan or os.environ.get("TEST_S3_LOG"):
        s3_faults_install(storage_module.get_storage(), s3_plan, os.environ.get("TEST_S3_LOG"))
    worker = UploadWorker([django_rq.get_queue("default")], connection=django_rq.get_connection("default"))
    worker.work(with_scheduler=False)


if __name__ == "__main__":
    main()
