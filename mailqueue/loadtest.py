"""Load test for mailqueue: accept rate and latency, drain rate, end-to-end delay, and a
check that every acknowledged message reached its Maildirs exactly once.

Examples::

    # 10,000 x 4 KiB messages over 50 connections to a server it starts itself, inside a
    # window; then end the window and measure the drain
    python scripts/load_test.py --spawn -c config/default.toml -n 10000 -C 50 --window

    # the SMTP ceiling of this machine: the same front end with storage switched off
    python scripts/load_test.py --spawn -c config/default.toml -n 10000 -C 50 --null

    # light load against a running server: 20 msg/s for 10 s, one connection
    python scripts/load_test.py -c config/default.toml --rate 20 --duration 10 -C 1

    # the same 10,000 messages with STARTTLS on every connection (a spawned server gets a
    # self-signed certificate if its config has no TLS)
    python scripts/load_test.py --spawn -c config/default.toml -n 10000 -C 50 --starttls

    # a million messages in a window on a PostgreSQL queue (a database of its own on the
    # config's server, dropped afterwards), then mailqueue verify on what is left
    python scripts/load_test.py --spawn -c pg.toml -n 1000000 -C 50 --window --verify

Against a running server the script reads the Maildir paths from ``-c`` (and the SMTP port
unless ``--port``); with ``--spawn`` it runs ``python -m mailqueue serve`` on a copy of the
config whose queue, Maildirs and port are its own (a temp dir, removed afterwards unless
``--keep``). Where the config's queue is on PostgreSQL, the copy's queue is a new database on
the same server, dropped afterwards unless ``--keep``.

``scripts/load_test.py`` runs :func:`main`; the benchmarks in ``benchmarks/`` and the drills
(:mod:`mailqueue.testing.drills`) reuse the spawned server, the ``/proc`` readings and the
Maildir checks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import aiosmtplib

from mailqueue import loops

_QUEUED_RE = re.compile(r"queued as ([0-9A-Za-z]+)")


# --- configuration and the spawned server ------------------------------------------------

class StoreInfo(TypedDict):
    """A store as the load test reads it: where its Maildirs are and what they serve."""

    name: str
    path: str
    domains: NotRequired[list[str]]
    mailboxes: NotRequired[list[str] | None]


@dataclass
class Target:
    """Where to send and where delivered mail lands."""

    host: str
    port: int
    stores: list[StoreInfo]
    config_path: Path
    queue_url: str
    pid: int | None = None


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(data: Mapping[str, object], prefix: str = "") -> str:
    """Enough TOML for a mailqueue config: scalars, lists, tables, arrays of tables."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, object]]] = []
    arrays: list[tuple[str, list[Mapping[str, object]]]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            tables.append((name, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((name, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines += ["", f"[{name}]", dump_toml(table, f"{name}.")]
    for name, items in arrays:
        for item in items:
            lines += ["", f"[[{name}]]", dump_toml(item, f"{name}.")]
    return "\n".join(line for line in lines if line is not None)


def spawn_config(source: Path, workdir: Path, tls: bool = False,
                 queue_url: str | None = None) -> Path:
    """A copy of ``source`` with its own queue, Maildirs and free ports, in ``workdir``.

    ``tls``: STARTTLS on, with a self-signed certificate made in ``workdir`` if ``source``
    has no TLS of its own. Extra listeners are left out (the load goes to one port).
    ``queue_url``: the copy's queue (a :class:`ScratchDatabase`); by default an SQLite
    file in ``workdir``."""
    data = tomllib.loads(source.read_text())
    smtp = data.setdefault("smtp", {})
    smtp["port"] = 0
    smtp["host"] = "127.0.0.1"
    smtp.pop("listeners", None)
    data.pop("admin", None)  # the load needs no admin endpoint, whose port may be taken
    smtp.pop("tls_dir", None)  # a self-signed certificate is made beside the copy's queue
    for key in ("tls_cert", "tls_key", "users_file"):  # as the source's config reads them
        if key in smtp:
            smtp[key] = str(source.absolute().parent / smtp[key])
    if tls and smtp.get("tls", "files" if "tls_cert" in smtp else "off") == "off":
        smtp["tls"] = "self-signed"
    data.setdefault("queue", {})["url"] = (
        queue_url or f"sqlite+aiosqlite:///{workdir / 'queue.db'}")
    for store in data.get("stores", []):
        if store.get("kind", "maildir") == "maildir":  # a remote store has no path
            store["path"] = str(workdir / "mail" / store["name"])
    data.setdefault("logging", {})["format"] = "json"
    path = workdir / "mailqueue.toml"
    path.write_text(dump_toml(data) + "\n")
    return path


def source_queue_url(source: Path) -> str | None:
    """The queue URL ``source`` names, as written (None where it names none)."""
    url = tomllib.loads(source.read_text()).get("queue", {}).get("url")
    return url if isinstance(url, str) else None


class ScratchDatabase:
    """A new PostgreSQL database beside the one ``url`` names, for a spawned server's
    queue: made by :meth:`create`, dropped by :meth:`drop` (or, inside an event loop,
    ``async with ScratchDatabase(url) as new_url``). ``url`` may name any driver SQLAlchemy
    knows for PostgreSQL; the database is made and dropped through asyncpg."""

    def __init__(self, url: str, name: str | None = None, prefix: str = "mq_load") -> None:
        from sqlalchemy.engine import make_url

        self._url = make_url(url)
        self._admin = self._url.set(drivername="postgresql+asyncpg")
        self.name = name or f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.url = self._url.set(database=self.name).render_as_string(hide_password=False)

    async def _run(self, statement: str) -> None:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(self._admin, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    async def __aenter__(self) -> str:
        await self._run(f'CREATE DATABASE "{self.name}"')
        return self.url

    async def __aexit__(self, *_: object) -> None:
        await self._run(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def create(self) -> str:
        try:
            asyncio.run(self._run(f'CREATE DATABASE "{self.name}"'))
        except Exception as exc:  # unreachable, no rights, a driver not installed
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise SystemExit(f"load_test: cannot make a database for the spawned server on "
                             f"the config's PostgreSQL: {first}") from None
        return self.url

    def drop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run(self.__aexit__())


def make_target(config: Path, host: str | None, port: int, pid: int | None) -> Target:
    """The server ``config`` describes, its paths resolved as the server resolves them
    (relative to the config file's directory)."""
    from mailqueue.config import load_config

    loaded = load_config(config)
    stores: list[StoreInfo] = [{"name": s.name, "path": str(s.mailbox_root or ""),
                                "domains": s.domains, "mailboxes": s.mailboxes}
                               for s in loaded.stores]
    return Target(host=host or loaded.smtp.host, port=port or loaded.smtp.port,
                  stores=stores, config_path=config, queue_url=loaded.queue.url, pid=pid)


class Server:
    """``python -m mailqueue serve`` in a child process, its log in the work dir."""

    def __init__(self, config: Path, workdir: Path, null: bool, loop: str) -> None:
        self.config = config
        self.log_path = workdir / "server.log"
        self.args = [sys.executable, "-m", "mailqueue", "serve", "-c", str(config),
                     "--loop", loop] + (["--null"] if null else [])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> int:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self._started_port()
            if port is not None:
                return port
            if self.proc.poll() is not None:
                raise SystemExit(f"load_test: server exited: {self.log_tail()}")
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"load_test: server did not start: {self.log_tail()}")

    def _started_port(self) -> int | None:
        """The SMTP port from the server_started event (0 for a worker-only server)."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"server_started"' in line:
                return int(json.loads(line).get("port") or 0)
        return None

    def log_tail(self) -> str:
        return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (the queue writer process, when one runs)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[1] == str(pid) and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def cpu_times(pid: int | None) -> tuple[float, float] | None:
    """(user, system) CPU seconds the process and its children (the live ones and those
    it has waited for) have used so far."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    user, system = int(fields[11]) + int(fields[13]), int(fields[12]) + int(fields[14])
    for child in children(pid):
        try:
            own = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        user, system = user + int(own[11]), system + int(own[12])
    return user / ticks, system / ticks


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time the process has used so far."""
    times = cpu_times(pid)
    return None if times is None else sum(times)


def peak_rss_by_process(pid: int | None) -> dict[str, float]:
    """The peak resident set (VmHWM) in MiB of the process at ``pid`` (``"server"``) and of
    each of its live children (``"child PID"``: the queue writer process, when one runs)."""
    if pid is None:
        return {}
    found: dict[str, float] = {}
    for member in (pid, *children(pid)):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    name = "server" if member == pid else f"child {member}"
                    found[name] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            continue
    return found


def rates_over_time(times: Sequence[float], share: float = 0.1) -> dict[str, float | None]:
    """The rate (events a second) over the first and the last ``share`` of ``times`` (wall
    times of the events, in any order), and the last as a share of the first: whether a
    long run slows down as it goes. None where there are too few events to tell."""
    ordered = sorted(times)
    count = int(len(ordered) * share)
    if count < 2:
        return {"first": None, "last": None, "last_vs_first": None}

    def rate(part: Sequence[float]) -> float:
        return (len(part) - 1) / max(1e-9, part[-1] - part[0])

    first, last = rate(ordered[:count]), rate(ordered[-count:])
    return {"first": round(first, 1), "last": round(last, 1),
            "last_vs_first": round(last / first, 3)}


def rates_by_part(times: Sequence[float], parts: int = 10) -> list[float] | None:
    """The rate (events a second) over each of ``parts`` equal shares of ``times`` in
    order: how a long run's pace moves from start to end. None with too few events."""
    ordered = sorted(times)
    size = len(ordered) // parts
    if size < 2:
        return None
    return [round((size - 1) / max(1e-9, ordered[(i + 1) * size - 1] - ordered[i * size]), 1)
            for i in range(parts)]


def peak_rss_mb(pid: int | None) -> float | None:
    """The peak resident set (VmHWM) of the process plus its live children's, in MiB."""
    if pid is None:
        return None
    total = 0
    for member in (pid, *children(pid)):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            if member == pid:
                return None
    return round(total / 1024, 1) if total else None


async def set_window(url: str, name: str, start: bool) -> float:
    """Start (24 h, every store) or end window ``name`` in the server's queue database, as
    ``mailqueue window start/end`` would; the time it was saved."""
    from mailqueue.control.windows import Window, WindowState
    from mailqueue.queue.sqlstore import SqlQueueStore

    store = SqlQueueStore(url)
    await store.open()
    try:
        now = time.time()
        if start:
            window = Window(name=name, stores=(), start=now, end=now + 86400,
                            state=WindowState.ACTIVE, started_at=now)
        else:
            known = next(w for w in await store.windows() if w.name == name)
            window = known.ended_now(now)
        await store.save_window(window)
        return time.time()
    finally:
        await store.close()


# --- sending -------------------------------------------------------------------------------

@dataclass
class Plan:
    """What to send."""

    messages: int | None
    duration: float | None
    rate: float | None
    connections: int
    size: int
    recipients: int
    addresses: list[str]
    sender: str
    run_id: str
    per_connection: int
    starttls: bool = False  # STARTTLS on every connection (the certificate is not verified)


@dataclass
class Results:
    """What happened while sending."""

    sent_at: dict[str, float] = field(default_factory=dict)  # queue id -> wall time
    rcpts: dict[str, list[str]] = field(default_factory=dict)  # queue id -> addresses
    latencies: list[float] = field(default_factory=list)
    accepted_at: list[float] = field(default_factory=list)  # wall time of each 250
    errors: Counter[str] = field(default_factory=Counter)
    attempted: int = 0
    first: float = 0.0
    last: float = 0.0


def make_body(plan: Plan, seq: int, rcpts: list[str]) -> bytes:
    head = (f"From: <{plan.sender}>\r\nTo: {', '.join(rcpts)}\r\n"
            f"Subject: load {seq}\r\nMessage-ID: <{seq}.{plan.run_id}@load.test>\r\n"
            f"X-Load-Seq: {seq}\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnop\r\n"
    need = max(0, plan.size - len(head) - 2)
    text = (line * (need // len(line) + 1))[:need]
    if text.endswith(b"\r"):  # cut between CR and LF: no bare CR
        text = text[:-1] + b" "
    return head + text + b"\r\n"


def wire_form(body: bytes) -> bytes:
    """``body`` as DATA carries it: lines starting with a dot doubled (RFC 5321 4.5.2) and
    the ending ``.``. ``body`` must have CRLF line ends only and end with one, as
    :func:`make_body` writes it."""
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\r\n.", b"\r\n..") + b".\r\n"


async def transaction(smtp: aiosmtplib.SMTP, sender: str, rcpts: list[str], wire: bytes,
                      ) -> tuple[dict[str, int], str]:
    """One mail transaction: MAIL, RCPT for each of ``rcpts``, DATA and ``wire`` (see
    :func:`wire_form`). Returns the refused recipients' reply codes and the final reply's
    text; a refused sender, every recipient refused or a refused DATA raise
    :class:`aiosmtplib.SMTPResponseException` with the server's code.

    The same commands ``smtp.sendmail`` sends, without its per-message work: sendmail also
    rewrites every message's line ends and dot-stuffs it with two regular expressions over
    the whole body, and parses each address with the email package. Under load that CPU
    makes the client, not the server, the bottleneck the latency would measure.
    """
    if smtp.is_ehlo_or_helo_needed:
        await smtp.ehlo()
    mail = b"FROM:<%s>" % sender.encode()
    if smtp.supports_extension("size"):  # an oversize message is refused before its body
        mail += b" SIZE=%d" % (len(wire) - 3)  # RFC 1870's estimate: without the ending dot
    reply = await smtp.execute_command(b"MAIL", mail)
    if reply.code != 250:
        raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
    refusals: list[tuple[str, aiosmtplib.SMTPResponse]] = []  # per RCPT: addresses may repeat
    for rcpt in rcpts:
        reply = await smtp.execute_command(b"RCPT", b"TO:<%s>" % rcpt.encode())
        if reply.code not in (250, 251):
            refusals.append((rcpt, reply))
    if refusals and len(refusals) == len(rcpts):
        raise aiosmtplib.SMTPResponseException(refusals[0][1].code, refusals[0][1].message)
    reply = await smtp.execute_command(b"DATA")
    if reply.code != 354:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    protocol = smtp.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    # No await between the write and read_response(), which marks the reply as expected.
    protocol.write(wire)
    reply = await protocol.read_response(timeout=smtp.timeout)
    if reply.code != 250:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    return {rcpt: refusal.code for rcpt, refusal in refusals}, reply.message


class Sender:
    """C connections sharing one sequence of messages."""

    def __init__(self, plan: Plan, host: str, port: int, progress: Progress | None) -> None:
        self.plan = plan
        self.host = host
        self.port = port
        self.results = Results()
        self.progress = progress
        self._next = 0
        self._t0 = 0.0
        self._tls: ssl.SSLContext | None = None
        if plan.starttls:
            # A rig's certificate is often self-signed: encrypt, do not verify.
            self._tls = ssl.create_default_context()
            self._tls.check_hostname = False
            self._tls.verify_mode = ssl.CERT_NONE

    def _take(self) -> int | None:
        plan, seq = self.plan, self._next
        if plan.messages is not None and seq >= plan.messages:
            return None
        if plan.duration is not None and time.perf_counter() - self._t0 >= plan.duration:
            return None
        self._next += 1
        return seq

    async def run(self) -> Results:
        self._t0 = time.perf_counter()
        self.results.first = time.time()
        await asyncio.gather(*(self._connection() for _ in range(self.plan.connections)))
        self.results.last = time.time()
        return self.results

    async def _open(self) -> aiosmtplib.SMTP:
        # start_tls: aiosmtplib would otherwise use STARTTLS wherever the server offers it.
        smtp = aiosmtplib.SMTP(hostname=self.host, port=self.port, timeout=60,
                               local_hostname="load.test", start_tls=self.plan.starttls,
                               tls_context=self._tls)
        await smtp.connect()
        return smtp

    async def _connection(self) -> None:
        smtp: aiosmtplib.SMTP | None = None
        used = 0
        while (seq := self._take()) is not None:
            if self.plan.rate:
                delay = self._t0 + seq / self.plan.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if smtp is not None and self.plan.per_connection and used >= self.plan.per_connection:
                await _quit(smtp)
                smtp, used = None, 0
            try:
                if smtp is None:
                    smtp = await self._open()
                await self._send(smtp, seq)
                used += 1
            except (aiosmtplib.SMTPException, OSError) as exc:
                self.results.errors[_error_key(exc)] += 1
                if smtp is not None:
                    smtp.close()
                smtp = None
        if smtp is not None:
            await _quit(smtp)

    async def _send(self, smtp: aiosmtplib.SMTP, seq: int) -> None:
        plan, results = self.plan, self.results
        rcpts = [plan.addresses[(seq * plan.recipients + i) % len(plan.addresses)]
                 for i in range(plan.recipients)]
        wire = wire_form(make_body(plan, seq, rcpts))
        results.attempted += 1
        sent_at, started = time.time(), time.perf_counter()
        try:
            refused, reply = await transaction(smtp, plan.sender, rcpts, wire)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421:
                raise  # counted once, by _connection, which opens a new connection
            results.errors[str(exc.code)] += 1
            with contextlib.suppress(aiosmtplib.SMTPException):
                await smtp.rset()
            return
        results.latencies.append(time.perf_counter() - started)
        results.accepted_at.append(time.time())
        for code in refused.values():
            results.errors[str(code)] += 1
        match = _QUEUED_RE.search(reply)
        if match is None:
            results.errors["250-without-queue-id"] += 1
            return
        qid = match.group(1)
        results.sent_at[qid] = sent_at
        results.rcpts[qid] = [r for r in rcpts if r not in refused]
        if self.progress is not None:
            self.progress.accepted += 1


def _error_key(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return str(code)
    return type(exc).__name__


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError):
        smtp.close()


# --- checking the Maildirs -----------------------------------------------------------------

def scan_maildirs(stores: Sequence[StoreInfo], want_mtime: bool = False,
                  ) -> dict[tuple[str, str], list[float]]:
    """(queue id, address) -> one mtime per file found, over every store's Maildirs."""
    from mailqueue.mailbox.maildir import copy_key

    found: dict[tuple[str, str], list[float]] = {}
    for store in stores:
        if not store["path"]:
            continue  # a remote store without a verify_path: nothing to read
        root = Path(store["path"])
        if not root.is_dir():
            continue
        for domain in os.scandir(root):
            if not domain.is_dir():
                continue
            for box in os.scandir(domain.path):
                address = f"{box.name}@{domain.name}"
                for sub in ("new", "cur"):
                    with contextlib.suppress(FileNotFoundError), \
                            os.scandir(os.path.join(box.path, sub)) as entries:
                        for entry in entries:
                            key = copy_key(entry.name)
                            if key is None:
                                continue
                            mtime = entry.stat().st_mtime if want_mtime else 0.0
                            found.setdefault((key[0], address), []).append(mtime)
    return found


def disk_use_mb(url: str, stores: Sequence[StoreInfo]) -> dict[str, float | None]:
    """MiB on disk of an SQLite queue's file with its WAL (None for another database) and of
    every store's Maildirs (the blocks their files take)."""
    from mailqueue.sqliteurl import sqlite_path

    queue: float | None = None
    path = sqlite_path(url)
    if path is not None:
        queue = sum(os.stat(name).st_blocks * 512 for name in (path, f"{path}-wal")
                    if os.path.exists(name)) / 2**20
    blocks = 0
    for store in stores:
        if store["path"]:
            for folder, _, names in os.walk(store["path"]):
                for name in names:
                    with contextlib.suppress(FileNotFoundError):
                        blocks += os.lstat(os.path.join(folder, name)).st_blocks
    return {"queue": None if queue is None else round(queue, 1),
            "maildirs": round(blocks * 512 / 2**20, 1)}


def postgres_size_mb(url: str) -> float | None:
    """MiB the PostgreSQL database at ``url`` takes (its tables, indexes and TOAST; the
    server's WAL is shared with other databases and left out); None where unreachable."""
    async def size() -> float | None:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                found = await conn.scalar(text("SELECT pg_database_size(current_database())"))
        finally:
            await engine.dispose()
        return None if found is None else round(int(found) / 2**20, 1)

    try:
        return asyncio.run(size())
    except Exception:  # a figure for the report, not worth failing a run over
        return None


async def wait_queue_empty(url: str, stall: float) -> float | None:
    """Poll the queue's counts until no recipient is queued or active; the wall time it
    was first seen empty, or None if it stops moving for ``stall`` seconds first."""
    from mailqueue.queue.sqlstore import SqlQueueStore

    store = SqlQueueStore(url)
    await store.open()
    try:
        seen, moved = -1, time.monotonic()
        while True:
            counts = (await store.stats()).recipients
            pending = counts.get("queued", 0) + counts.get("active", 0)
            if not pending:
                return time.time()
            if pending != seen:
                seen, moved = pending, time.monotonic()
            elif time.monotonic() - moved > stall:
                return None
            await asyncio.sleep(0.2)
    finally:
        await store.close()


def run_verify(config: Path) -> dict[str, Any]:
    """``mailqueue verify --json`` on ``config``, as a user runs it after a window: its
    verdict, the seconds it took and its peak RSS.

    The peak is the child's own ``VmHWM``, read from ``/proc`` while it runs (the last
    reading before it exits). Its resource usage would not do: a child started from this
    process carries this process's high-water mark, which at a million messages is the
    larger of the two."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "mailqueue", "verify", "-c",
                                 str(config), "--json"], stdout=out, stderr=err)
        peak_kib = 0
        while proc.poll() is None:
            peak_kib = max(peak_kib, _hwm_kib(proc.pid))
            time.sleep(0.05)
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        output, errors = out.read(), err.read()
    try:
        verdict = json.loads(output)
    except ValueError:
        verdict = {}
    return {"verify_ok": bool(verdict.get("ok")), "verify_exit": proc.returncode,
            "verify_seconds": round(seconds, 1),
            "verify_peak_rss_mb": round(peak_kib / 1024, 1) if peak_kib else None,
            **({} if verdict else {"verify_error": errors.decode(errors="replace")[-500:]})}


def _hwm_kib(pid: int) -> int:
    """The peak resident set of ``pid`` so far (VmHWM), in KiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def count_files(stores: Sequence[StoreInfo]) -> int:
    total = 0
    for store in stores:
        if not store["path"]:
            continue  # a remote store without a verify_path: nothing to read
        root = Path(store["path"])
        if not root.is_dir():
            continue
        for domain in os.scandir(root):
            if domain.is_dir():
                for box in os.scandir(domain.path):
                    with contextlib.suppress(FileNotFoundError):
                        total += len(os.listdir(os.path.join(box.path, "new")))
    return total


async def wait_drained(stores: Sequence[StoreInfo], expected: int, stall: float,
                       progress: Progress | None) -> int:
    """Poll the Maildirs until ``expected`` files are there or nothing moves for ``stall``."""
    seen, moved = -1, time.monotonic()
    while True:
        count = await asyncio.to_thread(count_files, stores)
        if progress is not None:
            progress.delivered = count
        if count >= expected:
            return count
        if count != seen:
            seen, moved = count, time.monotonic()
        elif time.monotonic() - moved > stall:
            return count
        await asyncio.sleep(0.1 if expected < 20000 else 0.5)


# --- report --------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def verify(results: Results, found: dict[tuple[str, str], list[float]],
           mine_only: set[str]) -> dict[str, int]:
    expected = {(qid, r.lower()) for qid, rcpts in results.rcpts.items() for r in rcpts}
    lost = sum(1 for key in expected if key not in found)
    duplicated = sum(len(found[key]) - 1 for key in expected if len(found.get(key, ())) > 1)
    extra = sum(len(v) for key, v in found.items()
                if key not in expected and key[0] in mine_only)
    return {"expected": len(expected), "delivered": len(expected) - lost, "lost": lost,
            "duplicated": duplicated, "unexpected": extra}


def summarize(args: argparse.Namespace, results: Results,
              drain: dict[str, Any] | None,
              check: dict[str, int] | None, rss: float | None, loop: str) -> dict[str, Any]:
    accepted = len(results.sent_at)
    elapsed = max(1e-9, results.last - results.first)
    report: dict[str, Any] = {
        "mode": "null" if args.null else "durable", "loop": loop,
        "starttls": args.starttls, "client_loop": loops.loop_name(args.client_loop),
        "connections": args.connections, "size": args.size, "recipients": args.recipients,
        "attempted": results.attempted, "accepted": accepted,
        "accept_seconds": round(elapsed, 3), "accept_rate": round(accepted / elapsed, 1),
        "accept_latency_p50_ms": ms(pct(results.latencies, 0.50)),
        "accept_latency_p99_ms": ms(pct(results.latencies, 0.99)),
        "errors": dict(sorted(results.errors.items())),
        "server_peak_rss_mb": rss,
        # The first 10% of the 250s against the last 10%, and each tenth's rate.
        "accept_rate_over_time": rates_over_time(results.accepted_at),
        "accept_rate_by_tenth": rates_by_part(results.accepted_at),
    }
    if drain is not None:
        report.update(drain)
    if check is not None:
        report.update(check)
    return report


def print_report(report: dict[str, Any]) -> None:
    def fmt(value: object, unit: str = "") -> str:
        return "n/a" if value is None else f"{value}{unit}"

    print(f"mode {report['mode']} (loop {report['loop']}), {report['connections']} "
          f"connections{' with STARTTLS' if report.get('starttls') else ''}, "
          f"{report['size']} B x {report['recipients']} rcpt; this script on "
          f"CPUs {report.get('client_cpus', 'all')}")
    print(f"accepted  {report['accepted']}/{report['attempted']} in "
          f"{report['accept_seconds']}s: {report['accept_rate']} msg/s; latency p50 "
          f"{fmt(report['accept_latency_p50_ms'], ' ms')}, p99 "
          f"{fmt(report['accept_latency_p99_ms'], ' ms')}")
    _print_over_time("accept   ", report.get("accept_rate_over_time"), "msg/s")
    if "drain_rate" in report:
        print(f"drained   {report['drained']} in {report['drain_seconds']}s: "
              f"{report['drain_rate']} deliveries/s")
        _print_over_time("drain    ", report.get("drain_rate_over_time"), "deliveries/s")
        if "queue_empty_seconds" in report:
            print(f"queue     empty {fmt(report['queue_empty_seconds'], 's')} after the "
                  f"window ended")
    if "e2e_p50_ms" in report:
        print(f"end to end delay p50 {fmt(report['e2e_p50_ms'], ' ms')}, "
              f"p99 {fmt(report['e2e_p99_ms'], ' ms')}")
    errors = ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "none"
    print(f"errors    {errors}")
    if "lost" in report:
        print(f"checked   {report['delivered']}/{report['expected']} in the Maildirs; lost "
              f"{report['lost']}, duplicated {report['duplicated']}, "
              f"unexpected {report['unexpected']}")
    if "disk_use_mb" in report:
        disk = report["disk_use_mb"]
        print(f"disk use  queue {fmt(disk['queue'], ' MiB')}, Maildirs "
              f"{fmt(disk['maildirs'], ' MiB')}")
    if "verify_ok" in report:
        print(f"verify    {'OK' if report['verify_ok'] else 'FAILED'} in "
              f"{report['verify_seconds']}s, peak RSS "
              f"{fmt(report['verify_peak_rss_mb'], ' MiB')}")
    by_process = ", ".join(f"{name} {mb} MiB" for name, mb in
                           report.get("peak_rss_mb_by_process", {}).items())
    print(f"server peak RSS {fmt(report['server_peak_rss_mb'], ' MiB')}"
          f"{f' ({by_process})' if by_process else ''}, CPU "
          f"{fmt(report.get('server_cpu_ms_per_msg'), ' ms')} per accepted message")


def _print_over_time(label: str, rates: dict[str, float | None] | None, unit: str) -> None:
    if rates and rates.get("first") is not None:
        print(f"{label} first 10% {rates['first']} {unit}, last 10% {rates['last']} {unit} "
              f"({rates['last_vs_first']}x)")


class Progress:
    """One status line on stderr, redrawn while the run goes on."""

    def __init__(self, total: int | None, expected_deliveries: bool) -> None:
        self.total = total
        self.accepted = 0
        self.delivered = 0
        self.phase = "sending"
        self.expected_deliveries = expected_deliveries
        self._start = time.monotonic()

    def line(self) -> str:
        done = self.accepted if self.phase == "sending" else self.delivered
        rate = done / max(1e-9, time.monotonic() - self._start)
        if self.total:
            filled = int(30 * min(1.0, done / self.total))
            bar = "#" * filled + "." * (30 - filled)
            return f"\r{self.phase:9} [{bar}] {done}/{self.total} {rate:8.0f}/s "
        return f"\r{self.phase:9} {done} {rate:8.0f}/s "

    def next_phase(self, phase: str, total: int | None) -> None:
        sys.stderr.write(self.line() + "\n")
        self.phase, self.total, self._start = phase, total, time.monotonic()

    async def run(self) -> None:
        while True:
            sys.stderr.write(self.line())
            sys.stderr.flush()
            await asyncio.sleep(0.25)


# --- main ----------------------------------------------------------------------------------

def addresses_for(stores: Sequence[StoreInfo], mailboxes: int, domain: str | None,
                  ) -> list[str]:
    """``mailboxes`` addresses of the first store serving ``domain`` (any store, at its
    first domain, for None): its listed mailboxes, or ``u0``, ``u1``, ... if it lists none."""
    for store in stores:
        domains = store.get("domains") or []
        if domain is not None and domain not in domains:
            continue
        target = domain or domains[0]
        locals_ = store.get("mailboxes") or [f"u{i}" for i in range(mailboxes)]
        return [f"{local}@{target}".lower() for local in locals_[:mailboxes]]
    raise SystemExit(f"load_test: no store serves {domain or 'any domain'}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def measure(args: argparse.Namespace, target: Target, loop: str) -> dict[str, Any]:
    """Send, optionally inside a window that is then ended, wait for the drain, check."""
    stores = target.stores
    plan = Plan(messages=args.messages, duration=args.duration, rate=args.rate,
                connections=args.connections, size=args.size, recipients=args.recipients,
                addresses=addresses_for(stores, args.mailboxes, args.domain),
                sender="loader@load.test", run_id=uuid.uuid4().hex[:12],
                per_connection=args.per_connection, starttls=args.starttls)
    progress = Progress(plan.messages, not args.null) if args.progress else None
    ticker = asyncio.create_task(progress.run()) if progress is not None else None
    window = f"load-{plan.run_id}" if args.window else None
    if window:
        await set_window(target.queue_url, window, start=True)
        await asyncio.sleep(1.0)  # the server rereads windows every 0.5 s
    cpu_before = cpu_seconds(target.pid)
    results = await Sender(plan, target.host, target.port, progress).run()
    cpu_after = cpu_seconds(target.pid)
    drain: dict[str, Any] | None = None
    check: dict[str, int] | None = None
    if not args.null and results.sent_at:
        expected = sum(len(r) for r in results.rcpts.values())
        released = time.time()
        if window:
            released = await set_window(target.queue_url, window, start=False)
        if progress is not None:
            progress.next_phase("delivering", expected)
        await wait_drained(stores, expected + args.baseline_files, args.stall, progress)
        emptied = (await wait_queue_empty(target.queue_url, args.stall)
                   if window and args.spawn else None)
        found = await asyncio.to_thread(scan_maildirs, stores, True)
        mine = set(results.sent_at)
        check = verify(results, found, mine)
        drain = drain_figures(results, found, released if window else None)
        if window and args.spawn:
            # From the window's end to the last recipient settled in the queue.
            drain["queue_empty_seconds"] = (None if emptied is None else
                                            round(emptied - released, 3))
    if ticker is not None:
        ticker.cancel()
        sys.stderr.write(progress.line() + "\n" if progress else "")
    report = summarize(args, results, drain, check, peak_rss_mb(target.pid), loop)
    report["peak_rss_mb_by_process"] = peak_rss_by_process(target.pid)
    if not args.null:
        report["disk_use_mb"] = await asyncio.to_thread(disk_use_mb, target.queue_url, stores)
        if report["disk_use_mb"]["queue"] is None and target.queue_url.startswith("postgres"):
            report["disk_use_mb"]["queue"] = await asyncio.to_thread(postgres_size_mb,
                                                                     target.queue_url)
    if cpu_before is not None and cpu_after is not None and results.sent_at:
        # Per accepted message while sending: robust to other jobs on the machine.
        report["server_cpu_ms_per_msg"] = round(
            (cpu_after - cpu_before) / len(results.sent_at) * 1000, 3)
    return report


def drain_figures(results: Results, found: dict[tuple[str, str], list[float]],
                  released: float | None) -> dict[str, Any]:
    delays: list[float] = []
    written: list[float] = []
    for (qid, _), mtimes in found.items():
        sent = results.sent_at.get(qid)
        if sent is None:
            continue
        start = sent if released is None else max(sent, released)
        for mtime in mtimes:
            delays.append(max(0.0, mtime - start))
            written.append(mtime)
    figures: dict[str, Any] = {"e2e_p50_ms": ms(pct(delays, 0.5)),
                               "e2e_p99_ms": ms(pct(delays, 0.99))}
    if released is not None and delays:
        seconds = max(1e-9, max(written) - released)
        figures.update(drained=len(delays), drain_seconds=round(seconds, 3),
                       drain_rate=round(len(delays) / seconds, 1),
                       # The first 10% of the files written against the last 10%.
                       drain_rate_over_time=rates_over_time(written),
                       drain_rate_by_tenth=rates_by_part(written))
    return figures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, type=Path, help="mailqueue config")
    parser.add_argument("--spawn", action="store_true",
                        help="start a server on a copy of the config with its own temp dirs")
    parser.add_argument("--null", action="store_true",
                        help="spawn the server with storage switched off (the SMTP ceiling)")
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                        help="event loop of the spawned server")
    parser.add_argument("--client-loop", choices=["auto", "asyncio", "uvloop"],
                        default="asyncio",
                        help="event loop of this script's sessions; with --starttls, uvloop "
                             "keeps their TLS from limiting what is measured")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--server-pid", type=int, default=None,
                        help="pid of a running server, for its peak RSS")
    parser.add_argument("-n", "--messages", type=int, default=None)
    parser.add_argument("-d", "--duration", type=float, default=None, help="seconds")
    parser.add_argument("-r", "--rate", type=float, default=None, help="messages per second")
    parser.add_argument("-C", "--connections", type=int, default=10)
    parser.add_argument("--per-connection", type=int, default=0,
                        help="messages per connection before reconnecting (0: no limit)")
    parser.add_argument("--starttls", action="store_true",
                        help="STARTTLS on every connection, without verifying the "
                             "certificate; with --spawn, a config without TLS gets a "
                             "self-signed certificate")
    parser.add_argument("-s", "--size", type=int, default=4096, help="message size, bytes")
    parser.add_argument("-R", "--recipients", type=int, default=1, help="per message")
    parser.add_argument("--mailboxes", type=int, default=1000,
                        help="distinct recipient addresses to cycle through")
    parser.add_argument("--domain", default=None, help="recipient domain (default: first)")
    parser.add_argument("--window", action="store_true",
                        help="send inside a window it opens, then end it and time the drain")
    parser.add_argument("--stall", type=float, default=30.0,
                        help="give up waiting for the drain after this long without progress")
    parser.add_argument("--baseline-files", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="status line on stderr (default: when stderr is a terminal)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the spawned server's dir (and its PostgreSQL database)")
    parser.add_argument("--verify", action="store_true",
                        help="after the drain, run mailqueue verify on the queue and the "
                             "Maildirs and report its verdict, time and peak RSS")
    parser.add_argument("--cpus", type=_cpu_arg, default=None, metavar="LIST",
                        help="CPUs this script runs on, as taskset writes them (\"1\", "
                             "\"0-3\"), or \"all\"; default: with --spawn, the CPUs the "
                             "server's [server] cpus leaves free, if it pins the server")
    args = parser.parse_args(argv)
    if args.messages is None and args.duration is None:
        args.messages = 1000
    if args.null and not args.spawn:
        parser.error("--null starts its own server: add --spawn")
    if args.window and args.null:
        parser.error("--window needs a queue: drop --null")
    if args.verify and args.null:
        parser.error("--verify needs a queue: drop --null")
    if args.client_loop == "uvloop" and not loops.uvloop_available():
        parser.error("--client-loop uvloop: uvloop is not installed (pip install "
                     "'mailqueue[fast]')")
    if args.progress is None:
        args.progress = sys.stderr.isatty() and not args.json
    return args


def _cpu_arg(text: str) -> tuple[int, ...]:
    """``--cpus``: a CPU list; ``()`` for "all" (no pinning)."""
    from mailqueue.config import cpu_list
    try:
        return cpu_list(text) or ()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cpus_left_by(server_pid: int) -> tuple[int, ...] | None:
    """The CPUs this process may use that the server at ``server_pid`` is not pinned to;
    None if it is not pinned (or where affinity is unknown)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    try:
        rest = os.sched_getaffinity(0) - os.sched_getaffinity(server_pid)
    except OSError:
        return None
    return tuple(sorted(rest)) or None


def pin_client(cpus: tuple[int, ...] | None, server_pid: int | None) -> str:
    """Keep this process on ``cpus``; by default (None) on the CPUs the server at
    ``server_pid`` is not pinned to, if it is pinned. What it runs on, for the report.

    The server on one CPU (``[server] cpus``) and this script on the other: sharing a CPU,
    each one's bursts would land in the other's latency."""
    from mailqueue.errors import ConfigError
    from mailqueue.loops import pin_cpus

    if cpus is None and server_pid is not None:
        cpus = cpus_left_by(server_pid)
    if not cpus:
        return "all"
    try:
        pin_cpus(cpus, setting="--cpus")
    except ConfigError as exc:
        raise SystemExit(f"load_test: {exc}") from None
    return ",".join(map(str, cpus))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mq-load-")) if args.spawn else None
    server: Server | None = None
    scratch: ScratchDatabase | None = None
    try:
        if workdir is not None:
            url = source_queue_url(args.config) or ""
            if url.startswith("postgres") and not args.null:
                scratch = ScratchDatabase(url)
                scratch.create()
            config = spawn_config(args.config, workdir, tls=args.starttls,
                                  queue_url=scratch.url if scratch else None)
            server = Server(config, workdir, args.null, args.loop)
            port = server.start()
            assert server.proc is not None
            pid: int | None = server.proc.pid
        else:
            config, port, pid = args.config, 0, args.server_pid
        target = make_target(config, args.host, args.port or port, pid)
        if not args.spawn:
            args.baseline_files = count_files(target.stores)
        client_cpus = pin_client(args.cpus, pid if args.spawn else None)
        loop = _server_loop(server) if server else args.loop
        report = loops.run(measure(args, target, loop), args.client_loop)
        code = server.stop() if server is not None else None
        if args.verify:
            report.update(run_verify(config))
    finally:
        code = server.stop() if server is not None else None
        if workdir is not None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        if scratch is not None and not args.keep:
            scratch.drop()
    report["client_cpus"] = client_cpus
    if scratch is not None and args.keep:
        report["queue_database"] = scratch.name  # kept: drop it when done with it
    if server is not None:
        report["server_exit"] = code
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    failed = (report.get("lost", 0) or report.get("duplicated", 0) or not report["accepted"]
              or report.get("verify_ok") is False)
    return 1 if failed else 0


def _server_loop(server: Server) -> str:
    for line in server.log_path.read_text(errors="replace").splitlines():
        if '"server_started"' in line:
            return str(json.loads(line).get("loop", "?"))
    return "?"


if __name__ == "__main__":
    sys.exit(main())
