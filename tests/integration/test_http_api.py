"""The HTTP API over real HTTP against a running app: every route's answers and errors,
paging and filters, the operator verbs, auth, and the OpenAPI document they all fit."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from openapi_spec_validator import validate

from mailqueue.app import MailqueueApp
from mailqueue.config import Config
from tests.api_client import PROBLEM, ApiClient
from tests.helpers import make_config, message, running, wait_for

TOKEN = "s3cret-token"


def api_config(tmp_path: Path, token: str | None = None) -> Config:
    admin: dict[str, Any] = {"host": "127.0.0.1", "port": 0}
    if token:
        admin["token"] = token
    return make_config(tmp_path, admin=admin)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[MailqueueApp, ApiClient]]:
    async with running(api_config(tmp_path)) as app:
        assert app.admin is not None
        async with ApiClient(f"http://127.0.0.1:{app.admin.port}") as client:
            yield app, client


async def send(app: MailqueueApp, subject: str, to: str = "alice@basic.example",
               sender: str = "boss@src.test", message_id: str | None = None) -> str:
    """Send one message over SMTP; its queue id (from the 250 reply)."""
    _, reply = await aiosmtplib.send(message(subject, message_id=message_id), sender=sender,
                                     recipients=[to], hostname="127.0.0.1", port=app.port)
    found = re.search(r"queued as (\w+)", reply)
    assert found, reply
    return found.group(1)


def problem_field(answer: Any) -> str | None:
    assert answer.content_type == PROBLEM, answer
    data = answer.data
    assert data["type"].startswith("urn:mailqueue:problem:") and data["detail"]
    return data["errors"][0]["field"] if data["status"] == 400 else None


# --- the document -------------------------------------------------------------------------

async def test_the_openapi_document_validates_and_lists_exactly_the_routes(
        served: tuple[MailqueueApp, ApiClient]) -> None:
    app, client = served
    assert client.document is not None
    validate(client.document)  # OpenAPI 3.1, by openapi-spec-validator
    assert app.admin is not None
    api = next(r for r in app.admin.make_app().router.resources()
               if r.canonical == "/api/v1")
    served_routes = {(route.method, re.sub(r"\{(\w+):[^}]*\}", r"{\1}",
                                           route.resource.canonical))
                     for route in api._app.router.routes()  # type: ignore[attr-defined]
                     if route.method != "HEAD" and route.resource is not None}
    documented = {(method.upper(), path) for path, ops in client.document["paths"].items()
                  for method in ops}
    assert served_routes == documented
    for path, ops in client.document["paths"].items():
        for method, op in ops.items():
            assert op["operationId"] and op["summary"], (method, path)
            assert "401" in op["responses"], (method, path)


# --- windows ------------------------------------------------------------------------------

async def test_a_window_is_started_extended_ended_and_drained(
        served: tuple[MailqueueApp, ApiClient]) -> None:
    app, client = served
    assert (await client.get("/windows")).data == {"windows": []}
    unknown = await client.post("/windows/upgrade/start")
    assert unknown.status == 404 and "--for" not in unknown.data["detail"]
    assert "give duration DURATION or until TIME" in unknown.data["detail"]
    created = await client.post("/windows/upgrade/start",
                                {"duration": "2h", "stores": ["basic"]})
    assert created.status == 201, created.data
    window = created.data
    assert window["state"] == "active" and window["stores"] == ["basic"]
    assert window["started_at"] is not None and 7190 < window["seconds_to_end"] <= 7200
    again = await client.post("/windows/upgrade/start")
    assert again.status == 409 and "already active" in again.data["detail"]
    moved = await client.post("/windows/upgrade/start", {"duration": 600})
    assert moved.status == 200 and moved.data["seconds_to_end"] <= 600
    extended = await client.post("/windows/upgrade/extend", {"by": "1h"})
    assert extended.status == 200
    assert extended.data["end_epoch"] == pytest.approx(moved.data["end_epoch"] + 3600)
    assert (await client.get("/windows/upgrade")).data["end"] == extended.data["end"]
    assert (await client.get("/stores")).data["stores"][0] | {} == {
        "name": "basic", "kind": "maildir", "domains": ["basic.example"],
        "nodes": ["basic-1"], "window": "upgrade", "inbound": "queue", "open": False}
    queued = await send(app, "held by the window")
    not_yet = await client.get("/windows/upgrade/drain")
    assert not_yet.status == 409
    ended = await client.post("/windows/upgrade/end")
    assert ended.status == 200 and ended.data["state"] == "ended"
    assert (await client.post("/windows/upgrade/end")).status == 409
    assert (await client.post("/windows/upgrade/cancel")).status == 409
    assert (await client.post("/windows/upgrade/extend", {"by": "1h"})).status == 409
    await wait_for(lambda: app.worker.delivered == 1)
    drain = (await client.get("/windows/upgrade/drain")).data
    assert drain["done"] and drain["delivered"] == 1 and drain["remaining"] == 0
    shown = (await client.get(f"/messages/{queued}")).data
    assert shown["recipients"][0]["state"] == "delivered"


@pytest.mark.parametrize(("path", "body", "status", "field"), [
    ("/windows/w/start", {"duration": "2h", "until": "+3h"}, 400, "until"),
    ("/windows/w/start", {"until": "tomorrow"}, 400, "until"),
    ("/windows/w/start", {"until": "2030-01-01 12:00"}, 400, "until"),
    ("/windows/w/start", {"duration": "forever"}, 400, "duration"),
    ("/windows/w/start", {"duration": -5}, 400, "duration"),
    ("/windows/w/start", {"duration": "1h", "stores": ["nowhere"]}, 400, "stores"),
    ("/windows/w/start", {"duration": "1h", "stores": []}, 400, "stores"),
    ("/windows/w/start", {"duration": "1h", "stores": "basic"}, 400, "stores"),
    ("/windows/w/start", {"duration": "1h", "inbound": "drop"}, 400, "inbound"),
    ("/windows/w/start", {"duration": "1h", "timezone": "Mars/Base"}, 400, "timezone"),
    ("/windows/w/start", {"duration": "1h", "colour": "red"}, 400, "colour"),
    ("/windows/w/start", [1, 2], 400, "body"),
    ("/windows/bad%20name/start", {"duration": "1h"}, 400, "name"),
    ("/windows/w/extend", {}, 400, "until"),
    ("/windows/w/extend", {"by": "1h", "until": "+2h"}, 400, "until"),
    ("/windows/nope/extend", {"by": "1h"}, 404, None),
    ("/windows/nope/cancel", None, 404, None),
])
async def test_bad_window_requests_name_the_field_and_change_nothing(
        served: tuple[MailqueueApp, ApiClient], path: str, body: Any, status: int,
        field: str | None) -> None:
    _, client = served
    answer = await client.post(path, body)
    assert answer.status == status, answer.data
    assert problem_field(answer) == field
    assert (await client.get("/windows")).data == {"windows": []}


# --- the queue ----------------------------------------------------------------------------

async def test_messages_are_listed_in_pages_and_filtered(
        served: tuple[MailqueueApp, ApiClient]) -> None:
    app, client = served
    await client.post("/windows/w/start", {"duration": "1h"})
    ids = [await send(app, f"m{i}", sender=f"s{i}@src.test",
                      message_id=f"<msg-{i}@src.test>") for i in range(5)]
    carol = await send(app, "for carol", to="carol@exchange.example")
    pages: list[str] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get("/messages" + query)).data
        pages += [m["queue_id"] for m in page["messages"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [*ids, carol]

    async def listed(query: str) -> list[str]:
        return [m["queue_id"] for m in (await client.get("/messages?" + query)).data["messages"]]

    assert await listed("store=hosted-exchange") == [carol]
    assert await listed("sender=S3@") == [ids[3]]
    assert await listed("recipient=carol") == [carol]
    assert await listed("message_id=msg-2") == [ids[2]]
    assert await listed("q=msg-4@") == [ids[4]]
    assert await listed(f"q={ids[1]}") == [ids[1]]
    assert await listed("q=s0@src") == [ids[0]]
    assert await listed("state=held") == []
    assert await listed("state=queued&state=held&limit=1") == [ids[0]]
    assert await listed("state=queued,held&older_than=1h") == []
    assert await listed("newer_than=1h&limit=1000") == [*ids, carol]
    for query, field in (("state=lost", "state"), ("store=nowhere", "store"),
                         ("older_than=soon", "older_than"), ("limit=0", "limit"),
                         ("limit=1001", "limit"), ("limit=ten", "limit"), ("all=maybe", "all"),
                         ("colour=red", "colour"), ("store=a&store=b", "store")):
        answer = await client.get("/messages?" + query)
        assert answer.status == 400 and problem_field(answer) == field, query


async def test_one_message_is_shown_with_its_headers_history_and_content(
        served: tuple[MailqueueApp, ApiClient]) -> None:
    app, client = served
    await client.post("/windows/w/start", {"duration": "1h", "stores": ["basic"]})
    queue_id = await send(app, "Quarterly report", message_id="<q1@src.test>")
    detail = (await client.get(f"/messages/{queue_id}")).data
    assert detail["sender"] == "boss@src.test" and detail["message_id"] == "<q1@src.test>"
    assert "Subject: Quarterly report" in detail["headers"]
    assert detail["client"]["peer"] == "127.0.0.1" and detail["raw_available"]
    raw = await client.get(f"/messages/{queue_id}/raw")
    assert raw.status == 200 and raw.content_type == "message/rfc822"
    assert b"Subject: Quarterly report" in raw.raw
    held = (await client.post(f"/messages/{queue_id}/hold")).data
    assert held["changed"] == [{"queue_id": queue_id, "address": "alice@basic.example",
                                "before": "queued", "after": "held"}] and held["complete"]
    again = (await client.post(f"/messages/{queue_id}/hold")).data
    assert again["changed"] == [] and again["unchanged"] == [queue_id]
    history = (await client.get(f"/messages/{queue_id}")).data["history"]
    assert [e["kind"] for e in history] == ["held"]
    await client.post(f"/messages/{queue_id}/release")
    await client.post("/windows/w/end")
    await wait_for(lambda: app.worker.delivered == 1)
    gone = await client.get(f"/messages/{queue_id}/raw")
    assert gone.status == 410 and "no longer kept" in gone.data["detail"]
    for path in ("/messages/NOSUCHID", "/messages/NOSUCHID/raw"):
        missing = await client.get(path)
        assert missing.status == 404 and "no such queue id: NOSUCHID" in missing.data["detail"]
    assert (await client.post("/messages/NOSUCHID/hold")).status == 404
    assert (await client.post(f"/messages/{queue_id}/explode")).status == 404
    assert (await client.post(f"/messages/{queue_id}/raw")).status == 405


async def test_operator_verbs_act_on_many_or_all_and_an_unknown_id_changes_nothing(
        served: tuple[MailqueueApp, ApiClient]) -> None:
    app, client = served
    await client.post("/windows/w/start", {"duration": "1h"})
    ids = [await send(app, f"m{i}") for i in range(3)]
    refused = await client.post("/queue/hold", {"ids": [ids[0], "NOSUCHID"]})
    assert refused.status == 404 and "nothing was changed" in refused.data["detail"]
    assert (await client.get("/messages?state=held")).data["messages"] == []
    held = (await client.post("/queue/hold", {"all": True})).data
    assert len(held["changed"]) == 3 and held["action"] == "hold"
    released = (await client.post("/queue/release", {"ids": ids[:2]})).data
    assert {c["queue_id"] for c in released["changed"]} == set(ids[:2])
    deleted = (await client.post("/queue/delete", {"ids": [ids[0]]})).data
    assert deleted["changed"][0]["after"] == "deleted"
    bounced = (await client.post(f"/messages/{ids[1]}/bounce",
                                 {"reason": "mailbox retired"})).data
    assert bounced["changed"][0]["after"] == "bounced"
    shown = (await client.get(f"/messages/{ids[1]}?")).data
    assert shown["recipients"][0]["last_error"] == "mailbox retired"
    retried = (await client.post("/queue/retry", {"all": True})).data
    assert retried["changed"] == []  # the last one is held, and held mail stays held
    for body, field in (({}, "ids"), ({"ids": []}, "ids"), ({"ids": ["a"], "all": True}, "ids"),
                        ({"ids": "abc"}, "ids"), ({"all": "yes"}, "all"),
                        ({"ids": ["a"], "reason": 5}, "reason")):
        answer = await client.post("/queue/hold", body)
        assert answer.status == 400 and problem_field(answer) == field, body
    stats = (await client.get("/stats")).data
    assert stats["recipients"]["deleted"] == 1 and stats["recipients"]["bounced"] == 1
    assert stats["stores"]["basic"]["held"] == 1 and stats["accepted"] == 3
    shape = (await client.get("/queue/shape")).data
    assert shape["stores"]["basic"]["total"] == 1
    assert shape["stores"]["hosted-exchange"]["total"] == 0


# --- nodes, verify ------------------------------------------------------------------------

async def test_nodes_are_listed_and_set(served: tuple[MailqueueApp, ApiClient]) -> None:
    app, client = served
    nodes = (await client.get("/nodes")).data["nodes"]
    assert [(n["name"], n["mode"]) for n in nodes] == [("basic-1", "up"),
                                                       ("hosted-exchange-1", "up")]
    down = await client.put("/nodes/basic-1", {"mode": "down"})
    assert down.status == 200 and down.data["mode"] == "down" and down.data["updated_at"]
    await wait_for(lambda: app.control.nodes().get("basic-1") is not None)
    slow = (await client.put("/nodes/basic-1", {"mode": "slow", "latency": 0.5})).data
    assert slow["latency"] == 0.5
    flaky = (await client.put("/nodes/basic-1", {"mode": "flaky", "failure_rate": 0.25})).data
    assert (await client.get("/nodes/basic-1")).data == flaky
    for body, field in (({"mode": "slow"}, "latency"), ({"mode": "flaky"}, "failure_rate"),
                        ({"mode": "sideways"}, "mode"), ({}, "mode"),
                        ({"mode": "flaky", "failure_rate": 2}, "failure_rate"),
                        ({"mode": "flaky", "fail_next": 1.5}, "fail_next"),
                        ({"mode": "slow", "latency": "soon"}, "latency")):
        answer = await client.put("/nodes/basic-1", body)
        assert answer.status == 400 and problem_field(answer) == field, body
    for name in ("basic-2", "nowhere-1", "basic-01"):
        assert (await client.put(f"/nodes/{name}", {"mode": "down"})).status == 404
        assert (await client.get(f"/nodes/{name}")).status == 404


async def test_verify_states_the_equation_and_passes_when_all_is_delivered(
        served: tuple[MailqueueApp, ApiClient]) -> None:
    app, client = served
    for i in range(3):
        await send(app, f"m{i}")
    await wait_for(lambda: app.worker.delivered == 3)
    result = (await client.get("/verify")).data
    assert result["passed"] and result["ok"] and result["unaccounted"] == 0
    assert result["equation"].startswith("accepted 3 = delivered 3 + bounced 0")
    assert (await client.get("/verify?strict=true")).data["strict"] is True
    for path in app.config.stores[0].mailbox_root.rglob("*"):  # type: ignore[union-attr]
        if path.is_file() and path.parent.name == "new":
            path.unlink()
            break
    lost = (await client.get("/verify")).data
    assert not lost["passed"] and len(lost["missing"]) == 1


# --- auth and bad input -------------------------------------------------------------------

async def test_the_token_guards_every_route_and_the_stream_also_takes_it_in_the_query(
        tmp_path: Path) -> None:
    async with running(api_config(tmp_path, TOKEN)) as app:
        assert app.admin is not None
        base = f"http://127.0.0.1:{app.admin.port}"
        async with ApiClient(base, TOKEN) as client:
            assert (await client.get("/auth")).data == {"auth": "token"}
        async with aiohttp.ClientSession() as session:
            for headers in ({}, {"Authorization": "Bearer wrong"},
                            {"Authorization": TOKEN}):
                async with session.get(base + "/api/v1/windows", headers=headers) as r:
                    assert r.status == 401 and r.content_type == PROBLEM
                    assert r.headers["WWW-Authenticate"] == "Bearer"
                    assert (await r.json())["type"] == "urn:mailqueue:problem:unauthorized"
            async with session.get(base + f"/api/v1/stats?token={TOKEN}") as r:
                assert r.status == 401  # the query token is for the event stream only
            async with session.get(base + f"/api/v1/events?token={TOKEN}") as r:
                assert r.status == 200 and r.content_type == "text/event-stream"
                assert (await r.content.readline()).startswith(b"id: ")
            async with session.get(base + "/api/v1/events?token=wrong") as r:
                assert r.status == 401
            async with session.get(base + "/healthz") as r:
                assert r.status == 200
            async with session.get(base + "/metrics") as r:
                assert r.status == 401 and (await r.json()) == {"error": "missing or wrong token"}


@pytest.mark.parametrize(("method", "path", "data", "status"), [
    ("POST", "/windows/w/start", b"{not json", 400),
    ("POST", "/windows/w/start", b"\xff\xfe", 400),
    ("POST", "/windows/w/start", b'"a string"', 400),
    ("POST", "/windows/w/start", b'{"duration": 1e400}', 400),
    ("POST", "/windows/w/start", b'{"until": "+3000000d"}', 400),
    ("POST", "/windows/w/start", b'{"duration": "1h", "stores": [1]}', 400),
    ("POST", "/windows/%00/start", b'{"duration": "1h"}', 400),
    ("PUT", "/nodes/basic-1", b'{"mode": "down", "latency": NaN}', 400),
    ("PUT", "/nodes/basic-1", b'{"mode": null}', 400),
    ("GET", "/messages?limit=99999999999999999999999", None, 400),
    ("GET", "/messages?cursor=%00", None, 200),
    ("GET", "/messages?q=%25_%5C", None, 200),
    ("DELETE", "/windows", None, 405),
    ("GET", "/nowhere", None, 404),
    ("POST", "/rehearsals", b'{"scenario": "/no/such/file.toml"}', 400),
    ("POST", "/rehearsals", b'{"scenario_toml": "[scenario"}', 400),
    ("POST", "/rehearsals", b'{}', 400),
    ("GET", "/rehearsals/r99", None, 404),
    ("GET", "/rehearsals/r99/files/queue.png", None, 404),
    ("GET", "/events?types=everything", None, 400),
])
async def test_bad_input_is_a_problem_document_never_a_500(
        served: tuple[MailqueueApp, ApiClient], method: str, path: str, data: bytes | None,
        status: int) -> None:
    _, client = served
    answer = await client.call(method, path, data=data,
                               headers={"Content-Type": "application/json"})
    assert answer.status == status, answer.raw
    if status >= 400:
        assert answer.content_type == PROBLEM
        assert b"Traceback" not in answer.raw
