"""Prometheus metrics (prometheus_client), in a registry of their own per app.

Counters count what this process did (SMTP accepts and rejections, delivery outcomes);
gauges describe the shared queue and are read from the database at each scrape, so any
process's ``/metrics`` shows the whole queue.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import Enum as StateSet

from mailqueue.control.windows import WindowSet, WindowState
from mailqueue.queue.values import BouncedRecipient, Claim, QueueReport, Settlement

# Delivery latency (acceptance to mailbox) spans seconds to the days a window lasts.
LATENCY_BUCKETS = (1, 5, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 2 * 86400,
                   3 * 86400, 5 * 86400)


class Metrics:
    """The app's metrics; ``render`` after ``refresh`` gives the exposition text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.accepted = Counter("mailqueue_messages_accepted", "Messages accepted over SMTP "
                                "(250 after commit).", registry=r)
        self.rejected = Counter("mailqueue_smtp_rejected", "SMTP replies refusing a command "
                                "(4xx and 5xx), by reply code.", ["code"], registry=r)
        self.delivered = Counter("mailqueue_recipients_delivered", "Recipients delivered to "
                                 "a mailbox.", ["store"], registry=r)
        self.deferred = Counter("mailqueue_recipients_deferred", "Delivery attempts that "
                                "failed temporarily.", ["store"], registry=r)
        self.bounced = Counter("mailqueue_recipients_bounced", "Recipients given up on "
                               "(permanent failure or expiry).", ["store"], registry=r)
        self.latency = Histogram("mailqueue_delivery_latency_seconds", "Time from acceptance "
                                 "to delivery.", buckets=LATENCY_BUCKETS, registry=r)
        self.depth = Gauge("mailqueue_queue_recipients", "Recipients in the queue by store "
                           "and state.", ["store", "state"], registry=r)
        self.bytes = Gauge("mailqueue_queue_bytes", "Bytes still to deliver by store and "
                           "state.", ["store", "state"], registry=r)
        self.oldest = Gauge("mailqueue_oldest_message_age_seconds", "Age of the oldest "
                            "message not yet done (0 when the queue is empty).", registry=r)
        self.queue_up = Gauge("mailqueue_queue_up", "1 if the queue database answered the "
                              "last scrape (0 also while an SQLite queue's file is not the "
                              "one at its path).", registry=r)
        self.logins = Counter("mailqueue_mailbox_logins", "IMAP and POP3 logins Dovecot "
                              "asked about, by store and answer (allowed, maintenance, "
                              "node-down, unknown).", ["store", "result"], registry=r)
        self.window = StateSet("mailqueue_window_state", "Each window's current state.",
                               ["window"], states=[s.value for s in WindowState], registry=r)

    def observe_settlement(self, settlement: Settlement, claims: Sequence[Claim],
                           now: float) -> None:
        """The worker's observer: count outcomes, time deliveries."""
        by_id = {c.recipient_id: c for c in claims}
        # Counted per store, then added once a store: a batch is hundreds of recipients.
        delivered: collections.Counter[str] = collections.Counter()
        observe = self.latency.observe
        for rid in settlement.delivered:
            claim = by_id[rid]
            delivered[claim.store] += 1
            observe(max(0.0, now - claim.received_at))
        for counter, counts in (
                (self.delivered, delivered),
                (self.deferred, collections.Counter(by_id[rid].store
                                                    for rid, _, _ in settlement.deferred)),
                (self.bounced, collections.Counter(by_id[rid].store
                                                   for rid, _ in settlement.bounced))):
            for store, count in counts.items():
                counter.labels(store).inc(count)

    def observe_expired(self, bounced: Sequence[BouncedRecipient]) -> None:
        """The expiry sweep's observer: recipients it gave up on count as bounced."""
        for item in bounced:
            self.bounced.labels(item.store).inc()

    def observe_reply(self, reply: str) -> None:
        """The SMTP front end's reply hook: count refusals by code."""
        if reply[:1] in ("4", "5"):
            self.rejected.labels(reply[:3]).inc()

    def refresh(self, report: QueueReport | None, windows: WindowSet, now: float) -> None:
        """Set the gauges from a fresh report (None: the queue did not answer)."""
        self.queue_up.set(0 if report is None else 1)
        if report is not None:
            self.depth.clear()
            self.bytes.clear()
            for (store, state), count in report.depth.items():
                self.depth.labels(store, state).set(count)
                self.bytes.labels(store, state).set(report.bytes.get((store, state), 0))
            oldest = report.oldest_pending
            self.oldest.set(0.0 if oldest is None else max(0.0, now - oldest))
        for window in windows.windows:
            self.window.labels(window.name).state(window.effective_state(now).value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
