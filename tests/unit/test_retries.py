"""The one retry policy (backend/retries.py): attempts, full-jitter backoff, hooks, final errors."""

from __future__ import annotations

import random

import pytest

from backend.retries import RetryPolicy
from backend.uploads.storage import StorageError, storage_retrying


class Flaky:
    """Fails the first `failures` calls with `error`, then answers "ok"."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def test_waits_stay_under_the_exponential_ceiling_and_spread_over_it() -> None:
    random.seed(1234)
    policy = RetryPolicy(attempts=12)
    waits: list[float] = []
    with pytest.raises(ValueError):
        policy.retrying(retry_on=ValueError, sleep=waits.append)(Flaky(100, ValueError("no")))
    assert len(waits) == 11, "one wait between each two of the 12 attempts"
    for attempt, wait in enumerate(waits, start=1):
        assert 0 <= wait <= policy.delay_ceiling(attempt=attempt) <= 8.0
    assert policy.delay_ceiling(attempt=1) == 0.25 and policy.delay_ceiling(attempt=4) == 2.0
    # Full jitter: over many runs the first wait covers its whole range, not only the ceiling.
    firsts = []
    for _ in range(200):
        first: list[float] = []
        with pytest.raises(ValueError):
            RetryPolicy(attempts=2).retrying(retry_on=ValueError, sleep=first.append)(Flaky(5, ValueError("no")))
        firsts.append(first[0])
    assert min(firsts) < 0.25 / 4 and max(firsts) > 0.25 * 3 / 4


def test_the_cap_and_the_base_bound_every_wait() -> None:
    waits: list[float] = []
    policy = RetryPolicy(attempts=20, base=1.0, cap=2.5)
    with pytest.raises(ValueError):
        policy.retrying(retry_on=ValueError, sleep=waits.append)(Flaky(100, ValueError("no")))
    assert max(waits) <= 2.5 and policy.delay_ceiling(attempt=20) == 2.5


def test_success_after_failures_returns_the_answer_and_hooks_count_every_attempt() -> None:
    counted = {"before": 0, "after": 0, "before_sleep": 0}

    def hook(name: str):  # type: ignore[no-untyped-def]
        return lambda state: counted.__setitem__(name, counted[name] + 1)

    flaky = Flaky(2, StorageError("busy", retryable=True))
    retrying = storage_retrying(
        RetryPolicy(attempts=5, base=0.0),
        before=hook("before"),
        after=hook("after"),
        before_sleep=hook("before_sleep"),
    )
    assert retrying(flaky) == "ok"
    assert flaky.calls == 3
    assert counted == {"before": 3, "after": 2, "before_sleep": 2}


def test_the_last_error_is_raised_as_it_is_after_the_last_attempt() -> None:
    failures: list[int] = []
    flaky = Flaky(10, StorageError("still down", retryable=True))
    retrying = storage_retrying(
        RetryPolicy(attempts=3, base=0.0), after=lambda state: failures.append(state.attempt_number)
    )
    with pytest.raises(StorageError, match="still down"):
        retrying(flaky)
    assert flaky.calls == 3 and failures == [1, 2, 3], "the last failure is counted too"


def test_a_final_error_is_not_tried_again_but_still_counted() -> None:
    failures: list[int] = []
    flaky = Flaky(10, StorageError("access denied", retryable=False))
    retrying = storage_retrying(
        RetryPolicy(attempts=5, base=0.0), after=lambda state: failures.append(state.attempt_number)
    )
    with pytest.raises(StorageError, match="access denied"):
        retrying(flaky)
    assert flaky.calls == 1 and failures == [1]


def test_other_errors_pass_through_untouched() -> None:
    flaky = Flaky(10, KeyError("bug"))
    with pytest.raises(KeyError):
        storage_retrying(RetryPolicy(attempts=5, base=0.0))(flaky)
    assert flaky.calls == 1


async def _always_refused() -> None:
    raise ConnectionRefusedError("refused")


def test_the_async_form_follows_the_same_policy() -> None:
    import asyncio

    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def run() -> None:
        retrying = RetryPolicy(attempts=4).async_retrying(retry_on=OSError, sleep=sleep)
        await retrying(_always_refused)

    with pytest.raises(ConnectionRefusedError):
        asyncio.run(run())
    assert len(waits) == 3
    assert all(wait <= RetryPolicy().delay_ceiling(attempt=n) for n, wait in enumerate(waits, start=1))


def test_half_jitter_waits_at_least_half_the_ceiling_and_goes_on_from_earlier_failures() -> None:
    import asyncio

    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def run() -> None:
        policy = RetryPolicy(attempts=4, base=1.0, cap=8.0, jitter=0.5)
        await policy.async_retrying(retry_on=OSError, sleep=sleep, failed_before=2)(_always_refused)

    for _ in range(50):
        waits.clear()
        with pytest.raises(ConnectionRefusedError):
            asyncio.run(run())
        # Two failures were seen before: the waits follow attempts 3, 4 and 5 (ceilings 4, 8, 8).
        for wait, ceiling in zip(waits, (4.0, 8.0, 8.0), strict=True):
            assert ceiling / 2 <= wait <= ceiling
