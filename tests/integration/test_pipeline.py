"""The user's story over real SMTP: mail queued during a window, delivered once after it."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Sequence
from pathlib import Path

import aiosmtplib
import pytest

from mailqueue.clock import ManualClock
from mailqueue.control.windows import Inbound, Window
from mailqueue.errors import QueueError, TemporaryDeliveryError
from mailqueue.mailbox.base import DeliveryOutcome
from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import Claim, NewMessage
from tests.helpers import (
    all_files,
    cli_config,
    make_config,
    message,
    read_messages,
    run_cli,
    running,
    wait_for,
)

HOUR = 3600.0


async def open_window(app, clock: ManualClock, name: str = "upgrade",
                      stores: tuple[str, ...] = (), inbound: Inbound = Inbound.QUEUE,
                      hours: float = 48) -> Window:
    now = clock.now()
    window = Window(name=name, stores=stores, start=now, end=now + hours * HOUR,
                    inbound=inbound).advance(now)
    await app.queue.save_window(window)
    await app.control.refresh()
    return window


async def send(port: int, rcpts: Sequence[str], subject: str, body: str = "hello") -> str:
    errors, reply = await aiosmtplib.send(message(subject, body), sender="a@src.test",
                                          recipients=list(rcpts), hostname="127.0.0.1",
                                          port=port)
    assert not errors
    return reply


async def test_queued_during_window_delivered_once_after(tmp_path: Path) -> None:
    clock = ManualClock()
    config = make_config(tmp_path)
    mail = tmp_path / "mail" / "basic"
    async with running(config, clock) as app:
        assert app.port
        window = await open_window(app, clock)
        replies = [await send(app.port, ["alice@basic.example"], f"m{i}") for i in range(20)]
        assert all(r.startswith("2.0.0 Ok: queued as ") for r in replies)
        clock.advance(3600)
        await asyncio.sleep(0.6)  # several poll intervals
        assert all_files(mail) == []
        stats = await app.queue.stats()
        assert stats.recipients["queued"] == 20 and stats.messages_pending == 20

        await app.queue.save_window(window.ended_now(clock.now()))
        await app.control.refresh()
        await wait_for(lambda: len(all_files(mail)) == 20)
        await wait_for(lambda: app.worker.delivered == 20)
        await asyncio.sleep(0.5)
        assert len(all_files(mail)) == 20
        subjects = sorted(str(m["Subject"]) for m in read_messages(mail, "alice@basic.example"))
        assert subjects == sorted(f"m{i}" for i in range(20))
        stats = await app.queue.stats()
        assert stats.recipients["delivered"] == 20 and stats.messages_pending == 0


async def test_delivered_file_has_trace_headers(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    mail = tmp_path / "mail" / "basic"
    async with running(config, ManualClock()) as app:
        assert app.port
        reply = await send(app.port, ["Alice@Basic.Example"], "traced", "line one\r\nline two")
        queue_id = reply.rsplit(" ", 1)[1]
        await wait_for(lambda: len(all_files(mail)) == 1)
    [msg] = read_messages(mail, "alice@basic.example")
    assert msg["Return-Path"] == "<a@src.test>"
    assert msg["Delivered-To"] == "alice@basic.example"  # normalised, as Postfix does
    assert f"with ESMTP id {queue_id}" in str(msg["Received"])
    assert msg["X-Mailqueue-Id"] == queue_id
    assert msg.get_content() == "line one\nline two\n"
    raw = all_files(mail)[0].read_bytes()
    assert b"\r\n" not in raw  # Maildir files use LF line ends


async def test_stdlib_smtplib_client(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    mail = tmp_path / "mail"
    async with running(config, ManualClock()) as app:
        port = app.port
        assert port

        def send_sync() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo("client.test")
                rcpts = ["bob@basic.example", "carol@exchange.example"]
                return client.sendmail("a@src.test", rcpts, message("sync"))

        assert await asyncio.to_thread(send_sync) == {}
        await wait_for(lambda: len(all_files(mail)) == 2)


async def test_split_across_stores_only_one_in_window(tmp_path: Path) -> None:
    clock = ManualClock()
    config = make_config(tmp_path)
    async with running(config, clock) as app:
        assert app.port
        window = await open_window(app, clock, stores=("hosted-exchange",))
        await send(app.port, ["alice@basic.example", "carol@exchange.example"], "split")
        basic, exchange = tmp_path / "mail" / "basic", tmp_path / "mail" / "hosted-exchange"
        await wait_for(lambda: len(all_files(basic)) == 1)
        await asyncio.sleep(0.5)
        assert all_files(exchange) == []
        stats = await app.queue.stats()
        assert stats.recipients["delivered"] == 1 and stats.recipients["queued"] == 1
        assert stats.messages_pending == 1  # the message is done only when both are

        await app.queue.save_window(window.ended_now(clock.now()))
        await app.control.refresh()
        await wait_for(lambda: len(all_files(exchange)) == 1)
        await wait_for(lambda: app.worker.delivered == 2)
        assert (await app.queue.stats()).messages_pending == 0


async def smtp_dialogue(port: int, *commands: str) -> list[str]:
    """Send raw commands one by one; the reply line of each (after the greeting)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []
    try:
        await reader.readline()
        for command in commands:
            writer.write(command.encode() + b"\r\n")
            await writer.drain()
            while True:
                line = (await asyncio.wait_for(reader.readline(), 10)).decode().rstrip()
                if line[3:4] != "-":
                    break
            replies.append(line)
    finally:
        writer.close()
    return replies


