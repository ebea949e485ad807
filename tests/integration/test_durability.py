"""250 means durable: a server killed with SIGKILL right after its replies loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiosmtplib

from tests.helpers import all_files, message, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, port: int) -> Path:
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
[[stores]]
name = "basic"
path = "{tmp_path / 'mail'}"
domains = ["basic.example"]
""")
    return path


def start(config: Path) -> subprocess.Popen[bytes]:
    with open(config.parent / "server.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "mailqueue", "serve", "-c", str(config)],
                                stdout=subprocess.DEVNULL, stderr=log)


async def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
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


def cli(config: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "mailqueue", *args, "-c", str(config)], check=True,
                   capture_output=True)


async def test_sigkill_after_250_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    cli(config, "window", "start", "drill", "--for", "1h")
    proc = start(config)
    try:
        await wait_listening(port, proc)
        accepted: list[str] = []

        async def client(n: int) -> None:
            for i in range(10):
                _, reply = await aiosmtplib.send(
                    message(f"c{n}-{i}"), sender="a@src.test",
                    recipients=[f"user{n}@basic.example"], hostname="127.0.0.1", port=port)
                accepted.append(reply.rsplit(" ", 1)[1])

        await asyncio.gather(*(client(n) for n in range(10)))
        os.kill(proc.pid, signal.SIGKILL)  # right after the last 250
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(accepted) == 100

    proc = start(config)
    try:
        await wait_listening(port, proc)
        assert all_files(tmp_path / "mail") == []  # still inside the window
        cli(config, "window", "end", "drill")
        await wait_for(lambda: len(all_files(tmp_path / "mail")) >= 100, timeout=20)
        await asyncio.sleep(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    files = all_files(tmp_path / "mail")
    ids = sorted(f.name.split(".Q", 1)[1].split("_", 1)[0] for f in files)
    assert ids == sorted(accepted)  # every acknowledged message, exactly once
