"""Watching a window's queue drain: ``mailqueue window end NAME --wait``.

Polls the queue for the window's stores and shows a progress bar (done of total, rate,
ETA) with rich, which draws it in place on a terminal and prints only the final state when
the output is a file or a pipe. Recipients held by an operator are not waited for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from mailqueue.queue.store import QueueAdmin
from mailqueue.queue.values import DrainProgress
from mailqueue.timeparse import format_duration


@dataclasses.dataclass(frozen=True)
class DrainSummary:
    delivered: int
    bounced: int
    held: int
    remaining: int
    seconds: float
    timed_out: bool
    deleted: int = 0

    @property
    def rate(self) -> float:
        done = self.delivered + self.bounced
        return done / self.seconds if self.seconds > 0 else float(done)

    def describe(self, name: str) -> str:
        text = (f"window {name}: delivered {self.delivered}, bounced {self.bounced} in "
                f"{format_duration(self.seconds)} ({self.rate:.1f} recipients/s)")
        if self.timed_out:
            text += f"; gave up waiting with {self.remaining} still queued"
        if self.held:
            text += f"; {self.held} held by an operator (not waited for)"
        if self.deleted:
            text += f"; {self.deleted} deleted by an operator"
        return text


def _eta(progress: DrainProgress, rate: float) -> str:
    if not progress.remaining:
        return "done"
    return f"ETA {format_duration(progress.remaining / rate)}" if rate > 0 else "ETA -"


async def watch_drain(queue: QueueAdmin, stores: Sequence[str], since: float,
                      console: Console | None = None, poll: float = 0.5,
                      limit: float | None = None) -> DrainSummary:
    """Show progress until no recipient of ``stores`` is queued or active (or ``limit``
    real seconds pass); ``since`` is when the window ended."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    columns = (TextColumn("draining"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[eta]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("drain", total=None, rate="", eta="")
        while True:
            state = await queue.drain_progress(stores, since)
            done = state.delivered + state.bounced
            elapsed = time.monotonic() - started
            rate = done / elapsed if elapsed > 0 else 0.0
            bar.update(task, total=done + state.remaining, completed=done,
                       rate=f"{rate:.1f}/s", eta=_eta(state, rate))
            timed_out = limit is not None and elapsed >= limit
            if not state.remaining or timed_out:
                break
            await asyncio.sleep(poll)
    seconds = max(0.0, (state.last_settled or since) - since) if not timed_out else elapsed
    return DrainSummary(delivered=state.delivered, bounced=state.bounced, held=state.held,
                        remaining=state.remaining, seconds=seconds, timed_out=timed_out,
                        deleted=state.deleted)
