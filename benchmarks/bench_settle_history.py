"""Cost of the per-recipient history on the claim/settle path.

Runs the same claim → settle loop over a real SQLite file twice in one process: once as
shipped (history rows written in the settle transaction) and once with the history write
switched off, and prints both rates and their ratio.

    python benchmarks/bench_settle_history.py [MESSAGES] [ROUNDS]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import NewMessage, Settlement, new_queue_id


async def run(count: int, history: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlQueueStore(f"sqlite+aiosqlite:///{Path(tmp) / 'q.db'}")
        if not history:
            async def no_history(*_: Any) -> None:
                return None
            store.record_settlement = no_history  # type: ignore[method-assign,assignment]
        await store.open()
        body = b"Subject: x\r\n\r\n" + b"y" * 1000
        now = time.time()
        batch = [NewMessage(queue_id=new_queue_id(now) + f"{i:05d}", mail_from="a@b.test",
                            recipients=(("u@basic.example", "basic"),), body=body,
                            received_at=now, digest=hashlib.sha256(body).hexdigest())
                 for i in range(count)]
        for i in range(0, count, 500):
            await store.enqueue(batch[i:i + 500])
        started = time.perf_counter()
        while claims := await store.claim(["basic"], 100, "w", now + 1, now + 60):
            await store.settle(Settlement(delivered=[c.recipient_id for c in claims]), "w",
                               now + 2)
        elapsed = time.perf_counter() - started
        await store.close()
        return count / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("messages", type=int, nargs="?", default=5000)
    parser.add_argument("rounds", type=int, nargs="?", default=3)
    args = parser.parse_args()
    count, rounds = args.messages, args.rounds
    plain, kept = [], []
    for _ in range(rounds):  # interleaved, so that machine noise hits both alike
        plain.append(await run(count, history=False))
        kept.append(await run(count, history=True))
    without, with_history = sorted(plain)[rounds // 2], sorted(kept)[rounds // 2]
    print(f"recipients={count} batch=100 rounds={rounds} (medians)")
    print(f"without history: {without:8.0f} recipients/s (baseline)")
    print(f"with history:    {with_history:8.0f} recipients/s "
          f"(ratio {with_history / without:.2f})")


if __name__ == "__main__":
    asyncio.run(main())
