"""250 means durable: a server killed with SIGKILL right after its replies loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiosmtplib

from mailqueue.mailbox.maildir import copy_key
from tests.helpers import all_files, message, wait_for
from tests.served import free_port, start, wait_listening, write_config


def cli(config: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "mailqueue", *args, "-c", str(config)], check=True,
                   capture_output=True)


async def test_sigkill_after_250_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    cli(config, "db", "upgrade")  # the queue the server will use: commands never create one
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
    ids = sorted(key[0] for f in files if (key := copy_key(f.name)))
    assert ids == sorted(accepted)  # every acknowledged message, exactly once
