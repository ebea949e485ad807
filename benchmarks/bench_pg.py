"""PostgreSQL scale-out benchmark: one SMTP front end plus W delivery workers on one database.

    .venv/bin/python benchmarks/bench_pg.py [--admin-url postgresql://postgres@127.0.0.1/postgres]
        [--messages 5000] [--workers 1,2,4] [--rounds 3] [--docs]

For each worker count W, every round: a new database (dropped at the end), one
`mailqueue serve --role smtp` and W `mailqueue serve --role worker` processes, each pinned to
one CPU (process i on CPU i mod the CPU count, by `[server] cpus` in its copy of the
configuration). Accept: under a window, `smtp-source -d -s 50 -l 4096` sends N messages to
the front end; accept rate = N / smtp-source's wall time. Drain: the window ends and the
clock runs until every recipient is in its Maildir; drain rate = N / that time. Per phase
the script reads the CPU time of the front end, of the workers and of the PostgreSQL
backends serving them (sampled from pg_stat_activity and /proc while the phase runs, each
backend put down to its client by the client's TCP port), and the WAL flushes of
pg_stat_wal (cluster-wide). Then PostgreSQL's own commit ceiling: one connection, then 16,
committing one-row INSERTs with synchronous_commit=on for a few seconds.

Writes benchmarks/bench_pg.json (every round) and prints a Markdown table of the medians;
with --docs the table replaces the one between the `pg` markers in docs/postgresql.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _docs  # benchmarks/_docs.py: this script's folder is on sys.path
import asyncpg

from mailqueue.loadtest import ScratchDatabase, count_files, free_port, set_window
from mailqueue.queue.sqlstore import SqlQueueStore

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "postgresql.md"
DOCS_TABLE = "pg"
SESSIONS = 50  # smtp-source -s
SIZE = 4096  # smtp-source -l
CEILING_CONNECTIONS = 16


def sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


def config(tmp: Path, url: str, cpu: int, index: int) -> Path:
    """Process ``index``'s copy of the configuration (benchmarks/bench.toml's limits, the
    queue on ``url``), pinned to ``cpu``."""
    path = tmp / f"mailqueue-{index}.toml"
    path.write_text(f"""
[server]
cpus = "{cpu}"

[smtp]
host = "127.0.0.1"
hostname = "mx.mailqueue.test"
max_message_size = "10MiB"
max_recipients = 100
max_connections = 1000
max_connections_per_ip = 1000
timeout = "5m"
shutdown_grace = "10s"

[queue]
url = "{sqlalchemy_url(url)}"
max_messages = 2000000
max_bytes = "20GiB"

[delivery]
batch_size = 250
concurrency = 4
lease = "5m"
poll_interval = "1s"

[logging]
format = "json"
level = "info"

[[stores]]
name = "vmail"
kind = "maildir"
path = "{tmp / 'mail' / 'vmail'}"
domains = ["example.test"]
""")
    return path


class Proc:
    """One `mailqueue serve --role ROLE` process, its log beside its configuration."""

    def __init__(self, cfg: Path, role: str, cpu: int, port: int = 0) -> None:
        self.role, self.cpu, self.port = role, cpu, port
        self.log = cfg.with_suffix(".log")
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "mailqueue", "serve", "-c", str(cfg), "--role", role,
                 "--port", str(port)], stdout=subprocess.DEVNULL, stderr=out)
        self.pid = self.popen.pid

    def started(self) -> bool:
        if self.popen.poll() is not None:
            raise SystemExit(f"mailqueue serve --role {self.role} exited early: "
                             f"{self.log.read_text()[-2000:]}")
        return '"server_started"' in self.log.read_text()

    def cpus_allowed(self) -> str:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
        return "?"


def stop(procs: list[Proc]) -> None:
    for proc in procs:
        proc.popen.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.popen.wait(30)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()


def pid_cpu(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tcp_ports(pids: list[int]) -> dict[int, int]:
    """The local TCP ports of the sockets processes ``pids`` hold: port -> pid."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    ports: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                ports[int(fields[1].rsplit(":", 1)[1], 16)] = inodes[fields[9]]
    return ports


