from __future__ import annotations

import random

from mailqueue.config import QueueConfig, RetryConfig
from mailqueue.delivery.retry import Bounce, Defer, RetryPolicy

DAY = 86400.0


def policy(jitter: float = 0.0, counts: bool = False) -> RetryPolicy:
    config = QueueConfig(retry=RetryConfig(initial_delay=60, multiplier=2, max_delay=3600,
                                           jitter=jitter),
                         max_lifetime=5 * DAY, window_time_counts=counts)
    return RetryPolicy(config, random.Random(7))


def test_backoff_doubles_then_caps() -> None:
    p = policy()
    assert [p.delay(n) for n in range(1, 9)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert p.delay(10_000) == 3600  # no overflow at absurd attempt counts


def test_jitter_stays_within_bounds() -> None:
    p = policy(jitter=0.1)
    delays = [p.delay(3) for _ in range(500)]
    assert min(delays) >= 216 and max(delays) <= 264
    assert len(set(delays)) > 100


def test_defer_until_lifetime_then_bounce() -> None:
    p = policy()
    assert p.after_failure(1, 0.0, 100.0, "down") == Defer(160.0)
    decision = p.after_failure(40, 0.0, 5 * DAY, "node down")
    assert isinstance(decision, Bounce) and "node down" in decision.reason


def test_window_time_does_not_age_mail_by_default() -> None:
    # Six days old, but three of them were inside a maintenance window.
    assert isinstance(policy().after_failure(9, 0.0, 6 * DAY, "x", window_time=3 * DAY), Defer)
    assert isinstance(policy(counts=True).after_failure(9, 0.0, 6 * DAY, "x", 3 * DAY), Bounce)
