"""An idle server sleeps, and still acts at once: new mail, mail committed by another
connection, a retry coming due, a window ended by the CLI or by its scheduled end."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mailqueue.clock import SystemClock
from mailqueue.config import Config
from mailqueue.control.windows import Window, WindowState
from mailqueue.errors import QueueError
from mailqueue.mailbox.base import DeliveryOutcome
from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import Changes, Claim, NewMessage, Settlement, new_queue_id
from tests.helpers import (
    all_files,
    cli_config,
    make_config,
    opened_store,
    run_cli,
    running,
    wait_for,
)
from tests.integration.test_pipeline import send


class CountingStore(SqlQueueStore):
    """The real SQLite queue, counting the worker's claims."""

    def __init__(self, url: str, *, watched: bool = True) -> None:
        super().__init__(url)
        self.claims = 0
        self._watched = watched

    async def claim(self, stores: Sequence[str], limit: int, owner: str, now: float,
                    lease_until: float, max_bytes: int = 0) -> list[Claim]:
        self.claims += 1
        return await super().claim(stores, limit, owner, now, lease_until, max_bytes)

    def watch(self, stores: Sequence[str], interval: Callable[[], float],
              report: Callable[[Changes | QueueError], None]) -> bool:
        # Unwatched, it polls as a PostgreSQL queue does.
        return self._watched and super().watch(stores, interval, report)


def new_message(address: str, store: str) -> NewMessage:
    body = f"To: {address}\r\nSubject: idle\r\n\r\nhello\r\n".encode()
    now = time.time()
    return NewMessage(queue_id=new_queue_id(now), mail_from="a@src.test",
                      recipients=((address, store),), body=body, received_at=now,
                      digest=hashlib.sha256(body).hexdigest())


def basic_files(tmp_path: Path) -> list[Path]:
    return all_files(tmp_path / "mail" / "basic")


async def test_an_idle_worker_does_not_claim_until_mail_may_be_there(tmp_path: Path) -> None:
    config = make_config(tmp_path, delivery={"poll_interval": 0.1})
    store = CountingStore(config.queue.url)
    async with running(config, queue=store):
        await asyncio.sleep(1.0)
        before = store.claims
        await asyncio.sleep(2.0)
        # Four lanes polling every 0.1 s would claim 80 times.
        assert store.claims - before <= 2, store.claims - before
        # Mail committed over another connection (as by a front end of its own) is seen
        # by the next look, not the next poll.
        async with opened_store(config.queue.url) as other:
            await other.enqueue([new_message("alice@basic.example", "basic")])
            committed = time.monotonic()
        await wait_for(lambda: len(basic_files(tmp_path)) == 1, timeout=5, interval=0.02)
        assert time.monotonic() - committed < 1.5


async def test_one_lane_polls_where_the_queue_is_not_watched(tmp_path: Path) -> None:
    config = make_config(tmp_path, delivery={"poll_interval": 0.1, "concurrency": 4})
    store = CountingStore(config.queue.url, watched=False)
    async with running(config, queue=store):
        await asyncio.sleep(0.5)
        before = store.claims
        await asyncio.sleep(2.0)
        polls = store.claims - before
    assert 10 <= polls <= 30, polls  # one lane every 0.1 s, not four


async def test_a_retry_is_claimed_when_it_comes_due(tmp_path: Path) -> None:
    config = make_config(tmp_path, delivery={"poll_interval": 0.1})
    async with opened_store(config.queue.url) as setup:
        await setup.enqueue([new_message("alice@basic.example", "basic")])
        now = time.time()
        claims = await setup.claim(["basic"], 10, "elsewhere", now, now + 60)
        due = now + 2.0
        await setup.settle(Settlement(deferred=[(claims[0].recipient_id, due, "try later")]),
                           "elsewhere", now)
    store = CountingStore(config.queue.url)
    async with running(config, queue=store):
        ready = time.time()  # a loaded machine may take longer to start than the retry waits
        await wait_for(lambda: len(basic_files(tmp_path)) == 1, timeout=6, interval=0.02)
        delivered = time.time()
    assert due <= delivered < max(due, ready) + 1.0
    assert store.claims <= 10, store.claims  # not one every 0.1 s (20) while it waited


