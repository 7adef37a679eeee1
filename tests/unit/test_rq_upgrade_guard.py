"""An RQ (or django-rq) upgrade that renames or reshapes what our worker and scheduler override fails here.

`UploadWorker` and `UploadCronScheduler` (backend/uploads/worker.py) override RQ methods to ride
out a Redis outage and to stop a transfer cooperatively. Python does not complain when the base
class drops or renames a method: the override would simply never be called again, and the worker
would go back to dying on the first connection error. So each override is listed here with the
parameters it expects of RQ's method, and checked against the installed RQ.
"""

from __future__ import annotations

import inspect

import pytest
from django_rq.cron import DjangoCronScheduler
from rq import Worker

from backend.uploads.worker import UploadCronScheduler, UploadWorker

# Method -> the parameters (after self) RQ's own method has, as the override calls it.
WORKER_OVERRIDES: dict[str, list[str]] = {
    "__init__": [
        "queues",
        "name",
        "default_result_ttl",
        "connection",
        "exception_handlers",
        "maintenance_interval",
        "default_worker_ttl",
        "worker_ttl",
        "job_class",
        "queue_class",
        "log_job_description",
        "job_monitoring_interval",
        "disable_default_exception_handler",
        "prepare_for_work",
        "serializer",
        "work_horse_killed_handler",
    ],
    "fork_work_horse": ["job", "queue"],
    "handle_work_horse_killed": ["job", "retpid", "ret_val", "rusage"],
    "setup_work_horse_signals": [],
    "handle_warm_shutdown_request": [],
    "heartbeat": ["timeout", "pipeline"],
    "maintain_heartbeats": ["job", "execution"],
    "set_state": ["state", "pipeline"],
    "check_for_suspension": ["burst"],
    "run_maintenance_tasks": [],
    "execute_job": ["job", "queue"],
    "kill_horse": ["sig"],
    "get_heartbeat_ttl": ["job", "working_time"],
    "teardown": [],
}
# Our own methods, not overrides.
WORKER_OWN = {"modules_preload", "execute_in_process"}
# What the overrides use of RQ's worker besides the methods above (`execute_in_process` is RQ's
# SimpleWorker.execute_job: prepare_execution, perform_job, set_state).
WORKER_USES = {"horse_pid", "log", "name", "max_connection_wait_time", "prepare_execution", "perform_job"}

SCHEDULER_OVERRIDES: dict[str, list[str]] = {
    "enqueue_jobs": [],
    "save": ["pipeline"],
    "register_birth": [],
    "heartbeat": [],
    "register_death": ["pipeline"],
    "calculate_sleep_interval": [],
}


def _parameters(function: object) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]  # type: ignore[arg-type]


def _defined_here(cls: type) -> set[str]:
    return {name for name, value in vars(cls).items() if callable(value) and (name == "__init__" or name[:2] != "__")}


def test_the_table_lists_every_override_of_the_worker_and_the_scheduler() -> None:
    assert _defined_here(UploadWorker) == set(WORKER_OVERRIDES) | WORKER_OWN, "update this table with the override"
    assert _defined_here(UploadCronScheduler) == set(SCHEDULER_OVERRIDES)


@pytest.mark.parametrize("name", sorted(WORKER_OVERRIDES))
def test_each_worker_override_still_overrides_an_rq_method_of_that_shape(name: str) -> None:
    assert hasattr(Worker, name), f"rq.Worker.{name} is gone: UploadWorker.{name} is never called"
    assert _parameters(getattr(Worker, name)) == WORKER_OVERRIDES[name], f"rq.Worker.{name} changed its parameters"


@pytest.mark.parametrize("name", sorted(SCHEDULER_OVERRIDES))
def test_each_scheduler_override_still_overrides_an_rq_method_of_that_shape(name: str) -> None:
    assert hasattr(DjangoCronScheduler, name), f"the cron scheduler's {name} is gone"
    assert _parameters(getattr(DjangoCronScheduler, name)) == SCHEDULER_OVERRIDES[name]


def test_what_the_overrides_use_of_the_worker_is_still_there() -> None:
    # Instance attributes are set in RQ's __init__ (a worker needs Redis to be made): read its source.
    source = "".join(inspect.getsource(cls) for cls in Worker.__mro__ if cls.__module__.startswith("rq."))
    for attribute in WORKER_USES:
        assert hasattr(Worker, attribute) or f"self.{attribute} =" in source, f"rq.Worker has no {attribute} now"
    assert "sig" in inspect.signature(Worker.kill_horse).parameters
