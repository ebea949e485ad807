"""Group commit: concurrent SMTP sessions' messages share one durable transaction.

Each session awaits :meth:`GroupCommitter.submit`; a single writer task takes everything
that arrived while the previous commit was on disk and commits it as one batch. The future
of every message in the batch resolves only after that commit returned, so the front end's
250 still means durable (contract 1), at a fraction of the fsyncs.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from mailqueue import faults
from mailqueue.errors import QueueError
from mailqueue.queue.models import MessageQueue, NewMessage

log = structlog.get_logger("mailqueue.queue")


class GroupCommitter:
    """Batches :meth:`QueueStore.enqueue` calls from many sessions."""

    def __init__(self, store: MessageQueue, max_batch: int = 256) -> None:
        self._store = store
        self._max_batch = max_batch
        self._pending: asyncio.Queue[tuple[NewMessage, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.committed = 0

    async def submit(self, message: NewMessage) -> None:
        """Return once ``message`` is committed; raise :class:`QueueError` if it was not."""
        if self._task is None or self._task.done():
            raise QueueError("queue writer is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._pending.put((message, future))
        # A cancelled session must not cancel the commit other sessions share.
        await asyncio.shield(future)

    async def run(self) -> None:
        """The writer loop; runs until cancelled, failing what is still pending."""
        self._task = asyncio.current_task()
        try:
            while True:
                batch = [await self._pending.get()]
                while len(batch) < self._max_batch and not self._pending.empty():
                    batch.append(self._pending.get_nowait())
                await self._commit(batch)
        finally:
            self._fail_pending()

    async def _commit(self, batch: list[tuple[NewMessage, asyncio.Future[None]]]) -> None:
        write = asyncio.ensure_future(self._write([m for m, _ in batch]))  # noqa: RUF006
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            # Stopping: let the commit that is on its way finish, and tell its sessions.
            with contextlib.suppress(Exception):
                await write
            self._resolve(batch, write)
            raise
        except Exception as exc:
            log.error("queue_commit_failed", messages=len(batch), error=str(exc))
        else:
            self.commits += 1
            self.committed += len(batch)
        self._resolve(batch, write)

    async def _write(self, messages: list[NewMessage]) -> None:
        faults.hit("commit.before")
        await self._store.enqueue(messages)
        faults.hit("commit.after")

    @staticmethod
    def _resolve(batch: list[tuple[NewMessage, asyncio.Future[None]]],
                 write: asyncio.Future[None]) -> None:
        error = write.exception() if write.done() and not write.cancelled() else None
        if not write.done() or write.cancelled():
            error = QueueError("queue writer stopped")
        for _, future in batch:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error if isinstance(error, QueueError)
                                     else QueueError(f"queue write failed: {error}"))

    def _fail_pending(self) -> None:
        while not self._pending.empty():
            with contextlib.suppress(asyncio.QueueEmpty):
                _, future = self._pending.get_nowait()
                if not future.done():
                    future.set_exception(QueueError("queue writer stopped"))
