#!/usr/bin/env python3
"""Run the crash drills long: ``scripts/drill.py --kills 200``.

Kill -9 the server K times under 20 SMTP clients (half at random moments, half at hooked
fault points), kill -9 delivery workers mid-drain, SIGTERM under load; then check every
Maildir file against what the clients were told. Prints one JSON line per drill and exits
non-zero if anything acknowledged was lost, doubled, corrupted or invented.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from mailqueue.testing.drills import (
    Report,
    crash_drill,
    sigterm_drill,
    worker_kill_drill,
)

DRILLS = ("crash", "worker", "sigterm")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50,
                        help="kill -9 rounds of the server drill (default 50)")
    parser.add_argument("--worker-kills", type=int, default=None,
                        help="worker kills (default: kills / 5, at least 3)")
    parser.add_argument("--sigterms", type=int, default=None,
                        help="SIGTERM rounds (default: kills / 10, at least 3)")
    parser.add_argument("--messages", type=int, default=1000,
                        help="messages queued before the worker drill (default 1000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=DRILLS, action="append",
                        help="run only this drill (repeatable)")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    return parser.parse_args()


async def run(args: argparse.Namespace, workdir: Path) -> list[Report]:
    chosen = args.only or list(DRILLS)
    reports = []
    for name in chosen:
        directory = workdir / name
        directory.mkdir(parents=True, exist_ok=True)
        if name == "crash":
            report = await crash_drill(directory, args.kills, seed=args.seed)
        elif name == "worker":
            kills = args.worker_kills or max(3, args.kills // 5)
            report = await worker_kill_drill(directory, kills, args.messages, seed=args.seed)
        else:
            rounds = args.sigterms or max(3, args.kills // 10)
            report = await sigterm_drill(directory, rounds, seed=args.seed)
        print(report.line(), flush=True)
        reports.append(report)
    return reports


def main() -> int:
    args = parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        reports = asyncio.run(run(args, args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="mailqueue-drill-") as tmp:
            reports = asyncio.run(run(args, Path(tmp)))
    bad = [r.name for r in reports if not r.clean]
    if bad:
        print(f"drill: FAILED: {', '.join(bad)}", file=sys.stderr)
        return 1
    total = sum(r.checked for r in reports)
    print(f"drill: ok: {sum(r.kills for r in reports)} kills, {total} acknowledged "
          f"deliveries checked, lost 0, duplicates 0", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
