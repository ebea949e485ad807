"""The delivery worker: claim short, deliver outside the transaction, settle in a new one.

``concurrency`` lanes each claim a batch of due recipients whose store is not held by a
window, deliver it in a thread (Maildir and network I/O never run on the event loop), and
settle the outcomes. The settle is shielded from cancellation: a delivered file is always
recorded unless the process dies, and then the lease expires and the repeat finds the file
(at-least-once in the queue, exactly-once in the mailbox).

A batch for Maildir stores is settled in one transaction once every file is written. A
batch for a remote store (LMTP, SMTP) is settled as its outcomes arrive: each reply is
handed over the moment the server gives it, and what has arrived is settled together while
the rest is still being delivered (one settle at a time per lane, so replies that come
during a settle go in the next). A server's ``250`` cannot be recognised on a repeat as a
Maildir copy can: the stretch between it and its record is the one in which a crash
delivers the message twice, and this keeps it to at most two settles (the one under way
when the reply arrives, and the one that records it).

Idle lanes sleep until they are woken: by new mail accepted here, a window or node change,
reclaimed leases, a clock jump, or a sibling lane whose claim came back with as much as it
could take (more may be due). One of the sleeping lanes, the poller, also wakes every
``poll_interval`` (longer while the database fails) to find what no wake-up announces:
mail committed by another process, retries that have come due. Where the control plane
watches the queue (an SQLite file: it wakes the worker on every commit it sees and knows
when the next retry comes due), the poller sleeps until that retry instead, up to
:data:`WATCHED_POLL_MAX`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import structlog

from mailqueue import faults
from mailqueue.clock import Clock
from mailqueue.config import DeliveryConfig
from mailqueue.control.windows import WindowSet
from mailqueue.delivery.ramp import DrainRamp
from mailqueue.delivery.retry import Bounce, RetryPolicy
from mailqueue.errors import (
    DeliveryError,
    PermanentDeliveryError,
    QueueError,
    TemporaryDeliveryError,
)
from mailqueue.mailbox.base import DeliveryOutcome, MailboxStore, ReportingStore
from mailqueue.queue.store import MessageQueue
from mailqueue.queue.values import BouncedRecipient, Claim, Notify, Settlement

log = structlog.get_logger("mailqueue.delivery")

# While the queue database fails, a lane waits poll_interval, then twice that, ... up to this.
ERROR_BACKOFF_MAX = 30.0
# A remote store starts no transaction, and waits for no reply, past this share of a
# claim's lease: the rest is deferred before the lease can run out and another lane
# deliver the same recipients again.
LEASE_SHARE = 0.8
# The longest an idle worker goes without a claim while the control plane watches the queue
# for it (a safety net: every commit and every retry time already wakes it).
WATCHED_POLL_MAX = 30.0


class DeliveryWorker:
    """Drains the queue into the mailbox stores."""

    def __init__(self, queue: MessageQueue, mailboxes: Mapping[str, MailboxStore], clock: Clock,
                 config: DeliveryConfig, retry: RetryPolicy,
                 windows: Callable[[], WindowSet], owner: str | None = None,
                 notify: Notify | None = None,
                 observer: Callable[[Settlement, Sequence[Claim], float], None] | None = None,
                 ramp: DrainRamp | None = None,
                 due: Callable[[], float | None] | None = None) -> None:
        self._queue = queue
        self._mailboxes = dict(mailboxes)
        self._clock = clock
        self._config = config
        self._retry = retry
        self._windows = windows
        self._notify = notify  # builds bounce notices, enqueued with the settle
        # Called after each settle (metrics; a rehearsal's record of the backends' replies).
        self._observers = [observer] if observer is not None else []
        self._ramp = ramp
        # When the next queued recipient comes due, from a watcher that also wakes this
        # worker on every commit (ControlPlane.due); None from it, or none: poll.
        self._due = due
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._sleepers = _Sleepers()
        self._wakes = 0  # wake-ups asked for so far: a lane that missed one looks again
        self._failures = 0  # claims failed in a row (the poller backs off)
        self._stopping = False
        self._stopped = asyncio.Event()
        self.delivered = 0
        self.deferred = 0
        self.bounced = 0

    def observe(self, callback: Callable[[Settlement, Sequence[Claim], float], None]) -> None:
        """Call ``callback(settlement, claims, now)`` after every settle from now on."""
        self._observers.append(callback)

    def wake(self) -> None:
        """New mail or a window change: a lane looks for work now instead of at the next
        poll (it wakes another if it finds more than a batch)."""
        self._wakes += 1
        self._sleepers.wake_one()

    def stop(self) -> None:
        """Finish the batches in hand, claim no more."""
        self._stopping = True
        self._stopped.set()
        self._sleepers.wake_all()

    async def run(self) -> None:
        await self._reclaim()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._reclaimer())
            for lane in range(self._config.concurrency):
                group.create_task(self._lane(lane))

    async def _lane(self, lane: int) -> None:
        while not self._stopping:
            wakes = self._wakes
            try:
                turn = await self._turn(lane)
                self._failures = 0
            except QueueError as exc:
                self._failures += 1
                log.warning("claim_failed", error=str(exc), lane=lane, failures=self._failures)
                turn = _Turn.IDLE
            if self._stopping:
                break
            if turn is _Turn.FULL:
                self.wake()  # more may be due: a sibling claims it meanwhile
            if turn is not _Turn.IDLE:
                # Still claiming: if no lane polls, a sleeping one takes it on.
                self._sleepers.keep_polling(self._poll_seconds())
            if turn is _Turn.HELD_BACK:
                # The ramp or its rate limit frees this lane in time, not on a wake-up.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), self._config.poll_interval)
            elif turn is _Turn.IDLE and self._wakes == wakes:
                await self._sleepers.sleep(self._poll_seconds())
            # A wake-up asked for during the claim, which may have missed its mail: look again.

    def _poll_seconds(self) -> float:
        """How long the poller sleeps: until the next retry comes due where the queue is
        watched, ``poll_interval`` otherwise, longer while the database fails."""
        poll = self._config.poll_interval
        due = self._due() if self._due is not None and not self._failures else None
        if due is None:
            return self._backoff(self._failures)
        wait = self._clock.real_seconds(due - self._clock.now())
        return min(max(poll, wait), max(poll, WATCHED_POLL_MAX))

    def _backoff(self, failures: int) -> float:
        """Capped exponential wait after ``failures`` database errors in a row (0: none)."""
        poll = self._config.poll_interval
        if failures <= 0:
            return poll
        return float(min(poll * 2 ** min(failures - 1, 32), max(poll, ERROR_BACKOFF_MAX)))

    async def run_once(self) -> bool:
        """Claim and deliver one batch; False when nothing was claimed."""
        return await self._turn(0) in (_Turn.WORKED, _Turn.FULL)

    async def _turn(self, lane: int) -> _Turn:
        """Claim and deliver one batch as lane ``lane``."""
        windows = self._windows()
        # A drain ramp may hold some lanes back while the stores warm up.
        if self._ramp is not None and lane >= self._ramp.lanes(windows):
            return _Turn.HELD_BACK
        open_stores = [s for s in self._mailboxes if windows.blocking(s) is None]
        if not open_stores:
            return _Turn.IDLE
        limit = self._config.batch_size
        if self._ramp is not None:
            limit = self._ramp.grant(limit, windows)
            if not limit:
                return _Turn.HELD_BACK
        now = self._clock.now()
        claims = await self._queue.claim(open_stores, limit, self.owner,
                                         now, now + self._config.lease,
                                         max_bytes=self._config.batch_bytes)
        if self._ramp is not None:
            self._ramp.refund(limit - len(claims))
        if not claims:
            return _Turn.IDLE
        # As much as the claim could take for one store (it shares the batch among the
        # open stores), or half the bytes: what is left may be worth another lane.
        full = len(claims) >= max(1, limit // len(open_stores)) or (
            self._config.batch_bytes > 0 and
            2 * sum(len(c.body) for c in claims) >= self._config.batch_bytes)
        if any(_reports(self._mailboxes.get(store)) for store in {c.store for c in claims}):
            await self._deliver_reporting(claims)
        else:
            await self._settle(await self._deliver(claims), claims)
        return _Turn.FULL if full else _Turn.WORKED

    async def _settle(self, settlement: Settlement, claims: Sequence[Claim]) -> None:
        """Record ``settlement`` (the outcomes of ``claims``), with its bounce notices."""
        if settlement.bounced and self._notify is not None:
            settlement.notices = self._notify(bounced_recipients(claims, settlement),
                                              self._clock.now())
        faults.hit("deliver.before_settle")
        # Shielded: a stop must not lose the record of files already in the mailboxes.
        await asyncio.shield(self._queue.settle(settlement, self.owner, self._clock.now()))
        for observe in self._observers:
            observe(settlement, claims, self._clock.now())
        self.delivered += len(settlement.delivered)
        self.deferred += len(settlement.deferred)
        self.bounced += len(settlement.bounced)

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

    async def _deliver_reporting(self, claims: Sequence[Claim]) -> None:
        """Deliver ``claims`` and settle their outcomes as they arrive (see the module)."""
        loop = asyncio.get_running_loop()
        arrived: list[tuple[Claim, DeliveryOutcome]] = []
        wake = asyncio.Event()

        def add(claim: Claim, outcome: DeliveryOutcome) -> None:  # on the loop
            arrived.append((claim, outcome))
            wake.set()

        delivering = asyncio.create_task(self._deliver_all(claims, loop, add))
        delivering.add_done_callback(_retrieved)
        delivering.add_done_callback(lambda _: wake.set())
        try:
            while True:
                await wake.wait()
                wake.clear()
                taken, arrived[:] = arrived[:], []
                if taken:
                    await self._settle_arrived(taken)
                if delivering.done() and not arrived:
                    break
        except asyncio.CancelledError:
            # A hard stop: record what is known (shielded), leave the rest to its lease.
            if arrived:
                await self._settle_arrived(arrived)
            raise
        delivering.result()  # a store's own failure ends the lane, as deliver's would

    async def _settle_arrived(self, taken: Sequence[tuple[Claim, DeliveryOutcome]]) -> None:
        claims = [claim for claim, _ in taken]
        settlement = Settlement()
        self._record(claims, [outcome for _, outcome in taken], settlement)
        await self._settle(settlement, claims)

    async def _deliver_all(self, claims: Sequence[Claim], loop: asyncio.AbstractEventLoop,
                           add: Callable[[Claim, DeliveryOutcome], None]) -> None:
        """Each store's claims, their outcomes handed to ``add`` on the loop as they come:
        a reporting store's one by one, any other's when its part is done."""
        by_store: dict[str, list[Claim]] = defaultdict(list)
        for claim in claims:
            by_store[claim.store].append(claim)
        deadline = self._deadline()
        for store_name, group in by_store.items():
            store = self._mailboxes.get(store_name)
            if store is None:
                for claim in group:
                    add(claim, TemporaryDeliveryError(f"store {store_name!r} is not configured"))
                continue
            told: set[int] = set()

            def report(index: int, outcome: DeliveryOutcome, group: list[Claim] = group,
                       told: set[int] = told) -> None:  # on the store's threads
                told.add(index)
                # A loop already closed (a hard stop) has no lane to tell: the lease will.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(add, group[index], outcome)

            if isinstance(store, ReportingStore) and store.reports:
                outcomes = await asyncio.to_thread(store.deliver_reporting, group, report,
                                                   deadline)
            else:
                outcomes = await asyncio.to_thread(store.deliver, group)
            # Calls made through call_soon_threadsafe before the thread returned have run by
            # now (the loop runs them in order): anything not told yet is told here.
            for index, outcome in enumerate(outcomes):
                if index not in told:
                    add(group[index], outcome)

    def _deadline(self) -> float | None:
        """When (``time.monotonic()``) a remote store must give up on this batch: a share
        of the lease, in real seconds (None under a clock whose time does not pass alone)."""
        seconds = self._clock.real_seconds(self._config.lease)
        return None if not math.isfinite(seconds) else time.monotonic() + seconds * LEASE_SHARE

    def _record(self, claims: Sequence[Claim], outcomes: Sequence[DeliveryOutcome],
                settlement: Settlement) -> None:
        """Sort ``outcomes`` into ``settlement``, with the remote replies behind them."""
        now = self._clock.now()
        windows = self._windows()
        for claim, outcome in zip(claims, outcomes, strict=True):
            fields = {"queue_id": claim.queue_id, "recipient": claim.address,
                      "store": claim.store, "attempt": claim.attempts}
            if isinstance(outcome, DeliveryError) and outcome.remote is not None:
                settlement.replies[claim.recipient_id] = outcome.remote
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


class _Turn(enum.Enum):
    """What a lane's turn came to."""

    IDLE = "idle"  # nothing claimable (or a failed claim): sleep until woken or polled
    WORKED = "worked"  # a batch delivered: claim again
    FULL = "full"  # a batch as large as a claim takes: claim again, and wake a sibling
    HELD_BACK = "held back"  # the drain ramp holds this lane back for now


