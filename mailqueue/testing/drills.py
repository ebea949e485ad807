"""Crash drills: a real server subprocess, 20 real SMTP clients, kill -9, a ledger, a check.

Shared by the pytest drills in ``tests/drills`` (CI-sized), the integration tests that kill
or restart a server, and ``scripts/drill.py`` (long runs). The ledger knows what every
client sent and which messages got a 250; :func:`verify` reads every file in the Maildirs
and proves: every acknowledged (message, recipient) is there exactly once, nothing is there
that was never sent, and every file carries the bytes that were sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import os
import random
import signal
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import aiosmtplib

from mailqueue.loadtest import children, free_port
from mailqueue.queue.sqlstore import SqlQueueStore

__all__ = ["CLIENTS", "HOOKED_POINTS", "MAILBOXES", "Ledger", "Report", "Server", "children",
           "crash_drill", "drain", "free_port", "queue_settled", "sigterm_drill", "verify",
           "worker_kill_drill", "write_config", "writer_kill_drill"]

CLIENTS = 20
MAILBOXES = [f"user{i}@basic.example" for i in range(8)]
HOOKED_POINTS = ("commit.after", "enqueue.mid_batch", "deliver.linked", "deliver.before_settle")


@dataclasses.dataclass
class Ledger:
    """What the clients sent: token -> (message bytes, recipients); and what got a 250."""

    sent: dict[str, tuple[bytes, tuple[str, ...]]] = dataclasses.field(default_factory=dict)
    acked: dict[str, str] = dataclasses.field(default_factory=dict)
    failures: Counter[str] = dataclasses.field(default_factory=Counter)


@dataclasses.dataclass
class Report:
    """A drill's figures. ``lost``, ``duplicates``, ``phantoms`` and ``corrupted`` must be 0."""

    name: str
    kills: int = 0
    sent: int = 0
    acknowledged: int = 0
    checked: int = 0  # acknowledged (message, recipient) pairs looked up in the Maildirs
    delivered_files: int = 0
    lost: int = 0
    duplicates: int = 0
    phantoms: int = 0
    corrupted: int = 0
    notes: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicates or self.phantoms or self.corrupted)

    def line(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=False)


def write_config(workdir: Path, port: int, *, lease: float = 2.0, timeout: float = 30,
                 grace: float = 5.0, batch: int = 20, queue_url: str | None = None,
                 writer: str = "thread") -> Path:
    """A drill config: a queue (SQLite under ``workdir`` unless ``queue_url``; its group
    commit on a ``writer`` thread or process) and one Maildir store under ``workdir``."""
    path = workdir / "mq.toml"
    queue_url = queue_url or f"sqlite+aiosqlite:///{workdir / 'queue.db'}"
    path.write_text(f"""
[smtp]
port = {port}
hostname = "mx.drill"
timeout = {timeout}
shutdown_grace = {grace}
[queue]
url = "{queue_url}"
writer = "{writer}"
[queue.retry]
initial_delay = 0.2
max_delay = 1
[delivery]
poll_interval = 0.1
reclaim_interval = 0.3
lease = {lease}
batch_size = {batch}
concurrency = 2
[logging]
level = "warning"
[[stores]]
name = "basic"
path = "{workdir / 'mail'}"
domains = ["basic.example"]
""")
    return path


