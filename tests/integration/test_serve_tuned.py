"""``mailqueue serve`` decides ``[queue] writer = "auto"`` at start and logs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mailqueue.testing.drills import children

CONFIG = """
[queue]
url = "sqlite+aiosqlite:///{queue}"
{writer}
[[stores]]
name = "basic"
path = "{mail}"
domains = ["basic.example"]
"""


def _started(tmp_path: Path, writer: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The server's log events up to ``server_started``, and its child processes then."""
    config = tmp_path / "mq.toml"
    config.write_text(CONFIG.format(queue=tmp_path / "q.db", mail=tmp_path / "mail",
                                    writer=writer))
    server = subprocess.Popen([sys.executable, "-m", "mailqueue", "serve", "-c", str(config),
                               "--port", "0", "--log-json"], stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        events: list[dict[str, Any]] = []
        for line in server.stderr:
            events.append(json.loads(line))
            if events[-1]["event"] == "server_started":
                break
        return events, children(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_the_default_writer_is_a_process_and_serve_says_why(tmp_path: Path) -> None:
    events, kids = _started(tmp_path, "")
    tuned = [e for e in events if e["event"] == "server_tuned"]
    assert len(tuned) == 1, events
    assert tuned[0]["writer"] == "process"
    assert tuned[0]["writer_reason"] == \
        f"{tuned[0]['usable_cpus']} usable CPUs and an SQLite file queue"
    assert tuned[0]["loop"] in ("uvloop", "asyncio") and tuned[0]["loop_reason"]
    assert "queue_writer_process_started" in [e["event"] for e in events]
    assert len(kids) == 1


def test_a_writer_set_to_thread_is_kept(tmp_path: Path) -> None:
    events, kids = _started(tmp_path, 'writer = "thread"')
    tuned = next(e for e in events if e["event"] == "server_tuned")
    assert (tuned["writer"], tuned["writer_reason"]) == ("thread", "set in [queue] writer")
    assert "queue_writer_process_started" not in [e["event"] for e in events]
    assert kids == []
