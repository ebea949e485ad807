"""Scale-out on PostgreSQL: several real `mailqueue serve` processes share one queue.

Workers drain it together (each recipient claimed once, a killed worker's leases taken over
by the others, every message in its mailbox exactly once); front ends and workers follow a
window that the CLI starts and ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select

from mailqueue.control.windows import Window
from mailqueue.queue.schema import recipients
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import NewMessage, new_queue_id
from tests.helpers import all_files, message, opened_store, wait_for
from tests.served import free_port


def write_config(tmp_path: Path, url: str, lease: str = "5m") -> Path:
    path = tmp_path / "mq.toml"
    path.write_text(f"""
[smtp]
hostname = "mx.test"
shutdown_grace = "2s"
[queue]
url = "{url}"
[delivery]
batch_size = 10
concurrency = 2
poll_interval = "1s"
lease = "{lease}"
reclaim_interval = "0.5s"
[logging]
level = "info"
[[stores]]
name = "basic"
path = "{tmp_path / 'mail'}"
domains = ["basic.example"]
""")
    return path


class Fleet:
    """`mailqueue serve` processes started by a test, always stopped at the end."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, role: str, port: int = 0) -> subprocess.Popen[bytes]:
        log = self.config.parent / f"{role}-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mailqueue", "serve", "-c", str(self.config),
                 "--role", role, "--port", str(port), "--log-json"],
                stdout=subprocess.DEVNULL, stderr=out)
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    async def ready(self) -> None:
        """Every process has logged server_started (and so opened the queue)."""
        def started() -> bool:
            for proc in self.procs:
                if proc.poll() is not None and proc.returncode != -signal.SIGKILL:
                    raise AssertionError(f"exited: {proc.log.read_text()}")  # type: ignore[attr-defined]
            return all("server_started" in p.log.read_text()  # type: ignore[attr-defined]
                       for p in self.procs)
        await wait_for(started, timeout=30, interval=0.1)

    def stop(self) -> list[int | None]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(20))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes

    def logs(self, proc: subprocess.Popen[bytes]) -> str:
        return str(proc.log.read_text())  # type: ignore[attr-defined]


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str) -> Iterator[Fleet]:
    group = Fleet(write_config(tmp_path, pg_url, lease="3s"))
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[SqlQueueStore]:
    async with opened_store(pg_url) as queue:
        yield queue


def batch(n: int, start: int) -> list[NewMessage]:
    now = time.time()
    return [NewMessage(queue_id=new_queue_id(now + i / 1000), mail_from="a@src.test",
                       recipients=((f"user{(start + i) % 50}@basic.example", "basic"),),
                       body=message(f"m{start + i}").encode(), received_at=now,
                       digest=hashlib.sha256(b"x").hexdigest()) for i in range(n)]


async def leases_of(store: SqlQueueStore, pid: int) -> list[int]:
    """Recipients a worker process holds now (its lease owner is host:pid:...)."""
    assert store._engine is not None
    async with store._engine.connect() as conn:
        rows = await conn.execute(select(recipients.c.id).where(
            recipients.c.state == "active",
            recipients.c.lease_owner.like(f"{socket.gethostname()}:{pid}:%")))
        return [r[0] for r in rows]


async def attempts(store: SqlQueueStore) -> dict[int, tuple[str, int]]:
    assert store._engine is not None
    async with store._engine.connect() as conn:
        rows = await conn.execute(select(recipients.c.id, recipients.c.state,
                                         recipients.c.attempts))
        return {r.id: (r.state, r.attempts) for r in rows}


async def freeze_with_leases(store: SqlQueueStore, proc: subprocess.Popen[bytes],
                             refill: Callable[[], Awaitable[None]]) -> list[int]:
    """Stop ``proc`` at a moment it holds leases; return them. When the other workers have
    drained the queue before that moment came, ``refill`` gives it more mail to claim."""
    for _ in range(200):
        os.kill(proc.pid, signal.SIGSTOP)
        await asyncio.sleep(0.2)  # what it sent before it stopped has been committed
        held = await leases_of(store, proc.pid)
        if held:
            return held
        os.kill(proc.pid, signal.SIGCONT)
        if (await store.stats()).recipients["queued"] == 0:
            await refill()
        await asyncio.sleep(0.01)
    raise AssertionError("the worker never held a lease")


