"""Structured logs: one line per event, JSON or text, with the upload id on every line about one.

The upload a piece of code works on is kept in a context variable, bound where the id becomes
known (the service that creates an upload, the mutations that act on one, a subscription, the
transfer job at start); a filter on the one handler copies it onto every record. Context
variables follow asyncio tasks and `sync_to_async`, so concurrent requests never see each
other's id. Code that logs about an upload from elsewhere (the progress publisher's thread, the
reaper's loop) passes `extra={"upload_id": ...}`, which wins over the bound one.

RQ's and uvicorn's loggers write through the same handler: RQ adds no handler of its own when an
ancestor has one, and LOGGING replaces the handlers uvicorn installed before Django was set up.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

upload_id_var: ContextVar[str | None] = ContextVar("upload_id", default=None)

# RQ's own lines name our transfer jobs by id (`transfer-<upload id>-<sequence>`, from
# jobqueue.transfer_job_id) or by call (`upload_transfer('<upload id>')`); RQ's worker process never
# runs our code, so the upload id is read back from them. Other jobs (the cron jobs) have UUID ids
# of RQ's own, which are not upload ids: only these two forms count.
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_RQ_JOB_UPLOAD = re.compile(rf"(?:\btransfer-|\bupload_transfer\(')({_UUID})")


def upload_log_bind(upload_id: uuid.UUID | str) -> None:
    """Tag every log line of the current context (task, thread, job) with `upload_id` from now on."""
    upload_id_var.set(str(upload_id))


@contextmanager
def upload_log_context(upload_id: uuid.UUID | str) -> Iterator[None]:
    """Tag the lines logged inside the block with `upload_id`, then restore the previous tag."""
    token = upload_id_var.set(str(upload_id))
    try:
        yield
    finally:
        upload_id_var.reset(token)


class UploadIdFilter(logging.Filter):
    """Puts `upload_id` on a record: from `extra`, else the bound one, else (RQ's lines) its job id."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "upload_id", None):
            return True
        upload_id = upload_id_var.get()
        if upload_id is None and record.name.startswith("rq."):
            found = _RQ_JOB_UPLOAD.search(record.getMessage())
            upload_id = found.group(1) if found else None
        if upload_id is not None:
            record.upload_id = upload_id
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message`, then ` upload_id=...` when the line is about an upload."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        upload_id = getattr(record, "upload_id", None)
        if upload_id:
            first, newline, rest = line.partition("\n")
            line = f"{first} upload_id={upload_id}{newline}{rest}"
        return line


LOG_FORMATS = ("json", "text")


def logging_config(*, level: str, fmt: str) -> dict[str, Any]:
    """The LOGGING dict for `level` and `fmt` (one of LOG_FORMATS); raises ValueError otherwise."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    formatters = {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
        },
        "text": {"()": TextFormatter, "format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    }
    # uvicorn set these up with handlers and levels of its own before Django (and this) ran:
    # replacing them routes its lines through our handler, and LOG_LEVEL rules them like the rest.
    own_handler = {"handlers": ["console"], "propagate": False, "level": level.upper()}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"upload_id": {"()": UploadIdFilter}},
        "formatters": {fmt: formatters[fmt]},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": fmt, "filters": ["upload_id"]},
        },
        "root": {"handlers": ["console"], "level": level.upper()},
        "loggers": {
            "django.db.backends": {"level": "WARNING"},
            "uvicorn": own_handler,
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": own_handler,
        },
    }
