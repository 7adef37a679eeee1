"""The delay before a delivery's next attempt: exponential backoff with jitter."""

from __future__ import annotations

import random


def retry_delay(*, failed_attempts: int, base: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after `failed_attempts` (1 or more) attempts have failed.

    Doubling from `base` with the upper half jittered: the first retry comes `base`/2 to `base`
    after the first attempt, the next `base` to 2·`base` after that, and so on. The floor of each
    delay is half its ceiling, so with base 10 s the seven retries of eight attempts wait at least
    5 + 10 + ... + 320 = 635 s in all: a receiver that is down for ten minutes still gets the event.
    """
    if failed_attempts < 1:
        raise ValueError("a retry follows at least one failed attempt")
    ceiling = base * 2 ** (failed_attempts - 1)
    return ceiling / 2 + (rng or random).random() * ceiling / 2
