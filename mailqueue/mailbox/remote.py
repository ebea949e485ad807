"""Stores that are real mail servers: delivery over LMTP (``kind = "lmtp"``) or SMTP
(``kind = "smtp"``).

A store has one host per node (``hosts``): a mailbox's node, the stable hash of its address
(:func:`~mailqueue.control.nodes.node_index`), names the host its mail goes to. Each host has
a pool of up to ``connections`` connections, each served by a thread of its own that
carries one transaction after another (``RSET`` between) and keeps its connection open for
``timeouts.idle`` seconds after the last one; a connection that has closed meanwhile is
noticed at its ``RSET`` and replaced at once.

A batch is split into transactions: the recipients of one message on one host go in one
transaction (one ``RCPT TO`` each), so a message to five mailboxes on one server crosses
the wire once. Outcomes are told (:meth:`RemoteStore.deliver_reporting`) as they arrive:

- a ``2xx`` is a delivery; for LMTP each recipient's own reply after the final dot decides
  it (RFC 2033), for SMTP the one reply decides all;
- a ``5xx`` to ``MAIL``, ``RCPT``, ``DATA`` or the dot fails that recipient for good: it
  bounces, and the notice quotes the reply (:class:`~mailqueue.errors.RemoteReply`);
- a ``4xx``, a refused or dropped connection, a timeout, a greeting or ``LHLO`` refused (of
  any code: those speak of the server, not the recipient): a temporary failure, retried
  with the store's backoff. Once a host refuses a connection (other than with a busy
  ``421``), the rest of the batch for it fails at once instead of waiting for each connect
  in turn.

Delivery over the network is at-least-once: a crash between a server's ``250`` and the
worker's record of it delivers the message again on the retry. Each copy carries an
``X-Mailqueue-Id`` header, so ``mailqueue verify`` recognises the second one.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Sequence
from email.utils import formatdate

import structlog

from mailqueue.config import StoreConfig
from mailqueue.control.nodes import node_index
from mailqueue.endpoint import Endpoint
from mailqueue.errors import PermanentDeliveryError, TemporaryDeliveryError
from mailqueue.mailbox._session import (
    Envelope,
    Session,
    SessionError,
    Settings,
    Timeouts,
    wire_data,
)
from mailqueue.mailbox.base import DeliveryOutcome, Report
from mailqueue.queue.values import Claim

log = structlog.get_logger("mailqueue.delivery")

_UNSAFE = {chr(c) for c in range(32)} | {"\x7f", "<", ">"}


def settings_of(store: StoreConfig, hostname: str) -> Settings:
    """The session settings a configured ``lmtp`` or ``smtp`` store asks for."""
    if store.kind not in ("lmtp", "smtp"):
        raise ValueError(f"store {store.name!r} is a {store.kind} store")
    t = store.timeouts
    return Settings(kind=store.kind, helo=store.helo or hostname,
                    timeouts=Timeouts(connect=t.connect, greeting=t.greeting, mail=t.mail,
                                      rcpt=t.rcpt, data_init=t.data_init,
                                      data_block=t.data_block, data_done=t.data_done,
                                      idle=t.idle),
                    tls=store.tls, tls_verify=store.tls_verify, tls_ca_file=store.tls_ca_file,
                    auth_user=store.auth_user, auth_password=store.auth_password)


def trace_header(claim: Claim, hostname: str, single: bool) -> bytes:
    """What mailqueue adds in front of a message it passes on: a ``Received:`` line (with
    ``for <recipient>`` when the transaction has one) and ``X-Mailqueue-Id``, by which
    ``verify`` knows a copy and a repeat."""
    stamp = formatdate(claim.received_at, localtime=False)
    helo = _printable(claim.helo) or "unknown"
    peer = _printable(claim.peer) or "unknown"
    to = f"\r\n\tfor <{claim.address}>" if single else ""
    return (f"Received: from {helo} ({peer})\r\n"
            f"\tby {hostname} (mailqueue) with {claim.protocol} id {claim.queue_id}{to};\r\n"
            f"\t{stamp}\r\n"
            f"X-Mailqueue-Id: {claim.queue_id}\r\n").encode("utf-8", "surrogateescape")


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:255]


@dataclasses.dataclass
class _Batch:
    """One call of :meth:`RemoteStore.deliver_reporting`: its outcomes as they arrive."""

    outcomes: list[DeliveryOutcome]
    report: Report | None
    deadline: float | None
    pending: int
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    refused: dict[int, TemporaryDeliveryError] = dataclasses.field(default_factory=dict)
    decided: set[int] = dataclasses.field(default_factory=set)

    def settle(self, index: int, outcome: DeliveryOutcome) -> None:
        """Record claim ``index``'s outcome (the first one told counts) and tell it."""
        with self.lock:
            if index in self.decided:
                return
            self.decided.add(index)
            self.outcomes[index] = outcome
            self.pending -= 1
            last = self.pending == 0
        try:
            if self.report is not None:
                self.report(index, outcome)
        finally:
            if last:
                self.done.set()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