async def test_mail_accepted_while_every_lane_sleeps_is_delivered_at_once(
        tmp_path: Path) -> None:
    config = make_config(tmp_path, delivery={"poll_interval": 30})
    async with running(config) as app:
        assert app.port
        await asyncio.sleep(1.5)  # every lane asleep; the poll is far off
        started = time.monotonic()
        await send(app.port, ["alice@basic.example"], "prompt")
        await wait_for(lambda: len(basic_files(tmp_path)) == 1, timeout=5, interval=0.01)
        assert time.monotonic() - started < 1.0


async def test_a_window_ended_by_the_cli_is_followed_within_a_second(tmp_path: Path) -> None:
    config = make_config(tmp_path, delivery={"poll_interval": 30})
    config_file = cli_config(tmp_path, config)

    async def cli(*args: str) -> str:
        return await run_cli(config_file, *args)

    async with running(config) as app:
        assert app.port
        await cli("window", "start", "idle-window", "--for", "2h")
        await wait_for(lambda: app.control.blocked() == {"basic", "hosted-exchange"},
                       timeout=1.0, interval=0.01)
        await send(app.port, ["alice@basic.example"], "held")
        await asyncio.sleep(1.0)
        assert basic_files(tmp_path) == []
        await cli("window", "end", "idle-window")
        ended = time.monotonic()
        await wait_for(lambda: len(basic_files(tmp_path)) == 1, timeout=5, interval=0.01)
        assert time.monotonic() - ended < 1.0


async def test_a_windows_scheduled_end_is_acted_on_at_its_time(tmp_path: Path) -> None:
    config = make_config(tmp_path, delivery={"poll_interval": 30})
    async with running(config, SystemClock()) as app:
        assert app.port
        now = time.time()
        end = now + 1.5
        await app.queue.save_window(Window(name="short", stores=("basic",), start=now - 1,
                                           end=end, state=WindowState.ACTIVE,
                                           started_at=now - 1))
        await wait_for(lambda: app.control.blocked() == {"basic"}, timeout=1.0,
                       interval=0.01)
        await send(app.port, ["alice@basic.example"], "until the end")
        await wait_for(lambda: len(basic_files(tmp_path)) == 1, timeout=5, interval=0.01)
        delivered = time.time()
    assert end <= delivered < end + 0.3


class Overlap:
    """A real Maildir store that notes how many deliveries run at once."""

    def __init__(self, inner: MaildirStore) -> None:
        self.name = inner.name
        self.inner = inner
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    def deliver(self, claims: Sequence[Claim]) -> list[DeliveryOutcome]:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.05)  # long enough for a sibling lane to start its own batch
            return self.inner.deliver(claims)
        finally:
            with self._lock:
                self.running -= 1


async def test_a_drain_wakes_lane_after_lane(tmp_path: Path) -> None:
    config: Config = make_config(tmp_path, delivery={"poll_interval": 30, "batch_size": 10,
                                                     "concurrency": 4})
    basic = Overlap(MaildirStore("basic", tmp_path / "mail" / "basic", "mx.test"))
    exchange = MaildirStore("hosted-exchange", tmp_path / "mail" / "hosted-exchange",
                            "mx.test")
    mailboxes: dict[str, Any] = {"basic": basic, "hosted-exchange": exchange}
    async with running(config, mailboxes=mailboxes) as app:
        now = time.time()
        await app.queue.save_window(Window(name="w", stores=(), start=now - 1, end=now + 3600,
                                           state=WindowState.ACTIVE, started_at=now - 1))
        app.control.poke()
        await wait_for(lambda: "basic" in app.control.blocked(), timeout=1.0, interval=0.01)
        await app.queue.enqueue([new_message(f"u{n}@basic.example", "basic")
                                 for n in range(200)])
        windows = await app.queue.windows()
        await app.queue.save_window(windows[0].ended_now(time.time()))
        app.control.poke()
        await wait_for(lambda: len(basic_files(tmp_path)) == 200, timeout=20, interval=0.05)
    assert basic.most >= 3, basic.most  # one wake-up set the lanes to work one by one
