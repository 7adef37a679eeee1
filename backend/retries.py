"""The one retry policy: how many attempts, how long to back off between them, and with what jitter.

Every caller that tries a call again builds its tenacity `Retrying` (or `AsyncRetrying`) from a
`RetryPolicy`, never a loop of its own: the transfer engine (each part, each whole-object call),
the storage backends it hands the policy to (S3's abort and delete), and the command-line client
(reconnecting its progress stream). Callers count and log attempts through tenacity's hooks
(`before`, `after`, `before_sleep`). Exponential backoff with jitter: after failed attempt n the
ceiling is min(cap, base * 2**(n-1)) and the wait is drawn from its top `jitter` share (1.0, the
default: uniform in [0, ceiling], "full jitter" in the AWS Architecture Blog's "Exponential Backoff
And Jitter"), so many workers retrying at once spread out instead of striking together.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

Hook = Callable[[RetryCallState], Any]


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts (the first try included) and the backoff between them."""

    attempts: int = 5
    base: float = 0.25
    cap: float = 8.0
    # The random share of each wait: 1.0 waits anywhere below the ceiling; 0.5 at least half of it.
    jitter: float = 1.0

    def delay_ceiling(self, *, attempt: int) -> float:
        """The longest wait after failed attempt `attempt` (1-based); the wait is uniform below it."""
        return min(self.cap, self.base * 2 ** (attempt - 1))

    def delay(self, *, attempt: int) -> float:
        """One wait after failed attempt `attempt`: every `Retrying` built below draws its waits here."""
        ceiling = self.delay_ceiling(attempt=attempt)
        return ceiling * (1 - self.jitter) + random.uniform(0, ceiling * self.jitter)

    def _arguments(
        self,
        *,
        retry_on: type[BaseException] | tuple[type[BaseException], ...],
        give_up: Callable[[BaseException], bool] | None,
        before: Hook | None,
        after: Hook | None,
        before_sleep: Hook | None,
        failed_before: int = 0,
    ) -> dict[str, Any]:
        stop: stop_base = stop_after_attempt(max(1, self.attempts))
        if give_up is not None:
            stop = stop | _stop_if(give_up)
        arguments: dict[str, Any] = {
            "stop": stop,
            "wait": _wait(self, failed_before=failed_before),
            "retry": retry_if_exception(lambda exc: isinstance(exc, retry_on)),
            "reraise": True,
        }
        for name, hook in (("before", before), ("after", after), ("before_sleep", before_sleep)):
            if hook is not None:
                arguments[name] = hook
        return arguments

    def retrying(
        self,
        *,
        retry_on: type[BaseException] | tuple[type[BaseException], ...],
        give_up: Callable[[BaseException], bool] | None = None,
        before: Hook | None = None,
        after: Hook | None = None,
        before_sleep: Hook | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Retrying:
        """A `Retrying` that tries again on `retry_on` errors, unless `give_up(error)` says it is final.

        `after` runs after every failed attempt (the last one too), `before_sleep` before each
        wait; the last error is raised as it is (no RetryError).
        """
        arguments = self._arguments(
            retry_on=retry_on, give_up=give_up, before=before, after=after, before_sleep=before_sleep
        )
        return Retrying(sleep=sleep, **arguments)

    def async_retrying(
        self,
        *,
        retry_on: type[BaseException] | tuple[type[BaseException], ...],
        give_up: Callable[[BaseException], bool] | None = None,
        before_sleep: Hook | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        failed_before: int = 0,
    ) -> AsyncRetrying:
        """`retrying` for coroutines (the command-line client).

        `failed_before` counts failures already seen (a connection that dropped): the backoff goes
        on from there instead of starting over.
        """
        arguments = self._arguments(
            retry_on=retry_on,
            give_up=give_up,
            before=None,
            after=None,
            before_sleep=before_sleep,
            failed_before=failed_before,
        )
        if sleep is not None:
            arguments["sleep"] = sleep
        return AsyncRetrying(**arguments)


class _wait(wait_base):
    """Tenacity's wait, drawn by `RetryPolicy.delay` (attempt numbers shifted by `failed_before`)."""

    def __init__(self, policy: RetryPolicy, *, failed_before: int) -> None:
        self.policy = policy
        self.failed_before = failed_before

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.policy.delay(attempt=retry_state.attempt_number + self.failed_before)


class _stop_if(stop_base):
    """Stop at once when the last attempt's error is one that no retry can mend."""

    def __init__(self, final: Callable[[BaseException], bool]) -> None:
        self.final = final

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is None or not outcome.failed:
            return False
        error = outcome.exception()
        return error is not None and self.final(error)