class Usage:
    """CPU seconds between marks: the mailqueue processes, and the PostgreSQL backends of
    the benchmark's database by whom they serve (the front end, the workers, this script,
    or no client: autovacuum and the like). Backends are sampled while a phase runs, so
    one that starts and ends within it is counted up to its last sample."""

    ROLES = ("front_end", "workers", "pg_front_end", "pg_workers", "pg_other", "pg_benchmark",
             "benchmark", "smtp_source")

    def __init__(self, admin: asyncpg.Connection, database: str, procs: list[Proc]) -> None:
        self.admin, self.database, self.procs = admin, database, procs
        self.owner: dict[int, str] = {}  # backend pid -> role
        self.last: dict[int, float] = {}  # backend pid -> CPU seen at the last sample
        self.base: dict[str, float] = {}
        self.at_mark: dict[int, float] = {}
        self.task: asyncio.Task[None] | None = None

    def _who(self, client_port: int | None, ports: dict[int, int]) -> str:
        pid = ports.get(client_port) if client_port is not None else None
        if pid == os.getpid():
            return "pg_benchmark"
        role = next((p.role for p in self.procs if p.pid == pid), None)
        return {"smtp": "pg_front_end", "worker": "pg_workers"}.get(role or "", "pg_other")

    async def sample(self) -> None:
        rows = await self.admin.fetch(
            "SELECT pid, client_port FROM pg_stat_activity WHERE datname = $1", self.database)
        ports: dict[int, int] | None = None
        for row in rows:
            pid = row["pid"]
            if pid not in self.owner:
                if ports is None:
                    ports = tcp_ports([os.getpid()] + [p.pid for p in self.procs])
                self.owner[pid] = self._who(row["client_port"], ports)
            cpu = pid_cpu(pid)
            if cpu:
                self.last[pid] = cpu

    async def _sampling(self, every: float, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await asyncio.sleep(every)
            await self.sample()

    def start_sampling(self, every: float = 0.25) -> None:
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(self._sampling(every, self.stopping))

    async def stop_sampling(self) -> None:
        """The sampler's last query finishes (the admin connection runs one at a time)."""
        if self.task is not None:
            self.stopping.set()
            await self.task
            self.task = None

    def _processes(self) -> dict[str, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"front_end": sum(pid_cpu(p.pid) for p in self.procs if p.role == "smtp"),
                "workers": sum(pid_cpu(p.pid) for p in self.procs if p.role == "worker"),
                "benchmark": time.process_time(),
                # smtp-source is the only child reaped while the processes run
                "smtp_source": children.ru_utime + children.ru_stime}

    async def mark(self) -> dict[str, float]:
        """CPU seconds by role since the previous mark."""
        await self.sample()
        now = self._processes()
        used = {role: now[role] - self.base.get(role, now[role]) for role in now}
        for role in ("pg_front_end", "pg_workers", "pg_other", "pg_benchmark"):
            used[role] = sum(cpu - self.at_mark.get(pid, 0.0) for pid, cpu in self.last.items()
                             if self.owner.get(pid) == role)
        self.base, self.at_mark = now, dict(self.last)
        return used


async def wal(admin: asyncpg.Connection, database: str) -> dict[str, float]:
    """pg_stat_wal's counters (the whole cluster) and the commits of ``database`` and of
    the other databases (but the admin connection's own)."""
    row = await admin.fetchrow("SELECT wal_sync, wal_write, wal_bytes FROM pg_stat_wal")
    commits = await admin.fetchrow(
        "SELECT sum(xact_commit) FILTER (WHERE datname = $1) AS mine, "
        "sum(xact_commit) FILTER (WHERE datname <> $1 AND datname <> current_database()) "
        "AS others FROM pg_stat_database", database)
    return {"wal_sync": int(row["wal_sync"]), "wal_write": int(row["wal_write"]),
            "wal_bytes": int(row["wal_bytes"]), "commits": int(commits["mine"] or 0),
            "other_db_commits": int(commits["others"] or 0)}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in after}


async def wait_listening(port: int) -> None:
    for _ in range(600):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit(f"front end on port {port} did not start")


async def smtp_source(port: int, messages: int) -> float:
    """Seconds smtp-source takes to hand ``messages`` to the front end."""
    began = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "smtp-source", "-d", "-s", str(SESSIONS), "-m", str(messages), "-l", str(SIZE),
        "-f", "sender@src.test", "-t", "u1@example.test", f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    elapsed = time.perf_counter() - began
    if proc.returncode:
        raise SystemExit(f"smtp-source exited {proc.returncode}: {err.decode()[-2000:]}")
    return elapsed


