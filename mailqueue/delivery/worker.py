"""The delivery worker: claim short, deliver outside the transaction, settle in a new one.

``concurrency`` lanes each claim a batch of due recipients whose store is not held by a
window, deliver it in a thread (Maildir I/O never runs on the event loop), and settle the
outcomes in one transaction. The settle is shielded from cancellation: a delivered file
is always recorded unless the process dies, and then the lease expires and the repeat
finds the file (at-least-once in the queue, exactly-once in the mailbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import structlog

from mailqueue import faults
from mailqueue.clock import Clock
from mailqueue.config import DeliveryConfig
from mailqueue.control.windows import WindowSet
from mailqueue.delivery.ramp import DrainRamp
from mailqueue.delivery.retry import Bounce, RetryPolicy
from mailqueue.errors import PermanentDeliveryError, QueueError, TemporaryDeliveryError
from mailqueue.mailbox.base import DeliveryOutcome, MailboxStore
from mailqueue.queue.store import MessageQueue
from mailqueue.queue.values import BouncedRecipient, Claim, Notify, Settlement

log = structlog.get_logger("mailqueue.delivery")

# While the queue database fails, a lane waits poll_interval, then twice that, ... up to this.
ERROR_BACKOFF_MAX = 30.0


class DeliveryWorker:
    """Drains the queue into the mailbox stores."""

    def __init__(self, queue: MessageQueue, mailboxes: Mapping[str, MailboxStore], clock: Clock,
                 config: DeliveryConfig, retry: RetryPolicy,
                 windows: Callable[[], WindowSet], owner: str | None = None,
                 notify: Notify | None = None,
                 observer: Callable[[Settlement, Sequence[Claim], float], None] | None = None,
                 ramp: DrainRamp | None = None) -> None:
        self._queue = queue
        self._mailboxes = dict(mailboxes)
        self._clock = clock
        self._config = config
        self._retry = retry
        self._windows = windows
        self._notify = notify  # builds bounce notices, enqueued with the settle
        self._observer = observer  # metrics: called after each settled batch
        self._ramp = ramp
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self.delivered = 0
        self.deferred = 0
        self.bounced = 0

    def wake(self) -> None:
        """New mail or a window change: look for work now instead of at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the batches in hand, claim no more."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()

    async def run(self) -> None:
        await self._reclaim()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._reclaimer())
            for lane in range(self._config.concurrency):
                group.create_task(self._lane(lane))

    async def _lane(self, lane: int) -> None:
        failures = 0
        while not self._stopping:
            try:
                # A drain ramp may hold some lanes back while the stores warm up.
                ramped = self._ramp is not None and lane >= self._ramp.lanes(self._windows())
                worked = False if ramped else await self.run_once()
                failures = 0
            except QueueError as exc:
                failures += 1
                log.warning("claim_failed", error=str(exc), lane=lane, failures=failures)
                worked = False
            if not worked and not self._stopping:
                await self._idle(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        """Capped exponential wait after ``failures`` database errors in a row (0: none)."""
        poll = self._config.poll_interval
        if failures <= 0:
            return poll
        return float(min(poll * 2 ** min(failures - 1, 32), max(poll, ERROR_BACKOFF_MAX)))

    async def _idle(self, seconds: float) -> None:
        """Sleep until woken (new mail, a window change) or ``seconds`` have passed."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def run_once(self) -> bool:
        """Claim and deliver one batch; False when nothing was due."""
        open_stores = [s for s in self._mailboxes if self._windows().blocking(s) is None]
        if not open_stores:
            return False
        limit = self._config.batch_size
        if self._ramp is not None:
            limit = self._ramp.grant(limit, self._windows())
            if not limit:
                return False
        now = self._clock.now()
        claims = await self._queue.claim(open_stores, limit, self.owner,
                                         now, now + self._config.lease,
                                         max_bytes=self._config.batch_bytes)
        if self._ramp is not None:
            self._ramp.refund(limit - len(claims))
        if not claims:
            return False
        settlement = await self._deliver(claims)
        if settlement.bounced and self._notify is not None:
            settlement.notices = self._notify(bounced_recipients(claims, settlement),
                                              self._clock.now())
        faults.hit("deliver.before_settle")
        # Shielded: a stop must not lose the record of files already in the mailboxes.
        await asyncio.shield(self._queue.settle(settlement, self.owner, self._clock.now()))
        if self._observer is not None:
            self._observer(settlement, claims, self._clock.now())
        self.delivered += len(settlement.delivered)
        self.deferred += len(settlement.deferred)
        self.bounced += len(settlement.bounced)
        return True

    async def _deliver(self, claims: Sequence[Claim]) -> Settlement:
        by_store: dict[str, list[Claim]] = defaultdict(list)
        for claim in claims:
            by_store[claim.store].append(claim)
        settlement = Settlement()
        for store_name, group in by_store.items():
            store = self._mailboxes.get(store_name)
            if store is None:
                outcomes: list[DeliveryOutcome] = [
                    TemporaryDeliveryError(f"store {store_name!r} is not configured")] * len(group)
            else:
                outcomes = await asyncio.to_thread(store.deliver, group)
            self._record(group, outcomes, settlement)
        return settlement

    def _record(self, claims: Sequence[Claim], outcomes: Sequence[DeliveryOutcome],
                settlement: Settlement) -> None:
        now = self._clock.now()
        windows = self._windows()
        for claim, outcome in zip(claims, outcomes, strict=True):
            fields = {"queue_id": claim.queue_id, "recipient": claim.address,
                      "store": claim.store, "attempt": claim.attempts}
            if outcome is None:
                settlement.delivered.append(claim.recipient_id)
                log.info("message_delivered", delay=round(now - claim.received_at, 3), **fields)
            elif isinstance(outcome, PermanentDeliveryError):
                settlement.bounced.append((claim.recipient_id, str(outcome)))
                log.warning("recipient_bounced", reason=str(outcome), **fields)
            else:
                inside = windows.time_inside(claim.store, claim.received_at, now)
                decision = self._retry.after_failure(claim.attempts, claim.received_at, now,
                                                     str(outcome), inside)
                if isinstance(decision, Bounce):
                    settlement.bounced.append((claim.recipient_id, decision.reason))
                    log.warning("recipient_expired", reason=decision.reason, **fields)
                else:
                    settlement.deferred.append((claim.recipient_id, decision.at, str(outcome)))
                    log.info("delivery_deferred", error=str(outcome),
                             retry_in=round(decision.at - now, 1), **fields)

    async def _reclaimer(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._stopped.wait(), self._config.reclaim_interval)
            except TimeoutError:
                await self._reclaim()

    async def _reclaim(self) -> None:
        try:
            count = await self._queue.reclaim_expired(self._clock.now())
        except QueueError as exc:
            log.warning("reclaim_failed", error=str(exc))
            return
        if count:
            log.warning("leases_reclaimed", recipients=count)
            self.wake()


def bounced_recipients(claims: Sequence[Claim],
                       settlement: Settlement) -> list[BouncedRecipient]:
    """The bounced claims of ``settlement``, as the notifier takes them."""
    reasons = dict(settlement.bounced)
    return [BouncedRecipient(recipient_id=c.recipient_id, queue_id=c.queue_id,
                             address=c.address, store=c.store, attempts=c.attempts,
                             mail_from=c.mail_from, received_at=c.received_at,
                             reason=reasons[c.recipient_id], body=c.body)
            for c in claims if c.recipient_id in reasons]
