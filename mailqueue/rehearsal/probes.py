"""Mailbox probes: simulated users logging in to their mailboxes on a schedule through a
rehearsal, as the users of the upgrade notice did ("Access to individual mailboxes will be
disabled").

Every ``interval`` of simulated time a *round* starts: each probe user logs in. Over IMAP
(``via = "imap"``) that is a real login through the Dovecot ``mailqueue dovecot config``
writes for the rehearsal's stores (any password, loopback), which asks the rehearsal's
server who may log in: ``LOGIN``, then ``SELECT INBOX`` to count the messages. The answer
is classified from the reply text alone, as a user's client would see it:

- ``available`` — logged in and the INBOX opened;
- ``maintenance`` — refused with ``[ALERT] Mailbox maintenance: ...`` (a window);
- ``node-down`` — refused with ``[ALERT] Mailbox unavailable: ...`` (the mailbox's node);
- ``error`` — anything else: no connection, a timeout, another refusal.

(The kinds are :attr:`mailqueue.access.Closed.kind`'s.) Without Dovecot (or with
``via = "decision"``) a probe asks the same decision directly,
:func:`mailqueue.access.mailbox_closed` with the server's control-plane view.

Logins run in a small pool of threads, off the event loop. A round still under way when
the next is due makes that one *skipped* (recorded), so probes never pile up on a busy
machine; after the drain a last round shows the inboxes as users find them at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import imaplib
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from mailqueue.access import mailbox_closed
from mailqueue.clock import Clock
from mailqueue.config import Config, StoreConfig
from mailqueue.control.nodes import NodeState, node_index, node_of
from mailqueue.control.windows import WindowSet
from mailqueue.errors import ConfigError, MailqueueError
from mailqueue.rehearsal.scenario import ProbesSpec, Scenario, ScenarioError, StoreSpec

if TYPE_CHECKING:
    from mailqueue.testing.dovecot import AccessDovecot

OUTCOMES = ("available", "maintenance", "node-down", "error")
REFUSALS = ("maintenance", "node-down")
# The start of the reason each kind of refusal gives (mailqueue.access.Closed.reason).
_REASONS = {"Mailbox maintenance:": "maintenance", "Mailbox unavailable:": "node-down"}
PASSWORD = "rehearsal"  # the rehearsal's Dovecot takes any password (loopback only)
LOGIN_TIMEOUT = 10.0  # real seconds for a probe's connection and each reply
_MAX_USER = 100_000  # probe users are picked among user00000 .. user99999


@dataclasses.dataclass(frozen=True)
class ProbeUser:
    """A simulated user: a mailbox, its store and the node it lives on."""

    address: str
    store: str
    node: str


@dataclasses.dataclass(frozen=True)
class Answer:
    """What one login got: an outcome (:data:`OUTCOMES`), the INBOX's message count after
    an IMAP login, and the reply text of a refusal or an error."""

    outcome: str
    messages: int | None = None
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """One login of one probe user."""

    at: float  # simulated time the answer came
    round: int
    user: ProbeUser
    answer: Answer
    seconds: float = 0.0  # simulated time from connecting to the answer


@dataclasses.dataclass
class ProbeLog:
    """Everything the probes saw."""

    via: str  # "imap" or "decision"
    why: str  # how that way was chosen
    interval: float  # simulated seconds between two rounds
    users: tuple[ProbeUser, ...]
    rounds: list[float] = dataclasses.field(default_factory=list)  # start of each round
    skipped: list[float] = dataclasses.field(default_factory=list)  # rounds not started
    results: list[ProbeResult] = dataclasses.field(default_factory=list)

    def stores(self) -> list[str]:
        return list(dict.fromkeys(u.store for u in self.users))


# --- who probes -------------------------------------------------------------------------


def choose_users(scenario: Scenario) -> tuple[ProbeUser, ...]:
    """The probe users of ``scenario``'s ``[probes]``: its ``addresses``, or per store the
    lowest-numbered mailboxes of the traffic's (``user00000@`` its first domain, ...),
    spread over the store's nodes in turn."""
    spec = scenario.file.probes
    assert spec is not None
    stores = scenario.file.stores
    if spec.addresses is not None:
        by_domain = {d: s for s in stores for d in s.domains}
        return tuple(_user(by_domain[a.rpartition("@")[2]], a) for a in spec.addresses)
    return tuple(user for store in stores for user in _spread(store, _count(spec, store)))