def phase(seconds: float, messages: int, used: dict[str, float],
          flushes: dict[str, float]) -> dict[str, Any]:
    per = 1000 / messages
    return {"seconds": round(seconds, 3), "rate": round(messages / seconds, 1),
            "cpu_ms_per_message": {role: round(cpu * per, 3) for role, cpu in used.items()},
            "pg_cpu_ms_per_message": round(sum(used[r] for r in ("pg_front_end", "pg_workers",
                                                                 "pg_other")) * per, 3),
            "wal_per_1000": {key: round(value * per, 1) for key, value in flushes.items()},
            "wal": flushes}


async def measure(admin_url: str, workers: int, messages: int, settle: float) -> dict[str, Any]:
    """One front end and ``workers`` workers on a new database: accept, then drain."""
    ncpu = os.cpu_count() or 1
    async with ScratchDatabase(admin_url, prefix="mq_bench") as url:
        database = url.rsplit("/", 1)[1]
        store = SqlQueueStore(sqlalchemy_url(url))
        await store.open()  # the schema, before the processes start
        admin = await asyncpg.connect(admin_url)
        tmp = Path(tempfile.mkdtemp(prefix="mq-bench-pg-"))
        procs: list[Proc] = []
        try:
            port = free_port()
            procs.append(Proc(config(tmp, url, 0, 0), "smtp", 0, port))
            for i in range(1, workers + 1):
                procs.append(Proc(config(tmp, url, i % ncpu, i), "worker", i % ncpu))
            while not all(p.started() for p in procs):
                await asyncio.sleep(0.1)
            await wait_listening(port)
            pinned = [p.cpus_allowed() for p in procs]
            window = f"bench-{secrets.token_hex(3)}"
            await set_window(sqlalchemy_url(url), window, start=True)
            await asyncio.sleep(1.0)  # every process has reread the windows
            usage = Usage(admin, database, procs)
            await usage.mark()
            wal_before = await wal(admin, database)
            usage.start_sampling()
            accept_s = await smtp_source(port, messages)
            await usage.stop_sampling()
            accept_cpu = await usage.mark()
            queued = (await store.stats()).messages_total
            if queued != messages:
                raise SystemExit(f"{queued} messages queued of {messages} sent")
            # The backends publish their WAL counters at most once a second, and an idle
            # one after 10 s: wait for the accept phase's, before the drain writes more.
            await asyncio.sleep(settle)
            wal_mid = await wal(admin, database)
            await usage.mark()
            usage.start_sampling()
            began = time.perf_counter()
            await set_window(sqlalchemy_url(url), window, start=False)
            while (await store.stats()).recipients["delivered"] < messages:
                await asyncio.sleep(0.1)
            drain_s = time.perf_counter() - began
            await usage.stop_sampling()
            drain_cpu = await usage.mark()
            files = count_files([{"name": "vmail", "path": str(tmp / "mail" / "vmail")}])
            if files != messages:
                raise SystemExit(f"{files} messages in the Maildirs of {messages} delivered")
            await asyncio.sleep(settle)
            wal_after = await wal(admin, database)
        finally:
            stop(procs)
            await store.close()
            await admin.close()
            shutil.rmtree(tmp, ignore_errors=True)
    return {"workers": workers, "messages": messages,
            "cpus": {"front_end": pinned[0], "workers": pinned[1:]},
            "accept": phase(accept_s, messages, accept_cpu, delta(wal_mid, wal_before)),
            "drain": phase(drain_s, messages, drain_cpu, delta(wal_after, wal_mid))}


async def commit_loop(url: str, until: float) -> int:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET synchronous_commit = on")
        count = 0
        while time.perf_counter() < until:
            await conn.execute("INSERT INTO commits (v) VALUES (1)")
            count += 1
        return count
    finally:
        await conn.close()  # an exiting backend publishes its WAL counters at once


