"""A queue with storage switched off: the SMTP ceiling of a machine, for benchmarks.

``mailqueue serve --null`` runs the same front end (aiosmtpd handler, policy, group
committer) over :class:`NullQueueStore`, whose ``enqueue`` keeps nothing and returns at
once. What a load test reaches against it is the most the front end can do on that
machine, so a durable run can be reported as a fraction of it. Messages accepted by a null
server are NOT stored and are never delivered: it answers ``250`` without the durability
contract and must never face real mail.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import Claim, NewMessage


class NullQueueStore(SqlQueueStore):
    """A queue that discards messages.

    Control state (windows, nodes) lives in a throwaway SQLite file, so the front end's
    window policy and every operator verb still run; nothing is ever due, and the counters
    tell how many messages and bytes went through.
    """

    def __init__(self) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="mailqueue-null-")
        super().__init__(f"sqlite+aiosqlite:///{self._scratch.name}/control.db",
                         threaded_writer=False)
        self.messages = 0
        self.bytes = 0

    @property
    def safe_url(self) -> str:
        return "null:"

    async def enqueue(self, batch: Sequence[NewMessage]) -> None:
        self.messages += len(batch)
        self.bytes += sum(len(m.body) for m in batch)

    async def claim(self, stores: Sequence[str], limit: int, owner: str, now: float,
                    lease_until: float, max_bytes: int = 0) -> list[Claim]:
        return []

    async def close(self) -> None:
        await super().close()
        self._scratch.cleanup()
