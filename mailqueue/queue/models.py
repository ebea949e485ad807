"""The queue's domain objects and the :class:`QueueStore` seam every backend implements."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol

from mailqueue.windows import Window

_B32 = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: ids never spell words


class RecipientState(StrEnum):
    QUEUED = "queued"
    ACTIVE = "active"
    HELD = "held"
    DELIVERED = "delivered"
    BOUNCED = "bounced"


FINAL_STATES = (RecipientState.DELIVERED, RecipientState.BOUNCED)


def new_queue_id(now: float | None = None) -> str:
    """A 14-character id that sorts by acceptance time (ms) and is unique across processes."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 30) | int.from_bytes(os.urandom(4), "big") >> 2
    chars = []
    for _ in range(14):
        value, rest = divmod(value, 31)
        chars.append(_B32[rest])
    return "".join(reversed(chars))


@dataclasses.dataclass(frozen=True)
class NewMessage:
    """A message accepted by the front end, ready to be committed."""

    queue_id: str
    mail_from: str
    recipients: tuple[tuple[str, str], ...]  # (address, store name)
    body: bytes
    received_at: float
    helo: str = ""
    peer: str = ""
    message_id: str | None = None
    digest: str = ""


@dataclasses.dataclass(frozen=True)
class Claim:
    """One recipient leased to a worker, with what it needs to deliver."""

    recipient_id: int
    queue_id: str
    address: str
    store: str
    attempts: int
    mail_from: str
    received_at: float
    helo: str
    peer: str
    body: bytes


@dataclasses.dataclass
class Settlement:
    """The outcome of one batch of deliveries, written in one transaction."""

    delivered: list[int] = dataclasses.field(default_factory=list)
    deferred: list[tuple[int, float, str]] = dataclasses.field(default_factory=list)
    bounced: list[tuple[int, str]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.delivered) + len(self.deferred) + len(self.bounced)


@dataclasses.dataclass(frozen=True)
class QueueStats:
    """Counts for ``mailqueue stats``, capacity checks and metrics."""

    recipients: dict[str, int]
    messages_pending: int
    bytes_pending: int
    oldest_pending: float | None
    messages_total: int


class QueueStore(Protocol):
    """The durable queue. No caller sees SQL; every method is one short transaction."""

    async def open(self) -> None:
        """Connect; create the schema in an empty database, refuse one at another schema
        revision (SchemaError: run ``mailqueue db upgrade``)."""
        ...

    async def close(self) -> None: ...

    async def enqueue(self, messages: Sequence[NewMessage]) -> None:
        """Commit ``messages`` and their recipients durably, all or nothing."""
        ...

    async def claim(self, stores: Sequence[str], limit: int, owner: str, now: float,
                    lease_until: float) -> list[Claim]:
        """Lease up to ``limit`` due recipients of ``stores`` that no active window holds;
        counts an attempt for each."""
        ...

    async def settle(self, settlement: Settlement, owner: str, now: float) -> None:
        """Record delivered / deferred / bounced outcomes of claims held by ``owner``."""
        ...

    async def reclaim_expired(self, now: float) -> int:
        """Return recipients whose lease has expired to the queue; how many."""
        ...

    async def capacity(self) -> tuple[int, int]:
        """(messages, bytes) not yet done, for the front end's capacity check."""
        ...

    async def stats(self) -> QueueStats: ...

    async def windows(self) -> list[Window]: ...

    async def save_window(self, window: Window, expect_state: str | None = None) -> bool:
        """Insert or update ``window``; with ``expect_state``, only if it is still in it."""
        ...

    async def add_window_if_absent(self, window: Window) -> bool: ...