async def ceiling(admin_url: str, seconds: float) -> dict[str, Any]:
    """Commits (one-row INSERTs, synchronous_commit=on, a WAL flush each unless grouped)
    per second by one connection and by ``CEILING_CONNECTIONS`` at once."""
    result: dict[str, Any] = {}
    async with ScratchDatabase(admin_url, prefix="mq_bench") as url:
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE commits (id bigserial PRIMARY KEY, v int)")
        await conn.close()
        admin = await asyncpg.connect(admin_url)
        try:
            for connections in (1, CEILING_CONNECTIONS):
                before, cpu = await wal(admin, url.rsplit("/", 1)[1]), time.process_time()
                began = time.perf_counter()
                counts = await asyncio.gather(*(commit_loop(url, began + seconds)
                                                for _ in range(connections)))
                elapsed = time.perf_counter() - began
                await asyncio.sleep(0.5)
                used = delta(await wal(admin, url.rsplit("/", 1)[1]), before)
                commits = sum(counts)
                result[str(connections)] = {
                    "connections": connections, "seconds": round(elapsed, 3),
                    "commits": commits, "commits_per_s": round(commits / elapsed, 1),
                    "wal_sync_per_s": round(used["wal_sync"] / elapsed, 1),
                    "commits_per_wal_sync": round(commits / max(1, used["wal_sync"]), 2),
                    "client_cpu_s": round(time.process_time() - cpu, 3), "wal": used}
        finally:
            await admin.close()
    return result