async def test_workers_drain_one_queue_exactly_once(fleet: Fleet, store: SqlQueueStore,
                                                    tmp_path: Path) -> None:
    await store.save_window(Window(name="hold", stores=(), start=time.time() - 1,
                                   end=time.time() + 3600).advance(time.time()))
    await store.enqueue(batch(600, 0))
    workers = [fleet.start("worker") for _ in range(3)]
    await fleet.ready()
    await store.save_window(Window(name="hold", stores=(), start=time.time() - 1,
                                   end=time.time() + 3600).advance(time.time())
                            .ended_now(time.time()))
    # More mail arrives while they drain (NOTIFY wakes them; polling would too).
    for n in range(3):
        await store.enqueue(batch(50, 600 + n * 50))
    total = 750

    async def refill() -> None:
        nonlocal total
        await store.enqueue(batch(50, total))
        total += 50

    victim = workers[0]
    held = await freeze_with_leases(store, victim, refill)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)

    async def drained() -> bool:
        return (await store.stats()).recipients["delivered"] == total
    try:
        await wait_for(drained, timeout=90, interval=0.2)
    except AssertionError:
        survivors = "".join(fleet.logs(p)[-2000:] for p in workers[1:])
        raise AssertionError(f"not drained: {(await store.stats()).recipients}\n"
                             f"{survivors}") from None

    files = all_files(tmp_path / "mail")
    assert len(files) == len({f.name for f in files}) == total  # each message once
    final = await attempts(store)
    assert {state for state, _ in final.values()} == {"delivered"}
    # Every claim counts an attempt: a recipient claimed by two live workers would show 2.
    assert {rid for rid, (_, n) in final.items() if n != 1} == set(held)
    assert all(final[rid][1] == 2 for rid in held)  # the killed worker's, claimed again
    # The reclaim is logged before the deliveries it allowed, by a writer thread that
    # gathers lines for a moment: it may reach the file just after the queue is drained.
    await wait_for(lambda: "leases_reclaimed" in "".join(fleet.logs(p) for p in workers[1:]),
                   timeout=5)
    assert fleet.stop()[1:] == [0, 0]


async def test_front_ends_and_workers_follow_cli_windows(fleet: Fleet, tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    fleet.start("smtp", ports[0])
    fleet.start("smtp", ports[1])
    fleet.start("worker")
    fleet.start("worker")

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "mailqueue", *args, "-c",
                               str(fleet.config)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    cli("window", "start", "upgrade", "--for", "1h")
    await fleet.ready()
    mail = tmp_path / "mail"
    await asyncio.gather(*(
        aiosmtplib.send(message(f"{port}-{i}"), sender="a@src.test",
                        recipients=[f"user{i}@basic.example"], hostname="127.0.0.1", port=port)
        for i in range(10) for port in ports))
    await asyncio.sleep(1)  # workers poll, are notified, and still deliver nothing
    assert all_files(mail) == []

    cli("window", "end", "upgrade")
    await wait_for(lambda: len(all_files(mail)) == 20, timeout=10)

    # A window refusing new mail: both front ends answer 451 4.3.2 within a second or so.
    cli("window", "start", "freeze", "--for", "1h", "--inbound", "tempfail")

    def refuses(port: int) -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.sendmail("a@src.test", ["x@basic.example"], message("probe"))
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients["x@basic.example"]
            return code == 451 and text.startswith(b"4.3.2")
        return False

    for port in ports:
        await wait_for(lambda port=port: refuses(port), timeout=3, interval=0.1)
    cli("window", "cancel", "freeze")
    for port in ports:
        await wait_for(lambda port=port: not refuses(port), timeout=3, interval=0.1)
    await wait_for(lambda: len(all_files(mail)) >= 21, timeout=10)
    assert fleet.stop() == [0, 0, 0, 0]