class _Sleepers:
    """The idle lanes. Each waits to be woken; one of them, the poller, also wakes after
    its poll interval, so an idle worker costs one wake-up per interval, not one per lane."""

    def __init__(self) -> None:
        self._waiting: list[asyncio.Future[None]] = []
        self._poller: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def sleep(self, poll: float) -> None:
        """Wait until woken, or for ``poll`` seconds if no other sleeping lane polls
        sooner."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self.keep_polling(poll)
        try:
            await waiter
        finally:
            self._waiting.remove(waiter)
            if self._poller is waiter:
                self._poller = None
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None

    def keep_polling(self, poll: float) -> None:
        """See that a sleeping lane polls within ``poll`` seconds: make one the poller if
        none is, or bring the poller's wake-up forward."""
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        if self._poller is not None:
            if self._timer is None or self._timer.when() <= loop.time() + poll:
                return
            self._timer.cancel()
        else:
            self._poller = self._waiting[-1]
        self._timer = loop.call_later(poll, _release, self._poller)

    def wake_one(self) -> None:
        """Wake the lane that fell asleep last, the poller only if it sleeps alone (it
        keeps its timer)."""
        for waiter in reversed(self._waiting):
            if not waiter.done() and waiter is not self._poller:
                waiter.set_result(None)
                return
        if self._poller is not None:
            _release(self._poller)

    def wake_all(self) -> None:
        for waiter in self._waiting:
            _release(waiter)


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _retrieved(task: asyncio.Task[None]) -> None:
    """Mark ``task``'s failure as seen: a lane that stopped waiting for it (a queue error,
    a cancellation) has already reported what went wrong."""
    if not task.cancelled():
        task.exception()


def _reports(store: MailboxStore | None) -> bool:
    return isinstance(store, ReportingStore) and store.reports


def bounced_recipients(claims: Sequence[Claim],
                       settlement: Settlement) -> list[BouncedRecipient]:
    """The bounced claims of ``settlement``, as the notifier takes them, with the remote
    server's reply where one decided the bounce."""
    reasons = dict(settlement.bounced)
    replies = settlement.replies
    out = []
    for c in claims:
        if c.recipient_id not in reasons:
            continue
        remote = replies.get(c.recipient_id)
        out.append(BouncedRecipient(
            recipient_id=c.recipient_id, queue_id=c.queue_id, address=c.address,
            store=c.store, attempts=c.attempts, mail_from=c.mail_from,
            received_at=c.received_at, reason=reasons[c.recipient_id], body=c.body,
            remote_mta=remote.mta if remote else None,
            diagnostic=remote.line if remote else None))
    return out