def _count(spec: ProbesSpec, store: StoreSpec) -> int:
    if spec.users is None:
        return store.nodes
    return spec.users if isinstance(spec.users, int) else spec.users.get(store.name, 0)


def _user(store: StoreSpec, address: str) -> ProbeUser:
    return ProbeUser(address, store.name, node_of(store.name, store.nodes, address))


def _spread(store: StoreSpec, count: int) -> list[ProbeUser]:
    """``count`` mailboxes of ``store``, the i-th on node i mod nodes (as far as the
    numbered mailboxes reach every node)."""
    need = Counter(i % store.nodes for i in range(count))
    found: dict[int, list[str]] = {index: [] for index in need}
    for number in range(_MAX_USER):
        if all(len(found[index]) >= n for index, n in need.items()):
            break
        address = f"user{number:05d}@{store.domains[0]}"
        index = node_index(address, store.nodes)
        if len(found.get(index, ())) < need.get(index, 0):
            found[index].append(address)
    order = [found[i % store.nodes][i // store.nodes] for i in range(count)
             if i // store.nodes < len(found[i % store.nodes])]
    return [_user(store, address) for address in order]


# --- one login --------------------------------------------------------------------------


def classify_refusal(reply: str) -> str:
    """The kind of a refused login from its reply text (``[ALERT] REASON``, as Dovecot
    passes on mailqueue's reason): ``maintenance`` or ``node-down``, else ``error``."""
    text = alert_text(reply)
    for start, kind in _REASONS.items():
        if text.startswith(start):
            return kind
    return "error"


def alert_text(reply: str) -> str:
    """The text a client shows for a reply: without its ``[ALERT]`` response code."""
    return reply.strip().removeprefix("[ALERT]").strip()


def imap_answer(port: int, address: str, timeout: float = LOGIN_TIMEOUT,
                host: str = "127.0.0.1") -> Answer:
    """Log in as ``address`` over IMAP and open its INBOX (blocking: run it in a thread)."""
    try:
        with imaplib.IMAP4(host, port, timeout=timeout) as imap:
            try:
                imap.login(address, PASSWORD)
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                text = _text(exc.args[0] if exc.args else exc)
                kind = classify_refusal(text)
                return Answer(kind, detail=alert_text(text) if kind in REFUSALS else text)
            status, data = imap.select("INBOX")
            if status != "OK":
                return Answer("error", detail=f"SELECT INBOX: {_text(data[0])}")
            return Answer("available", messages=int(_text(data[0])))
    except (OSError, imaplib.IMAP4.error, ValueError) as exc:
        return Answer("error", detail=f"{type(exc).__name__}: {exc}".strip())


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decision_answer(store: StoreConfig, address: str, windows: WindowSet,
                    nodes: Mapping[str, NodeState]) -> Answer:
    """The access decision for ``address`` now, as a probe's answer."""
    closed = mailbox_closed(store, address, windows, nodes)
    if closed is None:
        return Answer("available")
    return Answer(closed.kind, detail=closed.reason())


# --- rounds -----------------------------------------------------------------------------


class Prober:
    """Runs the rounds of a :class:`ProbeLog` on a clock: ``answer`` logs one user in,
    in a pool of ``threads`` (0: on the event loop, for an answer that does not block)."""

    def __init__(self, log: ProbeLog, clock: Clock, answer: Callable[[ProbeUser], Answer],
                 threads: int) -> None:
        self.log = log
        self._clock = clock
        self._answer = answer
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="probe") \
            if threads else None

    async def run(self, stop: asyncio.Event) -> None:
        """A round every interval until ``stop`` is set, then a last one."""
        period = self._clock.real_seconds(self.log.interval)
        next_at = time.monotonic()
        current: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                if current is not None and current.done():
                    current.result()
                    current = None
                if current is None:
                    current = asyncio.create_task(self.round())
                else:
                    self.log.skipped.append(self._clock.now())
                next_at += period
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            if current is not None:
                await current
            await self.round()
        finally:
            if current is not None:
                current.cancel()
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)

    async def round(self) -> None:
        """Every probe user logs in once."""
        number = len(self.log.rounds)
        self.log.rounds.append(self._clock.now())
        if self._pool is None:
            timed = [self._timed(user) for user in self.log.users]
        else:
            loop = asyncio.get_running_loop()
            timed = await asyncio.gather(*(loop.run_in_executor(self._pool, self._timed, user)
                                           for user in self.log.users))
        self.log.results += [ProbeResult(at, number, user, answer, at - started)
                             for user, (started, at, answer) in
                             zip(self.log.users, timed, strict=True)]

    def _timed(self, user: ProbeUser) -> tuple[float, float, Answer]:
        started = self._clock.now()
        answer = self._answer(user)
        return started, self._clock.now(), answer


