"""The operator's story: ``queue delete --all`` (and hold, bounce) run from another process
while a served instance drains, with a worker caught in the middle of a delivery."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiosmtplib

from mailqueue.app import MailqueueApp
from mailqueue.clock import SystemClock
from mailqueue.control.windows import Window
from mailqueue.mailbox.base import DeliveryOutcome
from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.queue.values import Claim
from tests.helpers import message, running, wait_for
from tests.ops_helpers import acli, run_cli, write_config

HOUR = 3600.0


class GatedStore:
    """A Maildir store whose deliveries wait at a gate: the test decides when the worker
    holding a claim may finish."""

    def __init__(self, inner: MaildirStore) -> None:
        self.inner = inner
        self.name = inner.name
        self.gate = threading.Event()
        self.entered = threading.Event()

    def deliver(self, claims: Sequence[Claim]) -> list[DeliveryOutcome]:
        self.entered.set()
        self.gate.wait(30)
        return self.inner.deliver(claims)


@asynccontextmanager
async def caught_mid_delivery(tmp_path: Path, count: int,
                              ) -> AsyncIterator[tuple[Path, MailqueueApp, GatedStore, list[str]]]:
    """A served instance with ``count`` messages queued for alice during a window; the
    window ends and the worker (one lane, one recipient a batch) is caught delivering
    the first of them."""
    path, config = write_config(tmp_path, delivery_extra="concurrency = 1", batch=1)
    stores = {s.name: GatedStore(MaildirStore(s.name, s.path, "mx.test"))
              for s in config.stores}
    basic = stores["basic"]
    try:
        async with running(config, mailboxes=stores) as app:
            now = SystemClock().now()
            window = Window(name="upgrade", stores=(), start=now, end=now + 48 * HOUR)
            await app.queue.save_window(window.advance(now))
            await app.control.refresh()
            ids = []
            for i in range(count):
                _, reply = await aiosmtplib.send(message(f"m{i}"), sender="a@src.test",
                                                 recipients=["alice@basic.example"],
                                                 hostname="127.0.0.1", port=app.port)
                ids.append(reply.rsplit(" ", 1)[-1])
            await app.queue.save_window(window.advance(now).ended_now(SystemClock().now()))
            await app.control.refresh()
            await wait_for(basic.entered.is_set)
            yield path, app, basic, ids
    finally:
        for store in stores.values():
            store.gate.set()


async def test_delete_all_mid_drain_leaves_the_delivery_and_keeps_the_totals(
        tmp_path: Path) -> None:
    async with caught_mid_delivery(tmp_path, 3) as (path, app, basic, ids):
        # The real program: the exit status tells a script to run it again.
        deleted = await acli(path, "queue", "delete", "--all")
        assert deleted.returncode == 3, (deleted.stdout, deleted.stderr)
        assert deleted.stderr == ""
        assert deleted.stdout.splitlines() == [
            f"deleted {ids[1]} alice@basic.example (queued -> deleted)",
            f"deleted {ids[2]} alice@basic.example (queued -> deleted)",
            f"skipped {ids[0]} alice@basic.example (in delivery; not deleted)",
            "deleted 2 recipients of 2 messages; 1 recipient in delivery, not deleted: run "
            "again once it settles"]

        basic.gate.set()
        await wait_for(lambda: app.worker.delivered == 1)

        verified = await acli(path, "verify")
        assert verified.returncode == 0, verified.stdout
        assert verified.stdout.splitlines()[0] == (
            "accepted 3 = delivered 1 + bounced 0 + deleted 2 + still queued 0  (recipients)")
        assert "  basic: delivered 1 + bounced 0 + deleted 2 + still queued 0" in \
            verified.stdout
        assert "OK: nothing lost, nothing delivered twice" in verified.stdout
        as_json = json.loads((await run_cli(path, "verify", "--json")).stdout)
        assert (as_json["ok"], as_json["accepted"], as_json["deleted"]) == (True, 3, 2)

        stats = json.loads((await run_cli(path, "stats", "--json")).stdout)
        assert (stats["accepted"], stats["delivered"], stats["deleted"]) == (3, 1, 2)
        assert stats["recipients"]["deleted"] == 2 and stats["messages_pending"] == 0
        assert stats["by_store"]["basic/deleted"] == 2
        text = (await run_cli(path, "stats")).stdout
        assert "totals (recipients): accepted=3 delivered=1 bounced=0 deleted=2" in text

        again = await run_cli(path, "queue", "delete", "--all")
        assert (again.returncode, again.stdout) == (0, "deleted 0 recipients of 0 messages\n")
        done = await run_cli(path, "queue", "delete", ids[0], ids[1])
        assert done.returncode == 0
        assert done.stdout.splitlines() == [
            f"unchanged {ids[0]}: no queued or held recipients",
            f"unchanged {ids[1]}: no queued or held recipients",
            "deleted 0 recipients of 0 messages"]
        shown = (await run_cli(path, "queue", "show", ids[1])).stdout
        assert "alice@basic.example  store=basic state=deleted" in shown
        assert "alice@basic.example  deleted  by operator" in shown.split("history:")[1]
        raw = await run_cli(path, "queue", "show", ids[1], "--raw")
        assert raw.returncode == 1 and raw.stderr == (
            f"mailqueue: error: message {ids[1]} is done: its content is no longer kept\n")
        listed = await run_cli(path, "queue", "list", "--state", "deleted", "--ids")
        assert listed.stdout.split() == ids[1:]


async def test_hold_and_bounce_mid_drain_name_the_recipient_in_delivery(
        tmp_path: Path) -> None:
    async with caught_mid_delivery(tmp_path, 2) as (path, app, basic, ids):
        held = await run_cli(path, "queue", "hold", "--all")
        assert held.returncode == 3
        assert held.stdout.splitlines() == [
            f"held {ids[1]} alice@basic.example (queued -> held)",
            f"skipped {ids[0]} alice@basic.example (in delivery; not held)",
            "held 1 recipient of 1 message; 1 recipient in delivery, not held: run again "
            "once it settles"]
        bounced = await run_cli(path, "queue", "bounce", ids[0], ids[1])
        assert bounced.returncode == 3
        assert bounced.stdout.splitlines() == [
            f"bounced {ids[1]} alice@basic.example (held -> bounced)",
            f"skipped {ids[0]} alice@basic.example (in delivery; not bounced)",
            "bounced 1 recipient of 1 message; 1 recipient in delivery, not bounced: run "
            "again once it settles"]
        # Release and retry stop nothing: a recipient in delivery is no reason to fail.
        for verb in ("release", "retry"):
            result = await run_cli(path, "queue", verb, ids[0])
            assert result.returncode == 0, (verb, result.stdout)

        basic.gate.set()
        await wait_for(lambda: app.worker.delivered == 1)
        verified = await acli(path, "verify")
        assert verified.returncode == 0, verified.stdout
        assert verified.stdout.startswith(
            "accepted 2 = delivered 1 + bounced 1 + deleted 0 + still queued 0")
