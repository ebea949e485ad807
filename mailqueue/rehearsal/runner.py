"""Run a rehearsal: the real server in-process on a scaled clock, real SMTP traffic, a timeline.

:class:`Rehearsal` builds a config from the scenario (its own SQLite queue and Maildirs in a
work directory, its stores on the scenario's nodes), starts
:class:`~mailqueue.app.MailqueueApp` with the scenario's seed for node faults, sends the
planned traffic, applies the timeline's events when the clock reaches them, samples the
queue, runs the scenario's mailbox probes (:mod:`mailqueue.rehearsal.probes`: over IMAP
through a Dovecot of its own, or asking the access decision directly), waits for the drain,
stops everything and hands the observations to the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from mailqueue.app import MailqueueApp
from mailqueue.clock import ScaledClock
from mailqueue.config import Config, config_from_dict
from mailqueue.control.nodes import NodeMode, NodeState, node_name
from mailqueue.control.plane import set_nodes
from mailqueue.control.windows import Inbound, Window, WindowState
from mailqueue.errors import MailqueueError
from mailqueue.loadtest import free_port
from mailqueue.queue.values import Claim, RecipientOutcome, Settlement
from mailqueue.rehearsal.moments import access_notes
from mailqueue.rehearsal.probes import (
    ProbeLog,
    Prober,
    choose_users,
    decision_answer,
    imap_answer,
    mail_owner,
    probe_way,
    start_dovecot,
)
from mailqueue.rehearsal.scenario import Event, Scenario, ScenarioError
from mailqueue.rehearsal.traffic import TrafficSender, plan_traffic
from mailqueue.timeparse import format_duration, parse_time

if TYPE_CHECKING:
    from mailqueue.testing.dovecot import AccessDovecot

HOSTNAME = "mx.rehearsal.test"
# Real seconds before its moment that an extension due as its window ends is applied.
EXTEND_LEAD = 0.1
_NODE_MODES = {"node.up": NodeMode.UP, "node.down": NodeMode.DOWN,
               "node.slow": NodeMode.SLOW, "node.flaky": NodeMode.FLAKY}


@dataclasses.dataclass(frozen=True)
class Sample:
    """The queue at one simulated moment."""

    at: float
    depth: int  # messages not yet done
    bytes: int
    queued: int  # recipients waiting (queued + active)
    delivered: int  # recipients delivered so far
    bounced: int
    accepted: int  # messages acknowledged so far
    oldest: float | None  # received time of the oldest pending message
    held: bool  # some store is inside an active window


@dataclasses.dataclass(frozen=True)
class Entry:
    """A line of the status timeline."""

    at: float
    text: str
    depth: int
    kind: str = "event"  # event, window, milestone, problem, access (what clients showed)
    late: float = 0.0  # simulated seconds the event was applied after its time


@dataclasses.dataclass(frozen=True)
class BackendReply:
    """What the server of a remote (LMTP or SMTP) store made of one delivery attempt."""

    at: float
    store: str
    outcome: str  # accepted, deferred, bounced
    # The reply's code ("451", "550"); "no reply" for a refused or dropped connection or a
    # timeout; "node" for a node's fault (applied before the server is asked); "expired".
    code: str


@dataclasses.dataclass
class Observations:
    """Everything a rehearsal saw, for the report."""

    scenario: Scenario
    speed: float
    seed: int
    workdir: Path
    config: Config
    samples: list[Sample] = dataclasses.field(default_factory=list)
    timeline: list[Entry] = dataclasses.field(default_factory=list)
    windows: list[Window] = dataclasses.field(default_factory=list)
    outcomes: list[RecipientOutcome] = dataclasses.field(default_factory=list)
    replies: list[BackendReply] = dataclasses.field(default_factory=list)
    sender: TrafficSender | None = None
    probes: ProbeLog | None = None
    planned: int = 0
    drained: bool = False
    wall_seconds: float = 0.0
    finished_at: float = 0.0


def build_config(scenario: Scenario, workdir: Path, speed: float,
                 admin_port: int | None = None) -> Config:
    """The server's config: the scenario's stores and windows, its ``[server]`` overrides;
    with ``admin_port``, the admin endpoint there (Dovecot asks it who may log in) and the
    Maildirs given to a mail user Dovecot can serve them as."""
    server = scenario.file.server
    unknown = set(server) - {"smtp", "queue", "delivery"}
    if unknown:
        raise ScenarioError(f"{scenario.source}: server.{sorted(unknown)[0]}: unknown section "
                            "(use server.smtp, server.queue or server.delivery)")
    connections = scenario.file.traffic.connections
    data: dict[str, Any] = {
        "smtp": {"host": "127.0.0.1", "port": 0, "hostname": HOSTNAME,
                 "max_connections": connections + 16,
                 "max_connections_per_ip": connections + 16, "shutdown_grace": 5},
        "queue": {"url": f"sqlite+aiosqlite:///{workdir / 'queue.db'}"},
        # Leases are clock time: give a claim a real minute before it counts as lost.
        "delivery": {"poll_interval": 0.2, "reclaim_interval": 1.0, "lease": speed * 60},
        "logging": {"level": "warning"},
        "stores": [{"name": s.name, "path": str(workdir / "mail" / s.name),
                    "domains": s.domains, "nodes": s.nodes} if s.kind == "maildir"
                   else s.server_store(Path(scenario.source).absolute().parent)
                   for s in scenario.file.stores],
        "windows": [w.model_dump() for w in scenario.file.windows],
    }
    if admin_port is not None:
        data["admin"] = {"host": "127.0.0.1", "port": admin_port}
        owner = mail_owner()
        for store in data["stores"]:
            if owner is not None and store.get("kind", "maildir") == "maildir":
                store["owner"] = owner
    for section in ("smtp", "queue", "delivery"):
        data[section] = {**data[section], **server.get(section, {})}
    return config_from_dict(data, f"{scenario.source} [server]")


class Rehearsal:
    """One run of a scenario."""

    def __init__(self, scenario: Scenario, workdir: Path, speed: float | None = None,
                 seed: int | None = None, progress: TextIO | None = None) -> None:
        self.scenario = scenario
        self.speed = speed or scenario.info.speed
        self.seed = scenario.info.seed if seed is None else seed
        self.workdir = workdir
        probes = self._probe_log()
        # Dovecot asks the admin endpoint who may log in: a port known before it starts.
        admin = free_port() if probes is not None and probes.via == "imap" else None
        self.config = build_config(scenario, workdir, self.speed, admin)
        self.progress = progress
        self.obs = Observations(scenario=scenario, speed=self.speed, seed=self.seed,
                                workdir=workdir, config=self.config, probes=probes)
        self.clock: ScaledClock | None = None
        self.app: MailqueueApp | None = None
        self._imap_port: int | None = None
        self._phase = "starting"

    @property
    def phase(self) -> str:
        """Where the run is: starting, running, sending the last mail, draining."""
        return self._phase

    @property
    def latest(self) -> Sample | None:
        """The last sample of the queue taken (None before the first)."""
        return self.obs.samples[-1] if self.obs.samples else None

    def simulated_now(self) -> float | None:
        """The scenario's clock now (None before the run starts it)."""
        return None if self.clock is None else self.clock.now()

    def _probe_log(self) -> ProbeLog | None:
        spec = self.scenario.file.probes
        if spec is None:
            return None
        via, why = probe_way(self.scenario, self.workdir)
        return ProbeLog(via=via, why=why, interval=spec.interval,
                        users=choose_users(self.scenario))

    # --- assembly ---------------------------------------------------------------------

    async def run(self, drain_limit: float = 300.0) -> Observations:
        """Run the whole scenario; ``drain_limit`` real seconds for the drain after its end."""
        wall0 = time.monotonic()
        # Dovecot starts before the clock does: its start takes no simulated time.
        dovecot = await self._start_dovecot()
        try:
            await self._serve(drain_limit)
        finally:
            if dovecot is not None:
                await asyncio.to_thread(dovecot.stop)
        self.obs.wall_seconds = time.monotonic() - wall0
        return self.obs

    async def _start_dovecot(self) -> AccessDovecot | None:
        """The probes' Dovecot, started, when they log in over IMAP; when it cannot start
        and the scenario does not insist on IMAP, the probes ask the decision instead."""
        log = self.obs.probes
        if log is None or log.via != "imap":
            return None
        (self.workdir / "mail").mkdir(parents=True, exist_ok=True)
        (self.workdir / "mail").chmod(0o755)  # Dovecot's mail user passes through
        try:
            dovecot = await asyncio.to_thread(start_dovecot, self.config)
        except MailqueueError as exc:
            spec = self.scenario.file.probes
            if spec is not None and spec.via == "imap":
                raise
            log.via, log.why = "decision", str(exc)
            return None
        self._imap_port = dovecot.imap_port
        return dovecot

    async def _serve(self, drain_limit: float) -> None:
        plan = plan_traffic(self.scenario, self.seed)
        self.obs.planned = len(plan)
        clock = self.clock = ScaledClock(self.scenario.start, self.speed)
        app = self.app = MailqueueApp(self.config, clock=clock, seed=self.seed)
        remote = {s.name for s in self.config.stores if s.kind != "maildir"}
        if remote:
            app.worker.observe(lambda settled, claims, now: self.obs.replies.extend(
                backend_replies(settled, claims, now, remote)))
        server = asyncio.create_task(app.run(), name="server")
        try:
            await self._until_ready(app, server)
            await self._seed_nodes(app)
            sender = TrafficSender(plan, clock, "127.0.0.1", app.port or 0,
                                   self.scenario.file.traffic.connections, self.scenario.timezone)
            self.obs.sender = sender
            await self._main(app, sender, drain_limit)
            self.obs.outcomes = await app.queue.outcomes()
            self.obs.windows = await app.queue.windows()
            self._milestones()
        finally:
            app.stop()
            await asyncio.wait_for(server, 30)

    async def _until_ready(self, app: MailqueueApp, server: asyncio.Task[None]) -> None:
        ready = asyncio.create_task(app.ready.wait())
        await asyncio.wait([server, ready], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            ready.cancel()
            server.result()
        if not ready.done():
            ready.cancel()
            raise MailqueueError("the server did not start within 30 s")

    async def _seed_nodes(self, app: MailqueueApp) -> None:
        await app.queue.save_nodes([NodeState(name=node_name(store, index), store=store)
                                    for store, count in self.scenario.node_counts().items()
                                    for index in range(count)])
        await app.control.refresh()

    async def _main(self, app: MailqueueApp, sender: TrafficSender, drain_limit: float) -> None:
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            sampler = group.create_task(self._sampler(app, stop))
            ticker = group.create_task(self._ticker(stop))
            prober = self._prober(app)
            if prober is not None:
                group.create_task(prober.run(stop))
            traffic = group.create_task(sender.run())
            await self._timeline(app)
            await self._sleep_until(self.scenario.end)
            self._phase = "sending the last mail"
            await traffic
            self._phase = "draining"
            self.obs.drained = await self._drain(app, drain_limit)
            stop.set()
            await sampler
            ticker.cancel()
        self.obs.finished_at = self._now()

    def _prober(self, app: MailqueueApp) -> Prober | None:
        """The probes' rounds: IMAP logins in a pool of threads, or the decision asked on
        the event loop (it does not block)."""
        log, spec = self.obs.probes, self.scenario.file.probes
        if log is None or spec is None:
            return None
        assert self.clock is not None
        if log.via == "imap":
            port = self._imap_port
            assert port is not None
            return Prober(log, self.clock, lambda user: imap_answer(port, user.address),
                          threads=spec.connections)
        stores = {s.name: s for s in self.config.stores}
        return Prober(log, self.clock, lambda user: decision_answer(
            stores[user.store], user.address, app.control.current(), app.control.nodes()),
            threads=0)

    # --- the timeline -----------------------------------------------------------------

    def _now(self) -> float:
        assert self.clock is not None
        return self.clock.now()

    async def _sleep_until(self, at: float) -> None:
        assert self.clock is not None
        # Scaled time flows steadily: one sleep reaches ``at``.
        await asyncio.sleep(self.clock.real_seconds(at - self._now()))

    async def _timeline(self, app: MailqueueApp) -> None:
        self._phase = "running"
        for event in self.scenario.events:
            # An extension due as its window ends goes in just before, or the window
            # would lapse (and its stores drain) for the moment it takes to apply.
            lead = EXTEND_LEAD * self.speed if event.at_window_end else 0.0
            await self._sleep_until(event.at - lead)
            kind = "event"
            try:
                await self._apply(app, event)
            except MailqueueError as exc:
                kind, text = "problem", f"{event.label()} — could not apply: {exc}"
            else:
                text = event.label()
            late = max(0.0, self._now() - event.at)
            self.obs.timeline.append(Entry(at=event.at, text=text, depth=0, kind=kind,
                                           late=late))

    async def _apply(self, app: MailqueueApp, event: Event) -> None:
        now = self._now()
        spec = event.spec
        if spec.window is not None:
            await self._apply_window(app, event, now)
        if event.nodes:
            await set_nodes(app.queue, event.nodes, _NODE_MODES[spec.action], now,
                            counts=self.scenario.node_counts(), latency=spec.latency,
                            failure_rate=spec.failure_rate, fail_next=spec.fail_next)
        await app.control.refresh()
        app.worker.wake()

    async def _apply_window(self, app: MailqueueApp, event: Event, now: float) -> None:
        spec = event.spec
        name = spec.window or ""
        until = parse_time(spec.until, self.scenario.timezone) if spec.until else None
        current = next((w for w in await app.queue.windows() if w.name == name), None)
        if current is None:
            assert until is not None  # validated: an ad hoc start has an end
            current = Window(name=name, stores=(), start=now, end=until, inbound=Inbound.QUEUE,
                             timezone=self.scenario.timezone)
        if spec.action == "window.start":
            changed = current.started_now(now, until)
        elif spec.action == "window.extend":
            changed = current.extended(now, until or current.end)
        elif spec.action == "window.end":
            changed = current.ended_now(now)
        else:
            changed = current.cancelled(now)
        await app.queue.save_window(changed)

    # --- sampling, progress, drain ----------------------------------------------------

    async def _sample(self, app: MailqueueApp) -> Sample:
        stats = await app.queue.stats()
        rcpt = stats.recipients
        sender = self.obs.sender
        return Sample(at=self._now(), depth=stats.messages_pending, bytes=stats.bytes_pending,
                      queued=rcpt.get("queued", 0) + rcpt.get("active", 0),
                      delivered=rcpt.get("delivered", 0), bounced=rcpt.get("bounced", 0),
                      accepted=len(sender.accepted) if sender else 0,
                      oldest=stats.oldest_pending, held=bool(app.control.blocked()))

    async def _sampler(self, app: MailqueueApp, stop: asyncio.Event) -> None:
        assert self.clock is not None
        interval = self.clock.real_seconds(self.scenario.info.sample)
        next_at = time.monotonic()
        while True:
            self.obs.samples.append(await self._sample(app))
            if stop.is_set():
                return
            next_at += interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))

    async def _ticker(self, stop: asyncio.Event) -> None:
        if self.progress is None:
            return
        live = self.progress.isatty()
        last_line = 0.0
        while not stop.is_set():
            await asyncio.sleep(0.25)
            if live or time.monotonic() - last_line >= 5:
                last_line = time.monotonic()
                self._print_progress(live)

    def _print_progress(self, live: bool) -> None:
        assert self.progress is not None
        sample = self.obs.samples[-1] if self.obs.samples else None
        if sample is None:
            return
        window = "window active" if sample.held else "no window"
        line = (f"{self.scenario.time(self._now())}  {self._phase:<21}  {window:<13}  "
                f"queue {sample.depth:>6}  accepted {sample.accepted:>6}  "
                f"delivered {sample.delivered:>6}")
        self.progress.write(f"\r{line}\x1b[K" if live else f"{line}\n")
        self.progress.flush()

    async def _drain(self, app: MailqueueApp, limit: float) -> bool:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if (await app.queue.capacity())[0] == 0:
                return True
            await asyncio.sleep(0.1)
        return False

    def finish_progress(self) -> None:
        if self.progress is not None and self.progress.isatty():
            self.progress.write("\n")
            self.progress.flush()

    # --- derived milestones -----------------------------------------------------------

    def _milestones(self) -> None:
        """Window starts/ends and the drain, as the incident page would post them."""
        entries = self.obs.timeline
        # Depths as the series shows them at each event's time (the chart agrees).
        entries[:] = [dataclasses.replace(e, depth=self._depth_at(e.at)) for e in entries]
        for window in self.obs.windows:
            stores = ", ".join(window.stores) or "every store"
            if window.started_at is not None:
                entries.append(Entry(at=window.started_at, kind="window",
                                     depth=self._depth_at(window.started_at),
                                     text=f"Window {window.name} begins: mail for {stores} "
                                          "is accepted and queued"))
            if window.state is WindowState.ENDED and window.ended_at is not None:
                entries.append(Entry(at=window.ended_at, kind="window",
                                     depth=self._depth_at(window.ended_at),
                                     text=f"Window {window.name} ends: {stores} back, "
                                          "delivery of the queue begins"))
        peak = max(self.obs.samples, key=lambda s: s.depth, default=None)
        if peak is not None and peak.depth:
            entries.append(Entry(at=peak.at, kind="milestone", depth=peak.depth,
                                 text=f"Queue at its peak: {peak.depth} messages, "
                                      f"{peak.bytes / 1e6:.1f} MB"))
        drained = drain_complete(self.obs)
        if drained is not None:
            end, at = drained
            entries.append(Entry(at=at, kind="milestone", depth=self._depth_at(at),
                                 text="Everything queued during the window is delivered "
                                      f"({format_duration(at - end)} after the window ended)"))
        entries += self._access_entries()
        entries.sort(key=lambda e: e.at)

    def _access_entries(self) -> list[Entry]:
        """What the probe users' clients showed, and per store the two moments."""
        if self.obs.probes is None:
            return []
        return [Entry(at=at, kind=kind, depth=self._depth_at(at), text=text)
                for at, kind, text in access_notes(self.obs.probes, self.obs.windows,
                                                   self.obs.outcomes, self.obs.finished_at)]

    def _depth_at(self, at: float) -> int:
        before = [s for s in self.obs.samples if s.at <= at]
        return before[-1].depth if before else 0


