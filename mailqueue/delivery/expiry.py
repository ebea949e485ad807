"""Expiry and delay warnings: the sweep that gives up on mail too old to keep.

Postfix expires a message at its next failed attempt; a queue that holds mail through a
maintenance window also needs to expire mail that is never attempted. Every ``interval``
(and whenever a manual clock jumps) the sweep reads queued recipients older than the
lifetime, subtracts the time their store spent inside windows unless
``window_time_counts``, and bounces those still over it, with a delivery status
notification to a local sender in the same commit. With ``delay_warning`` set it also sends
a one-time "still trying" notice (as Postfix's ``delay_warning_time``). Recipients held by
an operator do not age out while held.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import structlog

from mailqueue.clock import Clock
from mailqueue.control.windows import WindowSet
from mailqueue.delivery.dsn import Notifier
from mailqueue.delivery.retry import RetryPolicy
from mailqueue.errors import QueueError
from mailqueue.queue.store import QueueAdmin
from mailqueue.queue.values import BouncedRecipient, PendingRecipient, RecipientState
from mailqueue.timeparse import format_duration

log = structlog.get_logger("mailqueue.expiry")


class ExpirySweeper:
    """Bounces recipients past ``max_lifetime``; optionally warns about delayed ones."""

    def __init__(self, queue: QueueAdmin, clock: Clock, retry: RetryPolicy,
                 windows: Callable[[], WindowSet], notifier: Notifier,
                 delay_warning: float = 0.0, interval: float = 30.0, batch: int = 500,
                 on_expired: Callable[[Sequence[BouncedRecipient]], None] | None = None,
                 ) -> None:
        self._queue = queue
        self._clock = clock
        self._retry = retry
        self._windows = windows
        self._notifier = notifier
        self._delay_warning = delay_warning
        self._interval = interval
        self._batch = batch
        self._on_expired = on_expired  # metrics
        self._wake = asyncio.Event()
        clock.subscribe(self._wake.set)

    async def run(self) -> None:
        while True:
            # Cleared before the sweep, so a clock jump during it triggers another one.
            self._wake.clear()
            try:
                await self.sweep_once()
            except QueueError as exc:
                log.warning("expiry_sweep_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)

    async def sweep_once(self) -> tuple[int, int]:
        """One pass: (recipients expired, recipients warned)."""
        now = self._clock.now()
        expired = await self._expire(now)
        warned = await self._warn(now) if self._delay_warning > 0 else 0
        return expired, warned

    def _age(self, item: PendingRecipient, now: float) -> float:
        inside = self._windows().time_inside(item.store, item.received_at, now)
        return self._retry.age(item.received_at, now, inside)

    async def _expire(self, now: float) -> int:
        lifetime = self._retry.max_lifetime
        candidates = await self._queue.pending_before(now - lifetime, self._batch)
        reasons = {}
        for item in candidates:
            if item.state != RecipientState.QUEUED.value:
                continue
            age = self._age(item, now)
            if age >= lifetime:
                reason = (f"expired: in the queue for {format_duration(age)} "
                          f"(max_lifetime {format_duration(lifetime)})")
                if item.last_error:
                    reason += f"; last error: {item.last_error}"
                reasons[item.id] = reason
        if not reasons:
            return 0
        bounced = await self._queue.expire(reasons, now, self._notifier)
        if self._on_expired is not None:
            self._on_expired(bounced)
        for gone in bounced:
            log.warning("recipient_expired", queue_id=gone.queue_id, recipient=gone.address,
                        store=gone.store, attempt=gone.attempts, reason=gone.reason)
        return len(bounced)

    async def _warn(self, now: float) -> int:
        candidates = await self._queue.pending_before(now - self._delay_warning, self._batch,
                                                      unwarned=True)
        due = [item for item in candidates if item.state != RecipientState.HELD.value
               and self._age(item, now) >= self._delay_warning]
        if not due:
            return 0
        warned = await self._queue.record_delay_warnings(
            due, lambda fresh: self._notifier.delay_warnings(fresh, now), now)
        for item in warned:
            log.info("delay_warning_sent", queue_id=item.queue_id, recipient=item.address,
                     store=item.store, notice=bool(self._notifier.local_route(item.mail_from)))
        return len(warned)
