"""Composition root: build the parts from config, run them together, stop them in order.

Long-lived tasks share one TaskGroup: if one dies, the service stops (and the CLI exits
non-zero) rather than running half-alive. Stopping has two phases: new connections are
answered ``421`` and the worker claims nothing new while in-flight sessions and batches
get ``shutdown_grace`` seconds; then what is left is closed and the background tasks are
cancelled (the commit and settle writes are shielded).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Mapping, Sequence

import structlog

from mailqueue import loops
from mailqueue.admin_http import AdminServer
from mailqueue.api import Api
from mailqueue.clock import Clock, SystemClock
from mailqueue.config import AdminConfig, Config
from mailqueue.control.nodes import FaultModel
from mailqueue.control.plane import ControlPlane, seed_windows
from mailqueue.delivery.dsn import Notifier
from mailqueue.delivery.expiry import ExpirySweeper
from mailqueue.delivery.ramp import DrainRamp
from mailqueue.delivery.retry import RetryPolicy
from mailqueue.delivery.worker import DeliveryWorker
from mailqueue.errors import ConfigError, QueueError
from mailqueue.events import EventHub
from mailqueue.mailbox.base import MailboxStore
from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.mailbox.placement import never_holds_maildirs
from mailqueue.mailbox.router import Router
from mailqueue.mailbox.sharded import NodeAwareStore, build_mailboxes
from mailqueue.metrics import Metrics
from mailqueue.queue import postgres
from mailqueue.queue.committer import GroupCommitter
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.store import QueueStore
from mailqueue.queue.values import BouncedRecipient, NewMessage
from mailqueue.service import Context
from mailqueue.service.nodes import node_view
from mailqueue.service.rehearsals import RehearsalRuns
from mailqueue.service.windows import window_view
from mailqueue.smtp import Capacity, Gate, MailqueueHandler, start_server
from mailqueue.smtp.auth import Authenticator
from mailqueue.smtp.server import listeners

log = structlog.get_logger("mailqueue.app")

CAPACITY_REFRESH = 5.0
CAPACITY_SHARE = 0.02  # at most this share of the time counting the queue for its capacity


def _ramp(config: Config, clock: Clock) -> DrainRamp | None:
    """The drain ramp ``[delivery]`` asks for (``ramp`` and/or ``max_rate``), if any."""
    delivery = config.delivery
    if delivery.ramp <= 0 and delivery.max_rate <= 0:
        return None
    return DrainRamp(clock, delivery.ramp, delivery.ramp_from, delivery.max_rate,
                     delivery.concurrency)


class MailqueueApp:
    """One mailqueue process: SMTP front end, group committer, control plane, worker."""

    def __init__(self, config: Config, clock: Clock | None = None,
                 queue: QueueStore | None = None,
                 mailboxes: dict[str, MailboxStore] | None = None,
                 run_smtp: bool = True, run_worker: bool = True, seed: int = 0,
                 tuned: Mapping[str, object] | None = None) -> None:
        self.config = config
        # What serve chose where the configuration left it open (mailqueue.tuning), logged
        # as server_tuned once the server is up: a start-up that fails prints one line.
        self.tuned = dict(tuned or {})
        self.clock = clock or SystemClock()
        # The writer process serves the front end's group commit: only where one runs.
        # ``auto`` is decided by ``serve`` (mailqueue.tuning); embedded, it is a thread.
        self.queue = queue or SqlQueueStore(
            config.queue.url, writer_process=config.queue.writer == "process" and run_smtp,
            writer_cpus=loops.child_cpus(config.queue.writer_cpus, config.server.cpus,
                                   loops.cpus_before_pinning()))
        self.run_smtp = run_smtp
        self.run_worker = run_worker
        self.control = ControlPlane(self.queue, self.clock, [s.name for s in config.stores],
                                    nodes={s.name: s.nodes for s in config.stores})
        # Every store on its nodes, which follow the control plane (``seed``: flaky draws).
        self.mailboxes: dict[str, MailboxStore] = mailboxes or build_mailboxes(
            config, self.clock, self.control.nodes, FaultModel(seed))
        self.committer = GroupCommitter(self.queue, config.queue.commit_batch)
        self.capacity = Capacity(config.queue.max_messages, config.queue.max_bytes)
        self.gate = Gate(config.smtp.max_connections, config.smtp.max_connections_per_ip)
        self.metrics = Metrics()
        self.events = EventHub()
        self.notifier = Notifier(Router(config.stores), config.smtp.hostname,
                                 config.queue.max_lifetime)
        self.worker = DeliveryWorker(self.queue, self.mailboxes, self.clock, config.delivery,
                                     RetryPolicy(config.queue), self.control.current,
                                     notify=self.notifier,
                                     observer=self.metrics.observe_settlement,
                                     ramp=_ramp(config, self.clock), due=self.control.due)
        self.expiry = ExpirySweeper(self.queue, self.clock, RetryPolicy(config.queue),
                                    self.control.current, self.notifier,
                                    delay_warning=config.queue.delay_warning,
                                    interval=config.delivery.reclaim_interval,
                                    on_expired=self._expired)
        self.worker.observe(self.events.observe_settlement)
        self.control.watch(
            lambda change, window: self.events.window_changed(
                change, window_view(window, self.clock.now())),
            lambda node: self.events.node_changed(node_view(node)))
        self.admin = self.admin_server(config.admin) \
            if config.admin is not None and config.admin.enabled else None
        self.smtp_server: asyncio.Server | None = None  # the [smtp] host:port listener
        self.smtp_servers: list[asyncio.Server] = []  # it and every [[smtp.listeners]] one
        self.ports: dict[str, int] = {}  # listener name -> the port it listens on
        self.tls: ssl.SSLContext | None = None
        self.authenticator: Authenticator | None = None
        self.control.listen(self.worker.wake)
        self.control.listen_commits(self.worker.wake)
        # PostgreSQL: notifications poke the plane and wake the worker on every change.
        self.listener = self._listener() if postgres.is_postgres(config.queue.url) else None
        if self.listener is not None:
            self.control.notified_by(self.listener.connected.is_set)
        self.clock.subscribe(self.worker.wake)
        self.ready = asyncio.Event()
        self.port: int | None = None
        self._stop = asyncio.Event()

    def _api(self, token: str | None) -> Api:
        """The HTTP API's view of this process: the service on its queue and clock, its
        events, its rehearsal runs."""
        ctx = Context(self.config, self.queue, self.clock, changed=self._changed,
                      events=self.events)
        runs = RehearsalRuns(lambda run: self.events.publish("rehearsal", run.view()))
        return Api(ctx, self.events, runs, self.control.blocked, token)

    def _changed(self) -> None:
        """A window, a node or queued mail was changed here: reread and look for work now."""
        self.control.poke()
        self.worker.wake()

    def _expired(self, bounced: Sequence[BouncedRecipient]) -> None:
        self.metrics.observe_expired(bounced)
        self.events.observe_expired(bounced, self.clock.now())

    def admin_server(self, config: AdminConfig) -> AdminServer:
        """An admin endpoint for ``config`` on this process's queue, metrics, clock and
        control plane, with the HTTP API (the one ``[admin]`` asks for is ``self.admin``;
        the test harness builds one when a test first needs it)."""
        return AdminServer(config, self.queue, self.metrics, self.clock, self.control.current,
                           list(self.config.stores), self._smtp_listening,
                           nodes=self.control.nodes, api=self._api(config.token))

    def stop(self) -> None:
        """Begin a graceful stop (safe to call from a signal handler)."""
        self._stop.set()

    def _smtp_listening(self) -> bool | None:
        if not self.run_smtp:
            return None
        return bool(self.smtp_servers) and all(s.is_serving() for s in self.smtp_servers)

    def _accepted(self, message: NewMessage) -> None:
        self.metrics.accepted.inc()
        self.events.observe_accepted(message)
        blocked = self.control.blocked()
        if any(store not in blocked for _, store in message.recipients):
            self.worker.wake()

    async def run(self) -> None:
        if self.run_worker:
            await self._check_stores()
        if self.run_smtp:
            await asyncio.to_thread(self._prepare_front_end)
        await self.queue.open()
        try:
            await seed_windows(self.queue, self.config.windows)
            await self.control.refresh()
            if self.run_smtp:  # the front end's fill level; a worker alone has no use for it
                await self._refresh_capacity()
            await self._run_tasks()
        finally:
            await self._close_stores()
            await self.queue.close()
            if self.authenticator is not None:
                self.authenticator.close()

    def _prepare_front_end(self) -> None:
        """Load (or make) the TLS certificate and read the users file, before the queue is
        opened: a config error stops the start with one line naming the key."""
        smtp = self.config.smtp
        if smtp.tls != "off":
            from mailqueue.smtp import tls

            served = tls.server_context(self.config)
            if served is not None:
                self.tls, certificate = served
                log.info("tls_ready", cert=str(certificate.cert_path),
                         names=",".join(certificate.names),
                         not_after=certificate.not_after.isoformat())
        if smtp.users_file is not None:
            authenticator = Authenticator(smtp.users_file, smtp.auth_max_failures,
                                          smtp.auth_lockout)
            authenticator.load()
            self.authenticator = authenticator

    async def _close_stores(self) -> None:
        """Say QUIT on the remote stores' idle connections and stop the stores' threads."""
        for store in self.mailboxes.values():
            close = getattr(store, "close", None)
            if callable(close):
                await asyncio.to_thread(close)

    async def _check_stores(self) -> None:
        """Refuse to start for a Maildir store whose path can never hold Maildirs (a file in
        the way, a pseudo filesystem such as /proc), naming the store, its key and path.
        Say which other stores cannot be written now, rather than only as deferred
        deliveries later; that is not fatal: a store may well be down during the very
        maintenance this server queues mail for; its mail waits and is retried."""
        keys = {s.name: f"stores[{i}].path" for i, s in enumerate(self.config.stores)}
        maildirs = {name: inner for name, store in self.mailboxes.items()
                    if isinstance(inner := store.inner if isinstance(store, NodeAwareStore)
                                  else store, MaildirStore)}
        for name, store in maildirs.items():  # all of them before any directory is made
            never = await asyncio.to_thread(never_holds_maildirs, store.root)
            if never is not None:
                raise ConfigError(f"store {name!r} ({keys.get(name, 'path')}): {never}; "
                                  "point it at a directory Maildirs can be written in")
        for name, store in maildirs.items():
            problem = await asyncio.to_thread(store.check_writable)
            if problem is not None:
                log.warning("store_not_writable", store=name, path=str(store.root),
                            error=problem)

    async def _run_tasks(self) -> None:
        async with asyncio.TaskGroup() as group:
            background = [group.create_task(self.committer.run(), name="committer"),
                          group.create_task(self.control.run(), name="control")]
            if self.run_smtp:
                # A count over the pending messages: a fraction of a second at a million queued.
                background.append(group.create_task(self._capacity_loop(), name="capacity"))
            if self.listener is not None:
                background.append(group.create_task(self.listener.run(), name="listen"))
            worker = group.create_task(self.worker.run(), name="worker") \
                if self.run_worker else None
            if self.run_worker:
                background.append(group.create_task(self.expiry.run(), name="expiry"))
            if self.admin is not None:
                background.append(group.create_task(self.admin.run(), name="admin"))
                await self.admin.started.wait()
            if self.run_smtp:
                await self._start_smtp()
            self.ready.set()
            listening: dict[str, object] = {"port": self.port} if self.run_smtp else {}
            if len(self.ports) > 1:
                listening["listeners"] = ",".join(f"{name}:{port}"
                                                  for name, port in self.ports.items())
            if self.run_smtp:
                listening.update(tls=self.config.smtp.tls, auth=self.authenticator is not None)
            if self.tuned:
                log.info("server_tuned", **self.tuned)
            log.info("server_started", **listening, queue=self.queue_url,
                     loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
                     stores=",".join(self.mailboxes), worker=self.run_worker)
            await self._stop.wait()
            await self._drain(worker)
            for task in background:
                task.cancel()
        log.info("server_stopped")

    def _listener(self) -> postgres.Listener:
        """Wake the worker on new mail and reread windows on a change (PostgreSQL)."""
        callbacks = {postgres.CONTROL_CHANNEL: self.control.poke}
        if self.run_worker:
            callbacks[postgres.QUEUE_CHANNEL] = self.worker.wake
        return postgres.Listener(self.config.queue.url, callbacks)

    @property
    def queue_url(self) -> str:
        return getattr(self.queue, "safe_url", "")

    async def _start_smtp(self) -> None:
        """Listen on ``[smtp] host:port`` and on every ``[[smtp.listeners]]`` entry."""
        handler = MailqueueHandler(self.config.smtp, Router(self.config.stores),
                                   self.control.current, self.committer, self.capacity,
                                   self.clock, on_accepted=self._accepted,
                                   queue_lost=self.queue.file_lost)
        handler.on_reply = self.metrics.observe_reply
        try:
            for listener in listeners(self.config.smtp):
                server = await start_server(handler, self.gate, self.config.smtp, listener,
                                            self.tls, self.authenticator)
                self.smtp_servers.append(server)
                self.ports[listener.name] = int(server.sockets[0].getsockname()[1])
        except BaseException:
            for server in self.smtp_servers:  # a port taken: free those already bound
                server.close()
            raise
        self.smtp_server = self.smtp_servers[0]
        self.port = next(iter(self.ports.values()))

    async def _drain(self, worker: asyncio.Task[None] | None) -> None:
        grace = self.config.smtp.shutdown_grace
        log.info("server_stopping", open_connections=self.gate.open_connections,
                 grace=grace)
        self.gate.draining = True
        self.worker.stop()
        deadline = time.monotonic() + grace
        while self.gate.open_connections and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self.smtp_servers:
            self.gate.close_all()
            for server in self.smtp_servers:
                server.close()
            # The 421s may leave only when the loop next runs (uvloop sends at the end of
            # an iteration): wait for the sessions to be gone before the process may exit.
            closing = time.monotonic() + 1.0
            while self.gate.open_connections and time.monotonic() < closing:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        if worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(worker),
                                       max(0.1, deadline - time.monotonic()))
            worker.cancel()
        # Sessions closed mid-commit still have their commit finish before the writer stops.
        await asyncio.sleep(0)

    async def _refresh_capacity(self) -> None:
        try:
            self.capacity.refreshed(*await self.queue.capacity())
        except QueueError as exc:
            log.warning("capacity_refresh_failed", error=str(exc))

    async def _capacity_loop(self) -> None:
        # The count walks every pending message: at a million queued it takes a good part
        # of a second, so the pause after it grows with it and the count never takes more
        # than a small share of the time (CAPACITY_SHARE). Between counts the front end
        # adds what it accepts to the last count itself.
        pause = CAPACITY_REFRESH
        while True:
            await asyncio.sleep(pause)
            started = time.monotonic()
            await self._refresh_capacity()
            pause = max(CAPACITY_REFRESH, (time.monotonic() - started) / CAPACITY_SHARE)
