#!/usr/bin/env python3
"""What watching the queue's file costs on the hot paths, for one or more checkouts.

Each checkout (a directory holding ``mailqueue/``) runs in a subprocess of its own, with
``PYTHONPATH`` set to the checkout so that it imports that checkout's package; the
subprocess measures on an SQLite queue in a scratch directory:

- ``check_us``: one look at the queue's path (``QueueFile.check``: one ``stat``), wall time;
- ``commit_ms`` / ``commit_cpu_ms``: one group commit of ``--batch`` 4 KiB messages through
  ``SqliteWriter.write_blocking``, with the look after it and without (wall time, and the
  writer thread's user + system time);
- a burst of ``--sessions`` SMTP sessions, each sending MAIL and RSET ``--rounds`` times, at
  a server in the subprocess: the MAIL round trip (p50, p99, max, ms), how many looks at
  the queue's path the server made meanwhile and how many of them were under way at once.
  Once with ``stat`` as the file system answers it, once slowed down by ``--slow-stat``
  seconds (a network mount on a bad day).

    git archive COMMIT | tar -x -C /tmp/before     # the tree before the change to measure
    python benchmarks/queuefile_cost.py /tmp/before . --rounds 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from writer_cpu import run_child  # benchmarks/writer_cpu.py, beside this script

CHILD = r"""
import asyncio, json, os, resource, statistics, sys, tempfile, threading, time
batch_size, sessions, rounds, slow = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), \
    float(sys.argv[4])
from mailqueue.app import MailqueueApp
from mailqueue.config import config_from_dict
from mailqueue.logs import configure_logging
from mailqueue.queue.values import new_queue_id, NewMessage
from mailqueue.queue._queuefile import QueueFile
from mailqueue.queue._sqladmin import message_rows, recipient_rows
from mailqueue.queue.sqlstore import SqlQueueStore

configure_logging("console", "error")
body = b"Subject: x\r\n\r\n" + b"x" * (4096 - 16) + b"\r\n"
out = {}


def rows():
    now = time.time()
    batch = [NewMessage(queue_id=new_queue_id(now), mail_from="s@src.test",
                        recipients=(("u1@example.test", "vmail"),), body=body,
                        received_at=now) for _ in range(batch_size)]
    return message_rows(batch), recipient_rows(batch)


def commits(writer, count):
    batches = [rows() for _ in range(count)]
    wall, cpu = [], []
    for batch in batches:
        r0, t0 = resource.getrusage(resource.RUSAGE_THREAD), time.perf_counter()
        writer.write_blocking(*batch)
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_THREAD)
        wall.append((t1 - t0) * 1e3)
        cpu.append((r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) * 1e3)
    return statistics.median(wall), statistics.mean(cpu)


with tempfile.TemporaryDirectory() as tmp:
    path = f"{tmp}/q.db"
    store = SqlQueueStore(f"sqlite+aiosqlite:///{path}")
    loop = asyncio.new_event_loop()
    loop.run_until_complete(store.open())
    qf = QueueFile.pin(path)
    t0 = time.perf_counter()
    for _ in range(20000):
        qf.check()
    out["check_us"] = (time.perf_counter() - t0) / 20000 * 1e6
    writer = store._writer
    watched = writer._file
    for label, file in (("with_check", watched), ("without_check", None)) * 2:
        writer._file = file
        out[f"commit_ms_{label}"], out[f"commit_cpu_ms_{label}"] = commits(writer, 300)
    writer._file = watched
    loop.run_until_complete(store.close())
    loop.close()


class SlowStat:
    def __init__(self, path, delay):
        self.path, self.delay, self.real = path, delay, os.stat
        self.count = self.running = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, path, *args, **kwargs):
        if os.fspath(path) != self.path:
            return self.real(path, *args, **kwargs)
        with self.lock:
            self.count += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if self.delay:
                time.sleep(self.delay)
            return self.real(path, *args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


async def session(port, latencies):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def cmd(line):
        writer.write(line)
        reply = await reader.readline()
        while reply[3:4] == b"-":
            reply = await reader.readline()
        return reply

    await reader.readline()
    await cmd(b"EHLO bench.test\r\n")
    for _ in range(rounds):
        t0 = time.perf_counter()
        reply = await cmd(b"MAIL FROM:<a@src.test>\r\n")
        latencies.append((time.perf_counter() - t0) * 1e3)
        assert reply.startswith(b"250"), reply
        await cmd(b"RSET\r\n")
        await asyncio.sleep(0.01)
    writer.write(b"QUIT\r\n")
    writer.close()


async def burst(tmp, delay):
    config = config_from_dict({
        "smtp": {"host": "127.0.0.1", "port": 0, "hostname": "mx.bench"},
        "queue": {"url": f"sqlite+aiosqlite:///{tmp}/queue.db"},
        "stores": [{"name": "basic", "path": f"{tmp}/mail", "domains": ["basic.example"]}],
    }, "bench")
    app = MailqueueApp(config)
    task = asyncio.create_task(app.run())
    await app.ready.wait()
    watch = SlowStat(f"{tmp}/queue.db", delay)
    os.stat = watch
    latencies = []
    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(session(app.port, latencies) for _ in range(sessions)))
        elapsed = time.perf_counter() - t0
    finally:
        os.stat = watch.real
        app.stop()
        await task
    latencies.sort()
    return {"mail_p50_ms": latencies[len(latencies) // 2],
            "mail_p99_ms": latencies[int(len(latencies) * 0.99)],
            "mail_max_ms": latencies[-1], "stats": watch.count,
            "stats_at_once": watch.most, "seconds": elapsed}


for label, delay in (("local", 0.0), ("slow", slow)):
    with tempfile.TemporaryDirectory() as tmp:
        out[label] = asyncio.run(burst(tmp, delay))
print(json.dumps(out))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each checkout")
    parser.add_argument("--batch", type=int, default=13, help="messages per commit")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--mails", type=int, default=60, help="MAIL commands per session")
    parser.add_argument("--slow-stat", type=float, default=0.05)
    args = parser.parse_args()
    for _ in range(args.rounds):  # interleaved, so that a busy moment hits both
        for checkout in args.checkouts:
            result = run_child(checkout.resolve(), CHILD, str(args.batch),
                               str(args.sessions), str(args.mails), str(args.slow_stat))
            if result.returncode != 0:
                print(f"{checkout}: failed\n{result.stderr}", file=sys.stderr)
                return 1
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            print(json.dumps({"checkout": str(checkout), **_rounded(figures)}))
    return 0


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


if __name__ == "__main__":
    sys.exit(main())
