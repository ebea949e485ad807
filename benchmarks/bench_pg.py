"""Scale-out benchmark on PostgreSQL: drain rate by worker processes, accept rate by front ends.

    .venv/bin/python benchmarks/bench_pg.py [--admin-url postgresql://postgres@127.0.0.1/postgres]
        [--messages 3000] [--workers 1,2,4] [--front-ends 1,2] [--clients 32]

Every run gets a new database (dropped at the end) and real `mailqueue serve --role ...`
processes. Drain: the messages are queued under a window, the workers start, the window
ends, and the clock runs until every recipient is delivered to its Maildir. Accept: SMTP
clients (in this process) send over persistent sessions, spread over the front ends, and
the clock runs until the last 250. Ratios are against the first figure of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib
import asyncpg

from mailqueue.control.windows import Window
from mailqueue.loadtest import free_port
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import NewMessage, new_queue_id

BODY = b"From: a@src.test\r\nSubject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * 13


class Database:
    def __init__(self, admin: str) -> None:
        self.admin = admin
        self.name = f"mq_bench_{secrets.token_hex(4)}"

    async def __aenter__(self) -> str:
        conn = await asyncpg.connect(self.admin)
        await conn.execute(f'CREATE DATABASE "{self.name}"')
        await conn.close()
        base = self.admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        return f"{base}/{self.name}"

    async def __aexit__(self, *_: object) -> None:
        conn = await asyncpg.connect(self.admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        await conn.close()


def config(tmp: Path, url: str) -> Path:
    path = tmp / "bench.toml"
    path.write_text(f"""
[smtp]
hostname = "mx.bench"
max_connections_per_ip = 500
[queue]
url = "{url}"
[delivery]
batch_size = 100
concurrency = 4
[logging]
level = "info"  # the default; every delivery is one log line
[[stores]]
name = "basic"
path = "{tmp / 'mail'}"
domains = ["basic.example"]
""")
    return path


def start(cfg: Path, role: str, port: int = 0) -> subprocess.Popen[bytes]:
    log = cfg.parent / f"{role}-{secrets.token_hex(3)}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mailqueue", "serve", "-c", str(cfg),
                                 "--role", role, "--port", str(port), "--log-json"],
                                stdout=subprocess.DEVNULL, stderr=out)
    proc.log = log  # type: ignore[attr-defined]
    return proc


async def wait_started(procs: list[subprocess.Popen[bytes]]) -> None:
    """Every process has opened the queue and logged server_started."""
    while not all("server_started" in p.log.read_text()  # type: ignore[attr-defined]
                  for p in procs):
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a mailqueue process exited early")
        await asyncio.sleep(0.1)


def pid_cpu(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(procs: list[subprocess.Popen[bytes]]) -> float:
    return sum(pid_cpu(p.pid) for p in procs)


class Cpu:
    """CPU used between start() and stop(): mailqueue processes, PostgreSQL backends of
    the benchmark database, and this process (the SMTP clients)."""

    def __init__(self, admin: str, database: str) -> None:
        self.admin, self.database = admin, database

    async def _backends(self) -> dict[int, float]:
        conn = await asyncpg.connect(self.admin)
        try:
            rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1",
                                    self.database)
        finally:
            await conn.close()
        return {r["pid"]: pid_cpu(r["pid"]) for r in rows}

    async def start(self, procs: list[subprocess.Popen[bytes]]) -> None:
        self.procs = procs
        self.mq, self.me = cpu_seconds(procs), time.process_time()
        self.pg = await self._backends()

    async def stop(self) -> tuple[float, float, float]:
        mq, me = cpu_seconds(self.procs) - self.mq, time.process_time() - self.me
        pg = sum(cpu - self.pg.get(pid, 0.0) for pid, cpu in (await self._backends()).items())
        return mq, pg, me


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_listening(port: int) -> None:
    for _ in range(600):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit(f"front end on port {port} did not start")


async def drain(admin: str, workers: int, messages: int) -> tuple[float, tuple[float, ...]]:
    """Recipients delivered per second by ``workers`` worker processes."""
    async with Database(admin) as url:
        store = SqlQueueStore(url)
        await store.open()
        now = time.time()
        hold = Window(name="hold", stores=(), start=now - 1, end=now + 3600).advance(now)
        await store.save_window(hold)
        for first in range(0, messages, 500):
            await store.enqueue([NewMessage(
                queue_id=new_queue_id(now + (first + i) / 1000), mail_from="a@src.test",
                recipients=((f"user{(first + i) % 100}@basic.example", "basic"),), body=BODY,
                received_at=now, digest=hashlib.sha256(BODY).hexdigest())
                for i in range(min(500, messages - first))])
        with tempfile.TemporaryDirectory() as tmp:
            procs = [start(config(Path(tmp), url), "worker") for _ in range(workers)]
            try:
                await wait_started(procs)
                await asyncio.sleep(0.5)
                cpu = Cpu(admin, url.rsplit("/", 1)[1])
                await cpu.start(procs)
                began = time.perf_counter()
                await store.save_window(hold.ended_now(time.time()))
                while (await store.stats()).recipients["delivered"] < messages:
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - began
                used = await cpu.stop()
            finally:
                stop(procs)
                await store.close()
    return messages / elapsed, tuple(c * 1000 / messages for c in used)


async def accept(admin: str, front_ends: int, messages: int,
                 clients: int) -> tuple[float, tuple[float, ...]]:
    """Messages accepted (250 after commit) per second by ``front_ends`` processes."""
    async with Database(admin) as url:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = config(Path(tmp), url)
            ports = [free_port() for _ in range(front_ends)]
            procs = [start(cfg, "smtp", port) for port in ports]
            try:
                for port in ports:
                    await wait_listening(port)
                per_client = messages // clients
                cpu = Cpu(admin, url.rsplit("/", 1)[1])
                await cpu.start(procs)
                began = time.perf_counter()
                await asyncio.gather(*(session(ports[n % front_ends], n, per_client)
                                       for n in range(clients)))
                elapsed = time.perf_counter() - began
                used = await cpu.stop()
            finally:
                stop(procs)
    return per_client * clients / elapsed, tuple(c * 1000 / (per_client * clients)
                                                 for c in used)


async def session(port: int, n: int, count: int) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
    await client.connect()
    try:
        for i in range(count):
            await client.sendmail("a@src.test", [f"user{(n + i) % 100}@basic.example"], BODY)
    finally:
        await client.quit()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--front-ends", default="1,2")
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print("| measurement | processes | rate (/s) | ratio | CPU s per 1000: mailqueue / "
          "PostgreSQL / benchmark client |")
    print("| --- | --- | --- | --- | --- |")
    base = None
    for count in (int(x) for x in args.workers.split(",") if x):
        rate, cpu = await drain(args.admin_url, count, args.messages)
        base = base or rate
        print(f"| drain (recipients delivered) | {count} worker(s) | {rate:.0f} | "
              f"{rate / base:.2f} | {' / '.join(f'{c:.2f}' for c in cpu)} |", flush=True)
    base = None
    for count in (int(x) for x in args.front_ends.split(",") if x):
        rate, cpu = await accept(args.admin_url, count, args.messages, args.clients)
        base = base or rate
        print(f"| accept (messages, 250 after commit) | {count} front end(s) | {rate:.0f} | "
              f"{rate / base:.2f} | {' / '.join(f'{c:.2f}' for c in cpu)} |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
