#!/usr/bin/env python3
"""CPU cost of the group-commit enqueue path: aiosqlite against the dedicated writer thread.

Wall-clock rates on a shared machine swing with other jobs; the CPU time this process
spends per committed message does not (much), and it is what the SMTP front end competes
with for the GIL. Each round commits ``--batches`` group commits of ``--batch`` 4 KiB
messages through :class:`SqlQueueStore` both ways, interleaved.

    python benchmarks/enqueue_cpu.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import NewMessage, new_queue_id

BODY = b"Subject: x\r\n\r\n" + b"y" * 4082


async def cost(threaded: bool, batches: int, batch: int) -> tuple[float, float]:
    """(CPU microseconds per message, wall microseconds per message)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlQueueStore(f"sqlite+aiosqlite:///{Path(tmp) / 'q.db'}",
                              threaded_writer=threaded)
        await store.open()
        try:
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(batches):
                now = time.time()
                await store.enqueue([NewMessage(
                    queue_id=new_queue_id(now), mail_from="s@src.test",
                    recipients=(("u1@example.test", "vmail"),), body=BODY, received_at=now)
                    for _ in range(batch)])
            count = batches * batch
            return ((time.process_time() - cpu) / count * 1e6,
                    (time.perf_counter() - wall) / count * 1e6)
        finally:
            await store.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for threaded in (False, True):
            results[threaded].append(await cost(threaded, args.batches, args.batch))
    for threaded, label in ((False, "aiosqlite"), (True, "writer thread")):
        cpu = statistics.median(c for c, _ in results[threaded])
        wall = statistics.median(w for _, w in results[threaded])
        print(f"{label:14} CPU {cpu:7.1f} us/msg   wall {wall:7.1f} us/msg")
    base = statistics.median(c for c, _ in results[False])
    new = statistics.median(c for c, _ in results[True])
    print(f"writer thread CPU per message: {new / base:.2f}x of aiosqlite's")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
