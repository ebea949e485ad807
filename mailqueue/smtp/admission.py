"""Admission at the SMTP front end: connection limits, queue capacity, draining at a stop."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

# After a commit failed for lack of disk space, new mail is refused at MAIL this long.
STORAGE_FULL_HOLD_OFF = 2.0


class Capacity:
    """The queue's fill level as the front end sees it: refreshed from the store, plus local
    acceptances since the refresh, so no count query runs per message."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.messages = 0
        self.bytes = 0
        self.full_until = 0.0

    def refreshed(self, messages: int, size: int) -> None:
        self.messages, self.bytes = messages, size

    def added(self, size: int) -> None:
        self.messages += 1
        self.bytes += size

    def storage_full(self, hold_off: float = STORAGE_FULL_HOLD_OFF) -> None:
        """The disk under the queue is full: refuse new mail at MAIL for ``hold_off`` s."""
        self.full_until = time.monotonic() + hold_off

    def full(self, incoming: int = 0) -> bool:
        return (self.messages >= self.max_messages or
                self.bytes + incoming > self.max_bytes or
                time.monotonic() < self.full_until)


def say(transport: asyncio.BaseTransport, line: bytes) -> None:
    """Write ``line`` unless the transport is closing. (uvloop's transports do not
    register as ``asyncio.WriteTransport``, so no isinstance test: one hid every 421 sent
    at a stop or an idle timeout when uvloop ran the server.)"""
    write = getattr(transport, "write", None)
    if write is not None and not transport.is_closing():
        write(line)


class Gate:
    """Connection admission: global and per-address limits, and draining at shutdown."""

    def __init__(self, max_connections: int, per_ip: int) -> None:
        self.max_connections = max_connections
        self.per_ip = per_ip
        self.by_ip: Counter[str] = Counter()
        self.transports: set[asyncio.BaseTransport] = set()
        self.draining = False

    @property
    def open_connections(self) -> int:
        return sum(self.by_ip.values())

    def admit(self, ip: str, transport: asyncio.BaseTransport) -> str | None:
        """None to admit, or the 421 reply to close with."""
        if self.draining:
            return "421 4.3.2 Service shutting down, try again later"
        if self.open_connections >= self.max_connections:
            return "421 4.7.0 Too many connections, try again later"
        if self.by_ip[ip] >= self.per_ip:
            return "421 4.7.0 Too many connections from your address, try again later"
        self.by_ip[ip] += 1
        self.transports.add(transport)
        return None

    def replace(self, old: asyncio.BaseTransport, new: asyncio.BaseTransport) -> None:
        """A session's connection now runs over ``new`` (TLS after STARTTLS)."""
        self.transports.discard(old)
        self.transports.add(new)

    def release(self, ip: str, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None:
            self.transports.discard(transport)
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]

    def close_all(self) -> None:
        """The hard deadline of a stop: close the sessions that are still open."""
        for transport in list(self.transports):
            say(transport, b"421 4.3.2 Service shutting down\r\n")
            transport.close()
