"""The API's event stream over real HTTP while real SMTP mail flows: what it sends, that a
client too slow to read is dropped (not the server), and that nothing is left behind."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema

from mailqueue.app import MailqueueApp
from tests.api_client import ApiClient
from tests.helpers import make_config, running, wait_for
from tests.integration.test_http_api import send


class EventReader:
    """The events of one stream, parsed from its ``id:``/``event:``/``data:`` lines."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        name, data = "", ""
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.response.content.readline()).decode()
                assert line, "the stream ended"
                if line == "\n" and name:
                    return name, json.loads(data)
                if line.startswith("event: "):
                    name = line[7:].strip()
                elif line.startswith("data: "):
                    data = line[6:].strip()

    async def until(self, wanted: str, match: Any = None,
                    timeout: float = 10.0) -> dict[str, Any]:
        """The next ``wanted`` event (whose data has the items of ``match``)."""
        deadline = time.monotonic() + timeout
        while True:
            name, data = await self.next(max(0.1, deadline - time.monotonic()))
            if name == wanted and all(data.get(k) == v for k, v in (match or {}).items()):
                return data


async def stream(session: aiohttp.ClientSession, app: MailqueueApp,
                 query: str = "") -> AsyncIterator[EventReader]:
    assert app.admin is not None
    async with session.get(f"http://127.0.0.1:{app.admin.port}/api/v1/events{query}") as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        yield EventReader(r)


async def test_the_stream_tells_of_mail_queued_and_delivered_windows_nodes_and_counts(
        tmp_path: Path) -> None:
    config = make_config(tmp_path, admin={"host": "127.0.0.1", "port": 0})
    async with running(config) as app, aiohttp.ClientSession() as session:
        assert app.admin is not None
        async with ApiClient(f"http://127.0.0.1:{app.admin.port}") as client:
            counts_schema = client.schema({"$ref": "#/components/schemas/CountsEvent"})
            async for events in stream(session, app):
                hello = await events.until("hello")
                assert hello["stores"] == ["basic", "hosted-exchange"]
                first = await events.until("counts")
                jsonschema.validate(first, counts_schema)
                await client.post("/windows/upgrade/start", {"duration": "1h",
                                                             "stores": ["basic"]})
                started = await events.until("window")
                assert started["change"] == "started"
                assert started["window"]["name"] == "upgrade"
                queue_id = await send(app, "during the window")
                queued = await events.until("queued", {"queue_id": queue_id})
                assert queued["recipients"] == [{"address": "alice@basic.example",
                                                 "store": "basic"}]
                held = await events.until("counts", timeout=3)
                assert held["stores"]["basic"]["queued"] == 1
                assert held["blocked_stores"] == ["basic"]
                jsonschema.validate(held, counts_schema)
                await client.post("/windows/upgrade/end")
                assert (await events.until("window"))["change"] == "ended"
                delivered = await events.until("delivered", {"queue_id": queue_id})
                assert delivered["recipient"] == "alice@basic.example"
                assert delivered["store"] == "basic" and delivered["latency_seconds"] >= 0
                await client.put("/nodes/hosted-exchange-1", {"mode": "down"})
                node = await events.until("node")
                assert node["node"]["name"] == "hosted-exchange-1"
                carol = await send(app, "to a node that is down", to="carol@exchange.example")
                deferred = await events.until("deferred", {"queue_id": carol})
                assert "down" in deferred["reason"] and deferred["next_attempt"]
                bounced = (await client.post(f"/messages/{carol}/bounce")).data
                assert bounced["changed"]
                assert (await events.until("bounced", {"queue_id": carol}))["reason"]


async def test_types_choose_the_events_and_a_client_that_goes_leaves_nothing_running(
        tmp_path: Path) -> None:
    config = make_config(tmp_path, admin={"host": "127.0.0.1", "port": 0})
    async with running(config) as app, aiohttp.ClientSession() as session:
        async for events in stream(session, app, "?types=queued"):
            queue_id = await send(app, "one")
            name, data = await events.next()
            assert (name, data["queue_id"]) == ("queued", queue_id)
            assert app.events.listening
        await wait_for(lambda: not app.events.listening)
        ticker = app.admin._api.ticker._task  # type: ignore[union-attr]
        await wait_for(lambda: ticker is not None and ticker.done(), timeout=5)


async def test_a_client_that_reads_nothing_is_dropped_and_the_server_goes_on(
        tmp_path: Path) -> None:
    config = make_config(tmp_path, admin={"host": "127.0.0.1", "port": 0})
    async with running(config) as app:
        assert app.admin is not None
        app.events.buffer = 50
        sock = socket.create_connection(("127.0.0.1", app.admin.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /api/v1/events?types=queued HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            await wait_for(lambda: app.events.listening)
            big = {"padding": "x" * 20_000}
            for _ in range(2000):  # far more than the socket buffers hold
                app.events.publish("queued", big)
                if not app.events.listening:
                    break
                await asyncio.sleep(0)
            assert not app.events.listening  # dropped, its buffer freed
            async with ApiClient(f"http://127.0.0.1:{app.admin.port}") as client:
                assert (await client.get("/stats")).status == 200
        finally:
            sock.close()


async def test_open_streams_end_when_the_server_stops(tmp_path: Path) -> None:
    config = make_config(tmp_path, admin={"host": "127.0.0.1", "port": 0})
    async with aiohttp.ClientSession() as session:
        async with running(config) as app:
            assert app.admin is not None
            response = await session.get(
                f"http://127.0.0.1:{app.admin.port}/api/v1/events?types=queued")
            await response.content.readline()
            began = time.monotonic()
        assert time.monotonic() - began < 5
        async with asyncio.timeout(5):
            await response.content.read()  # ends: the server closed the stream
        response.release()
