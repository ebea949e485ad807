"""Postfix's lines, followed per queue id to one record per accepted message.

A message's lines (``postfix/smtpd``'s ``client=``, ``postfix/pickup``'s ``uid=``,
``postfix/qmgr``'s ``from=<...>, size=N, nrcpt=N``, a delivery agent's ``to=<...>,
[orig_to=<...>,] relay=..., status=...``, ``postfix/qmgr``'s ``removed``) make one
:class:`Arrival`: the time of its first line, its size, its recipients' domains (each
recipient once, however many attempts it took; as many as ``nrcpt`` says at least), its
sender's domain. Mail the
server makes itself (``postfix/bounce``'s notices, and any message queued without an
``smtpd`` or ``pickup`` line and from the null sender), mail coming back from a content
filter on the same host (a delivery to ``127.0.0.1`` answered ``queued as ID``) and mail
received before the logs begin (queued without its ``client=`` line) are not arrivals.
``NOQUEUE: reject`` lines count as rejected.

Recipients are held in memory as salted hashes (the salt is made per run and never
written) only until their message's last line; the record keeps domains and counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Callable
from typing import Generic, TypeVar

from mailqueue.traffic.profile import NO_DOMAIN, NULL_SENDER

UNKNOWN_DOMAIN = "(unknown)"  # a recipient counted by nrcpt whose address no line shows
_QUEUE_ID = re.compile(r"([0-9A-F]{6,}|[0-9BCDFGHJ-NP-TV-Zbcdfghj-np-tv-z]{10,}): ")
_FROM = re.compile(r"from=<(.*)>, size=(\d+), nrcpt=(\d+)")
_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")
_NOTICE = re.compile(r"notification: ([0-9A-Za-z]+)$")
OPEN_LIMIT = 200_000  # messages followed at once; past it the oldest is closed
M = TypeVar("M")  # what a follower holds of each message it follows
_DAEMONS: dict[str, str] = {}  # syslog program -> Postfix daemon (postfix/smtpd -> smtpd)


@dataclasses.dataclass(frozen=True)
class Arrival:
    """One accepted message, as the profile takes it."""

    at: float
    size: int
    domains: dict[str, int]  # recipients by domain
    sender_domain: str


def domain_of(address: str) -> str:
    """The lower-cased domain of an address; :data:`NO_DOMAIN` without one."""
    _, at, domain = address.rpartition("@")
    return domain.lower().rstrip(".") if at and domain else NO_DOMAIN


def sender_domain(address: str) -> str:
    return NULL_SENDER if not address or address == "<>" else domain_of(address)


class Recipients:
    """A message's recipients while it is followed: salted hash -> domain."""

    def __init__(self, salt: bytes) -> None:
        self._salt = salt
        self.seen: dict[bytes, str] = {}

    def add(self, address: str) -> None:
        key = hashlib.blake2b(address.lower().encode("utf-8", "replace"), key=self._salt,
                              digest_size=8).digest()
        if key not in self.seen:
            self.seen[key] = domain_of(address)

    def domains(self, at_least: int = 1) -> dict[str, int]:
        """Recipients by domain; ``at_least`` in all (the rest of unknown domain)."""
        counts: dict[str, int] = {}
        for domain in self.seen.values():
            counts[domain] = counts.get(domain, 0) + 1
        missing = at_least - len(self.seen)
        if missing > 0:
            counts[UNKNOWN_DOMAIN] = counts.get(UNKNOWN_DOMAIN, 0) + missing
        return counts


class _Message:
    __slots__ = ("at", "nrcpt", "received", "recipients", "sender", "size")

    def __init__(self, at: float, salt: bytes, received: bool) -> None:
        self.at = at
        self.received = received  # its smtpd client= or pickup line was seen
        self.size: int | None = None
        self.nrcpt = 0
        self.sender = ""
        self.recipients = Recipients(salt)


@dataclasses.dataclass
class Tally:
    """What a follower did not turn into arrivals."""

    rejected: int = 0
    generated: int = 0
    reinjected: int = 0
    incomplete: int = 0
    before_log: int = 0


