"""scripts/load_test.py against servers it spawns, and the --null server mode it relies on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiosmtplib

from mailqueue.queue.nullstore import NullQueueStore
from tests.helpers import all_files, make_config, message, running

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "load_test.py"

CONFIG = """
[smtp]
host = "127.0.0.1"
port = 2525
hostname = "mx.test"

[delivery]
batch_size = 20
poll_interval = "200ms"

[logging]
level = "info"

[[stores]]
name = "vmail"
path = "unused"
domains = ["example.test"]
"""


def load_test(tmp_path: Path, *args: str) -> dict[str, object]:
    config = tmp_path / "load.toml"
    config.write_text(CONFIG)
    out = subprocess.run([sys.executable, str(SCRIPT), "--spawn", "-c", str(config), "--json",
                          "--no-progress", *args], capture_output=True, text=True,
                         timeout=90, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    return dict(json.loads(out.stdout))


def test_every_message_is_checked_off_after_a_window(tmp_path: Path) -> None:
    report = load_test(tmp_path, "-n", "40", "-C", "4", "-R", "2", "--mailboxes", "5",
                       "--window", "--size", "700")
    assert report["accepted"] == 40 and report["errors"] == {}
    assert (report["expected"], report["delivered"]) == (80, 80)
    assert (report["lost"], report["duplicated"], report["unexpected"]) == (0, 0, 0)
    assert report["drained"] == 80 and float(report["drain_rate"]) > 0  # type: ignore[arg-type]
    assert report["accept_latency_p99_ms"] is not None
    assert report["server_peak_rss_mb"] and report["server_exit"] == 0


def test_fixed_rate_light_load_reports_end_to_end_delay(tmp_path: Path) -> None:
    report = load_test(tmp_path, "--rate", "50", "-n", "10", "-C", "1", "--loop", "asyncio")
    assert report["loop"] == "asyncio" and report["lost"] == 0 and report["delivered"] == 10
    assert report["e2e_p50_ms"] is not None


def test_null_mode_accepts_and_stores_nothing(tmp_path: Path) -> None:
    report = load_test(tmp_path, "--null", "-n", "20", "-C", "2")
    assert report["mode"] == "null" and report["accepted"] == 20
    assert "lost" not in report


async def test_null_server_answers_250_without_storing(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store = NullQueueStore()
    async with running(config, queue=store, run_worker=False) as app:
        assert app.port
        _, reply = await aiosmtplib.send(message("null"), sender="a@src.test",
                                         recipients=["alice@basic.example"],
                                         hostname="127.0.0.1", port=app.port)
        assert reply.startswith("2.0.0 Ok: queued as ")
    assert store.messages == 1 and store.bytes > 0
    assert all_files(tmp_path / "mail") == []
    assert not (tmp_path / "queue.db").exists()
