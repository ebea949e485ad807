#!/usr/bin/env python3
"""Server CPU per message and rates for one or more checkouts, run alternately.

For each checkout (a directory holding ``mailqueue/``), spawns ``python -m mailqueue serve``
from it on a copy of benchmarks/bench.toml, sends ``--messages`` 4 KiB messages with
Postfix's ``smtp-source`` (50 sessions) and reads the server's user and system CPU time
from ``/proc``: with ``--null`` storage off, otherwise inside a window that is then ended,
timing the drain too. Modes ``latency`` and ``paced`` run the checkout's own
``scripts/load_test.py`` instead (50 connections, as fast as they go or offered
``--paced-rate``) for its accept rate and latency. CPU per message moves less than rates
on a shared machine, so this is how a change is compared with the tree before it:

    git worktree add /tmp/before HEAD~1
    python benchmarks/checkout_ab.py /tmp/before . --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from run import load_script, settle, smtp_source  # benchmarks/run.py, beside this script

from mailqueue import loadtest

HERE = Path(__file__).resolve().parent


def cpu(pid: int) -> tuple[float, float]:
    """(user, system) seconds of process ``pid``."""
    times = loadtest.cpu_times(pid)
    if times is None:
        raise SystemExit(f"checkout_ab: cannot read the CPU time of process {pid}")
    return times


def one(checkout: Path, mode: str, args: argparse.Namespace) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="mq-ab-"))
    config = loadtest.spawn_config(HERE / "bench.toml", workdir)
    server = loadtest.Server(config, workdir, mode == "null", args.loop)
    cwd = Path.cwd()
    os.chdir(checkout)  # python -m mailqueue imports the checkout's package
    try:
        port = server.start()
    finally:
        os.chdir(cwd)
    assert server.proc is not None
    pid = server.proc.pid
    url = f"sqlite+aiosqlite:///{workdir / 'queue.db'}"
    stores = [{"name": "vmail", "path": str(workdir / "mail" / "vmail")}]
    out: dict[str, float] = {}
    try:
        if mode != "null":
            asyncio.run(loadtest.set_window(url, "bench", start=True))
        settle(args)
        before = cpu(pid)
        wall = smtp_source(port, args.messages, sessions=50, size=4096, server_pid=pid)
        after = cpu(pid)
        out.update(accept_rate=args.messages / wall,
                   accept_user_us=(after[0] - before[0]) / args.messages * 1e6,
                   accept_sys_us=(after[1] - before[1]) / args.messages * 1e6)
        if mode != "null":
            settle(args)
            before, start = cpu(pid), time.perf_counter()
            asyncio.run(loadtest.set_window(url, "bench", start=False))
            count = asyncio.run(loadtest.wait_drained(stores, args.messages, 120, None))
            wall, after = time.perf_counter() - start, cpu(pid)
            out.update(drain_rate=count / wall,
                       drain_user_us=(after[0] - before[0]) / args.messages * 1e6,
                       drain_sys_us=(after[1] - before[1]) / args.messages * 1e6)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def latency(checkout: Path, args: argparse.Namespace, paced: bool) -> dict[str, float]:
    """The saturated (or with ``paced``, offered ``--paced-rate``) latency run of
    benchmarks/run.py (``scripts/load_test.py``: 50 connections, inside a window) with the
    checkout's own server and script."""
    rate = ("--rate", str(args.paced_rate)) if paced else ()
    report = load_script(args, "--loop", args.loop, *rate, "-n", str(args.latency_messages),
                         "-C", "50", "--window", checkout=checkout)
    return {"rate": report["accept_rate"], "p50_ms": report["accept_latency_p50_ms"],
            "p99_ms": report["accept_latency_p99_ms"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    parser.add_argument("--modes", default="null,durable",
                        help="comma-separated: null, durable, latency, paced (the last "
                             "two: load_test.py)")
    parser.add_argument("--latency-messages", type=int, default=3000)
    parser.add_argument("--paced-rate", type=int, default=1000,
                        help="offered msg/s in mode paced")
    parser.add_argument("--settle", type=float, default=3.0)
    args = parser.parse_args()
    if shutil.which("smtp-source") is None:
        raise SystemExit("smtp-source is missing: apt-get install postfix")
    for _ in range(args.rounds):
        for checkout in args.checkouts:
            for mode in args.modes.split(","):
                result: dict[str, Any] = (
                    latency(checkout.resolve(), args, mode == "paced")
                    if mode in ("latency", "paced") else one(checkout.resolve(), mode, args))
                print(f"{checkout} {mode} " + " ".join(f"{k}={v:.1f}" for k, v in result.items()),
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
