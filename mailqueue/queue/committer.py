"""Group commit: concurrent SMTP sessions' messages share one durable transaction.

Each session awaits :meth:`GroupCommitter.submit`; a single writer takes everything that
arrived while the previous commit was on disk and commits it as one batch. The future of
every message in the batch resolves only after that commit returned, so the front end's
250 still means durable (contract 1), at a fraction of the fsyncs.

The writer runs in one of two ways:

* **On a thread of its own**, when the store offers a blocking enqueue (an SQLite file).
  Sessions hand their messages straight to that thread, which commits and then resolves the
  whole batch with one callback into the event loop. A session hears its 250 two passes of
  the event loop after the commit returned. Through a writer task, an executor future and
  the shields around them it took six, and under load each pass of the loop is the better
  part of a millisecond.
* **As a task on the event loop** otherwise: PostgreSQL, whose driver is asynchronous; the
  null store; and an SQLite file whose transactions run in the writer process (``[queue]
  writer = "process"``, see :mod:`mailqueue.queue._writerproc`), to which the task sends
  each batch over a socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

import structlog

from mailqueue import faults, loops
from mailqueue.errors import QueueError, QueueLostError
from mailqueue.queue.store import BlockingEnqueue, MessageQueue
from mailqueue.queue.values import NewMessage

log = structlog.get_logger("mailqueue.queue")

Pending = tuple[NewMessage, "asyncio.Future[None]"]
# A task-mode batch stops before its bodies pass this many bytes (one message is taken
# whatever its size): the writer process's batch is pickled on the event loop, so this
# bounds that pause (tens of milliseconds at this size) and the copy's memory.
MAX_BATCH_BYTES = 16 * 1024 * 1024


class GroupCommitter:
    """Batches :meth:`MessageQueue.enqueue` calls from many sessions."""

    def __init__(self, store: MessageQueue, max_batch: int = 256) -> None:
        self._store = store
        self._max_batch = max_batch
        self._running = False
        # The writer task's backlog and wake-up (on the loop); in thread mode, only what is
        # failed at a stop passes through it.
        self._pending: collections.deque[Pending] = collections.deque()
        self._arrived = asyncio.Event()
        # The writer thread's inbox: what one pass of the loop gathered, in one piece (a
        # thread woken for each message would commit them nearly one by one). None is the
        # stop mark. Set while the thread runs.
        self._inbox: queue.SimpleQueue[list[Pending] | None] | None = None
        self._gathered: list[Pending] = []
        self.commits = 0
        self.committed = 0

    async def submit(self, message: NewMessage) -> None:
        """Return once ``message`` is committed; raise :class:`QueueError` if it was not.

        A session cancelled while it waits cancels only its own future: the commit it was
        part of goes on for the other sessions in it."""
        if not self._running:
            raise QueueError("queue writer is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._inbox is not None:
            if not self._gathered:
                asyncio.get_running_loop().call_soon(self._hand_over)
            self._gathered.append((message, future))
        else:
            self._pending.append((message, future))
            self._arrived.set()
        await future

    async def run(self) -> None:
        """The writer; runs until cancelled. Then the writer task lets the commit on its
        way finish, and the writer thread commits what was handed over before the stop;
        their sessions hear how it went. What is still pending fails."""
        enqueue = self._store.blocking_enqueue()
        self._running = True
        try:
            if enqueue is not None:
                await self._run_thread(enqueue)
            else:
                await self._run_task()
        finally:
            self._running = False
            self._fail_pending()

    # --- on a thread -------------------------------------------------------------------

    def _hand_over(self) -> None:
        # A session gone while it waited never heard a 250: committing its message would
        # only make its retry a second copy.
        gathered = [entry for entry in self._gathered if not entry[1].cancelled()]
        self._gathered = []
        if not gathered:
            return
        if self._inbox is not None:
            self._inbox.put(gathered)
        else:  # stopped in between
            self._pending.extend(gathered)
            self._fail_pending()

    async def _run_thread(self, enqueue: BlockingEnqueue) -> None:
        loop = asyncio.get_running_loop()
        inbox: queue.SimpleQueue[list[Pending] | None] = queue.SimpleQueue()
        ended: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(target=self._thread_main, args=(loop, inbox, enqueue, ended),
                                  name="queue-writer", daemon=True)
        try:
            thread.start()
            self._inbox = inbox
            await asyncio.shield(ended)
            # Only the stop mark should end the thread.
            raise QueueError("queue writer thread ended")
        finally:
            # Messages handed over before the stop mark are still committed and answered.
            self._inbox = None
            inbox.put(None)
            if thread.is_alive() or not ended.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(ended)

    def _thread_main(self, loop: asyncio.AbstractEventLoop,
                     inbox: queue.SimpleQueue[list[Pending] | None], enqueue: BlockingEnqueue,
                     ended: asyncio.Future[None]) -> None:
        part: list[Pending] = []
        try:
            loops.behind_the_loop()
            stop = False
            while not stop:
                batch: list[Pending] = []
                item = inbox.get()
                while item is not None:
                    batch.extend(item)
                    if len(batch) >= self._max_batch:
                        break
                    try:
                        item = inbox.get_nowait()
                    except queue.Empty:
                        break
                stop = item is None
                for start in range(0, len(batch), self._max_batch):
                    part = batch[start:start + self._max_batch]
                    error = _commit_blocking(enqueue, [message for message, _ in part])
                    _call_soon(loop, self._settle_batch, part, error)
                    part = []
        finally:
            if part:  # its commit's outcome is unknown: a 451 (resent), never a false 250
                _call_soon(loop, self._settle_batch, part, QueueError("queue writer stopped"))
            _call_soon(loop, _end, ended)

    # --- as a task ---------------------------------------------------------------------

    async def _run_task(self) -> None:
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            batch: list[Pending] = []
            size = 0
            while self._pending and len(batch) < self._max_batch and (
                    not batch or size + len(self._pending[0][0].body) <= MAX_BATCH_BYTES):
                entry = self._pending.popleft()
                # As in the hand-over to the thread: a session gone while it waited never
                # heard a 250, and committing its message would make its retry a copy.
                if not entry[1].cancelled():
                    batch.append(entry)
                    size += len(entry[0].body)
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[Pending]) -> None:
        write = asyncio.create_task(self._write([m for m, _ in batch]))  # noqa: RUF006
        try:
            await asyncio.wait((write,))  # a cancelled wait leaves the write running
        except asyncio.CancelledError:
            # Stopping: let the commit that is on its way finish, and tell its sessions.
            with contextlib.suppress(Exception):
                await write
            self._settle_batch(batch, _outcome(write))
            raise
        self._settle_batch(batch, _outcome(write))

    async def _write(self, messages: list[NewMessage]) -> None:
        faults.hit("commit.before")
        await self._store.enqueue(messages)
        faults.hit("commit.after")

    # --- both --------------------------------------------------------------------------

    def _settle_batch(self, batch: list[Pending], error: BaseException | None) -> None:
        """On the loop: count the commit, or log its failure; answer every session in it."""
        if error is None:
            self.commits += 1
            self.committed += len(batch)
        elif isinstance(error, QueueLostError):
            # The loss is the operator's news once (queue_file_lost), not once a batch.
            log.debug("queue_commit_refused", messages=len(batch), error=str(error))
        else:
            log.error("queue_commit_failed", messages=len(batch), error=str(error))
            if not isinstance(error, QueueError):
                error = QueueError(f"queue write failed: {error}")
        for _, future in batch:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    def _fail_pending(self) -> None:
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(QueueError("queue writer stopped"))


def _commit_blocking(enqueue: BlockingEnqueue,
                     messages: list[NewMessage]) -> BaseException | None:
    """On the writer thread: commit ``messages``; the error, or None."""
    try:
        faults.hit("commit.before")
        enqueue(messages)
        faults.hit("commit.after")
    except Exception as exc:  # answered to the sessions as a 451, logged on the loop
        return exc
    return None


def _outcome(write: asyncio.Future[None]) -> BaseException | None:
    if not write.done() or write.cancelled():
        return QueueError("queue writer stopped")
    return write.exception()


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any],
               *args: Any) -> None:
    """Run ``callback(*args)`` on ``loop`` from another thread, unless the loop is gone."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _end(ended: asyncio.Future[None]) -> None:
    if not ended.done():
        ended.set_result(None)