def med(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(value)
    return float(statistics.median(values))


def summarise(runs: list[dict[str, Any]], counts: list[int]) -> list[dict[str, Any]]:
    rows = []
    for count in counts:
        mine = [r for r in runs if r["workers"] == count]
        row: dict[str, Any] = {"workers": count, "rounds": len(mine), "cpus": mine[0]["cpus"]}
        for name in ("accept", "drain"):
            row[name] = {
                "rate": med(mine, name, "rate"),
                "cpu_ms_per_message": {
                    "front_end": med(mine, name, "cpu_ms_per_message", "front_end"),
                    "workers": med(mine, name, "cpu_ms_per_message", "workers"),
                    "postgresql": med(mine, name, "pg_cpu_ms_per_message")},
                "wal_sync_per_1000": med(mine, name, "wal_per_1000", "wal_sync"),
                "commits_per_1000": med(mine, name, "wal_per_1000", "commits"),
                "other_db_commits": max(r[name]["wal"]["other_db_commits"] for r in mine)}
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], ceilings: list[dict[str, Any]], messages: int,
          rounds: int, ncpu: int, load: tuple[float, float], command: str) -> str:
    def cpus(row: dict[str, Any]) -> str:
        return f"CPU {row['cpus']['front_end']} / {', '.join(row['cpus']['workers'])}"

    def ms(part: dict[str, Any]) -> str:
        cpu = part["cpu_ms_per_message"]
        return f"{cpu['front_end']:.2f} / {cpu['workers']:.2f} / {cpu['postgresql']:.2f}"

    lines = ["| setup (CPUs: front end / workers) | accept msg/s | drain deliveries/s | "
             "CPU ms per message, accept: front end / workers / PostgreSQL | "
             "CPU ms per message, drain: front end / workers / PostgreSQL | "
             "WAL flushes per 1000 messages: accept / drain |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        w = row["workers"]
        lines.append(
            f"| 1 front end + {w} worker{'s' if w > 1 else ''} ({cpus(row)}) | "
            f"{row['accept']['rate']:,.0f} | {row['drain']['rate']:,.0f} | "
            f"{ms(row['accept'])} | {ms(row['drain'])} | "
            f"{row['accept']['wal_sync_per_1000']:,.0f} / "
            f"{row['drain']['wal_sync_per_1000']:,.0f} |")
    one = statistics.median(c["1"]["wal_sync_per_s"] for c in ceilings)
    one_commits = statistics.median(c["1"]["commits_per_s"] for c in ceilings)
    many = statistics.median(c[str(CEILING_CONNECTIONS)]["commits_per_s"] for c in ceilings)
    many_sync = statistics.median(c[str(CEILING_CONNECTIONS)]["wal_sync_per_s"]
                                  for c in ceilings)
    lines += [
        "",
        f"PostgreSQL's WAL flush ceiling: one connection committing one-row INSERTs "
        f"(`synchronous_commit=on`) {one_commits:,.0f} commits/s, {one:,.0f} WAL flushes/s; "
        f"{CEILING_CONNECTIONS} connections {many:,.0f} commits/s in {many_sync:,.0f} WAL "
        f"flushes/s (group commit).",
        "",
        f"`{command}`: "
        f"medians of {rounds} round{'s' if rounds > 1 else ''}, {messages:,} messages of "
        f"{SIZE:,} bytes each (one recipient) from `smtp-source -d -s {SESSIONS}`, on "
        f"{ncpu} CPUs with PostgreSQL 15 on the same machine (load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after). Each mailqueue process is pinned to one "
        f"CPU (process i on CPU i mod {ncpu}); PostgreSQL and smtp-source are not. Accept: "
        "the workers idle under a window while smtp-source sends; drain: the window ends "
        "and the clock stops when the last recipient is in its Maildir. PostgreSQL's CPU is "
        "that of the benchmark database's backends serving the mailqueue processes (and "
        "autovacuum); WAL flushes are `pg_stat_wal.wal_sync` of the whole cluster."]
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=3,
                        help="the worker counts in turn this many times; medians are reported")
    parser.add_argument("--ceiling-seconds", type=float, default=3.0)
    parser.add_argument("--stats-settle", type=float, default=11.0,
                        help="seconds to wait after a phase for the backends' WAL counters")
    parser.add_argument("--docs", action="store_true",
                        help="replace the table between the pg markers in docs/postgresql.md")
    args = parser.parse_args()
    if args.docs:
        _docs.around(DOCS_TABLE, DOCS)  # the markers are there, before minutes of measuring
    if shutil.which("smtp-source") is None:
        raise SystemExit("smtp-source is missing: apt-get install postfix")
    counts = [int(x) for x in args.workers.split(",") if x]
    ncpu = os.cpu_count() or 1
    admin = await asyncpg.connect(args.admin_url)
    settings = {name: await admin.fetchval(f"SHOW {name}") for name in (
        "server_version", "wal_sync_method", "synchronous_commit", "commit_delay",
        "wal_writer_delay", "shared_buffers")}
    await admin.close()
    load_before = os.getloadavg()[0]
    print(f"load average before: {load_before:.1f}; {ncpu} CPUs; PostgreSQL "
          f"{settings['server_version']}, wal_sync_method {settings['wal_sync_method']}")
    for count in counts:
        if count + 1 > ncpu:
            print(f"1 front end + {count} workers: {count + 1} processes on {ncpu} CPUs, "
                  f"so they share CPUs (process i on CPU i mod {ncpu})")
    print("WAL flushes are pg_stat_wal.wal_sync of the whole cluster: another database's "
          "commits in a phase would count too (other_db_commits in the JSON)")
    runs: list[dict[str, Any]] = []
    ceilings: list[dict[str, Any]] = []
    for n in range(args.rounds):
        for count in counts:
            run = await measure(args.admin_url, count, args.messages, args.stats_settle)
            run["round"] = n + 1
            runs.append(run)
            print(f"round {n + 1}, 1 front end + {count} worker{'s' if count > 1 else ''} "
                  f"(CPUs {run['cpus']['front_end']} / {', '.join(run['cpus']['workers'])}): "
                  f"accept {run['accept']['rate']:.0f} msg/s, "
                  f"drain {run['drain']['rate']:.0f} deliveries/s; other databases' commits "
                  f"{run['accept']['wal']['other_db_commits']} / "
                  f"{run['drain']['wal']['other_db_commits']}", flush=True)
        ceilings.append(await ceiling(args.admin_url, args.ceiling_seconds))
        print(f"round {n + 1}, WAL ceiling: " + "; ".join(
            f"{c['connections']} connection(s) {c['commits_per_s']:.0f} commits/s, "
            f"{c['wal_sync_per_s']:.0f} flushes/s" for c in ceilings[-1].values()), flush=True)
    load = (load_before, os.getloadavg()[0])
    rows = summarise(runs, counts)
    command = " ".join(["python benchmarks/bench_pg.py", f"--rounds {args.rounds}",
                        f"--messages {args.messages}"]
                       + ([f"--workers {args.workers}"] if args.workers != "1,2,4" else []))
    text = table(rows, ceilings, args.messages, args.rounds, ncpu, load, command)
    (HERE / "bench_pg.json").write_text(json.dumps({
        "messages": args.messages, "size": SIZE, "sessions": SESSIONS, "rounds": args.rounds,
        "cpus": ncpu, "load_average": load, "postgresql": settings,
        "medians": rows, "runs": runs, "wal_ceiling": ceilings}, indent=1) + "\n")
    print()
    print(text)
    if args.docs:
        _docs.write_table(DOCS_TABLE, text, DOCS)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
