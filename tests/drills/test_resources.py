"""Resource faults: a full disk under the queue, database errors, a long mailbox outage.

The rule each drill checks (RFC 5321 6.1): trouble answers 4xx, never 5xx; nothing that got
a 250 is lost; delivery resumes on its own once the resource is back, without a hot loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import subprocess
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from sqlalchemy import Engine, event

from mailqueue.clock import ManualClock
from mailqueue.errors import TemporaryDeliveryError
from mailqueue.mailbox.base import DeliveryOutcome
from mailqueue.mailbox.maildir import MaildirStore, copy_key
from mailqueue.queue._dberrors import database_error
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import Claim, NewMessage, new_queue_id
from tests.helpers import all_files, make_config, running, wait_for

pytestmark = [pytest.mark.drill, pytest.mark.timeout(300)]


# --- helpers ---------------------------------------------------------------------------------

@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the test; skip if mounting is impossible."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root or CAP_SYS_ADMIN): "
                    f"{mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def grow(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


async def send_one(port: int, n: int, size: int) -> str:
    """Send one message; its reply code and text (the 250 text ends with the queue id)."""
    body = f"Subject: m{n}\r\nX-N: {n}\r\n\r\n".encode() + (b"y" * 76 + b"\r\n") * (size // 78)
    try:
        _, reply = await aiosmtplib.send(body, sender="a@src.test",
                                         recipients=[f"u{n % 7}@basic.example"],
                                         hostname="127.0.0.1", port=port, timeout=30)
        return "250 " + reply
    except aiosmtplib.SMTPResponseException as exc:
        return f"{exc.code} {exc.message}"


def acked_ids(replies: Sequence[str]) -> list[str]:
    return [r.rsplit(" ", 1)[1] for r in replies if r.startswith("250 ")]


def delivered_ids(root: Path) -> Counter[str]:
    return Counter(key[0] for f in all_files(root) if (key := copy_key(f.name)))


class FlakyStore(SqlQueueStore):
    """The real SQLite store, whose driver raises ``error`` on every statement while set.
    The worker's statements fail below SQLAlchemy, where the real error would surface. The
    enqueue writer drives its sqlite3 connection directly (a C object, no place to hook),
    so its batches fail with what the writer makes of that driver error."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.error: Exception | None = None
        self.statements_refused = 0

    def _refuse(self) -> None:
        if self.error is not None:
            self.statements_refused += 1
            raise self.error

    def _instrument(self, engine: Engine) -> None:
        @event.listens_for(engine, "before_cursor_execute")
        def _fail(*_args: Any) -> None:
            self._refuse()

    def blocking_enqueue(self) -> Callable[[Sequence[NewMessage]], None] | None:
        enqueue = super().blocking_enqueue()
        if enqueue is None:
            return None

        def flaky(batch: Sequence[NewMessage]) -> None:
            try:
                self._refuse()
            except sqlite3.Error as exc:
                raise database_error(exc) from exc
            enqueue(batch)
        return flaky


class OutageStore:
    """A real Maildir store behind a switch: while ``down`` every delivery fails
    temporarily. Records the (clock) time of every attempt per recipient."""

    def __init__(self, inner: MaildirStore, clock: ManualClock) -> None:
        self.name = inner.name
        self.inner = inner
        self.clock = clock
        self.down = True
        self.attempts: defaultdict[int, list[float]] = defaultdict(list)

    def deliver(self, claims: Sequence[Claim]) -> list[DeliveryOutcome]:
        if self.down:
            for claim in claims:
                self.attempts[claim.recipient_id].append(self.clock.now())
            return [TemporaryDeliveryError("mailbox node unavailable")] * len(claims)
        return self.inner.deliver(claims)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.attempts.values())


# --- disk full --------------------------------------------------------------------------------

