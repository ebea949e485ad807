#!/usr/bin/env python3
"""The Performance table of docs/performance.md: mailqueue and Postfix side by side.

Each round runs, interleaved on the same machine: the Postfix anchor
(../shared/bench/postfix-anchor.sh, smtp-source into Postfix with defer_transports, then a
flush into Maildir), then for each setup and event loop: the ``--null`` ceiling and the
durable server under the same smtp-source line (inside a window, then the drain), a load
test run (scripts/load_test.py) for accept latency at 50 connections, and a light-load run
for end-to-end delay. The setups: ``defaults`` is bench.toml without its ``[server] cpus``
and ``[queue] writer`` (what a user gets: unpinned, the writer ``serve`` chooses),
``tuned`` is bench.toml as it stands (the server on CPU 0, its writer process on the
other), ``thread`` is ``defaults`` with ``[queue] writer = "thread"``, ``postgres`` is
``defaults`` on a PostgreSQL queue (a new database per run on ``--pg-url``'s server). Every round's
figures are written to benchmarks/results.json and their medians printed as a Markdown
table; ``--docs`` also replaces the table between the
``<!-- bench:start -->`` and ``<!-- bench:end -->`` markers in docs/performance.md.

    python benchmarks/run.py --rounds 3 --docs       # about 5 minutes on 2 cores
    python benchmarks/run.py --rounds 5 --setups defaults,tuned --loops auto --docs
    python benchmarks/run.py --rounds 1 --no-postfix # mailqueue only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import _docs  # benchmarks/_docs.py: this script's folder is on sys.path
import maildir_ceiling

from mailqueue import loadtest, loops
from mailqueue.mailbox.maildir import DEFAULT_WRITERS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG = HERE / "bench.toml"
DOCS_TABLE = "bench"  # its table in docs/performance.md
# The anchor script sits in a ``shared/bench`` folder beside the checkout (or beside the
# folder holding it, for a worktree); POSTFIX_ANCHOR names another place.
ANCHOR = Path(os.environ.get("POSTFIX_ANCHOR") or next(
    (p for p in (base / "shared/bench/postfix-anchor.sh" for base in ROOT.parents[:2])
     if p.exists()), ROOT.parent / "shared/bench/postfix-anchor.sh"))
# What a user gets: bench.toml without the keys that tune it for these benchmarks.
TUNING_KEYS = {"server": ("cpus",), "queue": ("writer", "writer_cpus")}
SETUPS = ("defaults", "thread", "tuned", "postgres")
# The PostgreSQL server the postgres setup makes its databases on (--pg-url).
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
_ANCHOR_RE = re.compile(r"postfix accept: (\d+) msg/s .* drain: (\d+) msg/s .*delivered=(\d+)")


def smtp_source(port: int, messages: int, sessions: int, size: int,
                server_pid: int | None = None) -> float:
    """Seconds smtp-source takes to hand ``messages`` to 127.0.0.1:port. With
    ``server_pid``, smtp-source keeps to the CPUs that server is not pinned to (as the load
    test does), so the client's bursts do not land on the server's CPU."""
    cpus = loadtest.cpus_left_by(server_pid) if server_pid is not None else None

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    start = time.perf_counter()
    subprocess.run(["smtp-source", "-d", "-s", str(sessions), "-m", str(messages), "-l",
                    str(size), "-f", "sender@src.test", "-t", "u1@example.test",
                    f"127.0.0.1:{port}"], check=True, timeout=600, preexec_fn=pin)
    return time.perf_counter() - start


def settle(args: argparse.Namespace) -> None:
    """Let the disk go quiet before a measured phase.

    Deleting a run's files leaves kernel work behind (journal commits, discards on a
    ``discard``-mounted disk), and whichever phase runs next would pay for it in its kernel
    time per message. So every phase starts after a sync and a pause, and the runs' files
    are deleted only at the end (see :func:`main`).
    """
    os.sync()
    time.sleep(args.settle)


def setup_config(setup: str, scratch: Path, pg_url: str = PG_URL) -> Path:
    """The configuration file of ``setup`` (see :data:`SETUPS`); ``defaults`` and ``thread``
    are written to ``scratch``."""
    if setup == "tuned":
        return CONFIG
    data = tomllib.loads(CONFIG.read_text())
    for section, keys in TUNING_KEYS.items():
        for key in keys:
            data.get(section, {}).pop(key, None)
    if setup == "thread":  # the defaults with the writer auto does not pick on two CPUs
        data.setdefault("queue", {})["writer"] = "thread"
    if setup == "postgres":  # each spawned server gets a database of its own there
        data.setdefault("queue", {})["url"] = pg_url
    data = {k: v for k, v in data.items() if v != {}}
    path = scratch / f"bench-{setup}.toml"
    path.write_text(loadtest.dump_toml(data) + "\n")
    return path


def mailqueue_smtp_source(source: Path, loop: str, null: bool,
                          args: argparse.Namespace) -> dict[str, Any]:
    """The anchor's smtp-source line against a mailqueue spawned on a copy of ``source``;
    for a durable server, inside a window that is then ended, timing the drain into
    Maildir."""
    settle(args)
    workdir = Path(tempfile.mkdtemp(prefix="mq-bench-", dir=args.scratch))
    source_url = loadtest.source_queue_url(source) or ""
    database = (loadtest.ScratchDatabase(source_url)
                if source_url.startswith("postgres") and not null else None)
    config = loadtest.spawn_config(source, workdir,
                                   queue_url=database.create() if database else None)
    server = loadtest.Server(config, workdir, null, loop)
    try:
        port = server.start()
        url = database.url if database else f"sqlite+aiosqlite:///{workdir / 'queue.db'}"
        stores = [{"name": "vmail", "path": str(workdir / "mail" / "vmail")}]
        if not null:
            asyncio.run(loadtest.set_window(url, "bench", start=True))
            time.sleep(1.0)
        assert server.proc is not None
        seconds = smtp_source(port, args.messages, args.sessions, args.size,
                              server_pid=server.proc.pid)
        result: dict[str, Any] = {"accept_rate": args.messages / seconds}
        if not null:
            released = asyncio.run(loadtest.set_window(url, "bench", start=False))
            count = asyncio.run(loadtest.wait_drained(stores, args.messages, 30, None))
            found = loadtest.scan_maildirs(stores, want_mtime=True)
            last = max(m for mtimes in found.values() for m in mtimes)
            result.update(drain_rate=count / (last - released), delivered=count,
                          duplicated=sum(len(v) - 1 for v in found.values()))
        assert server.proc is not None
        result["rss_mb"] = loadtest.peak_rss_mb(server.proc.pid)
        result["tuned"] = server_tuned(server.log_path)
        return result
    finally:
        server.stop()
        if database is not None:
            database.drop()


def server_tuned(log: Path) -> dict[str, Any] | None:
    """The ``server_tuned`` event of a spawned server's log: what it chose, and why."""
    for line in log.read_text(errors="replace").splitlines():
        if '"server_tuned"' in line:
            event = json.loads(line)
            return {k: event.get(k) for k in ("writer", "writer_reason", "loop", "cpus")}
    return None


