"""Helpers for the operator-toolkit tests: a config file the CLI reads, running the CLI."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

from mailqueue.config import Config, load_config

CONFIG_TOML = """
[smtp]
host = "127.0.0.1"
port = 0
hostname = "mx.test"
max_message_size = 65536
max_recipients = 5
shutdown_grace = 2

[queue]
url = "sqlite+aiosqlite:///{root}/queue.db"
{queue_extra}

[queue.retry]
initial_delay = 60
jitter = 0

[delivery]
poll_interval = 0.2
batch_size = {batch}
{delivery_extra}

[logging]
level = "warning"

{admin}

[[stores]]
name = "basic"
path = "{root}/mail/basic"
domains = ["basic.example"]

[[stores]]
name = "hosted-exchange"
path = "{root}/mail/hosted-exchange"
domains = ["exchange.example"]
mailboxes = ["carol", "dave"]
"""


def write_config(root: Path, queue_extra: str = "", delivery_extra: str = "",
                 admin: str = "", batch: int = 50) -> tuple[Path, Config]:
    """Write a config file under ``root`` and return its path and the loaded config."""
    path = root / "mq.toml"
    path.write_text(CONFIG_TOML.format(root=root, queue_extra=queue_extra,
                                       delivery_extra=delivery_extra, admin=admin,
                                       batch=batch))
    return path, load_config(path, environ={})


def cli(config: Path, *args: str, stdin: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mailqueue ARGS -c CONFIG`` in a child process (blocking)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILQUEUE_")}
    return subprocess.run([sys.executable, "-m", "mailqueue", *args, "-c", str(config)],
                          input=stdin, capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


async def acli(config: Path, *args: str, stdin: str | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """:func:`cli` in a thread, so an in-process server keeps running meanwhile."""
    return await asyncio.to_thread(cli, config, *args, stdin=stdin, timeout=timeout)


def parse(path: Path) -> EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


class Result:
    """What a command printed and how it exited."""

    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.returncode = code
        self.stdout = stdout
        self.stderr = stderr


def _invoke(config: Path, args: tuple[str, ...], stdin: str | None) -> Result:
    from click.testing import CliRunner

    from mailqueue.cli import cli as command

    runner = CliRunner()
    result = runner.invoke(command, [*args, "-c", str(config)], input=stdin,
                           catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += f"mailqueue: error: {result.exception}\n"
    return Result(result.exit_code, result.stdout, stderr)


async def run_cli(config: Path, *args: str, stdin: str | None = None) -> Result:
    """Run a command in this process (in a thread, with its own event loop): the same
    code as the ``mailqueue`` program without a child's start-up time."""
    return await asyncio.to_thread(_invoke, config, args, stdin)
