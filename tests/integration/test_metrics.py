"""/metrics against the running server: uploads by status, transfer counters, queue depth."""

from __future__ import annotations

import os

import httpx
from prometheus_client.parser import text_string_to_metric_families

from backend.uploads.models import FileUpload, UploadStatus
from tests.support.client import data_of, upload_file
from tests.support.processes import wait_until

MIB = 1024 * 1024


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_parts_failures_and_statuses(make_stack, api_user) -> None:
    stack = make_stack(faults={"fail_part": {"2": 1}})
    before = _samples(stack.url)
    upload_id = data_of(upload_file(stack.url, os.urandom(3 * MIB), headers=api_user.headers))["uploadFile"]["id"]
    wait_until(lambda: FileUpload.objects.get(id=upload_id).status == UploadStatus.COMPLETED, what="completion")
    after = _samples(stack.url)

    def grew(name: str) -> float:
        return after[(name, ())] - before.get((name, ()), 0)

    assert grew("uploads_parts_confirmed_total") == 3
    assert grew("uploads_bytes_transferred_total") == 3 * MIB
    assert grew("uploads_part_attempts_total") == 4
    assert grew("uploads_part_failures_total") == 1
    completed = after[("uploads", (("status", "COMPLETED"),))]
    assert completed == FileUpload.objects.filter(status=UploadStatus.COMPLETED).count()
    assert ("uploads_queue_depth", ()) in after
