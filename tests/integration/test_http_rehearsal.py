"""A rehearsal started through the HTTP API runs in the background of the server: its
progress, its report and the report's files, over real HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from mailqueue.app import MailqueueApp
from tests.api_client import ApiClient
from tests.helpers import make_config, running
from tests.integration.test_http_events import EventReader

SCENARIO = """
[scenario]
name = "API rehearsal"
timezone = "UTC"
start = "2027-03-02 18:00"
end = "2027-03-02 19:00"
speed = 900
seed = 3
sample = "5m"

[[stores]]
name = "basic"
domains = ["basic.example"]
users = 5

[[windows]]
name = "short"
stores = ["basic"]
start = "2027-03-02 18:10"
end = "2027-03-02 18:30"

[traffic]
rate = 60
connections = 2
"""


async def finished(client: ApiClient, run_id: str, limit: float = 60.0) -> dict[str, object]:
    async with asyncio.timeout(limit):
        while True:
            run = (await client.get(f"/rehearsals/{run_id}")).data
            if run["state"] != "running":
                return dict(run)
            await asyncio.sleep(0.2)


async def test_a_rehearsal_runs_in_the_server_and_its_report_is_served(
        tmp_path: Path) -> None:
    config = make_config(tmp_path, admin={"host": "127.0.0.1", "port": 0})
    async with running(config) as app:
        assert isinstance(app, MailqueueApp) and app.admin is not None
        async with ApiClient(f"http://127.0.0.1:{app.admin.port}") as client:
            out = tmp_path / "report"
            started = await client.post("/rehearsals", {"scenario_toml": SCENARIO,
                                                        "out": str(out)})
            assert started.status == 202, started.data
            run_id = started.data["id"]
            assert started.headers["Location"] == f"/api/v1/rehearsals/{run_id}"
            assert started.data["state"] == "running"
            busy = await client.post("/rehearsals", {"scenario_toml": SCENARIO})
            assert busy.status == 409
            early = await client.get(f"/rehearsals/{run_id}/report")
            assert early.status == 409
            async with aiohttp.ClientSession() as session, session.get(
                    client.base + "/api/v1/events?types=rehearsal") as stream:
                events = EventReader(stream)
                moving = await events.until("rehearsal", {"id": run_id, "state": "running"})
                assert moving["phase"] in ("starting", "running", "sending the last mail",
                                           "draining", "writing the report")
                done = await events.until("rehearsal", {"id": run_id, "state": "finished"},
                                          timeout=60)
            run = await finished(client, run_id)
            assert done == run
            assert run["state"] == "finished" and run["passed"] is True, run
            assert run["progress"] == 1.0 and run["out"] == str(out)
            listed = (await client.get("/rehearsals")).data["rehearsals"]
            assert [r["id"] for r in listed] == [run_id]
            report = (await client.get(f"/rehearsals/{run_id}/report")).data
            assert report["figures"]["lost"] == 0 and report["figures"]["accepted_messages"]
            assert {"queue.png", "series.csv", "report.json"} <= set(report["files"])
            png = await client.get(f"/rehearsals/{run_id}/files/queue.png")
            assert png.status == 200 and png.content_type == "image/png"
            assert png.raw.startswith(b"\x89PNG")
            missing = await client.get(f"/rehearsals/{run_id}/files/secret.txt")
            assert missing.status == 404
            escape = await client.get(f"/rehearsals/{run_id}/files/..%2Fqueue.db")
            assert escape.status == 404
            # the server's own queue saw none of the rehearsal's mail
            assert (await client.get("/stats")).data["accepted"] == 0


async def test_a_scenario_that_does_not_load_is_a_400_naming_it(tmp_path: Path) -> None:
    config = make_config(tmp_path, admin={"host": "127.0.0.1", "port": 0})
    async with running(config) as app:
        assert app.admin is not None
        async with ApiClient(f"http://127.0.0.1:{app.admin.port}") as client:
            bad = SCENARIO.replace('end = "2027-03-02 19:00"', 'end = "2027-03-02 17:00"')
            answer = await client.post("/rehearsals", {"scenario_toml": bad})
            assert answer.status == 400
            assert answer.data["errors"][0]["field"] == "scenario_toml"
            assert "scenario.end" in answer.data["detail"]
            both = await client.post("/rehearsals", {"scenario_toml": SCENARIO,
                                                     "scenario": "x.toml"})
            assert both.status == 400 and both.data["errors"][0]["field"] == "scenario"
            file = tmp_path / "s.toml"
            file.write_text(SCENARIO)
            slow = await client.post("/rehearsals", {"scenario": str(file), "speed": 0})
            assert slow.status == 400 and slow.data["errors"][0]["field"] == "speed"
            assert (await client.get("/rehearsals")).data == {"rehearsals": []}
