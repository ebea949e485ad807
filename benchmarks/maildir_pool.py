#!/usr/bin/env python3
"""Maildir delivery of one batch with 1 writer thread against a pool, interleaved.

Each copy costs an fsync; with one thread they queue one behind the other, with a pool they
overlap. Batches of ``--batch`` claims (4 KiB) to ``--mailboxes`` mailboxes, ``--rounds``
times each way.

    python benchmarks/maildir_pool.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.queue.values import Claim

BODY = b"Subject: x\r\n\r\n" + b"y" * 4082


def rate(writers: int, batch: int, mailboxes: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = MaildirStore("vmail", Path(tmp), "mx.test", writers=writers)
        claims = [Claim(recipient_id=i, queue_id=f"Q{i:08d}",
                        address=f"u{i % mailboxes}@example.test", store="vmail", attempts=1,
                        mail_from="s@src.test", received_at=time.time(), helo="h",
                        peer="127.0.0.1", body=BODY) for i in range(batch)]
        store.deliver(claims[:1])  # create the pool and the first maildir outside the clock
        start = time.perf_counter()
        outcomes = store.deliver(claims[1:])
        seconds = time.perf_counter() - start
        store.close()
        assert all(o is None for o in outcomes)
        return (batch - 1) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=201)
    parser.add_argument("--mailboxes", type=int, default=1)
    parser.add_argument("--writers", type=int, default=16)
    args = parser.parse_args()
    one, pool = [], []
    for _ in range(args.rounds):
        one.append(rate(1, args.batch, args.mailboxes))
        pool.append(rate(args.writers, args.batch, args.mailboxes))
    a, b = statistics.median(one), statistics.median(pool)
    print(f"1 writer: {a:7.0f} msg/s   {args.writers} writers: {b:7.0f} msg/s   "
          f"({b / a:.2f}x; {args.mailboxes} mailbox(es), batch {args.batch - 1})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
