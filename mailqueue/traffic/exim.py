"""Exim's main log, followed per message id to one record per accepted message.

The lines read (Exim's specification, chapter "Log files"): ``ID <= sender ... S=size``
(an arrival; with ``log_selector = +received_recipients`` it ends ``for addr ...``), the
deliveries ``=>`` (and ``->``, further addresses of the same delivery), ``>>``
(cutthrough), ``*>`` (suppressed by ``-N``), the failures ``**`` and the deferrals ``==``,
each naming a recipient (``local <original@domain>`` for a local delivery, the original
in angle brackets), and ``ID Completed``. A bounce Exim makes itself (``<= <> R=ID``)
is not an arrival; lines with `` rejected `` and no message id count as rejected.
"""

from __future__ import annotations

import re

from mailqueue.traffic.postfix import Arrival, Follower, Recipients, sender_domain

_ID = re.compile(r"([0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}) ")
_SIZE = re.compile(r"\bS=(\d+)")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_DELIVERY_FLAGS = ("=> ", "-> ", ">> ", "*> ", "** ", "== ")


class _Message:
    __slots__ = ("at", "recipients", "sender", "size")

    def __init__(self, at: float, sender: str, size: int, salt: bytes) -> None:
        self.at = at
        self.sender = sender
        self.size = size
        self.recipients = Recipients(salt)


def recipient(rest: str) -> str:
    """The address a delivery line names: the original in ``<...>`` when there is one."""
    head = rest.split(" R=", 1)[0].split(" T=", 1)[0]
    if ">" in head and "<" in head:
        return head[head.rindex("<") + 1:head.rindex(">")]
    return head.split(" ", 1)[0].rstrip(":")


class EximFollower(Follower[_Message]):
    """Feeds Exim main-log lines in log order; calls ``emit`` with each accepted message."""

    def line(self, ts: float, text: str) -> bool:
        """One line's text (after the time and pid); False if it is malformed."""
        match = _ID.match(text)
        if match is None:
            if " rejected " in text:
                self.tally.rejected += 1
            return True
        message_id, rest = match.group(1), text[match.end():]
        flag = rest[:3]
        if flag == "<= ":
            return self._arrival(ts, message_id, rest[3:])
        if flag in _DELIVERY_FLAGS:
            address = recipient(rest[3:])
            if not address:
                return False
            message = self._open.get(message_id)
            if message is not None:
                message.recipients.add(address)
        elif rest.startswith("Completed"):
            self._close(message_id)
        return True

    def _arrival(self, ts: float, message_id: str, rest: str) -> bool:
        sender, _, fields = rest.partition(" ")
        size = _SIZE.search(fields)
        if not sender or size is None:
            return False
        if sender == "<>" and fields.startswith("R="):  # a bounce Exim made itself
            self.tally.generated += 1
            return True
        message = self._track(message_id, _Message(ts, sender, int(size.group(1)),
                                                   self._salt))
        # +received_recipients: "for a@b c@d" at the end (a quoted subject may hold " for ").
        plain = _QUOTED.sub('""', fields)
        if " for " in plain:
            for address in plain.rsplit(" for ", 1)[1].split():
                message.recipients.add(address)
        return True

    def _close(self, message_id: str) -> None:
        message = self._open.pop(message_id, None)
        if message is None:
            return
        self._emit(Arrival(message.at, message.size, message.recipients.domains(1),
                           sender_domain(message.sender)))