class Server:
    """``python -m mailqueue serve`` as a subprocess that a drill can kill."""

    def __init__(self, config: Path, port: int, role: str = "all", loop: str = "auto") -> None:
        self.config = config
        self.port = port
        self.role = role
        self.loop = loop
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, faults: str = "") -> None:
        env = {k: v for k, v in os.environ.items() if k != "MAILQUEUE_FAULTS"}
        if faults:
            env["MAILQUEUE_FAULTS"] = faults
        with open(self.config.parent / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailqueue", "serve", "-c", str(self.config),
                 "--role", self.role, "--loop", self.loop],
                stdout=subprocess.DEVNULL, stderr=log, env=env)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def listening(self, timeout: float = 20) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if not self.alive:
                raise AssertionError(f"server exited early:\n{self.log_tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise AssertionError("server did not listen")

    async def listening_unless_killed(self) -> bool:
        """:meth:`listening`; False instead if the process died of SIGKILL first (an armed
        fault point)."""
        try:
            await self.listening()
        except AssertionError:
            if self.proc is not None and self.proc.poll() == -signal.SIGKILL:
                return False
            raise
        return True

    async def running(self, timeout: float = 20) -> None:
        """Wait until a worker-only process is up (it has no port to probe)."""
        await asyncio.sleep(0.8)
        if not self.alive:
            raise AssertionError(f"server exited early:\n{self.log_tail()}")

    def kill(self) -> None:
        if self.alive:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    async def died_within(self, seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            if not self.alive:
                return True
            await asyncio.sleep(0.02)
        return False

    async def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then wait without blocking the loop (the clients keep talking)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        if not await self.died_within(timeout):
            raise AssertionError(f"no exit {timeout}s after SIGTERM:\n{self.log_tail()}")
        return self.wait()

    def log_tail(self) -> str:
        path = self.config.parent / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def cleanup(self) -> None:
        if self.alive:
            self.kill()


def build_message(token: str, rcpts: tuple[str, ...], rng: random.Random) -> bytes:
    """A message whose body is derived from ``rng``: some lines start with a dot."""
    lines = []
    for _ in range(rng.randint(1, 30)):
        line = "".join(rng.choice("abcdefghij .-") for _ in range(rng.randint(0, 120)))
        lines.append(("." + line) if rng.random() < 0.1 else line)
    head = (f"From: drill@src.test\r\nTo: {', '.join(rcpts)}\r\nSubject: drill {token}\r\n"
            f"Message-ID: <{token}@drill>\r\nDate: {email.utils.formatdate()}\r\n"
            f"X-Drill-Token: {token}\r\n\r\n")
    return (head + "\r\n".join(lines) + "\r\n").encode()


async def client(cid: int, port: int, ledger: Ledger, stop: asyncio.Event,
                 rng: random.Random) -> None:
    """Send messages over short sessions until ``stop``; record sends and 250s."""
    seq = 0
    while not stop.is_set():
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
        try:
            try:
                await smtp.connect()
            except aiosmtplib.SMTPResponseException as exc:
                ledger.failures[f"connect: reply {exc.code}"] += 1
                await asyncio.sleep(0.05)
                continue
            except (aiosmtplib.SMTPException, OSError) as exc:
                # Refused, or reset in the listen backlog as the listener closed: no session.
                ledger.failures[f"connect: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.05)
                continue
            for _ in range(rng.randint(1, 4)):
                if stop.is_set():
                    break
                seq += 1
                token = f"c{cid}r{rng.getrandbits(40):x}n{seq}"
                rcpts = tuple(rng.sample(MAILBOXES, rng.choice((1, 1, 1, 2))))
                data = build_message(token, rcpts, rng)
                ledger.sent[token] = (data, rcpts)
                _, reply = await smtp.sendmail("drill@src.test", list(rcpts), data)
                ledger.acked[token] = reply.rsplit(" ", 1)[-1]
            await smtp.quit()
        except aiosmtplib.SMTPResponseException as exc:
            ledger.failures[f"reply {exc.code}"] += 1
            await asyncio.sleep(0.05)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            for refused in exc.recipients:
                ledger.failures[f"reply {refused.code}"] += 1
            await asyncio.sleep(0.05)
        except (aiosmtplib.SMTPException, OSError) as exc:
            ledger.failures[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
            await asyncio.sleep(0.05)
        finally:
            smtp.close()


async def queue_settled(config_dir: Path) -> bool:
    """True when no recipient is queued or active any more."""
    url = tomllib.loads((config_dir / "mq.toml").read_text())["queue"]["url"]
    store = SqlQueueStore(url)
    await store.open()
    try:
        stats = await store.stats()
    finally:
        await store.close()
    return stats.recipients["queued"] == 0 and stats.recipients["active"] == 0


async def drain(server: Server, timeout: float = 120) -> None:
    """Run a clean server until the queue is empty, then stop it with SIGTERM (exit 0)."""
    server.role = "all"
    server.start()
    await server.listening()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await queue_settled(server.config.parent):
        if loop.time() > deadline:
            raise AssertionError("queue did not drain")
        await asyncio.sleep(0.3)
    rc = await server.terminate()
    assert rc == 0, f"clean stop exited {rc}:\n{server.log_tail()}"


def verify(mail_root: Path, ledger: Ledger, report: Report) -> Report:
    """Read every Maildir file and compare it with the ledger."""
    seen: Counter[tuple[str, str]] = Counter()
    for path in mail_root.rglob("*"):
        if not path.is_file() or path.parent.name not in ("new", "cur"):
            continue
        report.delivered_files += 1
        data = path.read_bytes()
        box = path.parent.parent
        address = f"{box.name}@{box.parent.name}"
        token = _token(data)
        if token is None or token not in ledger.sent:
            report.phantoms += 1
            continue
        sent, rcpts = ledger.sent[token]
        if address not in rcpts or not data.endswith(sent.replace(b"\r\n", b"\n")):
            report.corrupted += 1
        seen[(token, address)] += 1
    report.duplicates = sum(n - 1 for n in seen.values() if n > 1)
    report.sent = len(ledger.sent)
    report.acknowledged = len(ledger.acked)
    for token in ledger.acked:
        for address in ledger.sent[token][1]:
            report.checked += 1
            if seen[(token, address)] == 0:
                report.lost += 1
    report.notes.update({f"client {k}": v for k, v in ledger.failures.items()})
    return report


def _token(data: bytes) -> str | None:
    marker = b"\nX-Drill-Token: "
    at = data.find(marker)
    if at < 0:
        return None
    return data[at + len(marker):data.index(b"\n", at + 1)].decode()


async def _load(port: int, ledger: Ledger, rng: random.Random) -> tuple[asyncio.Event,
                                                                       list[asyncio.Task[None]]]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(client(i, port, ledger, stop, random.Random(rng.random())))
             for i in range(CLIENTS)]
    return stop, tasks


async def _stop_load(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def crash_drill(workdir: Path, kills: int, seed: int = 1,
                      hooked_every: int = 2, writer: str = "thread") -> Report:
    """Kill -9 the server ``kills`` times while 20 clients send; every other kill (by
    default) is armed at a hooked point, the rest fall at random moments."""
    rng = random.Random(seed)
    # With a writer process, enqueue.mid_batch is in the child, not the server: the writer
    # kill drill covers it.
    points = HOOKED_POINTS if writer == "thread" else tuple(
        p for p in HOOKED_POINTS if p != "enqueue.mid_batch")
    port = free_port()
    server = Server(write_config(workdir, port, writer=writer), port)
    ledger, report = Ledger(), Report("crash: kill -9 under 20 clients")
    try:
        for round_no in range(kills):
            point = points[(round_no // hooked_every) % len(points)] \
                if hooked_every and round_no % hooked_every == 0 else ""
            spec = f"{point}:kill@{rng.randint(1, 12)}" if point else ""
            server.start(spec)
            if not await server.listening_unless_killed():
                # The armed point fired while the restarted worker delivered what the last
                # round left queued, before the front end listened: a kill like any other.
                report.notes[f"hooked {point} at start-up"] = \
                    report.notes.get(f"hooked {point} at start-up", 0) + 1
                report.kills += 1
                continue
            stop, tasks = await _load(port, ledger, rng)
            if not (point and await server.died_within(8)):
                await asyncio.sleep(rng.uniform(0.2, 1.5))
                server.kill()
                report.notes["random kills"] = report.notes.get("random kills", 0) + 1
            else:
                server.wait()
                report.notes[f"hooked {point}"] = report.notes.get(f"hooked {point}", 0) + 1
            report.kills += 1
            await _stop_load(stop, tasks)
        await drain(server)
    finally:
        server.cleanup()
    return verify(workdir / "mail", ledger, report)


async def writer_kill_drill(workdir: Path, kills: int, seed: int = 4) -> Report:
    """Kill -9 the queue writer process ``kills`` times while 20 clients send to a server
    that keeps running: each kill fails at most the batch in flight (451, resent), a new
    writer takes the next one, and everything acknowledged is delivered exactly once."""
    rng = random.Random(seed)
    port = free_port()
    server = Server(write_config(workdir, port, writer="process"), port)
    ledger, report = Ledger(), Report("writer process: kill -9 under 20 clients")
    try:
        server.start()
        await server.listening()
        assert server.proc is not None
        stop, tasks = await _load(port, ledger, rng)
        loop = asyncio.get_running_loop()
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            deadline = loop.time() + 10
            while not children(server.proc.pid) and loop.time() < deadline:
                await asyncio.sleep(0.02)
            for child in children(server.proc.pid):
                os.kill(child, signal.SIGKILL)
                report.kills += 1
            acked = len(ledger.acked)
            # A new writer process takes the next batch, and mail is acknowledged again.
            while len(ledger.acked) == acked and loop.time() < deadline + 10:
                await asyncio.sleep(0.02)
            report.notes["acknowledged again after a kill"] = \
                report.notes.get("acknowledged again after a kill", 0) + \
                (len(ledger.acked) > acked)
            if not server.alive:
                raise AssertionError(f"server died with its writer:\n{server.log_tail()}")
        await _stop_load(stop, tasks)
        assert await server.terminate() == 0
        await drain(server)
    finally:
        server.cleanup()
    return verify(workdir / "mail", ledger, report)


async def worker_kill_drill(workdir: Path, kills: int, messages: int = 400,
                            seed: int = 2) -> Report:
    """Queue ``messages`` with a front end only, then kill -9 worker processes mid-drain
    ``kills`` times; each next worker reclaims the expired leases. No file may be doubled."""
    rng = random.Random(seed)
    port = free_port()
    config = write_config(workdir, port, lease=1.0, batch=10)
    front = Server(config, port, role="smtp")
    ledger, report = Ledger(), Report("worker: kill -9 mid-drain")
    worker = Server(config, port, role="worker")
    try:
        front.start()
        await front.listening()
        stop, tasks = await _load(port, ledger, rng)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while len(ledger.acked) < messages and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await _stop_load(stop, tasks)
        assert await front.terminate() == 0
        for _ in range(kills):
            before = _file_count(workdir / "mail")
            worker.start(f"deliver.linked:kill@{rng.randint(1, 40)}")
            if not await worker.died_within(20):
                worker.kill()
            report.kills += 1
            report.notes["files after kill"] = _file_count(workdir / "mail")
            if report.notes["files after kill"] == before:
                report.notes["kills before any progress"] = \
                    report.notes.get("kills before any progress", 0) + 1
        await drain(front)
    finally:
        front.cleanup()
        worker.cleanup()
    return verify(workdir / "mail", ledger, report)


def _file_count(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file() and p.parent.name in ("new", "cur"))


async def sigterm_drill(workdir: Path, rounds: int, seed: int = 3) -> Report:
    """SIGTERM the server while 20 clients send: it exits 0, sessions finish or get 421,
    and everything acknowledged is delivered (after a restart if need be)."""
    rng = random.Random(seed)
    port = free_port()
    server = Server(write_config(workdir, port, grace=2.0), port)
    ledger, report = Ledger(), Report("sigterm under load")
    exits: Counter[int] = Counter()
    try:
        for _ in range(rounds):
            server.start()
            await server.listening()
            stop, tasks = await _load(port, ledger, rng)
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            exits[await server.terminate()] += 1
            report.kills += 1
            await _stop_load(stop, tasks)
        await drain(server)
    finally:
        server.cleanup()
    report.notes.update({f"exit {code}": n for code, n in exits.items()})
    return verify(workdir / "mail", ledger, report)