@pytest.mark.parametrize(("rcpt", "expected"), [
    ("someone@elsewhere.test", "550 5.7.1"),
    ("nobody@exchange.example", "550 5.1.1"),
    ("carol@exchange.example", "250 2.1.5"),
    ("CAROL@EXCHANGE.EXAMPLE", "250 2.1.5"),
    ("<broken", "553 5.1.3"),
])
async def test_recipient_policy(tmp_path: Path, rcpt: str, expected: str) -> None:
    async with running(make_config(tmp_path), ManualClock()) as app:
        assert app.port
        replies = await smtp_dialogue(app.port, "EHLO c.test", "MAIL FROM:<a@src.test>",
                                      f"RCPT TO:<{rcpt}>" if "<" not in rcpt else
                                      f"RCPT TO:{rcpt}")
        assert replies[2].startswith(expected), replies


async def test_size_limits(tmp_path: Path) -> None:
    async with running(make_config(tmp_path), ManualClock()) as app:
        assert app.port
        replies = await smtp_dialogue(app.port, "EHLO c.test",
                                      "MAIL FROM:<a@src.test> SIZE=999999999")
        assert replies[1].startswith("552 5.3.4"), replies
        big = message("big", "x" * 900 + ("\r\n" + "y" * 900) * 100)
        # A client that declares SIZE is turned away at MAIL ...
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
            await aiosmtplib.send(big, sender="a@src.test", recipients=["alice@basic.example"],
                                  hostname="127.0.0.1", port=app.port)
        assert info.value.code == 552 and info.value.message.startswith("5.3.4")
        # ... one that does not is answered after the data.
        replies = await smtp_dialogue(app.port, "HELO c.test", "MAIL FROM:<a@src.test>",
                                      "RCPT TO:<alice@basic.example>", "DATA",
                                      big.removesuffix("\r\n") + "\r\n.")
        assert replies[3].startswith("354") and replies[4].startswith("552 5.3.4"), replies
        assert (await app.queue.stats()).messages_total == 0


async def test_too_many_recipients(tmp_path: Path) -> None:
    async with running(make_config(tmp_path), ManualClock()) as app:
        assert app.port
        rcpts = [f"RCPT TO:<u{i}@basic.example>" for i in range(6)]
        replies = await smtp_dialogue(app.port, "EHLO c.test", "MAIL FROM:<a@src.test>", *rcpts)
        assert all(r.startswith("250") for r in replies[2:7])
        assert replies[7].startswith("452 4.5.3")


async def test_queue_full(tmp_path: Path) -> None:
    config = make_config(tmp_path, queue={"max_messages": 3})
    clock = ManualClock()
    async with running(config, clock) as app:
        assert app.port
        await open_window(app, clock)
        for i in range(3):
            await send(app.port, ["alice@basic.example"], f"fill{i}")
        replies = await smtp_dialogue(app.port, "EHLO c.test", "MAIL FROM:<a@src.test>")
        assert replies[1].startswith("452 4.3.1")
        assert (await app.queue.stats()).messages_total == 3


@pytest.mark.parametrize(("inbound", "expected"), [
    (Inbound.TEMPFAIL, "451 4.3.2"), (Inbound.REJECT, "554 5.3.2"), (Inbound.QUEUE, "250"),
])
async def test_window_inbound_policy(tmp_path: Path, inbound: Inbound, expected: str) -> None:
    clock = ManualClock()
    async with running(make_config(tmp_path), clock) as app:
        assert app.port
        await open_window(app, clock, stores=("basic",), inbound=inbound)
        replies = await smtp_dialogue(app.port, "EHLO c.test", "MAIL FROM:<a@src.test>",
                                      "RCPT TO:<alice@basic.example>",
                                      "RCPT TO:<carol@exchange.example>")
        assert replies[2].startswith(expected), replies
        assert replies[3].startswith("250")  # the other store is not in the window


