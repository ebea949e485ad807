#!/usr/bin/env python3
"""A million-message window, end to end, on SQLite and on PostgreSQL.

For each queue, ``scripts/load_test.py --spawn --window --verify`` on the ``defaults`` setup
(``benchmarks/bench.toml`` without its tuning keys, as ``config/default.toml`` leaves them):
a window opens, the messages are sent over 50 SMTP sessions, the window ends, the queue
drains into Maildir, and ``mailqueue verify`` runs on what is left. The load script reports
both phases' rates by tenths, the time from the window's end to an empty queue, every
server process's peak RSS, the queue's and the Maildirs' disk use, and the verdict. Writes
benchmarks/million.json, and with ``--docs`` its table in docs/performance.md.

    python benchmarks/million.py --docs                          # about 40 minutes here
    python benchmarks/million.py --messages 100000 --queues sqlite
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _docs  # benchmarks/_docs.py: this script's folder is on sys.path
import run  # benchmarks/run.py: the setups

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOCS_TABLE = "million"
QUEUES = ("sqlite", "postgres")


def run_one(queue: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    config = run.setup_config("defaults" if queue == "sqlite" else "postgres", scratch,
                              args.pg_url)
    command = [sys.executable, str(ROOT / "scripts" / "load_test.py"), "--spawn", "-c",
               str(config), "-n", str(args.messages), "-C", str(args.connections), "-s",
               str(args.size), "--mailboxes", str(args.mailboxes), "--window", "--verify",
               "--stall", "300", "--json"]
    print(f"million: {queue}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    os.sync()
    started = time.monotonic()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False,
                          env={**os.environ, "TMPDIR": str(scratch)})
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise SystemExit(f"million: {queue}: the load script printed no report "
                         f"(exit {done.returncode})") from None
    report["queue_kind"] = queue
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    report["load_test_exit"] = done.returncode
    print(f"million: {queue}: {json.dumps(report)}", file=sys.stderr, flush=True)
    return report


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def over_time(rates: dict[str, Any] | None) -> str:
    if not rates or rates.get("first") is None:
        return "n/a"
    return (f"{fmt(rates['first'])} → {fmt(rates['last'])} "
            f"({rates['last_vs_first']:.2f}x)")


def minutes(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def table(reports: list[dict[str, Any]], args: argparse.Namespace, load: tuple[float, float]
          ) -> str:
    lines = [
        "| queue | accepted | accept msg/s | first → last 10% | delivered | drain "
        "deliveries/s | first → last 10% | window end → empty queue | peak RSS MiB "
        "(server / writer) | queue on disk | Maildirs on disk | verify |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in reports:
        rss = r.get("peak_rss_mb_by_process") or {}
        writer = next((v for k, v in rss.items() if k != "server"), None)
        disk = r.get("disk_use_mb") or {}
        verdict = ("OK" if r.get("verify_ok") else "FAILED") + (
            f" ({minutes(r.get('verify_seconds'))}, {fmt(r.get('verify_peak_rss_mb'))}"
            " MiB)")
        name = "SQLite (writer process)" if r["queue_kind"] == "sqlite" else "PostgreSQL"
        lines.append(
            f"| {name} | {fmt(r.get('accepted'))} | {fmt(r.get('accept_rate'))} | "
            f"{over_time(r.get('accept_rate_over_time'))} | {fmt(r.get('delivered'))} | "
            f"{fmt(r.get('drain_rate'))} | {over_time(r.get('drain_rate_over_time'))} | "
            f"{minutes(r.get('queue_empty_seconds'))} | {fmt(rss.get('server'))} / "
            f"{fmt(writer) if writer is not None else '—'} | "
            f"{fmt((disk.get('queue') or 0) / 1024, 1)} GiB | "
            f"{fmt((disk.get('maildirs') or 0) / 1024, 1)} GiB | {verdict} |")
    lines.append("")
    lines.append(
        f"`python benchmarks/million.py --docs`: {args.messages:,} messages of "
        f"{args.size:,} bytes over {args.connections} SMTP sessions (the load script's "
        f"aiosmtplib clients), one recipient each over {args.mailboxes:,} mailboxes, inside "
        f"a window that then ends; the `defaults` setup (nothing pinned, the writer `serve` "
        f"chooses); PostgreSQL 15 on the same machine. Lost 0 and duplicated 0 in every run "
        f"(each 250's queue id found once in the Maildirs). 2 cores, shared: load average "
        f"{load[0]:.1f} when the run began, {load[1]:.1f} when it ended. Raw figures, with "
        f"each tenth's rate, are in `benchmarks/million.json`.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--mailboxes", type=int, default=1000)
    parser.add_argument("--queues", default=",".join(QUEUES),
                        help="comma-separated: sqlite, postgres")
    parser.add_argument("--pg-url", default=run.PG_URL,
                        help="a PostgreSQL server to make the run's database on")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="where the runs' queues and Maildirs go (default: the temp dir)")
    parser.add_argument("--docs", action="store_true", help="replace the table in the docs")
    args = parser.parse_args()
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        parser.error(f"--queues: choose from {', '.join(QUEUES)}")
    if args.docs:
        _docs.around(DOCS_TABLE)  # fail now, not after the runs
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mq-million-", dir=args.scratch) as scratch:
        reports = [run_one(queue, args, Path(scratch)) for queue in queues]
    load = (load_before, os.getloadavg()[0])
    (HERE / "million.json").write_text(json.dumps(
        {"messages": args.messages, "size": args.size, "connections": args.connections,
         "mailboxes": args.mailboxes, "load": load, "runs": reports}, indent=1) + "\n")
    text = table(reports, args, load)
    print(text)
    if args.docs:
        _docs.write_table(DOCS_TABLE, text)
    failed = [r["queue_kind"] for r in reports if r.get("load_test_exit")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
