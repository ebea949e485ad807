"""A window ended from the CLI drains the queue into a real Dovecot over LMTP.

``mailqueue serve`` runs in a process of its own with store ``basic`` on the LMTP port of
a private Dovecot (:mod:`mailqueue.testing.dovecot`). Mail sent while the window holds
the store is queued; Dovecot sees nothing. ``mailqueue window end --wait`` ends it and waits for the
drain; then every message is in its mailbox once, by the files Dovecot wrote and by
``doveadm``, and ``mailqueue verify`` (reading the store's ``verify_path``) says OK.
The default suite drains 200 messages; the drill, 1,000.
"""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailqueue.testing.dovecot import Dovecot
from tests import served
from tests.served import free_port, start, wait_listening

pytestmark = pytest.mark.usefixtures("dovecot_installed")

BASIC = "basic.example"
MAILBOXES = 100
SENDERS = 4


def write_config(tmp_path: Path, port: int, dovecot: Dovecot) -> Path:
    """Store ``basic`` on Dovecot's LMTP port, inside window ``upgrade`` (planned an hour
    ago, for two days)."""
    now = datetime.now(UTC)
    return served.write_config(tmp_path, port, {"hosted-exchange": "exchange.example"}, f"""
[[stores]]
name = "basic"
kind = "lmtp"
hosts = ["{dovecot.lmtp_host}"]
verify_path = "{dovecot.mail_root}"
domains = ["{BASIC}"]

[[windows]]
name = "upgrade"
stores = ["basic"]
start = "{(now - timedelta(hours=1)).isoformat(timespec='seconds')}"
end = "{(now + timedelta(hours=48)).isoformat(timespec='seconds')}"
""")


def mailqueue(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailqueue", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def send_share(port: int, numbers: range) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        for n in numbers:
            rcpt = f"user{n % MAILBOXES}@{BASIC}"
            client.sendmail("someone@src.test", [rcpt],
                            f"Subject: note {n}\r\nMessage-ID: <n{n}@src.test>\r\n\r\n"
                            f"message {n}\r\n".encode())


async def drain_into_dovecot(tmp_path: Path, count: int) -> None:
    with Dovecot() as dovecot:
        port = free_port()
        config = write_config(tmp_path, port, dovecot)
        server = start(config)
        try:
            await wait_listening(port, server)
            with ThreadPoolExecutor(SENDERS) as pool:
                shares = [range(i, count, SENDERS) for i in range(SENDERS)]
                await asyncio.gather(*(asyncio.wrap_future(pool.submit(send_share, port, s))
                                       for s in shares))
            assert not any(dovecot.mail_root.iterdir())  # held by the window
            ended = await asyncio.to_thread(mailqueue, "window", "end", "upgrade", "--wait",
                                            "--timeout", "2m", "-c", str(config))
            assert ended.returncode == 0, ended.stdout + ended.stderr
            verified = await asyncio.to_thread(mailqueue, "verify", "-c", str(config))
            assert verified.returncode == 0, verified.stdout + verified.stderr
            assert "OK: nothing lost, nothing delivered twice" in verified.stdout
            assert f"accepted {count} = delivered {count} + bounced 0" in verified.stdout
        finally:
            server.terminate()
            await asyncio.to_thread(server.wait, 15)
        expected = Counter(f"user{n % MAILBOXES}@{BASIC}" for n in range(count))
        for address, copies in expected.items():
            assert len(dovecot.files(address)) == copies, address
        for address in list(expected)[:5]:  # and as Dovecot itself counts them
            assert dovecot.count(address) == expected[address]
            assert len(set(dovecot.queue_ids(address))) == expected[address]


async def test_a_window_ended_from_the_cli_drains_into_dovecot(tmp_path: Path) -> None:
    await drain_into_dovecot(tmp_path, 200)


@pytest.mark.drill
async def test_a_thousand_messages_drain_into_dovecot_each_once(tmp_path: Path) -> None:
    await drain_into_dovecot(tmp_path, 1000)
