"""The admin endpoint over real HTTP: metrics parsed with prometheus_client's parser,
health checks, and mailbox access that follows the window."""

from __future__ import annotations

import json
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailqueue.clock import ManualClock
from mailqueue.control.windows import Window
from mailqueue.errors import ConfigError
from tests.helpers import make_config, message, running, wait_for

ADMIN = {"host": "127.0.0.1", "port": 0}


async def get(app: Any, path: str, token: str | None = None) -> tuple[int, dict[str, str],
                                                                       str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{app.admin.port}{path}", headers=headers) as response:
        return response.status, dict(response.headers), await response.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_scraped_and_parsed(tmp_path: Path) -> None:
    clock = ManualClock()
    config = make_config(tmp_path, admin=ADMIN)
    async with running(config, clock) as app:
        now = clock.now()
        window = Window(name="upgrade", stores=("basic",), start=now,
                        end=now + 3600).advance(now)
        await app.queue.save_window(window)
        await app.control.refresh()
        for i in range(3):
            await aiosmtplib.send(message(f"m{i}"), sender="a@src.test", hostname="127.0.0.1",
                                  port=app.port, recipients=["alice@basic.example"])
        await aiosmtplib.send(message("x"), sender="a@src.test", hostname="127.0.0.1",
                              port=app.port, recipients=["carol@exchange.example"])
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await aiosmtplib.send(message("no"), sender="a@src.test", hostname="127.0.0.1",
                                  port=app.port, recipients=["x@elsewhere.test"])
        await wait_for(lambda: app.worker.delivered == 1)
        status, headers, text = await get(app, "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        found = samples(text)
        assert found[("mailqueue_messages_accepted_total", ())] == 4
        assert found[("mailqueue_smtp_rejected_total", (("code", "550"),))] == 1
        assert found[("mailqueue_recipients_delivered_total",
                      (("store", "hosted-exchange"),))] == 1
        assert found[("mailqueue_queue_recipients",
                      (("state", "queued"), ("store", "basic")))] == 3
        assert found[("mailqueue_queue_bytes", (("state", "queued"), ("store", "basic")))] > 0
        assert found[("mailqueue_delivery_latency_seconds_count", ())] == 1
        assert found[("mailqueue_window_state", (("mailqueue_window_state", "active"),
                                                 ("window", "upgrade")))] == 1
        assert found[("mailqueue_queue_up", ())] == 1
        assert ("mailqueue_oldest_message_age_seconds", ()) in found


async def test_health_and_readiness(tmp_path: Path) -> None:
    config = make_config(tmp_path, admin=ADMIN)
    async with running(config) as app:
        status, _, body = await get(app, "/healthz")
        assert status == 200 and '"ok"' in body
        status, _, body = await get(app, "/readyz")
        assert status == 200 and '"ready": true' in body
        app.smtp_server.close()
        status, _, body = await get(app, "/readyz")
        assert status == 503 and "not listening" in body


async def test_mailbox_api_follows_the_window(tmp_path: Path) -> None:
    clock = ManualClock()
    config = make_config(tmp_path, admin=ADMIN)
    async with running(config, clock) as app:
        now = clock.now()
        window = Window(name="upgrade", stores=("basic",), start=now,
                        end=now + 7200).advance(now)
        await app.queue.save_window(window)
        await app.control.refresh()
        await aiosmtplib.send(message("during"), sender="a@src.test", hostname="127.0.0.1",
                              port=app.port, recipients=["alice@basic.example"])
        status, headers, body = await get(app, "/mailboxes/alice@basic.example/messages")
        assert status == 503 and '"window": "upgrade"' in body
        assert parsedate_to_datetime(headers["Retry-After"]).timestamp() == int(window.end)

        assert (await get(app, "/mailboxes/zed@exchange.example/messages"))[0] == 404
        assert (await get(app, "/mailboxes/a@nowhere.test/messages"))[0] == 404
        status, _, body = await get(app, "/mailboxes/carol@exchange.example/messages")
        assert status == 200 and body == "[]"  # a known mailbox with no mail yet

        await app.queue.save_window(window.ended_now(clock.now()))
        await app.control.refresh()
        await wait_for(lambda: app.worker.delivered == 1)
        status, _, body = await get(app, "/mailboxes/alice@basic.example/messages")
        assert status == 200
        listed = json.loads(body)
        assert [m["subject"] for m in listed] == ["during"]
        assert listed[0]["folder"] == "new" and listed[0]["queue_id"]


async def test_token_required_when_configured(tmp_path: Path) -> None:
    config = make_config(tmp_path, admin={**ADMIN, "token": "s3cret"})
    async with running(config) as app:
        assert (await get(app, "/metrics"))[0] == 401
        assert (await get(app, "/metrics", token="wrong"))[0] == 401
        assert (await get(app, "/metrics", token="s3cret"))[0] == 200
        assert (await get(app, "/healthz"))[0] == 200  # probes need no token


def test_non_loopback_without_token_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"admin: host '0\.0\.0\.0' is not a loopback "
                                          r"address: set admin\.token"):
        make_config(tmp_path, admin={"host": "0.0.0.0", "port": 0})
    make_config(tmp_path, admin={"host": "0.0.0.0", "port": 0, "token": "t"})
