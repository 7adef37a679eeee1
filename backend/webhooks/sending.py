"""One webhook attempt on the wire: a POST to an address already checked, no redirects, a time limit.

urllib3 is handed the IP address to connect to (the one `addresses.target_resolve` checked), with
the URL's host in the `Host` header and, for https, as the TLS server name and the name the
certificate must carry: DNS is not asked again between the check and the connection. A 3xx is a
failed attempt like any other non-2xx (the Standard Webhooks specification: update the URL instead).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, Timeout
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError

from backend.webhooks.addresses import WebhookTarget

# Enough of an answer to show an operator what went wrong; the rest is not read.
MAX_ANSWER_BYTES = 16 * 1024


@dataclass(frozen=True)
class AttemptOutcome:
    status: int | None  # the HTTP status answered, None when none was
    error: str | None  # why the attempt failed; None when it succeeded
    address: str | None  # the address connected to (or tried last)

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and self.error is None


def post(*, target: WebhookTarget, body: bytes, headers: dict[str, str], timeout: float) -> AttemptOutcome:
    """POST `body` to `target`, trying its addresses in turn until one connects, within `timeout` seconds in all."""
    deadline = time.monotonic() + timeout
    outcome = AttemptOutcome(status=None, error="no address to connect to", address=None)
    for address in target.addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        outcome, connected = _post_to(target=target, address=address, body=body, headers=headers, deadline=deadline)
        if connected:
            return outcome  # sent (answered or not): another address would only send it twice
    return outcome


def _post_to(
    *, target: WebhookTarget, address: str, body: bytes, headers: dict[str, str], deadline: float
) -> tuple[AttemptOutcome, bool]:
    """The outcome of one POST to `address`, and whether a connection was made at all."""
    timeout = Timeout(total=max(0.001, deadline - time.monotonic()))
    pool: HTTPConnectionPool
    if target.scheme == "https":
        pool = HTTPSConnectionPool(
            address,
            port=target.port,
            timeout=timeout,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            assert_hostname=target.host,
            server_hostname=target.host,
        )
    else:
        pool = HTTPConnectionPool(address, port=target.port, timeout=timeout, retries=False)
    with pool:
        try:
            response = pool.urlopen(
                "POST",
                target.path,
                body=body,
                headers={**headers, "Host": target.host_header},
                redirect=False,
                retries=False,
                assert_same_host=False,
                preload_content=False,
            )
        except NewConnectionError as exc:
            return AttemptOutcome(status=None, error=f"could not connect: {exc}", address=address), False
        except ConnectTimeoutError:
            return AttemptOutcome(status=None, error="timed out connecting", address=address), False
        except HTTPError as exc:
            return AttemptOutcome(status=None, error=_describe(exc), address=address), True
        status = response.status
        try:
            read = 0
            while read < MAX_ANSWER_BYTES:
                if time.monotonic() > deadline:
                    return AttemptOutcome(status=status, error="timed out reading the answer", address=address), True
                chunk = response.read(4096)
                if not chunk:
                    break
                read += len(chunk)
        except HTTPError:
            pass  # the status is what counts; a broken body after it does not undo it
        finally:
            response.release_conn()
    if 200 <= status < 300:
        return AttemptOutcome(status=status, error=None, address=address), True
    if 300 <= status < 400:
        where = response.headers.get("location", "")
        error = f"answered {status} (redirect to {where!r} not followed)"
        return AttemptOutcome(status=status, error=error, address=address), True
    return AttemptOutcome(status=status, error=f"answered {status}", address=address), True


def _describe(exc: HTTPError) -> str:
    if isinstance(exc, ReadTimeoutError):
        return "timed out waiting for the answer"
    return f"request failed: {type(exc).__name__}: {str(exc)[:300]}"
