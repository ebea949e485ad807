"""A queue with storage switched off: the SMTP ceiling of a machine, for benchmarks.

``mailqueue serve --null`` runs the same front end (aiosmtpd handler, policy, group
committer) over :class:`NullQueueStore`, whose ``enqueue`` keeps nothing and returns at
once. What a load test reaches against it is the most the front end can do on that
machine, so a durable run can be reported as a fraction of it. Messages accepted by a null
server are NOT stored and are never delivered: it answers ``250`` without the durability
contract and must never face real mail.
"""

from __future__ import annotations

from collections.abc import Sequence

from mailqueue.queue.models import Claim, NewMessage, QueueStats, RecipientState, Settlement
from mailqueue.windows import Window


class NullQueueStore:
    """A :class:`~mailqueue.queue.models.QueueStore` that discards messages.

    Windows are kept in memory (so the front end's window policy still runs), nothing is
    ever due, and the counters tell how many messages and bytes went through.
    """

    safe_url = "null:"

    def __init__(self) -> None:
        self._windows: dict[str, Window] = {}
        self.messages = 0
        self.bytes = 0

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def enqueue(self, messages: Sequence[NewMessage]) -> None:
        self.messages += len(messages)
        self.bytes += sum(len(m.body) for m in messages)

    async def claim(self, stores: Sequence[str], limit: int, owner: str, now: float,
                    lease_until: float) -> list[Claim]:
        return []

    async def settle(self, settlement: Settlement, owner: str, now: float) -> None:
        """Nothing is ever claimed, so nothing is settled."""

    async def reclaim_expired(self, now: float) -> int:
        return 0

    async def capacity(self) -> tuple[int, int]:
        return 0, 0

    async def stats(self) -> QueueStats:
        return QueueStats(recipients={s.value: 0 for s in RecipientState},
                          messages_pending=0, bytes_pending=0, oldest_pending=None,
                          messages_total=self.messages)

    async def windows(self) -> list[Window]:
        return sorted(self._windows.values(), key=lambda w: w.start)

    async def save_window(self, window: Window, expect_state: str | None = None) -> bool:
        known = self._windows.get(window.name)
        if expect_state is not None and (known is None or known.state.value != expect_state):
            return False
        self._windows[window.name] = window
        return True

    async def add_window_if_absent(self, window: Window) -> bool:
        if window.name in self._windows:
            return False
        self._windows[window.name] = window
        return True