def load_script(args: argparse.Namespace, *extra: str, checkout: Path = ROOT,
                config: Path = CONFIG) -> dict[str, Any]:
    """``checkout``'s ``scripts/load_test.py --spawn`` on bench.toml, run from ``checkout``
    with ``checkout`` first on ``PYTHONPATH`` (so the load test and the server it spawns are
    that checkout's); its JSON report. With ``args.scratch`` the spawned servers' dirs are
    kept there, for deleting at the end (see settle())."""
    settle(args)
    scratch = getattr(args, "scratch", None)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if scratch:
        env["TMPDIR"] = str(scratch)
    out = subprocess.run([sys.executable, str(checkout / "scripts/load_test.py"), "--spawn",
                          "-c", str(config), "--json", "--no-progress",
                          *(["--keep"] if scratch else []), *extra],
                         cwd=checkout, capture_output=True, text=True, timeout=900,
                         check=False, env=env)
    if not out.stdout.strip():
        raise SystemExit(f"load_test.py failed in {checkout}: {out.stderr[-500:]}")
    report = dict(json.loads(out.stdout))
    kept = report.get("queue_database")
    if kept:  # a PostgreSQL queue kept with the run's dir: its files go, so does it
        url = loadtest.source_queue_url(config) or ""
        loadtest.ScratchDatabase(url, kept).drop()
    return report


