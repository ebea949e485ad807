#!/usr/bin/env python3
"""Where a Maildir drain's CPU goes, beside the disk's ceiling in the same minute.

Each round fills a queue through its store (``-n`` messages of about 4 KiB, one recipient
each over ``--mailboxes`` mailboxes) and starts a worker-only server on it (``serve --role
worker``, on a copy of the ``--setup``'s configuration as ``benchmarks/run.py`` makes it),
and reads from ``/proc`` the user and system CPU of its event loop's thread and of all its
other threads (Maildir writers, SQLite) between the first file written and the last; then
``benchmarks/maildir_ceiling.py`` writes as many files of the same size into as many
Maildirs on as many threads as a store has writers, and its own CPU is read the same way.
The drain rate runs from the first file to the last, so the server's start is left out.

    python benchmarks/drain_cpu.py --rounds 3            # what a user gets
    python benchmarks/drain_cpu.py --rounds 3 --setup tuned
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import maildir_ceiling  # benchmarks/maildir_ceiling.py: this script's folder is on sys.path
import run  # benchmarks/run.py: its setups

from mailqueue import loadtest
from mailqueue.mailbox.maildir import DEFAULT_WRITERS
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import NewMessage, new_queue_id

BODY = b"Subject: drain\r\nMessage-ID: <x@drain.test>\r\n\r\n" + (b"x" * 78 + b"\r\n") * 50


async def fill(url: str, messages: int, mailboxes: int) -> None:
    store = SqlQueueStore(url)
    await store.open()
    now = time.time() - messages / 1000 - 60
    try:
        for first in range(0, messages, 2500):
            await store.enqueue([
                NewMessage(queue_id=new_queue_id(now + i / 1000), mail_from="s@src.test",
                           recipients=((f"u{i % mailboxes}@example.test", "vmail"),),
                           body=BODY, received_at=now + i / 1000)
                for i in range(first, min(messages, first + 2500))])
    finally:
        await store.close()


def thread_cpu(pid: int) -> dict[str, float]:
    """User and system CPU seconds of ``pid``'s main thread (``loop``) and of its others."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {"loop_user": 0.0, "loop_sys": 0.0, "others_user": 0.0, "others_sys": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        who = "loop" if task.name == str(pid) else "others"
        found[f"{who}_user"] += int(fields[11]) / ticks
        found[f"{who}_sys"] += int(fields[12]) / ticks
    return found


def drain(config: Path, messages: int, mailboxes: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mq-drain-cpu-"))
    try:
        spawned = loadtest.spawn_config(config, workdir)
        asyncio.run(fill(f"sqlite+aiosqlite:///{workdir / 'queue.db'}", messages, mailboxes))
        os.sync()
        stores = [{"name": "vmail", "path": str(workdir / "mail" / "vmail")}]
        server = loadtest.Server(spawned, workdir, False, "auto")
        server.args += ["--role", "worker"]
        server.start()
        assert server.proc is not None
        first: dict[str, float] | None = None
        deadline = time.monotonic() + 600
        try:
            while (count := loadtest.count_files(stores)) < messages:
                if first is None and count:
                    first = thread_cpu(server.proc.pid)
                if time.monotonic() > deadline:
                    raise SystemExit(f"drain_cpu: {count} of {messages} after 600 s")
                time.sleep(0.02)
            last = thread_cpu(server.proc.pid)
        finally:
            server.stop()
        mtimes = sorted(m for ms in loadtest.scan_maildirs(stores, True).values() for m in ms)
        first = first or {k: 0.0 for k in last}
        result: dict[str, Any] = {
            "rate": round((len(mtimes) - 1) / max(1e-9, mtimes[-1] - mtimes[0]), 1)}
        result.update({f"{k}_ms": round((last[k] - first[k]) / messages * 1000, 3)
                       for k in last})
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def ceiling(messages: int, mailboxes: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="mq-ceiling-"))
    try:
        before = resource.getrusage(resource.RUSAGE_SELF)
        result = maildir_ceiling.ceiling(root, messages, len(BODY), mailboxes,
                                         threads=DEFAULT_WRITERS)
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"rate": round(result["rate"], 1),
            "user_ms": round((after.ru_utime - before.ru_utime) / messages * 1000, 3),
            "sys_ms": round((after.ru_stime - before.ru_stime) / messages * 1000, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=5000)
    parser.add_argument("--mailboxes", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--setup", choices=run.SETUPS, default="defaults",
                        help="defaults: what a user gets; tuned: bench.toml")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="mq-drain-cpu-config-"))
    try:
        config = run.setup_config(args.setup, scratch)
        rounds = [one_round(config, args) for _ in range(args.rounds)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    medians = {side: {k: statistics.median(r[side][k] for r in rounds) for k in rounds[0][side]}
               for side in ("drain", "ceiling")}
    medians["share"] = statistics.median(r["share"] for r in rounds)
    print(json.dumps(medians))
    return 0


def one_round(config: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A drain, then the ceiling; the drain's rate as a share of the ceiling's."""
    row: dict[str, Any] = {"drain": drain(config, args.messages, args.mailboxes),
                           "ceiling": ceiling(args.messages, args.mailboxes)}
    row["share"] = round(row["drain"]["rate"] / row["ceiling"]["rate"], 2)
    print(json.dumps(row), file=sys.stderr)
    return row


if __name__ == "__main__":
    sys.exit(main())
