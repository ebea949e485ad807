"""Retry and expiry policy for temporary delivery failures (pure: no I/O, time passed in)."""

from __future__ import annotations

import dataclasses
import random

from mailqueue.config import QueueConfig


@dataclasses.dataclass(frozen=True)
class Defer:
    at: float


@dataclasses.dataclass(frozen=True)
class Bounce:
    reason: str


class RetryPolicy:
    """Exponential backoff with jitter, capped, and a maximum queue lifetime.

    The ``n``-th failed attempt waits ``initial * multiplier**(n-1)`` seconds, at most
    ``max_delay``, spread by ``±jitter`` so that a store coming back is not hit by every
    deferred recipient in the same second. A recipient whose age at a failure exceeds
    ``max_lifetime`` bounces. ``window_time`` (seconds the recipient's store spent in a
    maintenance window) is not counted unless ``window_time_counts``.
    """

    def __init__(self, config: QueueConfig, rng: random.Random | None = None) -> None:
        self.initial = config.retry.initial_delay
        self.multiplier = config.retry.multiplier
        self.max_delay = config.retry.max_delay
        self.jitter = config.retry.jitter
        self.max_lifetime = config.max_lifetime
        self.window_time_counts = config.window_time_counts
        self._rng = rng or random.Random()

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure."""
        exponent = max(0, attempts - 1)
        base = self.initial * self.multiplier ** min(exponent, 64)
        base = min(base, self.max_delay)
        if self.jitter:
            base *= 1 + self._rng.uniform(-self.jitter, self.jitter)
        return max(0.0, base)

    def age(self, received_at: float, now: float, window_time: float = 0.0) -> float:
        """The age that counts against the lifetime."""
        age = now - received_at
        return age if self.window_time_counts else max(0.0, age - window_time)

    def after_failure(self, attempts: int, received_at: float, now: float, error: str,
                      window_time: float = 0.0) -> Defer | Bounce:
        """What to do with a recipient whose ``attempts``-th delivery failed temporarily."""
        age = self.age(received_at, now, window_time)
        if age >= self.max_lifetime:
            return Bounce(f"expired after {attempts} attempts in the queue; last error: {error}")
        return Defer(now + self.delay(attempts))
