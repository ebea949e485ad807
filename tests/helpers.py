"""Shared helpers for the test suite: configs in tmp_path, a running app, Maildir reads."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import sys
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from mailqueue.app import MailqueueApp
from mailqueue.clock import Clock
from mailqueue.config import Config, config_from_dict
from mailqueue.queue.sqlstore import SqlQueueStore

BASIC = "basic.example"
EXCHANGE = "exchange.example"


def make_config(tmp_path: Path, **sections: Any) -> Config:
    """A config on a free port with a SQLite file and two Maildir stores in ``tmp_path``."""
    data: dict[str, Any] = {
        "smtp": {"host": "127.0.0.1", "port": 0, "hostname": "mx.test",
                 "max_message_size": 64 * 1024, "max_recipients": 5, "shutdown_grace": 2},
        "queue": {"url": f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}",
                  "retry": {"initial_delay": 60, "jitter": 0}},
        "delivery": {"poll_interval": 0.2, "batch_size": 50},
        "stores": [
            {"name": "basic", "path": str(tmp_path / "mail" / "basic"), "domains": [BASIC]},
            {"name": "hosted-exchange", "path": str(tmp_path / "mail" / "hosted-exchange"),
             "domains": [EXCHANGE], "mailboxes": ["carol", "dave"]},
        ],
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return config_from_dict(data, "test-config")


@contextlib.asynccontextmanager
async def running(config: Config, clock: Clock | None = None,
                  **kwargs: Any) -> AsyncIterator[MailqueueApp]:
    """Run an app in this event loop; always stop it, under a timeout."""
    app = MailqueueApp(config, clock=clock, **kwargs)
    task = asyncio.create_task(app.run())
    ready = asyncio.create_task(app.ready.wait())
    await asyncio.wait([task, ready], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises what went wrong
    try:
        yield app
    finally:
        app.stop()
        try:
            await asyncio.wait_for(task, 15)
        finally:
            ready.cancel()


def maildir_files(root: Path, address: str) -> list[Path]:
    local, _, domain = address.partition("@")
    box = root / domain / local
    return sorted(p for sub in ("new", "cur") if (box / sub).is_dir()
                  for p in (box / sub).iterdir())


def read_messages(root: Path, address: str) -> list[EmailMessage]:
    out = []
    for path in maildir_files(root, address):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        out.append(msg)
    return out


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name == "new")


def message(subject: str, body: str = "hello", message_id: str | None = None) -> str:
    mid = message_id or f"<{subject.replace(' ', '-')}@test>"
    return f"From: a@src.test\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n\r\n{body}\r\n"


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll ``predicate`` (sync or async) until true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def opened_store(url: str) -> AsyncIterator[SqlQueueStore]:
    """A :class:`SqlQueueStore` on ``url``, opened, and closed on the way out."""
    store = SqlQueueStore(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def cli_config(tmp_path: Path, config: Config) -> Path:
    """A config file for CLI commands on ``config``'s queue and make_config's two stores."""
    path = tmp_path / "mq.toml"
    path.write_text(
        f'[queue]\nurl = "{config.queue.url}"\n'
        f'[[stores]]\nname = "basic"\npath = "{tmp_path / "mail" / "basic"}"\n'
        'domains = ["basic.example"]\n'
        f'[[stores]]\nname = "hosted-exchange"\npath = "{tmp_path / "mail" / "hosted-exchange"}"\n'
        'domains = ["exchange.example"]\n')
    return path


async def run_cli(config_file: Path, *args: str) -> str:
    """``mailqueue ARGS -c CONFIG_FILE`` in a child process; its output (it must succeed)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailqueue", *args, "-c", str(config_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()
