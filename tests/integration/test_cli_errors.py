"""A failed start-up reaches the user as one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """
[queue]
url = "sqlite+aiosqlite:///{queue}"

[[stores]]
name = "basic"
path = "{mail}"
domains = ["basic.example"]
"""


def test_serve_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "mq.toml"
    config.write_text(CONFIG.format(queue=tmp_path / "q.db", mail=tmp_path / "mail"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "mailqueue", "serve", "-c", str(config), "--port", str(port)],
            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("mailqueue: error: ") and "address already in use" in errors[0]
    assert "--port" in errors[0]


def test_a_group_without_its_command_prints_its_help() -> None:
    result = subprocess.run([sys.executable, "-m", "mailqueue", "window"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("Usage: mailqueue window")



@pytest.mark.parametrize(("section", "setting"), [
    ("[server]\ncpus = \"4095\"\n", "[server] cpus"),
    ("[queue]\nwriter = \"process\"\nwriter_cpus = \"4095\"\n", "[queue] writer_cpus"),
])
def test_serve_on_cpus_it_may_not_use_is_one_line(tmp_path: Path, section: str,
                                                  setting: str) -> None:
    config = tmp_path / "mq.toml"
    text = CONFIG.format(queue=tmp_path / "q.db", mail=tmp_path / "mail")
    # A [queue] section's keys join the one CONFIG has; any other section goes first.
    config.write_text(text.replace("[queue]\n", section, 1) if section.startswith("[queue]")
                      else section + text)
    result = subprocess.run([sys.executable, "-m", "mailqueue", "serve", "-c", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert f"{setting}: CPU 4095 is not available" in errors[0], errors[0]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux CPU affinity")
def test_serve_on_one_cpu_keeps_every_thread_there(tmp_path: Path) -> None:
    config = tmp_path / "mq.toml"
    config.write_text("[server]\ncpus = \"0\"\n" +
                      CONFIG.format(queue=tmp_path / "q.db", mail=tmp_path / "mail"))
    server = subprocess.Popen([sys.executable, "-m", "mailqueue", "serve", "-c", str(config),
                               "--port", "0", "--log-json"],
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        events = []
        for line in server.stderr:
            events.append(json.loads(line)["event"])
            if events[-1] == "server_started":
                break
        assert events[:1] == ["cpus_pinned"], events
        tasks = Path(f"/proc/{server.pid}/task")
        allowed = {(task / "status").read_text().split("Cpus_allowed_list:")[1].split()[0]
                   for task in tasks.iterdir()}
        assert allowed == {"0"} and len(list(tasks.iterdir())) > 1
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
