#!/usr/bin/env python3
"""Drain rate into a real Dovecot over LMTP, against the same drain into a Maildir store.

Each round runs three, one after the other on the same machine: the queue is filled
directly through the store with ``--messages`` messages of ``--size`` bytes, one recipient
each over ``--mailboxes`` mailboxes, then a worker-only server (``serve --role worker``)
starts on it and drains it, either into Maildirs it writes itself or over LMTP into a
private Dovecot (:mod:`mailqueue.testing.dovecot`, as the tests start it: its config,
sockets and Maildirs in a temporary directory). The third is Dovecot's own ceiling on this
machine: the same messages handed to the LMTP store in one call, with no queue and no
server around it.
The rate is taken from the delivered files' modification times, first to last, in every
case; each drain is then checked as ``mailqueue verify`` checks it (each message in its
mailbox once, intact). Medians over the rounds are printed and written to
benchmarks/lmtp_drain.json, with the load average before and after.

    python benchmarks/lmtp_drain.py                          # 2,000 messages, 3 rounds
    python benchmarks/lmtp_drain.py --messages 5000 --rounds 5 --connections 8
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mailqueue import loadtest
from mailqueue.config import load_config
from mailqueue.endpoint import parse_endpoint
from mailqueue.mailbox._session import Settings
from mailqueue.mailbox.remote import RemoteStore
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import Claim, NewMessage, new_queue_id
from mailqueue.testing.dovecot import Dovecot, dovecot_binary
from mailqueue.verify.instance import audit_instance

HERE = Path(__file__).resolve().parent
DOMAIN = "example.test"


def body(size: int) -> bytes:
    head = b"Subject: drain\r\nMessage-ID: <x@bench.test>\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def fill(url: str, count: int, mailboxes: int, size: int) -> None:
    store = SqlQueueStore(url)
    await store.open()
    data = body(size)
    digest = hashlib.sha256(data).hexdigest()  # what verify compares each copy with
    now = time.time() - count / 1000 - 60  # a millisecond apart: distinct, ordered ids
    try:
        for first in range(0, count, 2000):
            await store.enqueue([
                NewMessage(queue_id=new_queue_id(now + i / 1000), mail_from="s@src.test",
                           recipients=((f"u{i % mailboxes}@{DOMAIN}", "vmail"),), body=data,
                           received_at=now + i / 1000, digest=digest)
                for i in range(first, min(count, first + 2000))])
    finally:
        await store.close()


def write_config(workdir: Path, store: str, args: argparse.Namespace) -> Path:
    path = workdir / "mailqueue.toml"
    path.write_text(f"""
