"""Limits that depend on the server's state: free staging space and uploads active per user."""

from __future__ import annotations

from backend.uploads.models import FileUpload
from tests.support.client import data_of, error_codes, upload_file
from tests.support.uploads import open_staging_files, staging_entries


def test_staging_short_of_space_is_507_before_the_body(make_stack, api_user, tmp_path) -> None:
    staging = tmp_path / "staging"
    full = make_stack(env={"UPLOAD_STAGING_DIR": str(staging), "UPLOAD_STAGING_MIN_FREE_BYTES": str(2**62)}, workers=0)
    response = upload_file(full.url, b"x" * 1024, headers=api_user.headers)
    assert response.status_code == 507
    assert response.headers["content-type"] == "application/json"
    assert error_codes(response) == ["INSUFFICIENT_STORAGE"]
    assert staging_entries(staging) == set()
    assert not FileUpload.objects.filter(owner=api_user.user).exists()


def test_over_the_active_uploads_limit_is_refused_and_leaves_nothing(make_stack, api_user, tmp_path) -> None:
    staging = tmp_path / "staging"
    # No worker: the first upload stays QUEUED, so it counts as active.
    busy = make_stack(env={"UPLOAD_STAGING_DIR": str(staging), "UPLOAD_MAX_ACTIVE_PER_USER": "1"}, workers=0)
    first = data_of(upload_file(busy.url, b"first", headers=api_user.headers))["uploadFile"]
    assert staging_entries(staging) == {first["id"]}

    refused = upload_file(busy.url, b"second", headers=api_user.headers)
    assert refused.status_code == 200
    assert error_codes(refused) == ["TOO_MANY_ACTIVE_UPLOADS"]
    assert staging_entries(staging) == {first["id"]}
    assert open_staging_files(busy.server.process.pid, staging) == []
    assert list(FileUpload.objects.filter(owner=api_user.user).values_list("filename", flat=True)) == ["file.bin"]