async def test_disk_full_during_accept_answers_4xx_and_loses_nothing(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "disk", "1m") as disk:
        config = make_config(tmp_path, queue={"url": f"sqlite+aiosqlite:///{disk / 'q.db'}"},
                             smtp={"max_message_size": 1 << 20})
        async with running(config) as app:
            assert app.port
            replies: list[str] = []
            for wave in range(12):  # ~1.2 MB offered to a 1 MB disk, 8 sessions at a time
                replies += await asyncio.gather(*(send_one(app.port, wave * 8 + i, 12_000)
                                                  for i in range(8)))
            codes = Counter(r[:3] for r in replies)
            assert codes["250"] > 0, codes
            assert set(codes) - {"250"}, f"the disk never filled: {codes}"
            assert set(codes) <= {"250", "451", "452"}, codes  # never 5xx
            for reply in replies:
                if not reply.startswith("250"):
                    assert reply[4:9] in ("4.3.1", "4.3.0"), reply
            grow(disk, "64m")  # space returns; a sender retrying gets through within seconds
            for _ in range(20):
                late = await send_one(app.port, 999, 12_000)
                if not late.startswith("452"):
                    break
                await asyncio.sleep(0.5)
            assert late.startswith("250"), late
            accepted = [*acked_ids(replies), *acked_ids([late])]
            await wait_for(lambda: sum(delivered_ids(tmp_path / "mail").values())
                           >= len(accepted), timeout=60)
            await asyncio.sleep(0.5)
        delivered = delivered_ids(tmp_path / "mail")
        assert sorted(delivered) == sorted(accepted)  # every 250, nothing else
        assert set(delivered.values()) == {1}  # exactly once
        print(f"disk full: offered={len(replies) + 1} acknowledged={len(accepted)} "
              f"refused={dict(codes)} lost=0 duplicates=0")


# --- database errors --------------------------------------------------------------------------

DB_ERRORS = {
    "I/O error": lambda: sqlite3.OperationalError("disk I/O error"),
    "connection lost": lambda: sqlite3.ProgrammingError("Cannot operate on a closed database."),
    "locked": lambda: sqlite3.OperationalError("database is locked"),
}


@pytest.mark.parametrize("kind", list(DB_ERRORS))
async def test_database_error_answers_451_and_worker_resumes(tmp_path: Path,
                                                               kind: str) -> None:
    config = make_config(tmp_path, delivery={"poll_interval": 0.05})
    store = FlakyStore(config.queue.url)
    async with running(config, queue=store) as app:
        assert app.port
        before = [await send_one(app.port, n, 500) for n in range(5)]
        store.error = DB_ERRORS[kind]()
        during = [await send_one(app.port, n, 500) for n in range(5, 10)]
        refused_at_start = store.statements_refused
        await asyncio.sleep(2.0)  # the worker keeps trying, but backs off
        worker_tries = store.statements_refused - refused_at_start
        store.error = None
        after = [await send_one(app.port, n, 500) for n in range(10, 15)]
        accepted = acked_ids(before + after)
        await wait_for(lambda: sum(delivered_ids(tmp_path / "mail").values()) >= 10)
        await asyncio.sleep(0.3)
    assert all(r.startswith("451 4.3.0") for r in during), during
    assert not any("sqlite" in r.lower() or "database" in r.lower() for r in during)
    assert len(accepted) == 10
    delivered = delivered_ids(tmp_path / "mail")
    assert sorted(delivered) == sorted(accepted) and set(delivered.values()) == {1}
    # 4 lanes polling every 50 ms without backoff would try ~160 times in 2 s.
    assert worker_tries <= 40, worker_tries
    print(f"database {kind}: 451 replies={len(during)} worker statements refused in 2 s="
          f"{worker_tries} acknowledged={len(accepted)} lost=0 duplicates=0")


