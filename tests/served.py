"""A real ``mailqueue serve`` in a process of its own, for tests that kill or restart it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

# The tests' free port is the load test's and the drills' (mailqueue.testing.drills).
from mailqueue.loadtest import free_port as free_port


def write_config(tmp_path: Path, port: int,
                 stores: dict[str, str] | None = None, extra: str = "") -> Path:
    """``mq.toml`` in ``tmp_path``: SQLite queue, one store per name → domain (Maildirs
    under ``tmp_path/mail/<name>``), then ``extra`` (more tables, as TOML)."""
    sections = "".join(f"""
[[stores]]
name = "{name}"
path = "{tmp_path / 'mail' / name}"
domains = ["{domain}"]
""" for name, domain in (stores or {"basic": "basic.example"}).items())
    path = tmp_path / "mq.toml"
    path.write_text(f"""
[smtp]
port = {port}
hostname = "mx.test"
[queue]
url = "sqlite+aiosqlite:///{tmp_path / 'queue.db'}"
[delivery]
poll_interval = 0.2
[logging]
level = "warning"
{sections}{extra}""")
    return path


def start(config: Path) -> subprocess.Popen[bytes]:
    """``mailqueue serve -c config``; its stderr goes to ``server.log`` beside the config."""
    with open(config.parent / "server.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "mailqueue", "serve", "-c", str(config)],
                                stdout=subprocess.DEVNULL, stderr=log)


async def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the server accepts connections; fail with its log if it exited."""
    for _ in range(200):
        if proc.poll() is not None:
            raise AssertionError("server exited: " + (Path(proc.args[-1]).parent /  # type: ignore[index]
                                                      "server.log").read_text())
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("server did not listen")
