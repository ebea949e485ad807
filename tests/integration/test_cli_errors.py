"""A failed start-up reaches the user as one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

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

