#!/usr/bin/env python3
"""The SQLite writer's own CPU per group commit, for one or more checkouts, alternately.

Each checkout (a directory holding ``mailqueue/``) runs in a subprocess of its own, with
``PYTHONPATH`` set to the checkout so that it imports that checkout's package; the
subprocess commits ``--commits`` batches of ``--batch`` 4 KiB messages straight through
``SqliteWriter.write_blocking`` (no event loop, no thread hand-off) and reads its thread's
user and system time with ``getrusage(RUSAGE_THREAD)``:

    git worktree add /tmp/before COMMIT     # the tree before the change to measure
    python benchmarks/writer_cpu.py /tmp/before . --rounds 3

(Trees older than ``SqliteWriter.write_blocking`` cannot be measured this way.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import asyncio, resource, sys, tempfile, time
from mailqueue.queue.values import new_queue_id, NewMessage
from mailqueue.queue._sqladmin import message_rows, recipient_rows
from mailqueue.queue.sqlstore import SqlQueueStore

commits, size = int(sys.argv[1]), int(sys.argv[2])
body = b"Subject: x\\r\\n\\r\\n" + b"x" * (4096 - 16) + b"\\r\\n"
with tempfile.TemporaryDirectory() as tmp:
    store = SqlQueueStore(f"sqlite+aiosqlite:///{tmp}/q.db")
    loop = asyncio.new_event_loop()
    loop.run_until_complete(store.open())
    writer = store._writer
    batches = []
    for _ in range(commits):
        now = time.time()
        batch = [NewMessage(queue_id=new_queue_id(now), mail_from="s@src.test",
                            recipients=(("u1@example.test", "vmail"),), body=body,
                            received_at=now) for _ in range(size)]
        batches.append((message_rows(batch), recipient_rows(batch)))
    before = resource.getrusage(resource.RUSAGE_THREAD)
    for rows in batches:
        writer.write_blocking(*rows)
    after = resource.getrusage(resource.RUSAGE_THREAD)
    loop.run_until_complete(store.close())
print((after.ru_utime - before.ru_utime) / commits * 1e3,
      (after.ru_stime - before.ru_stime) / commits * 1e3)
"""


def run_child(checkout: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` importing ``checkout``'s ``mailqueue``: ``checkout`` first on
    ``PYTHONPATH``, and ``-P`` so that the working directory does not come before it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-P", "-c", code, *args], env=env,
                          capture_output=True, text=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--commits", type=int, default=600)
    parser.add_argument("--batch", type=int, default=13, help="messages per commit")
    args = parser.parse_args()
    for _ in range(args.rounds):
        for checkout in args.checkouts:
            out = run_child(checkout.resolve(), CHILD, str(args.commits), str(args.batch))
            if out.returncode != 0:
                raise SystemExit(f"writer_cpu: {checkout}: {out.stderr.strip()[-500:]}")
            user, system = map(float, out.stdout.split())
            print(f"{checkout} per commit of {args.batch}: user {user:.3f} ms, "
                  f"system {system:.3f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
