#!/usr/bin/env python3
"""Claim and drain rate with a deep queue: 10,000 queued against 1,000,000 queued.

For each depth the queue is filled directly through the store (small bodies, one recipient
each over 1,000 mailboxes), then a worker-only server (``serve --role worker``) starts on it
and the rate of its first ``--deliveries`` Maildir deliveries is taken from the files'
modification times; its peak RSS is read when it stops. Writes benchmarks/scale.json, and
with ``--docs`` its table in docs/performance.md.

    python benchmarks/scale.py                               # 10k and 1M, 3 rounds: 2 minutes
    python benchmarks/scale.py --depths 10000,100000 --deliveries 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _docs  # benchmarks/_docs.py: this script's folder is on sys.path

from mailqueue import loadtest
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import NewMessage, new_queue_id

HERE = Path(__file__).resolve().parent
DOCS_TABLE = "scale"  # its table in docs/performance.md
EN_DASH = "\u2013"  # between the lowest and the highest round, as the docs write ranges

BODY = b"Subject: scale\r\nMessage-ID: <x@scale.test>\r\n\r\n" + b"x" * 150 + b"\r\n"


async def fill(url: str, depth: int, batch: int = 5000) -> float:
    """Queue ``depth`` messages; the seconds it took."""
    store = SqlQueueStore(url)
    await store.open()
    # One millisecond apart: ids minted in the same millisecond share all but 30 random bits.
    start, now = time.perf_counter(), time.time() - depth / 1000 - 60
    try:
        for first in range(0, depth, batch):
            await store.enqueue([
                NewMessage(queue_id=new_queue_id(now + i / 1000), mail_from="s@src.test",
                           recipients=((f"u{i % 1000}@example.test", "vmail"),), body=BODY,
                           received_at=now + i / 1000)
                for i in range(first, min(depth, first + batch))])
    finally:
        await store.close()
    return time.perf_counter() - start


def measure(depth: int, deliveries: int, loop: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mq-scale-"))
    try:
        config = loadtest.spawn_config(HERE / "bench.toml", workdir)
        url = f"sqlite+aiosqlite:///{workdir / 'queue.db'}"
        filled = asyncio.run(fill(url, depth))
        stores = [{"name": "vmail", "path": str(workdir / "mail" / "vmail")}]
        server = loadtest.Server(config, workdir, False, loop)
        server.args += ["--role", "worker"]
        try:
            server.start()
            deadline = time.monotonic() + 600
            while loadtest.count_files(stores) < deliveries and time.monotonic() < deadline:
                time.sleep(0.2)
            assert server.proc is not None
            rss = loadtest.peak_rss_mb(server.proc.pid)
        finally:
            server.stop()
        mtimes = sorted(m for ms in loadtest.scan_maildirs(stores, True).values() for m in ms)
        taken = mtimes[:deliveries]
        rate = (len(taken) - 1) / max(1e-9, taken[-1] - taken[0])
        return {"depth": depth, "fill_seconds": round(filled, 1), "delivered": len(mtimes),
                "drain_rate": round(rate, 1), "server_peak_rss_mb": rss,
                "db_mb": round((workdir / "queue.db").stat().st_size / 2**20, 1)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def table(results: list[dict[str, Any]], deliveries: int, rounds: int) -> str:
    """The Markdown table of docs/performance.md for ``results`` (as scale.json holds them)."""
    first = results[0]["depth"]
    lines = [f"| queued | drain (first {deliveries:,} deliveries, median of {rounds}) | "
             f"vs {first:,} queued | server peak RSS | queue file |",
             "| --- | --- | --- | --- | --- |"]
    for row in results:
        rates = [r["drain_rate"] for r in row["rounds"]]
        spread = f"{min(rates):,.0f}{EN_DASH}{max(rates):,.0f}"
        lines.append(f"| {row['depth']:,} | {row['drain_rate']:,.0f} deliveries/s ({spread}) | "
                     f"{row['ratio_to_first']:.2f}x | {row['server_peak_rss_mb']:.0f} MiB | "
                     f"{row['db_mb']:.0f} MiB |")
    lines += ["", "`python benchmarks/scale.py --docs`: the queue is filled through the store with "
              "200-byte messages\nover 1,000 mailboxes, then a worker-only server drains it."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", default="10000,1000000")
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="the depths in turn this many times; medians are reported")
    parser.add_argument("--loop", default="auto")
    parser.add_argument("--docs", action="store_true",
                        help="replace the table in docs/performance.md")
    args = parser.parse_args()
    if args.docs:
        _docs.around(DOCS_TABLE)  # the markers are there, before minutes of measuring
    depths = [int(d) for d in args.depths.split(",")]
    runs: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for depth in depths:
            runs.append(measure(depth, args.deliveries, args.loop))
            print(json.dumps(runs[-1]), file=sys.stderr)
    results = []
    for depth in depths:
        mine = [run for run in runs if run["depth"] == depth]
        results.append({"depth": depth, "rounds": mine,
                        "drain_rate": statistics.median(r["drain_rate"] for r in mine),
                        "server_peak_rss_mb": max(r["server_peak_rss_mb"] for r in mine),
                        "db_mb": max(r["db_mb"] for r in mine)})
    base = results[0]["drain_rate"]
    for row in results:
        row["ratio_to_first"] = round(row["drain_rate"] / base, 2)
    (HERE / "scale.json").write_text(json.dumps(results, indent=1) + "\n")
    for row in results:
        print(f"{row['depth']:>9,} queued: {row['drain_rate']:8.1f} deliveries/s "
              f"({row['ratio_to_first']:.2f}x of {results[0]['depth']:,}; median of "
              f"{args.rounds}), peak RSS {row['server_peak_rss_mb']} MiB, queue file "
              f"{row['db_mb']} MiB")
    if args.docs:
        _docs.write_table(DOCS_TABLE, table(results, args.deliveries, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
