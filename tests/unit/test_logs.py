"""The log filter and formatters: which lines get an upload id, and how they are written."""

from __future__ import annotations

import json
import logging
import logging.config
import uuid

import pytest

from backend.logs import TextFormatter, UploadIdFilter, logging_config, upload_log_context

# Fixed: the parameters name the tests, and they must be the same in every pytest-xdist worker.
UPLOAD = "63fbb02a-29bd-4fb2-8e50-a9fd36413e61"


def _record(name: str, message: str, **extra: str) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    UploadIdFilter().filter(record)
    return record


def test_bound_upload_id_tags_lines_inside_the_block_only() -> None:
    with upload_log_context(UPLOAD):
        assert _record("backend.uploads.services", "anything").upload_id == UPLOAD
    assert not hasattr(_record("backend.uploads.services", "anything"), "upload_id")


def test_extra_upload_id_wins_over_the_bound_one() -> None:
    other = str(uuid.uuid4())
    with upload_log_context(UPLOAD):
        assert _record("backend.uploads.progress", "x", upload_id=other).upload_id == other


@pytest.mark.parametrize(
    "message",
    [
        f"Worker abc: default: backend.uploads.jobs.upload_transfer('{UPLOAD}') (transfer-{UPLOAD}-1)",
        f"Worker abc: default: Job OK (transfer-{UPLOAD}-3-1a2b3c4d)",
        f"Successfully completed backend.uploads.jobs.upload_transfer('{UPLOAD}') job in 0:00:00.3s",
    ],
)
def test_rq_lines_about_a_transfer_job_carry_its_upload_id(message: str) -> None:
    assert _record("rq.worker", message).upload_id == UPLOAD


def test_rq_lines_about_other_jobs_carry_none() -> None:
    cron_job = str(uuid.uuid4())  # RQ's own job ids are UUIDs too
    record = _record("rq.worker", f"Worker abc: default: backend.uploads.jobs.uploads_reap() ({cron_job})")
    assert not hasattr(record, "upload_id")
    # Only RQ's lines are read this way; our own say which upload they are about through the context.
    assert not hasattr(_record("backend.uploads.services", f"transfer-{UPLOAD}-1"), "upload_id")


def test_text_formatter_appends_the_upload_id_to_the_first_line() -> None:
    formatter = TextFormatter("%(levelname)s %(message)s")
    assert formatter.format(_record("x", "hello", upload_id=UPLOAD)) == f"INFO hello upload_id={UPLOAD}"
    assert formatter.format(_record("x", "hello")) == "INFO hello"


def test_json_config_writes_one_object_per_line_and_refuses_unknown_formats() -> None:
    config = logging_config(level="info", fmt="json")
    formatter = logging.config.DictConfigurator(config).configure_custom(dict(config["formatters"]["json"]))
    line = formatter.format(_record("backend.uploads.jobs", "two\nlines", upload_id=UPLOAD))
    assert "\n" not in line
    assert json.loads(line) | {"time": None, "pid": None} == {
        "time": None,
        "pid": None,
        "level": "INFO",
        "logger": "backend.uploads.jobs",
        "message": "two\nlines",
        "upload_id": UPLOAD,
    }
    assert config["root"]["level"] == "INFO"
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logging_config(level="INFO", fmt="xml")
