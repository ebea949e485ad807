"""Inbound traffic for a rehearsal: a plan fixed by the seed, sent over real SMTP.

:func:`plan_traffic` draws every arrival up front (a Poisson process whose rate follows the
daily profile and the scenario's traffic events), so the same scenario and seed always
send the same mail. :class:`TrafficSender` releases each message when the scaled clock
reaches its time and sends it with aiosmtplib over a bounded pool of connections, retrying
temporary failures as an MTA would, and records what each 250 acknowledged.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import math
import random
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from email.utils import format_datetime

import aiosmtplib

from mailqueue.clock import Clock
from mailqueue.rehearsal.scenario import Scenario
from mailqueue.timeparse import get_zone

_QUEUED_AS = re.compile(r"queued as (\S+)")
_LOCAL_PARTS = ("alerts", "billing", "info", "jane.doe", "john.smith", "noreply", "orders",
                "support", "team", "updates")
RETRIES = 8
HOST = "rehearsal.invalid"  # the Message-ID's domain for mail from the null sender


@dataclasses.dataclass(frozen=True)
class Planned:
    """One message to send."""

    seq: int
    at: float  # simulated time it arrives
    sender: str
    recipients: tuple[str, ...]
    size: int


@dataclasses.dataclass(frozen=True)
class Accepted:
    """A message the server acknowledged with 250."""

    seq: int
    queue_id: str
    recipients: tuple[str, ...]
    at: float  # simulated time of the 250


def _rate_changes(scenario: Scenario) -> list[tuple[float, float]]:
    base = scenario.file.traffic.rate
    changes = [(scenario.start, base)]
    for event in scenario.events:
        if event.action == "traffic":
            rate = event.spec.rate if event.spec.rate is not None else \
                base * (event.spec.factor or 0.0)
            changes.append((event.at, rate))
    return changes


def _weights(profile: Sequence[float] | None) -> list[float]:
    if profile is None:
        return [1.0] * 24
    scale = 24 / sum(profile)
    return [w * scale for w in profile]


def plan_traffic(scenario: Scenario, seed: int) -> list[Planned]:
    """Every arrival between the scenario's start and end, drawn from ``seed``: synthetic,
    or replayed from the scenario's traffic profile
    (:func:`~mailqueue.rehearsal.replay.plan_replay`)."""
    if scenario.replay is not None:
        from mailqueue.rehearsal.replay import plan_replay

        return plan_replay(scenario, seed)
    rng = random.Random(seed)
    traffic = scenario.file.traffic
    zone = get_zone(scenario.timezone)
    hourly = _weights(traffic.profile if isinstance(traffic.profile, list) else None)
    changes = _rate_changes(scenario)
    stamps = [at for at, _ in changes]
    plan: list[Planned] = []
    t = scenario.start
    while t < scenario.end:
        # A segment of constant rate: up to the next local hour, rate change or the end.
        next_hour = (math.floor(t / 3600) + 1) * 3600
        after = bisect.bisect_right(stamps, t)
        seg_end = min(next_hour, scenario.end, *stamps[after:after + 1])
        rate = changes[after - 1][1] * hourly[datetime.fromtimestamp(t, zone).hour]
        t = _arrivals(rng, scenario, t, seg_end, rate / 3600.0, plan)
    return plan


def _arrivals(rng: random.Random, scenario: Scenario, t: float, seg_end: float,
              per_second: float, plan: list[Planned]) -> float:
    if per_second <= 0:
        return seg_end
    while True:
        t += rng.expovariate(per_second)
        if t >= seg_end:
            return seg_end  # memoryless: the next segment starts afresh
        plan.append(_message(rng, scenario, len(plan) + 1, t))


def _message(rng: random.Random, scenario: Scenario, seq: int, at: float) -> Planned:
    traffic = scenario.file.traffic
    count = rng.choices(range(1, len(traffic.recipients) + 1), traffic.recipients)[0]
    stores = {s.name: s for s in scenario.file.stores}
    mix = traffic.stores or {name: 1.0 for name in stores}
    recipients: list[str] = []
    for _ in range(count * 3):
        store = stores[rng.choices(list(mix), list(mix.values()))[0]]
        user = int(store.users * rng.random() ** 2)  # some mailboxes get much more mail
        address = f"user{user:05d}@{rng.choice(store.domains)}"
        if address not in recipients:
            recipients.append(address)
        if len(recipients) == count:
            break
    domain = rng.choices(list(traffic.senders), list(traffic.senders.values()))[0]
    sender = f"{rng.choice(_LOCAL_PARTS)}@{domain}"
    size = traffic.size_median * math.exp(traffic.size_sigma * rng.gauss(0.0, 1.0))
    return Planned(seq=seq, at=at, sender=sender, recipients=tuple(recipients),
                   size=int(min(max(size, 300), traffic.size_max)))


def render_message(item: Planned, zone: str) -> bytes:
    """The message text: headers naming the rehearsal sequence number, a padded body."""
    date = format_datetime(datetime.fromtimestamp(item.at, get_zone(zone)))
    head = (f"From: <{item.sender}>\r\nTo: {', '.join(item.recipients)}\r\n"
            f"Subject: Rehearsal message {item.seq}\r\nDate: {date}\r\n"
            f"Message-ID: <rehearsal-{item.seq}@{item.sender.partition('@')[2] or HOST}>\r\n"
            f"X-Rehearsal-Id: {item.seq}\r\n\r\n")
    # Long lines (the SMTP limit is 998): the front end reads DATA line by line, and the
    # rehearsal is about the queue, not about parsing many short lines.
    words = f"message {item.seq} the quick brown fox jumps over the lazy dog "
    line = (words * (900 // len(words)) + "\r\n")
    body = line * max(1, (item.size - len(head)) // len(line))
    return (head + body).encode("ascii")


class TrafficSender:
    """Sends a plan over SMTP as the scaled clock reaches each message's time."""

    def __init__(self, plan: Sequence[Planned], clock: Clock, host: str, port: int,
                 connections: int, zone: str) -> None:
        self._plan = plan
        self._clock = clock
        self._host = host
        self._port = port
        self._connections = connections
        self._zone = zone
        self.accepted: list[Accepted] = []
        self.refused: list[tuple[int, str]] = []  # (seq, reply) for permanent refusals
        self.tempfailed = 0  # 4xx replies (retried)
        self.released = 0

    @property
    def plan(self) -> Sequence[Planned]:
        """The messages it sends, in time order."""
        return self._plan

    async def run(self) -> None:
        """Release and send every planned message; return when all are answered."""
        queue: asyncio.Queue[Planned | None] = asyncio.Queue(maxsize=self._connections * 20)
        async with asyncio.TaskGroup() as group:
            for _ in range(self._connections):
                group.create_task(self._sender(queue))
            for item in self._plan:
                wait = self._clock.real_seconds(item.at - self._clock.now())
                if wait > 0:
                    await asyncio.sleep(wait)
                await queue.put(item)
                self.released += 1
            for _ in range(self._connections):
                await queue.put(None)

    async def _sender(self, queue: asyncio.Queue[Planned | None]) -> None:
        smtp: aiosmtplib.SMTP | None = None
        try:
            while (item := await queue.get()) is not None:
                smtp = await self._send(smtp, item)
        finally:
            if smtp is not None and smtp.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await smtp.quit()

    async def _send(self, smtp: aiosmtplib.SMTP | None, item: Planned) -> aiosmtplib.SMTP | None:
        data = render_message(item, self._zone)
        for attempt in range(RETRIES):
            try:
                if smtp is None or not smtp.is_connected:
                    smtp = aiosmtplib.SMTP(hostname=self._host, port=self._port, timeout=60)
                    await smtp.connect()
                errors, reply = await smtp.sendmail(item.sender, list(item.recipients), data)
            except aiosmtplib.SMTPResponseException as exc:
                smtp = _drop(smtp)
                if exc.code >= 500:
                    self.refused.append((item.seq, f"{exc.code} {exc.message}"))
                    return smtp
                self.tempfailed += 1
            except aiosmtplib.SMTPRecipientsRefused as exc:
                smtp = _drop(smtp)
                if any(r.code >= 500 for r in exc.recipients):
                    self.refused.append((item.seq, str(exc.recipients[0])))
                    return smtp
                self.tempfailed += 1
            except (aiosmtplib.SMTPException, OSError):
                smtp = _drop(smtp)
            else:
                self._record(item, errors, reply)
                return smtp
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
        self.refused.append((item.seq, "gave up after temporary failures"))
        return smtp

    def _record(self, item: Planned, errors: Mapping[str, object], reply: str) -> None:
        match = _QUEUED_AS.search(reply)
        taken = tuple(r for r in item.recipients if r not in errors)
        self.accepted.append(Accepted(seq=item.seq, queue_id=match.group(1) if match else "",
                                      recipients=taken, at=self._clock.now()))


def _drop(smtp: aiosmtplib.SMTP | None) -> aiosmtplib.SMTP | None:
    """Forget a connection after an error (the next message reconnects)."""
    if smtp is not None and smtp.is_connected:
        smtp.close()
    return None