@dataclasses.dataclass
class _Transaction:
    """One message for the recipients of one host: ``claims[i]`` are its batch indexes
    for ``envelope.recipients[i]`` (a recipient claimed twice is sent once)."""

    batch: _Batch
    host: int
    envelope: Envelope
    claims: list[list[int]]

    def settle(self, position: int, outcome: DeliveryOutcome) -> None:
        for index in self.claims[position]:
            self.batch.settle(index, outcome)

    def fail_rest(self, outcome: DeliveryOutcome) -> None:
        for position in range(len(self.claims)):
            self.settle(position, outcome)

    def any_decided(self) -> bool:
        return any(i in self.batch.decided for indexes in self.claims for i in indexes)


class _HostPool:
    """Up to ``size`` threads for one host, each with at most one open session. A thread
    is started only when a transaction waits and no thread is free, so light traffic keeps
    to the connections already open."""

    def __init__(self, store: RemoteStore, host: int, endpoint: Endpoint, size: int) -> None:
        self._store = store
        self._host = host
        self.endpoint = endpoint
        self._size = size
        self._jobs: queue.SimpleQueue[_Transaction | None] = queue.SimpleQueue()
        self._threads = 0
        self._waiting = 0  # threads waiting for a job
        self._queued = 0  # jobs not taken yet
        self._lock = threading.Lock()

    def submit(self, job: _Transaction) -> None:
        with self._lock:
            self._jobs.put(job)
            self._queued += 1
            if self._queued > self._waiting and self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._serve, daemon=True,
                                 name=f"{self._store.kind}-{self._store.name}-"
                                      f"{self._host + 1}.{self._threads}").start()

    def close(self) -> None:
        """Let each thread finish its job in hand, say QUIT and end (not waited for)."""
        with self._lock:
            for _ in range(self._threads):
                self._jobs.put(None)
                self._queued += 1
            self._threads = 0

    def _take(self, session: Session | None) -> _Transaction | None:
        """The next job (None: stop); raises queue.Empty after the idle time with an open
        session, which is then closed."""
        with self._lock:
            self._waiting += 1
        try:
            job = self._jobs.get(timeout=self._store.settings.timeouts.idle
                                 if session is not None else None)
        finally:
            with self._lock:
                self._waiting -= 1
        with self._lock:
            self._queued -= 1
        return job

    def _serve(self) -> None:
        session: Session | None = None
        while True:
            try:
                job = self._take(session)
            except queue.Empty:
                if session is not None:
                    session.close()
                session = None
                continue
            if job is None:
                break
            try:
                session = self._run(job, session)
            except Exception as exc:  # a bug must not leave a batch waiting for ever
                log.error("remote_delivery_crashed", store=self._store.name,
                          host=str(self.endpoint), error=repr(exc))
                if session is not None:
                    session.close(quit=False)
                session = None
                job.fail_rest(TemporaryDeliveryError(f"internal error: {exc!r}"))
        if session is not None:
            session.close()

    def _run(self, job: _Transaction, session: Session | None) -> Session | None:
        """Carry ``job`` out on ``session`` (or a new one); the session to keep, if any."""
        batch = job.batch
        if batch.expired():
            job.fail_rest(TemporaryDeliveryError(
                f"{self._store.kind} {self.endpoint}: not attempted: the claim's lease was "
                "about to run out"))
            return session
        refused = batch.refused.get(self._host)
        if refused is not None:
            job.fail_rest(refused)
            return session
        for attempt in range(2):
            reused = session is not None
            if session is None:
                session = self._open(job)
                if session is None:
                    return None
            try:
                session.transaction(job.envelope, job.settle, batch.deadline)
            except SessionError as exc:
                session.close(quit=False)
                session = None
                # A connection that closed while idle: start again on a new one, once.
                if exc.stale and reused and attempt == 0 and not job.any_decided():
                    continue
                job.fail_rest(TemporaryDeliveryError(exc.reason, remote=exc.remote))
                return None
            break
        if session is not None and session.closed:
            session.close(quit=False)
            return None
        return session

    def _open(self, job: _Transaction) -> Session | None:
        try:
            return Session.open(self.endpoint, self._store.settings, job.batch.deadline)
        except SessionError as exc:
            error = TemporaryDeliveryError(exc.reason, remote=exc.remote)
            # The rest of the batch for this host fails at once, rather than each waiting
            # for its own connect - unless the server only said it is busy right now (421:
            # too many connections), which the connections already open are not.
            if exc.remote is None or exc.remote.code != 421:
                job.batch.refused[self._host] = error
            log.info("remote_session_failed", store=self._store.name,
                     host=str(self.endpoint), error=exc.reason)
            job.fail_rest(error)
            return None


