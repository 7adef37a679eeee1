"""The pure pieces of webhooks: which addresses may be reached, URL checks, backoff, signatures."""

from __future__ import annotations

import random
import socket
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from backend.webhooks.addresses import UnsafeWebhookUrl, address_allowed, target_resolve, url_split
from backend.webhooks.backoff import retry_delay
from backend.webhooks.signing import secret_generate, signed_headers


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",  # shared address space (CGNAT)
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not address_allowed(address, allow_private=False)


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_allowed(address, allow_private=False)


def test_the_setting_allows_private_addresses_but_never_unspecified_or_multicast() -> None:
    assert address_allowed("127.0.0.1", allow_private=True)
    assert address_allowed("10.0.0.1", allow_private=True)
    assert not address_allowed("0.0.0.0", allow_private=True)
    assert not address_allowed("224.0.0.1", allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "file:///etc/passwd",
        "gopher://x/",
        "http://",
        "http:///path",
        "//example.com/",
        "http://u:p@example.com/",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "x" * 3000,
    ],
)
def test_urls_that_are_not_plain_http_are_refused(url: str) -> None:
    with pytest.raises(UnsafeWebhookUrl):
        url_split(url)


def test_url_split_keeps_the_path_and_query_and_the_default_port() -> None:
    assert url_split("https://Example.com/hooks?a=1#frag") == ("https", "example.com", 443, "/hooks?a=1")
    assert url_split("http://example.com") == ("http", "example.com", 80, "/")
    assert url_split("http://[2606:4700::1]:8080/x") == ("http", "2606:4700::1", 8080, "/x")


def _resolver(*addresses: str):
    def resolve(host: str, port: int, **kwargs: object) -> list[tuple[object, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return resolve


def test_a_name_is_refused_when_any_of_its_addresses_is_private() -> None:
    with pytest.raises(UnsafeWebhookUrl, match=r"10\.0\.0\.7"):
        target_resolve("https://mixed.example/", allow_private=False, resolve=_resolver("93.184.215.14", "10.0.0.7"))


def test_a_public_name_resolves_to_the_addresses_the_attempt_connects_to() -> None:
    target = target_resolve("https://hooks.example:8443/in", allow_private=False, resolve=_resolver("93.184.215.14"))
    assert target.addresses == ("93.184.215.14",)
    assert target.host_header == "hooks.example:8443"
    assert target.path == "/in"


def test_a_name_that_does_not_resolve_is_refused() -> None:
    def fails(*args: object, **kwargs: object) -> list[tuple[object, ...]]:
        raise socket.gaierror("Name or service not known")

    with pytest.raises(UnsafeWebhookUrl, match="does not resolve"):
        target_resolve("https://nowhere.invalid/", allow_private=False, resolve=fails)


def test_the_first_retry_comes_within_the_base_then_the_delays_double() -> None:
    rng = random.Random(7)
    for _ in range(200):
        assert 5 <= retry_delay(failed_attempts=1, base=10, rng=rng) <= 10
        assert 10 <= retry_delay(failed_attempts=2, base=10, rng=rng) <= 20
        assert 320 <= retry_delay(failed_attempts=7, base=10, rng=rng) <= 640
    delays = {round(retry_delay(failed_attempts=1, base=10, rng=rng), 3) for _ in range(50)}
    assert len(delays) > 40  # jittered, not one fixed schedule
    with pytest.raises(ValueError):
        retry_delay(failed_attempts=0, base=10)


def test_eight_attempts_outlast_a_ten_minute_outage() -> None:
    floor = sum(retry_delay(failed_attempts=n, base=10, rng=_Lowest()) for n in range(1, 8))
    assert floor >= 600


class _Lowest(random.Random):
    def random(self) -> float:
        return 0.0


def test_signed_headers_verify_with_the_standardwebhooks_verifier() -> None:
    secret = secret_generate()
    assert secret.startswith("whsec_")
    body = '{"type":"upload.completed","data":{"id":"x"}}'
    now = datetime.now(UTC)
    headers = signed_headers(secret=secret, message_id="msg_abc", body=body, at=now)
    assert headers["webhook-id"] == "msg_abc"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert Webhook(secret).verify(body, headers) == {"type": "upload.completed", "data": {"id": "x"}}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("x", "y"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret_generate()).verify(body, headers)