async def test_database_really_locked_by_another_process(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store = SqlQueueStore(config.queue.url, busy_timeout=0.3)
    async with running(config, queue=store) as app:
        assert app.port
        first = await send_one(app.port, 1, 500)
        holder = sqlite3.connect(tmp_path / "queue.db", isolation_level=None, timeout=10,
                                 check_same_thread=False)
        await asyncio.to_thread(holder.execute, "BEGIN IMMEDIATE")  # the write lock
        try:
            locked = await send_one(app.port, 2, 500)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        second = await send_one(app.port, 3, 500)
        await wait_for(lambda: sum(delivered_ids(tmp_path / "mail").values()) >= 2)
    assert locked.startswith("451 4.3.0"), locked
    assert sorted(delivered_ids(tmp_path / "mail")) == sorted(acked_ids([first, second]))


# --- a long mailbox outage --------------------------------------------------------------------

async def test_mailbox_store_down_for_hours_then_everything_delivered(tmp_path: Path) -> None:
    queued, hours = 2000, 12
    clock = ManualClock()
    config = make_config(tmp_path, delivery={"batch_size": 250, "concurrency": 2,
                                             "poll_interval": 0.1},
                         queue={"retry": {"initial_delay": 60, "multiplier": 2,
                                          "max_delay": 3600, "jitter": 0.1}})
    root = tmp_path / "mail" / "basic"
    outage = OutageStore(MaildirStore("basic", root, "mx.test"), clock)
    async with running(config, clock, mailboxes={"basic": outage}) as app:
        now = clock.now()
        await app.queue.enqueue([
            NewMessage(queue_id=new_queue_id(now) + f"{i:05d}", mail_from="a@src.test",
                       recipients=((f"u{i % 50}@basic.example", "basic"),),
                       body=f"Subject: {i}\r\n\r\nx\r\n".encode(), received_at=now)
            for i in range(queued)])
        app.worker.wake()
        await wait_for(lambda: outage.total >= queued, timeout=30)
        await asyncio.sleep(1.0)  # the clock stands still: nothing is due, nothing is tried
        assert outage.total == queued, "retried with no time passing: a hot loop"
        for _ in range(hours * 12):  # five-minute steps
            clock.advance(300)
            await _settled(tmp_path / "queue.db", clock.now())
        down_attempts = outage.total
        due = [row[0] - clock.now() for row in sqlite3.connect(tmp_path / "queue.db").execute(
            "SELECT next_attempt_at FROM recipients")]
        outage.down = False
        clock.advance(3600 * 1.2)
        await wait_for(lambda: len(all_files(root)) >= queued, timeout=120)

        async def all_settled() -> bool:  # files are linked before their settle commits
            return (await app.queue.stats()).recipients["delivered"] == queued

        await wait_for(all_settled, timeout=60)
        stats = await app.queue.stats()
    assert len(all_files(root)) == queued  # 100 %, once each
    assert stats.recipients["delivered"] == queued and stats.recipients["queued"] == 0
    assert len(outage.attempts) == queued
    per_rcpt = [len(times) for times in outage.attempts.values()]
    # 1+2+4+8+16+32 min, then hourly (±10 %): about 17 tries in 12 h, not one per poll.
    assert max(per_rcpt) <= 20, max(per_rcpt)
    gaps = _gaps(outage.attempts)
    assert max(gaps) <= 3600 * 1.1 + 300  # capped (plus one clock step)
    assert min(per_rcpt) >= 12, min(per_rcpt)  # it kept trying, about hourly
    # Retry times are spread by the jitter, not stacked on one second.
    assert len({round(d) for d in due}) > 100, "retry times not spread: no jitter"
    print(f"store outage: queued={queued} down={hours}h attempts while down={down_attempts} "
          f"(max {max(per_rcpt) - 1} per recipient) delivered={queued} lost=0 duplicates=0")


async def _settled(db: Path, now: float) -> None:
    """Wait until the worker has tried everything due at ``now`` (none due, none active)."""
    query = ("SELECT count(*) FROM recipients WHERE state = 'active' "
             "OR (state = 'queued' AND next_attempt_at <= ?)")
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        while conn.execute(query, (now,)).fetchone()[0]:
            await asyncio.sleep(0.05)


def _per_rcpt_gaps(attempts: dict[int, list[float]]) -> list[list[float]]:
    return [[b - a for a, b in itertools.pairwise(times)]
            for times in attempts.values()]


def _gaps(attempts: dict[int, list[float]]) -> list[float]:
    return [g for gaps in _per_rcpt_gaps(attempts) for g in gaps]