class RemoteStore:
    """A :class:`~mailqueue.mailbox.base.ReportingStore` that delivers to LMTP or SMTP
    servers, one per node."""

    reports = True

    def __init__(self, name: str, endpoints: Sequence[Endpoint], settings: Settings,
                 hostname: str, connections: int = 10) -> None:
        if not endpoints:
            raise ValueError(f"store {name!r} has no hosts")
        self.name = name
        self.kind = settings.kind
        self.settings = settings
        self.hostname = hostname
        self.endpoints = list(endpoints)
        self._pools = [_HostPool(self, index, endpoint, max(1, connections))
                       for index, endpoint in enumerate(self.endpoints)]

    @classmethod
    def from_config(cls, store: StoreConfig, hostname: str) -> RemoteStore:
        return cls(store.name, store.endpoints(), settings_of(store, hostname), hostname,
                   store.connections)

    def host_of(self, address: str) -> Endpoint:
        """The server ``address``'s mailbox is on."""
        return self.endpoints[node_index(address, len(self.endpoints))]

    def deliver(self, claims: Sequence[Claim]) -> list[DeliveryOutcome]:
        return self.deliver_reporting(claims, None, None)

    def deliver_reporting(self, claims: Sequence[Claim], report: Report | None,
                          deadline: float | None) -> list[DeliveryOutcome]:
        if not claims:
            return []
        batch = _Batch(outcomes=[None] * len(claims), report=report, deadline=deadline,
                       pending=len(claims))
        for job in self._transactions(claims, batch):
            self._pools[job.host].submit(job)
        batch.done.wait()
        return batch.outcomes

    def _transactions(self, claims: Sequence[Claim], batch: _Batch) -> list[_Transaction]:
        """One transaction per (host, message), in the batch's order."""
        groups: dict[tuple[int, str], list[int]] = {}
        for index, claim in enumerate(claims):
            unsafe = _unsafe_address(claim)
            if unsafe is not None:
                batch.settle(index, unsafe)
                continue
            host = node_index(claim.address, len(self.endpoints))
            groups.setdefault((host, claim.queue_id), []).append(index)
        return [self._transaction(batch, host, [claims[i] for i in indexes], indexes)
                for (host, _), indexes in groups.items()]

    def _transaction(self, batch: _Batch, host: int, claims: list[Claim],
                     indexes: list[int]) -> _Transaction:
        positions: dict[str, int] = {}
        recipients: list[str] = []
        by_position: list[list[int]] = []
        for claim, index in zip(claims, indexes, strict=True):
            key = claim.address.lower()
            if key not in positions:
                positions[key] = len(recipients)
                recipients.append(claim.address)
                by_position.append([])
            by_position[positions[key]].append(index)
        first = claims[0]
        data, size = wire_data(trace_header(first, self.hostname, len(recipients) == 1)
                               + first.body)
        envelope = Envelope(mail_from=first.mail_from, recipients=recipients, data=data,
                            size=size, eightbit=not data.isascii(),
                            utf8=not (first.mail_from.isascii() and
                                      all(r.isascii() for r in recipients)))
        return _Transaction(batch, host, envelope, by_position)

    def close(self) -> None:
        """Close the idle connections; threads in a transaction finish it first."""
        for pool in self._pools:
            pool.close()


def _unsafe_address(claim: Claim) -> DeliveryOutcome:
    """A bounce for an address that cannot be written in a command line (a control
    character or an angle bracket), or None."""
    for address in (claim.address, claim.mail_from):
        if any(c in _UNSAFE for c in address):
            return PermanentDeliveryError(f"address {address!r} cannot be sent in an SMTP "
                                          "command")
    return None

