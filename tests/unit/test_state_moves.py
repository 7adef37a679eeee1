"""The state moves and the sweep in process: the real services on the test database, no server, no worker.

Every (from, to) pair of statuses is tried through `upload_transition`, the one conditional
UPDATE: exactly the moves CONTRACT section 3 allows go through, each bumping `sequence` once; a
refused one changes nothing. The claim and staged fences are checked the same way. The sweep runs
on rows and files this test makes, with its TTL and grace set so each case is due or not.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from backend.uploads.errors import ClaimLost, InvalidState
from backend.uploads.models import FileUpload, UploadStatus
from backend.uploads.services import ALLOWED_MOVES, upload_sweep, upload_transition
from backend.uploads.staging import INCOMING, staging_path
from backend.uploads.storage import get_capabilities

STATUSES = [UploadStatus.QUEUED, UploadStatus.UPLOADING, UploadStatus.COMPLETED, UploadStatus.FAILED]
STATUSES += [UploadStatus.CANCELLED, UploadStatus.RECEIVING]


@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[Path]:
    """A database, a staging directory and a bucket of this test's own: the sweep sees only what it makes."""
    from tests.conftest import _database_of_its_own

    staging, bucket = tmp_path / "staging", tmp_path / "bucket"
    get_capabilities.cache_clear()
    with _database_of_its_own(), override_settings(UPLOAD_STAGING_DIR=staging, LOCAL_STORAGE_ROOT=bucket):
        yield staging
    get_capabilities.cache_clear()


@pytest.fixture
def owner(isolated: Path, make_user: Any) -> Any:
    return make_user().user


def _row(owner: Any, status: str, *, staged: bool = False, staged_at: Any = None) -> FileUpload:
    upload_id = uuid.uuid4()
    row = FileUpload.objects.create(
        id=upload_id,
        owner=owner,
        filename="moves.bin",
        content_type="application/octet-stream",
        size=3,
        sha256=hashlib.sha256(b"abc").hexdigest(),
        status=status,
        part_size=1024 * 1024,
        parts_total=1,
        storage_backend="local",
        storage_key=f"uploads/moves/{upload_id}",
        sequence=5,
        claim=uuid.uuid4() if status == UploadStatus.UPLOADING else None,
        staged_at=staged_at if staged_at is not None else (timezone.now() if staged else None),
    )
    if staged:
        path = staging_path(upload_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"abc")
    return row


@pytest.mark.parametrize("source", STATUSES)
@pytest.mark.parametrize("target", STATUSES)
def test_exactly_the_moves_of_the_state_table_go_through(owner: Any, source: str, target: str) -> None:
    row = _row(owner, source)
    allowed = target in ALLOWED_MOVES[source]
    if allowed:
        moved = upload_transition(upload_id=row.id, to=target)
        assert (moved.status, moved.sequence) == (target, 6)
    else:
        with pytest.raises(InvalidState):
            upload_transition(upload_id=row.id, to=target)
        after = FileUpload.objects.get(id=row.id)
        assert (after.status, after.sequence) == (source, 5), "a refused move changes nothing"


def test_the_state_table_is_the_contracts() -> None:
    assert ALLOWED_MOVES[UploadStatus.COMPLETED] == frozenset(), "COMPLETED is final"
    assert ALLOWED_MOVES[UploadStatus.QUEUED] == {UploadStatus.UPLOADING, UploadStatus.CANCELLED}
    assert ALLOWED_MOVES[UploadStatus.FAILED] == ALLOWED_MOVES[UploadStatus.CANCELLED] == {UploadStatus.QUEUED}


def test_a_move_owned_by_another_claim_is_claim_lost_and_changes_nothing(owner: Any) -> None:
    row = _row(owner, UploadStatus.UPLOADING)
    with pytest.raises(ClaimLost):
        upload_transition(upload_id=row.id, to=UploadStatus.COMPLETED, owned_by=uuid.uuid4())
    assert FileUpload.objects.get(id=row.id).status == UploadStatus.UPLOADING
    done = upload_transition(upload_id=row.id, to=UploadStatus.COMPLETED, owned_by=row.claim)
    assert done.status == UploadStatus.COMPLETED


