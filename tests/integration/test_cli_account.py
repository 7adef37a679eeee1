"""The client's `quota` and `webhooks` commands, as real subprocesses against a real stack and receiver."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.test_cli import cli
from tests.support.client import data_of, upload_file
from tests.support.processes import wait_until
from tests.support.receiver import Receiver


def test_quota_shows_used_and_limit(make_stack, api_user, tmp_path) -> None:
    stack = make_stack(env={"UPLOAD_QUOTA_BYTES": "1000"}, workers=0)
    data_of(upload_file(stack.url, b"q" * 250, headers=api_user.headers))
    options = ["--url", stack.url, "--token", api_user.token]
    shown = cli("quota", *options, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"{api_user.username}: 250 B of 1000 B used (25%); 750 B free (250 of 1000 bytes)" in shown.stdout
    as_json = cli("quota", "--json", *options, cwd=tmp_path)
    assert json.loads(as_json.stdout) == {"usedBytes": 250, "limitBytes": 1000}
    unauthenticated = cli("quota", "--url", stack.url, cwd=tmp_path)
    assert unauthenticated.returncode == 1
    assert "UNAUTHENTICATED" in unauthenticated.stderr


def test_webhooks_create_list_deliveries_and_delete(make_stack, api_user, tmp_path) -> None:
    stack = make_stack(env={"WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true"}, workers=1)
    stack.add_webhook_worker()
    receiver = Receiver().start()
    try:
        options = ["--url", stack.url, "--token", api_user.token]
        created = cli(
            "webhooks", "create", receiver.url, "--events", "UPLOAD_COMPLETED", "--json", *options, cwd=tmp_path
        )
        assert created.returncode == 0, created.stderr
        webhook: dict[str, Any] = json.loads(created.stdout)
        assert webhook["events"] == ["UPLOAD_COMPLETED"]
        assert webhook["secret"].startswith("whsec_")
        receiver.secret = webhook["secret"]

        listed = cli("webhooks", *options, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert f"{webhook['id']}  {receiver.url}  UPLOAD_COMPLETED" in listed.stdout
        assert "whsec_" not in listed.stdout

        upload = data_of(upload_file(stack.url, b"heard of", headers=api_user.headers))["uploadFile"]
        (event,) = receiver.wait_for(1)
        assert event.verified

        def delivered() -> str | None:
            shown = cli("webhooks", "deliveries", webhook["id"], *options, cwd=tmp_path)
            return shown.stdout if "DELIVERED" in shown.stdout else None

        line = wait_until(delivered, timeout=30, what="the delivery to show DELIVERED")
        assert f"UPLOAD_COMPLETED  upload {upload['id']}  DELIVERED  attempts 1  answer 200" in line

        refused = cli("webhooks", "create", "ftp://example.com/", *options, cwd=tmp_path)
        assert refused.returncode == 1
        assert refused.stderr.startswith("BAD_USER_INPUT: only http and https")

        deleted = cli("webhooks", "delete", webhook["id"], *options, cwd=tmp_path)
        assert deleted.returncode == 0, deleted.stderr
        assert cli("webhooks", "list", "--json", *options, cwd=tmp_path).stdout.strip() == "[]"
        again = cli("webhooks", "delete", webhook["id"], *options, cwd=tmp_path)
        assert again.returncode == 1
        assert "NOT_FOUND" in again.stderr
    finally:
        receiver.stop()
