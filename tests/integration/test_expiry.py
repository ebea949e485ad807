"""Expiry, bounces and delay warnings with a manual clock: real DSNs in real Maildirs."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path

from mailqueue.clock import ManualClock
from mailqueue.control.windows import Window
from mailqueue.errors import PermanentDeliveryError
from mailqueue.mailbox.base import DeliveryOutcome
from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.queue.values import Claim
from tests.helpers import all_files, make_config, message, running, wait_for
from tests.ops_helpers import parse

DAY = 86400.0
CAROL = "carol@exchange.example"  # a local sender


async def send(port: int, rcpts: list[str], subject: str, sender: str = CAROL) -> str:
    def post() -> str:
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo()
            assert client.mail(sender)[0] == 250  # "" is sent as MAIL FROM:<>
            for rcpt in rcpts:
                assert client.rcpt(rcpt)[0] == 250
            code, reply = client.data(message(subject).encode())
            assert code == 250
            return reply.decode().rsplit(" ", 1)[-1]
    return await asyncio.to_thread(post)


async def basic_window(app, clock: ManualClock, days: float = 10) -> Window:
    now = clock.now()
    window = Window(name="upgrade", stores=("basic",), start=now,
                    end=now + days * DAY).advance(now)
    await app.queue.save_window(window)
    await app.control.refresh()
    return window


def report_parts(notice: EmailMessage) -> tuple[str, list[dict[str, str]], str]:
    """(human text, delivery-status blocks as dicts, original headers) of a DSN."""
    assert notice.get_content_type() == "multipart/report"
    assert notice.get_param("report-type") == "delivery-status"
    text, status, headers = notice.get_payload()  # type: ignore[misc]
    assert status.get_content_type() == "message/delivery-status"
    assert headers.get_content_type() == "text/rfc822-headers"
    blocks = [dict(block.items()) for block in status.get_payload()]
    return text.get_content(), blocks, headers.get_payload()


def notices(tmp_path: Path) -> list[Path]:
    return all_files(tmp_path / "mail" / "hosted-exchange")


async def test_expired_in_window_when_window_time_counts(tmp_path: Path) -> None:
    clock = ManualClock()
    config = make_config(tmp_path, queue={"window_time_counts": True, "max_lifetime": "5d"})
    async with running(config, clock) as app:
        await basic_window(app, clock)
        queue_id = await send(app.port, ["alice@basic.example"], "stuck")
        clock.advance(6 * DAY)
        await app.expiry.sweep_once()
        await wait_for(lambda: len(notices(tmp_path)) == 1)
        notice = parse(notices(tmp_path)[0])
        assert str(notice["To"]) == CAROL
        assert notice["Subject"] == "Undelivered Mail Returned to Sender"
        assert notice["Return-Path"] == "<>"  # null sender: never bounced in turn
        text, blocks, original = report_parts(notice)
        assert "alice@basic.example" in text
        assert blocks[0]["Reporting-MTA"] == "dns; mx.test"
        assert blocks[0]["X-Mailqueue-Queue-ID"] == queue_id
        assert blocks[1]["Final-Recipient"] == "rfc822; alice@basic.example"
        assert blocks[1]["Action"] == "failed" and blocks[1]["Status"] == "5.4.7"
        assert "expired" in blocks[1]["Diagnostic-Code"]
        assert "Subject: stuck" in original
        report = await app.queue.report(clock.now())
        assert report.by_state["bounced"] == 1
        assert app.metrics.registry.get_sample_value("mailqueue_recipients_bounced_total",
                                                     {"store": "basic"}) == 1
        detail = await app.queue.message(queue_id)
        assert detail is not None
        assert [e.kind for e in detail.events] == ["expired", "notice_queued"]


async def test_window_time_excluded_by_default(tmp_path: Path) -> None:
    clock = ManualClock()
    config = make_config(tmp_path, queue={"max_lifetime": "5d"})
    async with running(config, clock) as app:
        window = await basic_window(app, clock)
        await send(app.port, ["alice@basic.example"], "patient")
        clock.advance(6 * DAY)
        assert await app.expiry.sweep_once() == (0, 0)
        await app.queue.save_window(window.ended_now(clock.now()))
        await app.control.refresh()
        await wait_for(lambda: len(all_files(tmp_path / "mail" / "basic")) == 1)
        assert notices(tmp_path) == []


async def test_failing_store_expires_with_dsn_and_null_sender_gets_none(
        tmp_path: Path) -> None:
    clock = ManualClock()
    blocked = tmp_path / "mail" / "basic" / "basic.example"  # where its Maildirs go
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a directory")  # every delivery to basic fails temporarily
    config = make_config(tmp_path, queue={"max_lifetime": "5d"})
    async with running(config, clock) as app:
        first = await send(app.port, ["alice@basic.example"], "to expire")
        bounce = await send(app.port, ["alice@basic.example"], "a bounce", sender="")
        remote = await send(app.port, ["alice@basic.example"], "remote", sender="x@far.test")
        await wait_for(lambda: app.worker.deferred == 3)
        clock.advance(5 * DAY + 1)
        await wait_for(lambda: len(notices(tmp_path)) == 1)
        await asyncio.sleep(0.3)
        assert len(notices(tmp_path)) == 1  # only the local sender is notified
        _, blocks, original = report_parts(parse(notices(tmp_path)[0]))
        assert blocks[0]["X-Mailqueue-Queue-ID"] == first
        assert "maildir:" in blocks[1]["Diagnostic-Code"]  # the last error is reported
        assert "Subject: to expire" in original
        for queue_id, why in ((bounce, "null sender"), (remote, "is not local")):
            detail = await app.queue.message(queue_id)
            assert detail is not None
            assert detail.message.recipients[0].state == "bounced"
            assert any(why in (e.detail or "") for e in detail.events
                       if e.kind == "notice_not_sent")


class RejectingStore:
    """A store whose mailboxes refuse everything permanently."""

    name = "basic"

    def deliver(self, claims: Sequence[Claim]) -> list[DeliveryOutcome]:
        return [PermanentDeliveryError("mailbox disabled") for _ in claims]


async def test_permanent_failure_bounces_with_dsn(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    stores = {"basic": RejectingStore(),
              "hosted-exchange": MaildirStore("hosted-exchange",
                                              tmp_path / "mail" / "hosted-exchange", "mx.test")}
    async with running(config, mailboxes=stores) as app:
        await send(app.port, ["alice@basic.example", "bob@basic.example"], "refused")
        await wait_for(lambda: len(notices(tmp_path)) == 1)
        _, blocks, _ = report_parts(parse(notices(tmp_path)[0]))
        assert [b["Final-Recipient"] for b in blocks[1:]] == [
            "rfc822; alice@basic.example", "rfc822; bob@basic.example"]
        assert all(b["Status"] == "5.0.0" and "mailbox disabled" in b["Diagnostic-Code"]
                   for b in blocks[1:])


async def test_delay_warning_once(tmp_path: Path) -> None:
    clock = ManualClock()
    blocked = tmp_path / "mail" / "basic" / "basic.example"  # where its Maildirs go
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a directory")  # deliveries to basic fail temporarily
    config = make_config(tmp_path, queue={"delay_warning": "4h"})
    async with running(config, clock) as app:
        await send(app.port, ["alice@basic.example"], "slow")
        await wait_for(lambda: app.worker.deferred == 1)
        clock.advance(3 * 3600)
        assert await app.expiry.sweep_once() == (0, 0)
        clock.advance(2 * 3600)
        await wait_for(lambda: len(notices(tmp_path)) == 1)
        clock.advance(3600)
        assert await app.expiry.sweep_once() == (0, 0)  # warned once only
        await asyncio.sleep(0.3)
        assert len(notices(tmp_path)) == 1
        notice = parse(notices(tmp_path)[0])
        assert notice["Subject"] == "Delayed Mail (still being retried)"
        _, blocks, _ = report_parts(notice)
        assert blocks[1]["Action"] == "delayed" and "Will-Retry-Until" in blocks[1]