def postfix(args: argparse.Namespace) -> dict[str, Any] | None:
    if not args.postfix:
        return None
    settle(args)
    # A fresh PF_BASE per round: the script then has no earlier Maildirs to delete.
    base = tempfile.mkdtemp(prefix="pf-", dir=args.scratch)
    os.chmod(base, 0o755)  # Postfix's virtual agent runs as another user
    out = subprocess.run(["bash", str(ANCHOR), str(args.messages), str(args.sessions),
                          str(args.size)], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PF_BASE": base})
    match = _ANCHOR_RE.search(out.stdout)
    if match is None:
        print(f"postfix anchor failed: {out.stdout[-300:]} {out.stderr[-300:]}",
              file=sys.stderr)
        return None
    result: dict[str, Any] = {"accept_rate": float(match[1]), "drain_rate": float(match[2]),
                              "delivered": int(match[3])}
    again = redeferred(Path(base) / "postfix.log", args.messages)
    if again:
        print(f"postfix anchor: {again} deliveries deferred again after the flush; its "
              f"drain ({result['drain_rate']:.0f} msg/s) is left out", file=sys.stderr)
        result.update(redeferred=again, drain_rate=None, drain_rate_raced=result["drain_rate"])
    return result


def redeferred(log: Path, messages: int) -> int:
    """Deliveries Postfix deferred again after the anchor's window closed.

    While the window is open every message is deferred once ("deferred transport"). When the
    anchor's ``postqueue -f`` runs before its ``postfix reload`` has reached the queue
    manager, messages are deferred again and wait for the next queue run, 300 s later: the
    drain would then measure the anchor's race, not Postfix."""
    try:
        text = log.read_text(errors="replace")
    except OSError:  # Postfix was running already (PF_KEEP=1): its log is elsewhere
        print(f"postfix anchor: no {log}; a flush that raced the reload goes unnoticed",
              file=sys.stderr)
        return 0
    return max(0, text.count("status=deferred (deferred transport)") - messages)


def rows(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The table's rows: (setup, loop), each with its key in a round's figures."""
    return [(setup, loop) for setup in args.setups for loop in args.loops]


def key(kind: str, setup: str, loop: str) -> str:
    # The tuned setup keeps the keys of the figures measured before there were setups.
    return f"{kind}/{loop}" if setup == "tuned" else f"{kind}/{setup}/{loop}"


def disk_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """benchmarks/maildir_ceiling.py with the drain's message count, size and mailbox (the
    smtp-source line's one recipient), on the disk the drains write to, on as many threads
    as a Maildir store has writers."""
    settle(args)
    root = Path(tempfile.mkdtemp(prefix="ceiling-", dir=args.scratch))
    return maildir_ceiling.ceiling(root, args.messages, args.size, mailboxes=1,
                                   threads=DEFAULT_WRITERS)


def one_round(args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"postfix": postfix(args)}
    for setup, loop in rows(args):
        config = setup_config(setup, args.scratch, args.pg_url)
        row[key("null", setup, loop)] = mailqueue_smtp_source(config, loop, True, args)
        row[key("durable", setup, loop)] = mailqueue_smtp_source(config, loop, False, args)
        if args.ceiling:
            # Right after the drain: the disk's speed swings from one minute to the next.
            row[key("ceiling", setup, loop)] = disk_ceiling(args)
        if "saturated" in args.latency_runs:
            row[key("latency", setup, loop)] = load_script(
                args, "--loop", loop, "-n", str(args.latency_messages), "-C", "50",
                "--window", config=config)
        if "paced" in args.latency_runs:
            row[key("paced", setup, loop)] = load_script(
                args, "--loop", loop, "--rate", str(args.paced_rate), "-n",
                str(args.latency_messages), "-C", "50", "--window", config=config)
        if "light" in args.latency_runs:
            row[key("light", setup, loop)] = load_script(
                args, "--loop", loop, "--rate", "20", "-n", "100", "-C", "1", config=config)
        kinds = ("null", "durable", "ceiling", "latency", "paced", "light")
        print(f"{setup}/{loop}: " + json.dumps(
            {k: row[k] for k in (key(kind, setup, loop) for kind in kinds) if k in row}),
            file=sys.stderr)
    return row


def median(rounds: list[dict[str, Any]], key: str, field: str) -> float | None:
    values = [r[key][field] for r in rounds if r.get(key) and r[key].get(field) is not None]
    return statistics.median(values) if values else None


def share(rounds: list[dict[str, Any]], durable: str, ceiling: str) -> str:
    """The median of the rounds' drain rates over the ceilings measured beside them, with
    the lowest and the highest."""
    ratios = sorted(r[durable]["drain_rate"] / r[ceiling]["rate"] for r in rounds
                    if (r.get(durable) or {}).get("drain_rate") and r.get(ceiling))
    if not ratios:
        return "n/a"
    return f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f} to {ratios[-1]:.2f})"


def setup_name(setup: str, rounds: list[dict[str, Any]], durable: str) -> str:
    """``setup`` with the writer its servers ran (as their ``server_tuned`` logged it)."""
    tuned = [(r.get(durable) or {}).get("tuned") or {} for r in rounds]
    writers = sorted({t["writer"] for t in tuned if t.get("writer")})
    cpus = sorted({t["cpus"] for t in tuned if t.get("cpus")})
    detail = ([f"{'/'.join(writers)} writer"] if writers and setup != "postgres" else
              ["PostgreSQL queue"] if setup == "postgres" else [])
    detail += [f"cpus {'/'.join(cpus)}"] if cpus else []
    return f"{setup} ({', '.join(detail)})" if detail else setup


def loop_label(loop: str) -> str:
    """``loop``, and for ``auto`` the loop it resolves to here."""
    return f"auto ({loops.loop_name('auto')})" if loop == "auto" else loop


def table(rounds: list[dict[str, Any]], args: argparse.Namespace) -> str:
    def fmt(value: float | None, digits: int = 0) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}"

    def ratio(a: float | None, b: float | None) -> str:
        return "n/a" if a is None or not b else f"{a / b:.2f}x"

    pf_accept = median(rounds, "postfix", "accept_rate")
    pf_drain = median(rounds, "postfix", "drain_rate")
    lines = [
        "| setup | loop | accept vs Postfix | accept vs `--null` | drain vs Postfix | accept msg/s "
        "(null / Postfix) | drain msg/s (Postfix) | accept p50 / p99 ms, 50 conns, "
        "saturated | same, paced | light-load end-to-end p50 / p99 ms | server peak RSS MiB | "
        "drain vs the disk's ceiling |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for setup, loop in rows(args):
        durable = key("durable", setup, loop)
        acc = median(rounds, durable, "accept_rate")
        null = median(rounds, key("null", setup, loop), "accept_rate")
        drain = median(rounds, durable, "drain_rate")
        lat = key("latency", setup, loop)
        paced = key("paced", setup, loop)
        light = key("light", setup, loop)
        lines.append(
            f"| {setup_name(setup, rounds, durable)} | {loop_label(loop)} | "
            f"{ratio(acc, pf_accept)} | {ratio(acc, null)} | "
            f"{ratio(drain, pf_drain)} | {fmt(acc)} ({fmt(null)} / {fmt(pf_accept)}) | "
            f"{fmt(drain)} ({fmt(pf_drain)}) | "
            f"{fmt(median(rounds, lat, 'accept_latency_p50_ms'), 1)} / "
            f"{fmt(median(rounds, lat, 'accept_latency_p99_ms'), 1)} | "
            f"{fmt(median(rounds, paced, 'accept_latency_p50_ms'), 1)} / "
            f"{fmt(median(rounds, paced, 'accept_latency_p99_ms'), 1)} | "
            f"{fmt(median(rounds, light, 'e2e_p50_ms'), 1)} / "
            f"{fmt(median(rounds, light, 'e2e_p99_ms'), 1)} | "
            f"{fmt(median(rounds, durable, 'rss_mb'), 0)} | "
            f"{share(rounds, durable, key('ceiling', setup, loop))} |")
    lines.append("")
    raced = sum(1 for r in rounds if (r.get("postfix") or {}).get("redeferred"))
    if raced:
        valid = sum(1 for r in rounds if (r.get("postfix") or {}).get("drain_rate"))
        lines.append(f"Postfix's drain is the median of {valid} round(s): in {raced} the "
                     f"anchor's flush raced its reload (see run.py's redeferred()).")
        lines.append("")
    if args.ceiling:
        ceilings = ", ".join(
            f"{fmt(median(rounds, key('ceiling', setup, loop), 'rate'))} files/s after the "
            f"{setup} drains" for setup, loop in rows(args))
        lines.append(f"The disk's ceiling: `benchmarks/maildir_ceiling.py` run right after "
                     f"each drain on {DEFAULT_WRITERS} threads (a Maildir store's writers), "
                     "the same files (4 KiB and the trace headers, into the one Maildir "
                     "smtp-source sends to) created, written, fsynced and renamed into "
                     f"`new/`, one fsync of `new/` per {maildir_ceiling.BATCH:,} (a claim), with "
                     "nothing else around them; "
                     f"median {ceilings}. The drain's share of it is the median of the "
                     "rounds' own ratios (the lowest and the highest in brackets).")
        lines.append("")
    if {"defaults", "thread"} & set(args.setups):
        lines.append("Setups: `defaults` is `benchmarks/bench.toml` without `[server] cpus` and "
                     "`[queue] writer`, as `config/default.toml` leaves them (unpinned, the "
                     "writer `serve` chooses, named in brackets); `thread` is the same with "
                     "`[queue] writer = \"thread\"`; `tuned` is bench.toml (the server on "
                     "CPU 0, its writer process on the other); `postgres` is `defaults` with "
                     "its queue on the machine's PostgreSQL 15 (a new database for each "
                     "run; the front end's commit and the worker's claims and settles go "
                     "there).")
        lines.append("")
    lines.append(f"Medians of {len(rounds)} interleaved round(s); {args.messages:,} messages of "
                 f"{args.size:,} bytes over {args.sessions} sessions (smtp-source -d), "
                 f"{os.cpu_count()} cores, shared; load average {args.load[0]:.1f} when the "
                 f"run began, {args.load[1]:.1f} when it ended. Latency: "
                 f"scripts/load_test.py, {args.latency_messages:,} messages over 50 "
                 f"connections, as fast as they go (saturated) or offered at "
                 f"{args.paced_rate:,} msg/s (paced); n/a where the run left it out.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--latency-messages", type=int, default=3000)
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--setups", default="tuned",
                        help="comma-separated: defaults (what a user gets), thread (the "
                        "defaults with a writer thread), tuned (bench.toml), postgres (the "
                        "defaults on a PostgreSQL queue)")
    parser.add_argument("--pg-url", default=PG_URL,
                        help="the PostgreSQL server the postgres setup makes its databases on")
    parser.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=True,
                        help="the disk's ceiling for the drain (benchmarks/maildir_ceiling.py)")
    parser.add_argument("--latency-runs", default="saturated,paced,light",
                        help="the load script's latency runs to make (comma-separated; "
                        "empty: none)")
    parser.add_argument("--paced-rate", type=int, default=1000,
                        help="offered msg/s for the paced latency run")
    parser.add_argument("--postfix", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds of quiet (after a sync) before each measured phase")
    parser.add_argument("--docs", action="store_true",
                        help="replace the table in docs/performance.md")
    args = parser.parse_args()
    args.loops = [loop for loop in args.loops.split(",") if loop]
    args.setups = [setup for setup in args.setups.split(",") if setup]
    args.latency_runs = {run for run in args.latency_runs.split(",") if run}
    if unknown := args.latency_runs - {"saturated", "paced", "light"}:
        raise SystemExit(f"--latency-runs: unknown {', '.join(sorted(unknown))} "
                         "(known: saturated, paced, light)")
    if unknown := set(args.setups) - set(SETUPS):
        raise SystemExit(f"--setups: unknown {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(SETUPS)})")
    if args.docs:
        _docs.around(DOCS_TABLE)  # the markers are there, before minutes of measuring
    if shutil.which("smtp-source") is None:
        raise SystemExit("smtp-source is missing: run the Postfix anchor once "
                         "(it installs Debian's postfix), or apt-get install postfix")
    args.scratch = Path(tempfile.mkdtemp(prefix="mq-bench-runs-"))
    os.chmod(args.scratch, 0o755)
    try:
        began = os.getloadavg()[0]
        rounds = [one_round(args) for _ in range(args.rounds)]
        args.load = (began, os.getloadavg()[0])
    finally:
        shutil.rmtree(args.scratch, ignore_errors=True)
    (HERE / "results.json").write_text(json.dumps(rounds, indent=1) + "\n")
    text = table(rounds, args)
    print(text)
    if args.docs:
        _docs.write_table(DOCS_TABLE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
