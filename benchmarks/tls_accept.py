#!/usr/bin/env python3
"""Accept rate with STARTTLS against the plaintext accept rate of the same server, same run.

For each event loop one server runs ``benchmarks/bench.toml`` with STARTTLS offered (a
self-signed ECDSA P-256 certificate, made in its temporary directory), inside a window, so
nothing is delivered while it accepts. Each round sends ``--messages`` messages of
``--size`` bytes over ``--connections`` sessions twice — in plaintext, and with STARTTLS
on every session (its handshake counted) — in alternating order, with the load test's
sender (``mailqueue.loadtest``) on the CPUs the server leaves free. The figure is the
median STARTTLS accept rate over the median plaintext one, with the absolute rates and
the server's CPU time per accepted message beside them. The figure is the median of the
rounds' own ratios: each compares two runs a few seconds apart, which a busy shared machine
disturbs less than it does runs minutes apart. Before the first round each mode runs once
unmeasured (the first messages into an empty queue file are cheaper than the rest). At the
end every server's queue must hold exactly the messages that were acknowledged.

Writes ``benchmarks/tls_accept.json``; ``--docs`` also replaces the table between the
``<!-- tls:start -->`` and ``<!-- tls:end -->`` markers in docs/performance.md.

    python benchmarks/tls_accept.py --docs            # 7 rounds, both loops: about 2 minutes
    python benchmarks/tls_accept.py --loops uvloop --rounds 3 --messages 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _docs  # benchmarks/_docs.py: this script's folder is on sys.path

from mailqueue import loadtest, loops
from mailqueue.queue.sqlstore import SqlQueueStore

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG = HERE / "bench.toml"
RESULTS = HERE / "tls_accept.json"
DOCS_TABLE = "tls"  # its table in docs/performance.md
MODES = ("plaintext", "starttls")


class Rig:
    """One spawned server (on ``loop``) with STARTTLS offered, inside a window."""

    def __init__(self, loop: str, scratch: Path) -> None:
        self.loop = loop
        self.workdir = Path(tempfile.mkdtemp(prefix=f"mq-tls-{loop}-", dir=scratch))
        config = loadtest.spawn_config(CONFIG, self.workdir, tls=True)
        self.url = f"sqlite+aiosqlite:///{self.workdir / 'queue.db'}"
        self.server = loadtest.Server(config, self.workdir, False, loop)
        self.port = self.server.start()
        assert self.server.proc is not None
        self.pid = self.server.proc.pid
        self.accepted = 0
        asyncio.run(loadtest.set_window(self.url, "bench", start=True))

    def stop(self) -> None:
        self.server.stop()


def phase(rig: Rig, mode: str, args: argparse.Namespace,
          messages: int | None = None) -> dict[str, Any]:
    """One measured run of the sender against ``rig`` in ``mode``."""
    os.sync()
    time.sleep(args.settle)
    plan = loadtest.Plan(
        messages=messages or args.messages, duration=None, rate=None,
        connections=args.connections,
        size=args.size, recipients=1,
        addresses=[f"u{i}@example.test" for i in range(1000)], sender="bench@load.test",
        run_id=uuid.uuid4().hex[:12], per_connection=args.per_connection,
        starttls=mode == "starttls")
    cpu_before = loadtest.cpu_seconds(rig.pid)
    results = loops.run(loadtest.Sender(plan, "127.0.0.1", rig.port, None).run(),
                        args.client_loop)
    cpu_after = loadtest.cpu_seconds(rig.pid)
    accepted = len(results.sent_at)
    rig.accepted += accepted
    seconds = max(1e-9, results.last - results.first)
    figures: dict[str, Any] = {
        "accepted": accepted, "seconds": round(seconds, 3),
        "accept_rate": round(accepted / seconds, 1),
        "latency_p50_ms": loadtest.ms(loadtest.pct(results.latencies, 0.5)),
        "latency_p99_ms": loadtest.ms(loadtest.pct(results.latencies, 0.99)),
        "errors": dict(results.errors)}
    if cpu_before is not None and cpu_after is not None and accepted:
        figures["server_cpu_ms_per_msg"] = round((cpu_after - cpu_before) / accepted * 1000, 3)
    return figures


async def queued(url: str) -> int:
    store = SqlQueueStore(url)
    await store.open()
    try:
        return (await store.stats()).messages_total
    finally:
        await store.close()


def summary(rounds: list[dict[str, Any]], loop: str) -> dict[str, Any]:
    def median(mode: str, key: str) -> float | None:
        values = [r[loop][mode][key] for r in rounds if r[loop][mode].get(key) is not None]
        return statistics.median(values) if values else None

    ratios = [r[loop]["starttls"]["accept_rate"] / r[loop]["plaintext"]["accept_rate"]
              for r in rounds if r[loop]["plaintext"]["accept_rate"]]
    return {"loop": loop, "plaintext_rate": median("plaintext", "accept_rate"),
            "starttls_rate": median("starttls", "accept_rate"),
            "ratio": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
            "plaintext_cpu_ms": median("plaintext", "server_cpu_ms_per_msg"),
            "starttls_cpu_ms": median("starttls", "server_cpu_ms_per_msg"),
            "plaintext_p99_ms": median("plaintext", "latency_p99_ms"),
            "starttls_p99_ms": median("starttls", "latency_p99_ms")}


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    def fmt(value: float | None, digits: int = 0) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}"

    lines = ["| server loop | STARTTLS vs plaintext | accept msg/s, STARTTLS / plaintext | "
             "server CPU ms per message, STARTTLS / plaintext | accept p99 ms, STARTTLS / "
             "plaintext |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(
            f"| {row['loop']} | **{fmt(row['ratio'], 2)}x** ({fmt(row['ratio_min'], 2)} to "
            f"{fmt(row['ratio_max'], 2)}) | {fmt(row['starttls_rate'])} / "
            f"{fmt(row['plaintext_rate'])} | {fmt(row['starttls_cpu_ms'], 3)} / "
            f"{fmt(row['plaintext_cpu_ms'], 3)} | {fmt(row['starttls_p99_ms'], 1)} / "
            f"{fmt(row['plaintext_p99_ms'], 1)} |")
    lines += ["", f"Medians of {args.rounds} rounds: the ratio is the median of the rounds' "
              "own ratios (the lowest and the highest in brackets); each round "
              f"{args.messages:,} messages of {args.size:,} bytes over {args.connections} "
              "sessions in plaintext and as many with STARTTLS, in alternating order, against "
              f"one server per loop; {os.cpu_count()} cores."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--per-connection", type=int, default=0,
                        help="messages per session before it reconnects (0: no limit)")
    parser.add_argument("--loops", default="uvloop,asyncio",
                        help="the servers' event loops, one server each")
    parser.add_argument("--client-loop", default="auto",
                        help="the sender's event loop (auto: uvloop when installed)")
    parser.add_argument("--warmup", type=int, default=1000,
                        help="messages each mode sends, unmeasured, before the first round")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds of quiet (after a sync) before each measured phase")
    parser.add_argument("--docs", action="store_true",
                        help="replace the table in docs/performance.md")
    args = parser.parse_args()
    server_loops = [loop for loop in args.loops.split(",") if loop]
    scratch = Path(tempfile.mkdtemp(prefix="mq-tls-bench-"))
    rigs: dict[str, Rig] = {}
    load_before = os.getloadavg()
    try:
        for loop in server_loops:  # every server before this process keeps off their CPU
            rigs[loop] = Rig(loop, scratch)
        client_cpus = loadtest.pin_client(None, next(iter(rigs.values())).pid)
        for rig in rigs.values():
            for mode in MODES:
                phase(rig, mode, args, messages=args.warmup)
        rounds: list[dict[str, Any]] = []
        for number in range(args.rounds):
            row: dict[str, Any] = {}
            for loop, rig in rigs.items():
                order = MODES if number % 2 == 0 else MODES[::-1]
                row[loop] = {mode: phase(rig, mode, args) for mode in order}
                print(f"round {number + 1} {loop}: " + json.dumps(row[loop]), file=sys.stderr)
            rounds.append(row)
        for loop, rig in rigs.items():
            held = asyncio.run(queued(rig.url))
            if held != rig.accepted:
                raise SystemExit(f"{loop}: {rig.accepted} messages acknowledged, "
                                 f"{held} in the queue")
    finally:
        for rig in rigs.values():
            rig.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    rows = [summary(rounds, loop) for loop in server_loops]
    RESULTS.write_text(json.dumps({
        "command": "python benchmarks/tls_accept.py " + " ".join(sys.argv[1:]),
        "cores": os.cpu_count(), "client_cpus": client_cpus,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "summary": rows, "rounds": rounds}, indent=1) + "\n")
    text = table(rows, args)
    print(text)
    if args.docs:
        _docs.write_table(DOCS_TABLE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
