"""The `quota` and `webhooks` commands: where the caller stands, and the endpoints that hear of their uploads."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from backend.client.api import Endpoint, UploadApi
from backend.client.display import format_bytes, print_json

WEBHOOK_EVENTS = ("UPLOAD_COMPLETED", "UPLOAD_FAILED", "UPLOAD_CANCELLED")
_WEBHOOK = "id url events createdAt"
QUOTA = "query Quota { me { username quota { usedBytes limitBytes } } }"
WEBHOOKS = f"query Webhooks {{ webhooks {{ {_WEBHOOK} }} }}"
WEBHOOK_CREATE = (
    "mutation CreateWebhook($url: String!, $events: [WebhookEvent!]) {"
    f" createWebhook(url: $url, events: $events) {{ {_WEBHOOK} secret }} }}"
)
WEBHOOK_DELETE = "mutation DeleteWebhook($id: ID!) { deleteWebhook(id: $id) }"
DELIVERIES = (
    "query Deliveries($id: ID!, $first: Int) { webhookDeliveries(endpointId: $id, first: $first) {"
    " id event uploadId attempts status responseStatus lastError createdAt deliveredAt } }"
)


def parsers_add(command: Callable[[str, str], argparse.ArgumentParser], *, common: argparse.ArgumentParser) -> None:
    """Add `quota` and `webhooks [list|create|delete|deliveries]` through the CLI's `command` factory.

    `common` (--url, --token, --json) is accepted after the webhook actions too.
    """
    command("quota", "show the bytes your uploads take and your limit")
    webhooks = command("webhooks", "list your webhooks, or create or delete one, or show its deliveries")
    actions = webhooks.add_subparsers(dest="webhooks_action", metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, parents=[common], help=help_text, description=help_text)

    action("list", "your webhooks (the default)")
    create = action("create", "register a URL; prints its signing secret, shown only now")
    create.add_argument("webhook_url", metavar="URL")
    create.add_argument("--events", nargs="+", choices=WEBHOOK_EVENTS, help="which events (default: all three)")
    action("delete", "remove a webhook and its deliveries").add_argument("webhook_id", metavar="ID")
    deliveries = action("deliveries", "a webhook's newest deliveries and how they went")
    deliveries.add_argument("webhook_id", metavar="ID")
    deliveries.add_argument("--limit", type=int, default=20, help="at most this many (default 20, at most 100)")


def command_quota(*, endpoint: Endpoint, as_json: bool) -> int:
    me = _call(endpoint, lambda api: api.execute(QUOTA, {}))["me"]
    quota = me["quota"]
    if as_json:
        print_json(quota)
        return 0
    used, limit = quota["usedBytes"], quota["limitBytes"]
    if limit is None:
        print(f"{me['username']}: {format_bytes(used)} used ({used} bytes), no limit")
    else:
        share = used / limit if limit else 1.0
        print(
            f"{me['username']}: {format_bytes(used)} of {format_bytes(limit)} used ({share:.0%});"
            f" {format_bytes(max(0, limit - used))} free ({used} of {limit} bytes)"
        )
    return 0


def command_webhooks(*, endpoint: Endpoint, args: argparse.Namespace, as_json: bool) -> int:
    action = getattr(args, "webhooks_action", None) or "list"
    if action == "create":
        created = _call(
            endpoint, lambda api: api.execute(WEBHOOK_CREATE, {"url": args.webhook_url, "events": args.events})
        )
        webhook = created["createWebhook"]
        if as_json:
            print_json(webhook)
        else:
            print(f"{webhook['id']}  {webhook['url']}  {','.join(webhook['events'])}")
            print(f"secret (shown only now; verify signatures with it): {webhook['secret']}")
        return 0
    if action == "delete":
        _call(endpoint, lambda api: api.execute(WEBHOOK_DELETE, {"id": args.webhook_id}))
        if as_json:
            print_json({"id": args.webhook_id, "deleted": True})
        else:
            print(f"{args.webhook_id}: deleted")
        return 0
    if action == "deliveries":
        variables = {"id": args.webhook_id, "first": args.limit}
        found = _call(endpoint, lambda api: api.execute(DELIVERIES, variables))["webhookDeliveries"]
        if as_json:
            print_json(found)
        for delivery in [] if as_json else found:
            answer = delivery["responseStatus"] if delivery["responseStatus"] is not None else "-"
            error = f"  {delivery['lastError']}" if delivery["lastError"] else ""
            print(
                f"{delivery['id']}  {delivery['event']}  upload {delivery['uploadId']}  {delivery['status']}"
                f"  attempts {delivery['attempts']}  answer {answer}{error}"
            )
        return 0
    listed = _call(endpoint, lambda api: api.execute(WEBHOOKS, {}))["webhooks"]
    if as_json:
        print_json(listed)
    for webhook in [] if as_json else listed:
        print(f"{webhook['id']}  {webhook['url']}  {','.join(webhook['events'])}  since {webhook['createdAt']}")
    if not listed and not as_json:
        print("no webhooks")
    return 0


def _call(endpoint: Endpoint, call: Callable[[UploadApi], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        async with UploadApi(endpoint) as api:
            return await call(api)

    return asyncio.run(run())