def test_the_staged_fence_refuses_a_retry_whose_bytes_expired(owner: Any) -> None:
    expired = _row(owner, UploadStatus.FAILED)  # staged_at is None: the sweep expired it
    with pytest.raises(InvalidState):
        upload_transition(upload_id=expired.id, to=UploadStatus.QUEUED, staged=True)
    kept = _row(owner, UploadStatus.FAILED, staged=True)
    assert upload_transition(upload_id=kept.id, to=UploadStatus.QUEUED, staged=True).status == UploadStatus.QUEUED


def test_the_sweep_expires_kept_bytes_past_the_ttl_and_leaves_the_rest(owner: Any) -> None:
    long_ago = timezone.now() - timezone.timedelta(hours=2)
    expired = _row(owner, UploadStatus.CANCELLED, staged=True, staged_at=long_ago)
    fresh = _row(owner, UploadStatus.FAILED, staged=True)
    completed = _row(owner, UploadStatus.COMPLETED, staged=True)  # a worker died between the two steps
    orphan = staging_path(uuid.uuid4())
    orphan.write_bytes(b"no row")
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    young = staging_path(uuid.uuid4())
    young.write_bytes(b"a request may still be writing this")
    incoming = staging_path(expired.id).parent / INCOMING
    incoming.mkdir(parents=True, exist_ok=True)
    left = incoming / f"{uuid.uuid4().hex}.part"
    left.write_bytes(b"left by a dead request")
    os.utime(left, (time.time() - 7200, time.time() - 7200))

    planned = upload_sweep(dry_run=True, ttl_seconds=3600, grace_seconds=3600)
    targets = {item.target for item in planned.items}
    for path in (staging_path(expired.id), staging_path(completed.id), orphan, left):
        assert str(path) in targets, path
    assert str(staging_path(fresh.id)) not in targets and str(young) not in targets
    assert staging_path(expired.id).exists(), "a dry run removes nothing"

    done = upload_sweep(ttl_seconds=3600, grace_seconds=3600)
    assert {item.target for item in done.items} >= {str(p) for p in (staging_path(expired.id), orphan, left)}
    assert not staging_path(expired.id).exists() and not orphan.exists() and not left.exists()
    assert not staging_path(completed.id).exists()
    assert staging_path(fresh.id).exists() and young.exists()
    assert FileUpload.objects.get(id=expired.id).staged_at is None, "expired: retryUpload now answers INVALID_STATE"
    assert FileUpload.objects.get(id=fresh.id).staged_at is not None