# --- how probes run -----------------------------------------------------------------------


def mail_owner() -> str | None:
    """The ``owner`` the rehearsal gives its Maildirs so that Dovecot can serve them:
    Dovecot serves no mail as root, so when running as root ``vmail`` (or uid 5000 where
    there is no such user); None otherwise (Dovecot then runs as the same user)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam("vmail")
    except KeyError:
        return "5000"
    return "vmail"


def probe_way(scenario: Scenario, workdir: Path) -> tuple[str, str]:
    """(``imap`` or ``decision``, why): how ``scenario``'s probes run here. ScenarioError
    when the scenario asks for IMAP and it cannot run."""
    spec = scenario.file.probes
    assert spec is not None
    if spec.via == "decision":
        return "decision", 'probes.via = "decision"'
    problem = imap_problem(scenario, workdir)
    if problem is None:
        return "imap", "Dovecot is installed"
    if spec.via == "imap":
        raise ScenarioError(f'{scenario.source}: probes.via: "imap" cannot run here: '
                            f"{problem}")
    return "decision", problem


def imap_problem(scenario: Scenario, workdir: Path) -> str | None:
    """Why the probes cannot log in over IMAP here (None: they can)."""
    from mailqueue.mailbox.maildir import resolve_owner
    from mailqueue.testing.dovecot import ACCESS_HINT, access_binary

    if access_binary() is None:
        return f"Dovecot with IMAP is not installed: {ACCESS_HINT}"
    probed = {u.store for u in choose_users(scenario)}
    base = Path(scenario.source).absolute().parent
    roots = []
    for store in scenario.file.stores:
        if store.name not in probed:
            continue
        if store.kind == "maildir":
            roots.append(workdir.absolute())
        elif store.verify_path is None:
            return (f"store {store.name}'s mailboxes are on its servers, with no "
                    "verify_path for Dovecot to serve them from")
        else:
            roots.append(base / store.verify_path)
    owner = mail_owner()
    if owner is None:
        return None
    uid, gid = resolve_owner(owner)
    for root in roots:
        closed = closed_to(root, uid, gid)
        if closed is not None:
            return (f"Dovecot's mail user (uid {uid}) cannot enter {closed}, on the way to "
                    "the Maildirs: give a --workdir it can reach")
    return None


def start_dovecot(config: Config) -> AccessDovecot:
    """The Dovecot ``mailqueue dovecot config`` writes for ``config`` (any password,
    refusals answered at once), started on free loopback ports (blocking). MailqueueError,
    one line, when it cannot start."""
    from mailqueue.testing.dovecot import AccessDovecot, DovecotMissing

    try:
        dovecot = AccessDovecot(config, nodelay=True)
    except DovecotMissing as exc:
        raise MailqueueError(str(exc)) from None
    try:
        dovecot.start()
    except ConfigError as exc:
        dovecot.stop()
        raise MailqueueError(f"Dovecot cannot serve the rehearsal's Maildirs: {exc}") from None
    except RuntimeError as exc:
        dovecot.stop()
        last = (str(exc).strip().splitlines() or ["no log"])[-1]
        raise MailqueueError(f"Dovecot did not start: {last}") from None
    return dovecot


def closed_to(path: Path, uid: int, gid: int) -> Path | None:
    """The first directory on the way to ``path`` that ``uid`` (group ``gid``) may not pass
    through; None when it may reach ``path`` (a part not made yet counts as open)."""
    for directory in [*reversed(path.parents), path]:
        try:
            stat = directory.stat()
        except OSError:
            return None
        if stat.st_uid == uid:
            allowed = stat.st_mode & 0o100
        elif stat.st_gid == gid:
            allowed = stat.st_mode & 0o010
        else:
            allowed = stat.st_mode & 0o001
        if not allowed:
            return directory
    return None
