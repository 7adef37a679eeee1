"""Where a webhook may be sent: the server-side request forgery guard (CONTRACT section 10).

A URL is resolved (DNS) and every address it resolves to must be a public one, unless
WEBHOOK_ALLOW_PRIVATE_ADDRESSES: no loopback, private, link-local, shared (CGNAT), reserved,
multicast or unspecified address, IPv4-mapped IPv6 judged as the IPv4 it maps. All of them, not
one: a name that resolves to one public and one private address is refused, since a later
resolution may pick either. The check runs at creation and again before every attempt, and the
attempt connects to an address this check returned, never to a name resolved again.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from backend.uploads.errors import BadUserInput

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}

Resolver = Callable[..., list[tuple[Any, ...]]]


class UnsafeWebhookUrl(BadUserInput):
    """The URL is malformed, not http(s), or resolves to an address webhooks may not reach."""


@dataclass(frozen=True)
class WebhookTarget:
    scheme: str
    host: str  # as in the URL, without brackets
    port: int
    path: str  # path and query, at least "/"
    addresses: tuple[str, ...]  # every address the host resolved to, each one checked

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def address_allowed(address: str, *, allow_private: bool) -> bool:
    """Whether a webhook may connect to `address` (an IP address as text)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        return False  # 0.0.0.0 and :: reach this host; multicast is never a receiver
    return allow_private or (ip.is_global and not ip.is_reserved)


def url_split(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path-and-query) of an http(s) URL; UnsafeWebhookUrl when it is not one."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeWebhookUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise UnsafeWebhookUrl("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeWebhookUrl(f"not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UnsafeWebhookUrl("only http and https URLs can receive webhooks")
    if not parts.hostname:
        raise UnsafeWebhookUrl("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookUrl("the URL must not carry credentials")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname, port or DEFAULT_PORTS[scheme], path


def target_resolve(url: str, *, allow_private: bool, resolve: Resolver = socket.getaddrinfo) -> WebhookTarget:
    """Resolve `url` and check every address; UnsafeWebhookUrl when any may not be reached."""
    scheme, host, port, path = url_split(url)
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeWebhookUrl(f"the host {host} does not resolve: {exc}") from exc
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UnsafeWebhookUrl(f"the host {host} resolves to no address")
    refused = [a for a in addresses if not address_allowed(a, allow_private=allow_private)]
    if refused:
        raise UnsafeWebhookUrl(
            f"the host {host} resolves to {', '.join(refused)}: loopback, private, link-local and other"
            " non-public addresses cannot receive webhooks (WEBHOOK_ALLOW_PRIVATE_ADDRESSES)"
        )
    return WebhookTarget(scheme=scheme, host=host, port=port, path=path, addresses=addresses)