def backend_replies(settlement: Settlement, claims: Sequence[Claim], now: float,
                    stores: Collection[str]) -> list[BackendReply]:
    """The outcomes of one settle for the remote ``stores``, with the server's reply code."""
    store_of = {c.recipient_id: c.store for c in claims if c.store in stores}
    found = [BackendReply(now, store_of[rid], "accepted", "2xx")
             for rid in settlement.delivered if rid in store_of]
    for rid, _, error in settlement.deferred:
        if rid in store_of:
            found.append(BackendReply(now, store_of[rid], "deferred",
                                      _code(settlement, rid, error)))
    for rid, reason in settlement.bounced:
        if rid in store_of:
            code = "expired" if reason.startswith("expired") else \
                _code(settlement, rid, reason)
            found.append(BackendReply(now, store_of[rid], "bounced", code))
    return found


def _code(settlement: Settlement, rid: int, error: str) -> str:
    reply = settlement.replies.get(rid)
    if reply is not None:
        return str(reply.code)
    return "node" if error.startswith("node ") else "no reply"


def last_window_end(obs: Observations) -> float | None:
    ends = [w.ended_at for w in obs.windows
            if w.state is WindowState.ENDED and w.ended_at is not None]
    return max(ends) if ends else None


def drain_complete(obs: Observations) -> tuple[float, float] | None:
    """(window end, first moment no message received before it was still pending)."""
    end = last_window_end(obs)
    if end is None:
        return None
    for sample in obs.samples:
        if sample.at >= end and (sample.oldest is None or sample.oldest >= end):
            return end, sample.at
    return None


def run_rehearsal(scenario: Scenario, workdir: Path, speed: float | None = None,
                  seed: int | None = None, progress: TextIO | None = sys.stderr,
                  drain_limit: float = 300.0) -> Observations:
    """Run a scenario to completion (blocking); the observations for the report."""
    rehearsal = Rehearsal(scenario, workdir, speed, seed, progress)
    try:
        return asyncio.run(rehearsal.run(drain_limit))
    finally:
        rehearsal.finish_progress()