[smtp]
host = "127.0.0.1"
port = 0
hostname = "mx.mailqueue.test"
[queue]
url = "sqlite+aiosqlite:///{workdir / 'queue.db'}"
[delivery]
batch_size = 250
concurrency = {args.concurrency}
poll_interval = "1s"
[logging]
format = "json"
level = "info"
[[stores]]
name = "vmail"
domains = ["{DOMAIN}"]
{store}
""")
    return path


def ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """The same messages straight into Dovecot through the LMTP store, no queue."""
    dovecot = Dovecot()
    dovecot.start()
    try:
        data = body(args.size)
        now = time.time()
        claims = [Claim(recipient_id=i, queue_id=new_queue_id(now + i / 1000),
                        address=f"u{i % args.mailboxes}@{DOMAIN}", store="vmail", attempts=1,
                        mail_from="s@src.test", received_at=now, helo="bench", peer="",
                        body=data) for i in range(args.messages)]
        store = RemoteStore("vmail", [parse_endpoint(dovecot.lmtp_host, 24)],
                            Settings(kind="lmtp", helo="mx.mailqueue.test"),
                            "mx.mailqueue.test", args.connections)
        failed = [o for o in store.deliver(claims) if o is not None]
        store.close()
        if failed:
            raise SystemExit(f"lmtp_drain: ceiling: {len(failed)} failed: {failed[0]}")
        mtimes = sorted(entry.stat().st_mtime for entry in _files(dovecot.mail_root))
        rate = (len(mtimes) - 1) / max(1e-9, mtimes[-1] - mtimes[0])
        return {"kind": "ceiling", "delivered": len(mtimes), "drain_rate": round(rate, 1),
                "seconds": round(mtimes[-1] - mtimes[0], 2)}
    finally:
        dovecot.stop()


def run(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"mq-lmtp-bench-{kind}-"))
    dovecot: Dovecot | None = None
    try:
        if kind == "lmtp":
            dovecot = Dovecot()
            dovecot.start()
            root = dovecot.mail_root
            store = (f'kind = "lmtp"\nhosts = ["{dovecot.lmtp_host}"]\n'
                     f'connections = {args.connections}\nverify_path = "{root}"')
        else:
            root = workdir / "mail" / "vmail"
            store = f'path = "{root}"'
        config = write_config(workdir, store, args)
        asyncio.run(fill(f"sqlite+aiosqlite:///{workdir / 'queue.db'}", args.messages,
                         args.mailboxes, args.size))
        os.sync()
        stores: list[loadtest.StoreInfo] = [{"name": "vmail", "path": str(root)}]
        server = loadtest.Server(config, workdir, False, args.loop)
        server.args += ["--role", "worker"]
        try:
            server.start()
            deadline = time.monotonic() + 600
            while loadtest.count_files(stores) < args.messages and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            server.stop()
        mtimes = sorted(entry.stat().st_mtime for entry in _files(root))
        rate = (len(mtimes) - 1) / max(1e-9, mtimes[-1] - mtimes[0])
        audit = audit_instance(load_config(config))
        if not audit.ok or audit.delivered != args.messages:
            raise SystemExit(f"lmtp_drain: {kind}: the drain did not verify:\n{audit.report()}")
        return {"kind": kind, "delivered": len(mtimes), "drain_rate": round(rate, 1),
                "seconds": round(mtimes[-1] - mtimes[0], 2)}
    finally:
        if dovecot is not None:
            dovecot.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _files(root: Path) -> list[os.DirEntry[str]]:
    found: list[os.DirEntry[str]] = []
    for domain in os.scandir(root):
        for box in os.scandir(domain.path):
            with os.scandir(os.path.join(box.path, "new")) as entries:
                found.extend(entries)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--mailboxes", type=int, default=100)
    parser.add_argument("--size", type=int, default=4096, help="bytes per message")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="[delivery] concurrency")
    parser.add_argument("--connections", type=int, default=10,
                        help="the LMTP store's connections to Dovecot")
    parser.add_argument("--loop", default="auto")
    args = parser.parse_args()
    if dovecot_binary() is None:
        raise SystemExit("lmtp_drain: Dovecot is not installed (apt-get install dovecot-core "
                         "dovecot-lmtpd)")
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    kinds = ("maildir", "lmtp", "ceiling")
    for _ in range(args.rounds):
        for kind in kinds:
            runs.append(ceiling(args) if kind == "ceiling" else run(kind, args))
            print(json.dumps(runs[-1]), file=sys.stderr)
    load_after = os.getloadavg()
    medians = {kind: statistics.median(r["drain_rate"] for r in runs if r["kind"] == kind)
               for kind in kinds}
    rounds = [runs[i:i + 3] for i in range(0, len(runs), 3)]
    ratios = [lmtp["drain_rate"] / maildir["drain_rate"] for maildir, lmtp, _ in rounds]
    of_ceiling = [lmtp["drain_rate"] / top["drain_rate"] for _, lmtp, top in rounds]
    result = {"command": " ".join(["python", "benchmarks/lmtp_drain.py", *sys.argv[1:]]),
              "messages": args.messages, "mailboxes": args.mailboxes, "size": args.size,
              "concurrency": args.concurrency, "connections": args.connections,
              "rounds": runs, "maildir_rate": medians["maildir"], "lmtp_rate": medians["lmtp"],
              "ceiling_rate": medians["ceiling"],
              "ratio": round(statistics.median(ratios), 2),
              "ratio_to_ceiling": round(statistics.median(of_ceiling), 2),
              "load_before": [round(v, 2) for v in load_before],
              "load_after": [round(v, 2) for v in load_after]}
    (HERE / "lmtp_drain.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"LMTP into Dovecot: {medians['lmtp']:,.0f} msg/s; Maildir: "
          f"{medians['maildir']:,.0f} msg/s; Dovecot's ceiling (no queue): "
          f"{medians['ceiling']:,.0f} msg/s. LMTP/Maildir {result['ratio']:.2f}x, "
          f"LMTP/ceiling {result['ratio_to_ceiling']:.2f}x (medians of {args.rounds} rounds, "
          f"{args.messages:,} messages of {args.size:,} bytes, {args.connections} "
          f"connections); load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