class Follower(Generic[M]):
    """What a log's follower shares: the messages it follows by id (at most ``limit``; past
    it the oldest is closed), its salt for recipients, its tally, and ``emit``."""

    def __init__(self, emit: Callable[[Arrival], None], salt: bytes | None = None,
                 limit: int = OPEN_LIMIT) -> None:
        self._emit = emit
        self._salt = salt or os.urandom(16)
        self._limit = limit
        self._open: dict[str, M] = {}
        self.tally = Tally()

    def _close(self, key: str) -> None:
        """Stop following ``key``, emitting it if it was an arrival."""
        raise NotImplementedError

    def _track(self, key: str, message: M) -> M:
        """Follow ``message`` under ``key``: an earlier message under it is done."""
        if key in self._open:
            self._close(key)
        self._open[key] = message
        if len(self._open) > self._limit:
            self._close(next(iter(self._open)))
        return message

    def finish(self) -> None:
        """The end of the logs: messages still followed are closed as they are."""
        for key in list(self._open):
            self._close(key)


class PostfixFollower(Follower[_Message]):
    """Feeds Postfix lines in log order; calls ``emit`` with each accepted message."""

    def __init__(self, emit: Callable[[Arrival], None], salt: bytes | None = None,
                 limit: int = OPEN_LIMIT) -> None:
        super().__init__(emit, salt, limit)
        self._generated: set[str] = set()
        self._reinjected: set[str] = set()

    def line(self, ts: float, program: str, text: str) -> bool:
        """One line's program and text; False if it is malformed (a line of a kind this
        reads whose fields are not there)."""
        match = _QUEUE_ID.match(text)
        if match is None:
            if text.startswith("NOQUEUE: ") and "reject" in text[9:30]:
                self.tally.rejected += 1
            return True
        queue_id, rest = match.group(1), text[match.end():]
        daemon = _DAEMONS.get(program)
        if daemon is None:
            daemon = _DAEMONS[program] = program.rpartition("/")[2]
        if rest.startswith("to=<"):
            return self._delivery(queue_id, rest)
        if rest.startswith("from=<") and daemon == "qmgr":
            return self._queued(ts, queue_id, rest)
        if rest == "removed":
            self._close(queue_id)
        elif rest.startswith("client=") or (daemon == "pickup" and "from=<" in rest):
            self._begin(ts, queue_id, received=True)
        elif daemon == "bounce":
            notice = _NOTICE.search(rest)
            if notice and notice.group(1) in self._open:  # (else it is done already)
                self._generated.add(notice.group(1))
        elif daemon == "cleanup" and rest.startswith(("reject:", "milter-reject:",
                                                      "discard:", "milter-discard:")):
            self._open.pop(queue_id, None)
            self.tally.rejected += 1
        return True

    def _begin(self, ts: float, queue_id: str, received: bool) -> _Message:
        # A queue id used again: the earlier message is done.
        return self._track(queue_id, _Message(ts, self._salt, received))

    def _queued(self, ts: float, queue_id: str, rest: str) -> bool:
        found = _FROM.match(rest)
        if found is None:
            return "status=" in rest  # "from=<...>, status=expired, returned to sender"
        message = self._open.get(queue_id) or self._begin(ts, queue_id, received=False)
        if message.size is None:  # qmgr logs it again each time it retries the message
            message.sender = found.group(1)
            message.size = int(found.group(2))
            message.nrcpt = int(found.group(3))
        return True

    def _delivery(self, queue_id: str, rest: str) -> bool:
        # "to=<ADDRESS>, [orig_to=<...>, ]relay=RELAY, ..., status=STATUS (reply)", read
        # with find (every delivery line of a large log comes through here).
        end = rest.find(">,", 4)
        relay_at = rest.find(" relay=", end)
        status_at = rest.find(" status=", relay_at)
        if end < 0 or relay_at < 0 or status_at < 0:
            return False
        message = self._open.get(queue_id)
        if message is not None:
            message.recipients.add(rest[4:end])
        if rest.startswith("sent", status_at + 8):
            relay = rest[relay_at + 7:rest.find(",", relay_at)]
            if "[127." in relay or "[::1]" in relay:
                back = _QUEUED_AS.search(rest, status_at)
                if back:
                    self._reinjected.add(back.group(1))
        return True

    def _close(self, queue_id: str) -> None:
        message = self._open.pop(queue_id, None)
        if queue_id in self._generated:
            self._generated.discard(queue_id)
            self.tally.generated += 1
        elif queue_id in self._reinjected:
            self._reinjected.discard(queue_id)
            self.tally.reinjected += 1
        elif message is None:
            return
        elif message.size is None:
            self.tally.incomplete += 1
        elif not message.received:
            # Queued without being received: a notice the server made (its bounce line may
            # come after it is done), or a message received before the logs begin.
            if message.sender:
                self.tally.before_log += 1
            else:
                self.tally.generated += 1
        else:
            self._emit(Arrival(message.at, message.size,
                               message.recipients.domains(max(1, message.nrcpt)),
                               sender_domain(message.sender)))
