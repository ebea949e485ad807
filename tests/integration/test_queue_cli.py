"""The operator's story: a running server on a real SQLite file, steered from another
process with ``mailqueue queue ...`` / ``stats`` / ``window end --wait``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path

import aiosmtplib

from mailqueue.clock import SystemClock
from mailqueue.control.windows import Window
from mailqueue.mailbox.base import DeliveryOutcome
from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.queue.values import Claim
from tests.helpers import all_files, message, running, wait_for
from tests.ops_helpers import acli, parse, run_cli, write_config

HOUR = 3600.0


async def send(port: int, rcpts: list[str], subject: str, sender: str = "a@src.test") -> str:
    _, reply = await aiosmtplib.send(message(subject), sender=sender, recipients=rcpts,
                                     hostname="127.0.0.1", port=port)
    return reply.rsplit(" ", 1)[-1]


async def start_window(app, stores: tuple[str, ...] = (), name: str = "upgrade") -> Window:
    now = SystemClock().now()
    window = Window(name=name, stores=stores, start=now, end=now + 48 * HOUR).advance(now)
    await app.queue.save_window(window)
    await app.control.refresh()
    return window


async def test_list_show_and_json(tmp_path: Path) -> None:
    path, config = write_config(tmp_path)
    async with running(config) as app:
        await start_window(app)
        first = await send(app.port, ["alice@basic.example", "carol@exchange.example"], "one")
        second = await send(app.port, ["bob@basic.example"], "two", sender="x@other.test")

        table = await run_cli(path, "queue", "list")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split()[:4] == ["QUEUE", "ID", "AGE", "SIZE"]
        assert any(first in line and "alice@basic.example" in line for line in lines)
        assert any("carol@exchange.example" in line and "queued" in line for line in lines)
        assert lines[-1].startswith("-- 2 messages")

        out = await run_cli(path, "queue", "list", "--json")
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        assert [r["queue_id"] for r in rows] == [first, second]
        assert rows[0]["sender"] == "a@src.test"
        assert {r["address"]: r["state"] for r in rows[0]["recipients"]} == {
            "alice@basic.example": "queued", "carol@exchange.example": "queued"}

        by_sender = await run_cli(path, "queue", "list", "--json", "--sender", "OTHER.test")
        assert [json.loads(x)["queue_id"] for x in by_sender.stdout.splitlines()] == [second]
        by_store = await run_cli(path, "queue", "list", "--ids", "--store", "hosted-exchange")
        assert by_store.stdout.split() == [first]
        by_rcpt = await run_cli(path, "queue", "list", "--ids", "--recipient", "bob@")
        assert by_rcpt.stdout.split() == [second]
        old = await run_cli(path, "queue", "list", "--ids", "--older-than", "1h")
        assert old.stdout.split() == []

        shown = await run_cli(path, "queue", "show", first)
        assert shown.returncode == 0
        assert f"queue id:    {first}" in shown.stdout
        assert "Subject: one" in shown.stdout and "sender:      <a@src.test>" in shown.stdout
        raw = await run_cli(path, "queue", "show", first, "--raw")
        assert raw.stdout.replace("\r\n", "\n") == message("one").replace("\r\n", "\n")
        as_json = json.loads((await run_cli(path, "queue", "show", first, "--json")).stdout)
        assert as_json["queue_id"] == first and "Subject: one" in as_json["headers"]

        shape = await run_cli(path, "queue", "shape")
        rows_by_name = {line.split()[0]: line.split()[1:] for line in
                        shape.stdout.splitlines()[1:]}
        assert rows_by_name["TOTAL"][0] == "3"  # one message counted in both stores
        assert rows_by_name["basic"][:2] == ["2", "2"]
        shape_json = json.loads((await run_cli(path, "queue", "shape", "--json")).stdout)
        assert shape_json["stores"]["hosted-exchange"]["total"] == 1

        stats = json.loads((await run_cli(path, "stats", "--json")).stdout)
        assert stats["recipients"]["queued"] == 3 and stats["accepted"] == 2
        assert stats["messages_pending"] == 2 and stats["bytes_pending"] > 0
        assert stats["oldest_pending_seconds"] >= 0 and stats["drain_rate_per_second"] == 0
        text = await run_cli(path, "stats")
        assert "totals (recipients): accepted=3 delivered=0 bounced=0" in text.stdout


async def test_unknown_ids_are_one_line_errors(tmp_path: Path) -> None:
    path, config = write_config(tmp_path)
    async with running(config) as app:
        await start_window(app)
        known = await send(app.port, ["alice@basic.example"], "one")
        # The real program: one line on stderr, exit 1, no traceback.
        result = await acli(path, "queue", "hold", known, "NOSUCHID")
        assert result.returncode == 1, result.stdout
        assert result.stderr == \
            "mailqueue: error: no such queue id: NOSUCHID; nothing was changed\n"
        usage = await acli(path, "queue", "hold")
        assert usage.returncode == 2 and usage.stderr.count("\n") == 1
        assert "give one or more queue ids" in usage.stderr
        for verb in ("release", "retry", "delete", "bounce"):
            result = await run_cli(path, "queue", verb, known, "NOSUCHID")
            assert result.returncode == 1, (verb, result.stdout)
            assert "no such queue id: NOSUCHID; nothing was changed" in result.stderr
        shown = await run_cli(path, "queue", "show", "NOSUCHID")
        assert shown.returncode == 1 and "no such queue id: NOSUCHID" in shown.stderr
        both = await run_cli(path, "queue", "hold", known, "--all")
        assert both.returncode == 2
        assert (await app.queue.report(SystemClock().now())).by_state["queued"] == 1


async def test_hold_release_retry_delete(tmp_path: Path) -> None:
    path, config = write_config(tmp_path)
    mail = tmp_path / "mail"
    async with running(config) as app:
        window = await start_window(app)
        ids = [await send(app.port, ["alice@basic.example"], f"m{i}") for i in range(3)]
        held = await run_cli(path, "queue", "hold", "-", stdin=f"{ids[0]}\n{ids[1]}\n")
        assert held.returncode == 0, held.stderr
        assert f"held {ids[0]} alice@basic.example (queued -> held)" in held.stdout
        assert held.stdout.splitlines()[-1] == "held 2 recipients of 2 messages"
        again = await run_cli(path, "queue", "hold", ids[0])
        assert f"unchanged {ids[0]}: no queued recipients" in again.stdout

        deleted = await run_cli(path, "queue", "delete", ids[2])
        assert deleted.stdout.splitlines()[-1] == "deleted 1 recipient of 1 message"

        await app.queue.save_window(window.ended_now(SystemClock().now()))
        await app.control.refresh()
        await asyncio.sleep(0.6)  # several worker polls: held mail stays put
        listed = await run_cli(path, "queue", "list", "--state", "held", "--ids")
        assert sorted(listed.stdout.split()) == sorted(ids[:2])
        assert all_files(mail) == []

        released = await run_cli(path, "queue", "release", "--all")
        assert released.stdout.splitlines()[-1] == "released 2 recipients of 2 messages"
        await wait_for(lambda: app.worker.delivered == 2)
        shown = await run_cli(path, "queue", "show", ids[0])
        history = shown.stdout.split("history:")[1]
        assert "held" in history and "released" in history and "delivered" in history

        retried = await run_cli(path, "queue", "retry", ids[0])
        assert f"unchanged {ids[0]}: no queued recipients" in retried.stdout


async def test_retry_makes_deferred_mail_due(tmp_path: Path) -> None:
    path, config = write_config(tmp_path)
    blocked = tmp_path / "mail" / "basic" / "basic.example"  # where its Maildirs go
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a directory")  # the store fails temporarily
    async with running(config) as app:
        queue_id = await send(app.port, ["alice@basic.example"], "m")
        await wait_for(lambda: app.worker.deferred == 1)
        listed = json.loads((await run_cli(path, "queue", "list", "--json")).stdout)
        rcpt = listed["recipients"][0]
        assert rcpt["attempts"] == 1 and rcpt["last_error"].startswith("maildir:")
        blocked.unlink()
        retried = await run_cli(path, "queue", "retry", queue_id)
        assert f"retried {queue_id} alice@basic.example" in retried.stdout
        await wait_for(lambda: len(all_files(blocked)) == 1)


async def test_bounce_sends_dsn_to_local_sender(tmp_path: Path) -> None:
    path, config = write_config(tmp_path)
    async with running(config) as app:
        await start_window(app, stores=("basic",))
        queue_id = await send(app.port, ["alice@basic.example"], "doomed",
                              sender="carol@exchange.example")
        bounced = await run_cli(path, "queue", "bounce", queue_id, "--reason", "mailbox retired")
        assert f"bounced {queue_id} alice@basic.example (queued -> bounced)" in bounced.stdout
        box = tmp_path / "mail" / "hosted-exchange"
        await wait_for(lambda: app.worker.delivered == 1)
        notice = parse(all_files(box)[0])
        assert notice.get_content_type() == "multipart/report"
        assert "mailbox retired" in notice.as_string()
        stats = json.loads((await run_cli(path, "stats", "--json")).stdout)
        assert stats["bounced"] == 1 and stats["delivered"] == 1


class SlowStore:
    """A Maildir store that takes a while per batch, so that the drain can be caught."""

    def __init__(self, inner: MaildirStore) -> None:
        self.inner = inner
        self.name = inner.name

    def deliver(self, claims: Sequence[Claim]) -> list[DeliveryOutcome]:
        time.sleep(0.1)
        return self.inner.deliver(claims)


async def test_hold_all_while_the_worker_drains(tmp_path: Path) -> None:
    """Changes made while the queue drains lose nothing and deliver nothing twice."""
    path, config = write_config(tmp_path, delivery_extra="concurrency = 1", batch=5)
    mail = tmp_path / "mail" / "basic"
    stores = {s.name: SlowStore(MaildirStore(s.name, s.path, "mx.test"))
              for s in config.stores}
    async with running(config, mailboxes=stores) as app:
        window = await start_window(app)
        for i in range(30):
            await send(app.port, ["alice@basic.example"], f"m{i}")
        await app.queue.save_window(window.ended_now(SystemClock().now()))
        await app.control.refresh()
        held = await run_cli(path, "queue", "hold", "--all")
        # 3: a recipient the worker was delivering was left to it (and named).
        assert held.returncode in (0, 3), held.stdout

        async def settled() -> bool:
            report = await app.queue.report(SystemClock().now())
            return report.by_state["active"] == 0 and report.by_state["queued"] == 0 and \
                len(all_files(mail)) == report.by_state["delivered"]

        await wait_for(settled, timeout=20)
        report = await app.queue.report(SystemClock().now())
        count = int(held.stdout.splitlines()[-1].split()[1])
        assert report.by_state["held"] == count
        assert report.by_state["held"] + report.by_state["delivered"] == 30
        released = await run_cli(path, "queue", "release", "--all")
        assert released.returncode == 0
        await wait_for(lambda: len(all_files(mail)) == 30, timeout=20)
        await wait_for(settled, timeout=20)
        report = await app.queue.report(SystemClock().now())
        assert report.by_state["delivered"] == 30 and len(all_files(mail)) == 30


async def test_window_end_wait_prints_summary(tmp_path: Path) -> None:
    path, config = write_config(tmp_path)
    async with running(config) as app:
        await start_window(app, name="upgrade")
        for i in range(10):
            await send(app.port, ["alice@basic.example", "carol@exchange.example"], f"m{i}")
        result = await acli(path, "window", "end", "upgrade", "--wait", "--timeout", "30s")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("ended upgrade after")
        assert lines[-1].startswith("window upgrade: delivered 20, bounced 0 in")
        assert "recipients/s" in lines[-1]
        assert "draining" in result.stderr  # the progress bar