class FailingStore(SqlQueueStore):
    """A real SQLite queue whose commits can be made to fail. (Overriding ``enqueue`` keeps
    the group commit on the event loop, where the override runs.)"""

    fail = False

    async def enqueue(self, batch: Sequence[NewMessage]) -> None:
        if self.fail:
            raise QueueError("queue database error: disk I/O error")
        await super().enqueue(batch)


async def test_storage_error_answers_451_and_server_carries_on(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store = FailingStore(config.queue.url)
    async with running(config, ManualClock(), queue=store) as app:
        assert app.port
        store.fail = True
        with pytest.raises(aiosmtplib.SMTPDataError) as info:
            await send(app.port, ["alice@basic.example"], "lost?")
        assert info.value.code == 451 and info.value.message.startswith("4.3.0")
        assert "disk" not in info.value.message  # no internal detail reaches the client
        store.fail = False
        await send(app.port, ["alice@basic.example"], "after")
        await wait_for(lambda: len(all_files(tmp_path / "mail" / "basic")) == 1)


async def test_window_changed_by_cli_process_is_followed(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config_file = cli_config(tmp_path, config)
    mail = tmp_path / "mail" / "basic"

    async def cli(*args: str) -> str:
        return await run_cli(config_file, *args)

    async with running(config) as app:  # the system clock: the CLI uses it too
        assert app.port
        out = await cli("window", "start", "cli-window", "--for", "2h")
        assert out.startswith("started cli-window: active")
        await asyncio.sleep(1.2)  # the server follows within a second
        await send(app.port, ["alice@basic.example"], "held")
        await asyncio.sleep(0.6)
        assert all_files(mail) == []
        out = await cli("window", "end", "cli-window")
        assert out.startswith("ended cli-window")
        await wait_for(lambda: len(all_files(mail)) == 1, timeout=5)
        assert "cli-window: ended" in await cli("window", "list")


async def test_delivered_promptly_outside_window(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, delivery={"poll_interval": 5}), ManualClock()) as app:
        assert app.port
        loop = asyncio.get_running_loop()
        started = loop.time()
        await send(app.port, ["alice@basic.example"], "fast")
        await wait_for(lambda: len(all_files(tmp_path / "mail" / "basic")) == 1, interval=0.005)
        # Woken by the enqueue, not by the 5 s poll.
        assert loop.time() - started < 2


async def test_graceful_stop_answers_421_to_new_connections(tmp_path: Path) -> None:
    config = make_config(tmp_path, smtp={"shutdown_grace": 3})
    async with running(config, ManualClock()) as app:
        assert app.port
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        await reader.readline()  # an idle session keeps the server in its grace period
        app.stop()
        await asyncio.sleep(0.2)
        r2, w2 = await asyncio.open_connection("127.0.0.1", app.port)
        greeting = await asyncio.wait_for(r2.readline(), 5)
        assert greeting.startswith(b"421 4.3.2")
        w2.close()
        writer.close()


class FlakyMaildir(MaildirStore):
    """A real Maildir store that can be switched off, like a mailbox node that is down."""

    down = True

    def deliver(self, claims: Sequence[Claim]) -> list[DeliveryOutcome]:
        if self.down:
            return [TemporaryDeliveryError("node down")] * len(claims)
        return super().deliver(claims)


async def test_temporary_failure_backs_off_then_delivers_or_expires(tmp_path: Path) -> None:
    config = make_config(tmp_path, queue={"max_lifetime": "1d",
                                          "retry": {"initial_delay": 60, "jitter": 0}})
    clock = ManualClock()
    flaky = FlakyMaildir("basic", tmp_path / "mail" / "basic", "mx.test")
    mailboxes = {"basic": flaky, "hosted-exchange": MaildirStore(
        "hosted-exchange", tmp_path / "mail" / "hosted-exchange", "mx.test")}
    async with running(config, clock, mailboxes=mailboxes) as app:
        assert app.port
        await send(app.port, ["alice@basic.example"], "retry me")
        await wait_for(lambda: app.worker.deferred == 1)
        await asyncio.sleep(0.5)
        assert app.worker.deferred == 1  # not retried before its due time: no hot loop
        clock.advance(61)
        await wait_for(lambda: app.worker.deferred == 2)  # second attempt, still down
        flaky.down = False
        clock.advance(121)
        await wait_for(lambda: app.worker.delivered == 1)
        assert len(all_files(tmp_path / "mail" / "basic")) == 1

        flaky.down = True
        await send(app.port, ["bob@basic.example"], "expire me")
        await wait_for(lambda: app.worker.deferred == 3)
        clock.advance(86400)
        await wait_for(lambda: app.worker.bounced == 1)
        stats = await app.queue.stats()
        assert stats.recipients["bounced"] == 1 and stats.messages_pending == 0