@pytest.mark.parametrize("path", ["sql", "orm"])
def test_a_part_recorded_counts_once_and_reads_back_the_event_as_the_row_says(
    owner: Any, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backend.uploads.progress import progress_event
    from backend.uploads.services import transitions
    from backend.uploads.storage import PartReceipt

    if path == "orm":
        monkeypatch.setattr(transitions, "sql_has_returning", lambda: False)
    row = _row(owner, UploadStatus.UPLOADING)
    first = PartReceipt(part_number=1, size=3, etag="a1", checksum="SHA256:x")
    recorded = transitions.upload_record_part(upload_id=row.id, claim=row.claim, receipt=first)
    assert progress_event(recorded, part_number=1) == progress_event(FileUpload.objects.get(id=row.id), part_number=1)
    assert (recorded.sequence, recorded.parts_uploaded, recorded.bytes_uploaded) == (6, 1, 3)
    assert isinstance(recorded.id, uuid.UUID) and recorded.updated_at.tzinfo is not None

    again = transitions.upload_record_part(
        upload_id=row.id, claim=row.claim, receipt=PartReceipt(part_number=1, size=3, etag="b2", checksum="SHA256:y")
    )
    assert (again.sequence, again.parts_uploaded, again.bytes_uploaded) == (7, 1, 3), "the same part counts once"
    assert list(row.parts.values_list("etag", "checksum")) == [("b2", "SHA256:y")], "its receipt is the latest"
    with pytest.raises(ClaimLost):
        transitions.upload_record_part(upload_id=row.id, claim=uuid.uuid4(), receipt=first)
    assert FileUpload.objects.get(id=row.id).sequence == 7, "another run's write changes nothing"


def test_starting_over_forgets_the_object_and_its_ledger_as_a_new_transfer(owner: Any) -> None:
    from backend.uploads.services import upload_record_part, upload_start_over
    from backend.uploads.storage import PartReceipt

    row = _row(owner, UploadStatus.UPLOADING)
    FileUpload.objects.filter(id=row.id).update(storage_upload_id="spent", parts_total=2, size=6)
    upload_record_part(upload_id=row.id, claim=row.claim, receipt=PartReceipt(part_number=1, size=3, etag="a"))
    with pytest.raises(ClaimLost):
        upload_start_over(upload_id=row.id, claim=row.claim, handle="another")  # the row names another object
    with pytest.raises(ClaimLost):
        upload_start_over(upload_id=row.id, claim=uuid.uuid4(), handle="spent")
    upload_start_over(upload_id=row.id, claim=row.claim, handle="spent")
    after = FileUpload.objects.get(id=row.id)
    assert (after.status, after.claim, after.storage_upload_id) == (UploadStatus.UPLOADING, row.claim, None)
    assert (after.parts_uploaded, after.bytes_uploaded, after.parts.count()) == (0, 0, 0)
    assert after.sequence == 6 + 2, "two moves: UPLOADING -> QUEUED -> UPLOADING"

    # A pipelined round never starts over (its counters must not go back within RECEIVING): the
    # transfer after RECEIVING does, as UPLOADING. Nothing of a RECEIVING upload is forgotten.
    piped = _row(owner, UploadStatus.RECEIVING)
    FileUpload.objects.filter(id=piped.id).update(storage_upload_id="spent", claim=row.claim)
    upload_record_part(upload_id=piped.id, claim=row.claim, receipt=PartReceipt(part_number=1, size=3, etag="a"))
    with pytest.raises(ClaimLost):
        upload_start_over(upload_id=piped.id, claim=row.claim, handle="spent")
    after = FileUpload.objects.get(id=piped.id)
    assert (after.status, after.storage_upload_id, after.sequence) == (UploadStatus.RECEIVING, "spent", 6)
    assert (after.parts_uploaded, after.bytes_uploaded, after.parts.count()) == (1, 3, 1)


def test_the_part_write_takes_the_orm_path_on_a_sqlite_without_returning(
    owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # UPDATE ... RETURNING needs SQLite 3.35; Django 5.2 runs on 3.31. Below 3.35 the ORM's path.
    import sqlite3

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from backend.uploads import sql
    from backend.uploads.services import upload_record_part
    from backend.uploads.storage import PartReceipt

    if connection.vendor != "sqlite":
        pytest.skip("the SQLite gate")
    row = _row(owner, UploadStatus.UPLOADING)
    receipt = PartReceipt(part_number=1, size=3, etag="a")
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    assert not sql.sql_has_returning()
    with CaptureQueriesContext(connection) as queries:
        recorded = upload_record_part(upload_id=row.id, claim=row.claim, receipt=receipt)
    # (The ORM's own INSERT may say RETURNING: Django asks the library's version too.)
    assert not [q for q in queries.captured_queries if "ON CONFLICT" in q["sql"]], queries.captured_queries
    assert (recorded.parts_uploaded, recorded.bytes_uploaded) == (1, 3)
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 35, 0))
    assert sql.sql_has_returning()


def test_the_sql_part_write_matches_no_claim_as_the_orm_does(owner: Any) -> None:
    # `claim=None` names the unclaimed rows on both paths (IS NULL), never nothing (= NULL).
    from backend.uploads.services import transitions
    from backend.uploads.storage import PartReceipt

    row = _row(owner, UploadStatus.UPLOADING)
    FileUpload.objects.filter(id=row.id).update(claim=None)
    receipt = PartReceipt(part_number=1, size=3, etag="a")
    for record in (transitions._record_part_sql, transitions._record_part_orm):
        recorded = record(upload_id=row.id, claim=None, receipt=receipt)
        assert recorded.parts_uploaded == 1, record


def test_the_stop_check_sees_the_claim_only_while_the_upload_is_active_under_it(owner: Any) -> None:
    from backend.uploads.selectors import upload_is_claimed_by

    row = _row(owner, UploadStatus.UPLOADING)
    assert upload_is_claimed_by(upload_id=row.id, claim=row.claim)
    assert not upload_is_claimed_by(upload_id=row.id, claim=uuid.uuid4())
    assert not upload_is_claimed_by(upload_id=uuid.uuid4(), claim=row.claim)
    upload_transition(upload_id=row.id, to=UploadStatus.CANCELLED)
    assert not upload_is_claimed_by(upload_id=row.id, claim=row.claim), "cancelled: the run must stop"
