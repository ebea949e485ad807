"""Node states on a served instance: ``mailqueue node`` against a running ``mailqueue serve``.

A store's ``nodes = N`` shards its mailboxes over ``STORE-1`` .. ``STORE-N``; a node set down
from the CLI defers the deliveries to its mailboxes with the node's reason, and set up again
lets them through at once (not at their next retry). ``node set`` and ``node list`` know the
configured nodes; a name that is not one of them is one line and stores nothing.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from mailqueue.cli import main
from mailqueue.config import load_config
from mailqueue.control.nodes import NodeMode, node_index
from mailqueue.errors import ConfigError
from mailqueue.queue.values import EventKind, RecipientState
from mailqueue.testing.harness import AsyncMailqueue, NotDrainedError
from mailqueue.testing.options import MailqueueOptions
from tests.helpers import maildir_files, opened_store, running, wait_for
from tests.served import free_port, start, wait_listening

BASIC = "basic.example"


def on_node(index: int, count: int = 3, domain: str = BASIC) -> str:
    """The first ``userN@domain`` whose mailbox lives on node ``index`` (0-based)."""
    return next(a for a in (f"user{i}@{domain}" for i in range(1000))
                if node_index(a, count) == index)


def write_config(tmp_path: Path, url: str, *, port: int = 0, admin_port: int | None = None,
                 basic_nodes: int | None = 3) -> Path:
    """``mq.toml``: store ``basic`` (``basic_nodes`` nodes; the key left out for None) and
    store ``hosted-exchange`` with the default one node; retries a minute apart."""
    nodes = "" if basic_nodes is None else f"nodes = {basic_nodes}\n"
    admin = "" if admin_port is None else f"[admin]\nport = {admin_port}\n"
    path = tmp_path / "mq.toml"
    path.write_text(f"""
[smtp]
port = {port}
hostname = "mx.test"
[queue]
url = "{url}"
[queue.retry]
initial_delay = "1m"
jitter = 0
[delivery]
poll_interval = 0.2
[logging]
level = "warning"
{admin}
[[stores]]
name = "basic"
path = "{tmp_path / 'mail' / 'basic'}"
domains = ["{BASIC}"]
{nodes}
[[stores]]
name = "hosted-exchange"
path = "{tmp_path / 'mail' / 'hosted-exchange'}"
domains = ["exchange.example"]
""")
    return path


async def mailqueue(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m mailqueue ARGS`` in a process of its own."""
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "mailqueue", *args], capture_output=True,
        text=True, timeout=60, check=False)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI entry point in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def send(port: int, *recipients: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        for n, rcpt in enumerate(recipients):
            smtp.sendmail("a@src.test", [rcpt], f"Subject: to {rcpt}\r\nMessage-ID: "
                          f"<m{n}@src.test>\r\n\r\nhello\r\n")


async def admin_status(port: int, address: str) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/mailboxes/{address}/messages") as response:
        return response.status, json.loads(await response.text())


@pytest.fixture(params=["sqlite", "postgres"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def served(tmp_path: Path, queue_url: str) -> AsyncIterator[tuple[Path, int, int]]:
    """A real ``mailqueue serve`` with basic on 3 nodes and the admin endpoint on;
    (config path, SMTP port, admin port). Always stopped."""
    port, admin_port = free_port(), free_port()
    path = write_config(tmp_path, queue_url, port=port, admin_port=admin_port)
    proc = start(path)
    try:
        await wait_listening(port, proc)
        yield path, port, admin_port
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 5)


async def test_served_node_down_defers_its_mail_and_up_delivers_it_at_once(
        tmp_path: Path, served: tuple[Path, int, int]) -> None:
    path, port, admin_port = served
    config = load_config(path)
    root = config.store("basic").path
    down, other = on_node(0), on_node(1)

    result = await mailqueue("node", "set", "basic-1", "down", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "set basic-1 down"
    # The server follows within a second: its mailbox access says so first.
    await wait_for(lambda: _status_is(admin_port, down, 503), timeout=5)
    assert (await admin_status(admin_port, down))[1] == {
        "error": "mailbox node down", "store": "basic", "node": "basic-1",
        "reason": "Mailbox unavailable: its node basic-1 is down; please try again later"}
    assert (await admin_status(admin_port, other))[0] == 404  # up, and no mail yet

    await asyncio.to_thread(send, port, down, other)
    await wait_for(lambda: len(maildir_files(root, other)) == 1, timeout=10)
    async with opened_store(config.queue.url) as store:
        async def deferred() -> bool:
            rcpts = [r for e in await store.ledger() for r in e.recipients
                     if r.address == down]
            return bool(rcpts) and rcpts[0].last_error == "node basic-1 is down"
        await wait_for(deferred, timeout=10)
        assert maildir_files(root, down) == []

        result = await mailqueue("node", "set", "basic-1", "up", "-c", str(path))
        assert result.returncode == 0, result.stderr
        # Retries are a minute apart: delivered in seconds means the node's return let
        # its mail through, not the retry schedule.
        await wait_for(lambda: len(maildir_files(root, down)) == 1, timeout=5)

        async def settled() -> bool:
            return {r.address: r.state for e in await store.ledger() for r in e.recipients} \
                == {down: RecipientState.DELIVERED, other: RecipientState.DELIVERED}
        await wait_for(settled, timeout=5)
        entry = next(e for e in await store.ledger()
                     if any(r.address == down for r in e.recipients))
        detail = await store.message(entry.queue_id)
        assert detail is not None
        assert [(e.kind, e.detail) for e in detail.events if e.kind == EventKind.RETRY] == \
            [("retry", "node basic-1 is up")]
    assert (await admin_status(admin_port, down))[0] == 200


async def _status_is(port: int, address: str, status: int) -> bool:
    try:
        return (await admin_status(port, address))[0] == status
    except aiohttp.ClientError:
        return False


async def test_a_store_without_nodes_key_is_one_node(tmp_path: Path) -> None:
    """With no ``nodes`` key a store is one node, ``STORE-1``: down defers all its mail."""
    path = write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}",
                        basic_nodes=None)
    config = load_config(path)
    async with running(config) as app:
        result = await mailqueue("node", "set", "basic-1", "down", "-c", str(path))
        assert result.returncode == 0, result.stderr
        await wait_for(lambda: "basic-1" in app.control.nodes(), timeout=5)
        await asyncio.to_thread(send, app.port or 0, "ann@basic.example",
                                "carol@exchange.example")
        exchange = config.store("hosted-exchange").path
        await wait_for(lambda: len(maildir_files(exchange, "carol@exchange.example")) == 1)
        await wait_for(lambda: app.worker.deferred >= 1)
        assert maildir_files(config.store("basic").path, "ann@basic.example") == []
        outcomes = {o.address: o for o in await app.queue.outcomes()}
        assert outcomes["ann@basic.example"].last_error == "node basic-1 is down"

        result = await mailqueue("node", "set", "basic-1", "up", "-c", str(path))
        assert result.returncode == 0, result.stderr
        await wait_for(lambda: len(maildir_files(config.store("basic").path,
                                                 "ann@basic.example")) == 1, timeout=5)


async def test_only_the_returning_nodes_mail_goes_at_once(tmp_path: Path,
                                                         queue_url: str) -> None:
    """Two nodes down, one back: its mail is delivered now; the other's keeps waiting for
    its retry (the clock does not move), and no attempt is spent on it."""
    config = load_config(write_config(tmp_path, queue_url))
    one, two = on_node(0), on_node(1)
    async with AsyncMailqueue(config) as mq:
        await mq.node_down("basic", 1)
        await mq.node_down("basic", 2)
        await asyncio.to_thread(send, mq.port, one, two)
        await wait_for(lambda: mq.app.worker.deferred == 2)
        await mq.node_up("basic", 1)
        await wait_for(lambda: mq.app.worker.delivered == 1, timeout=5)
        outcomes = {o.address: o for o in await mq.app.queue.outcomes()}
        assert outcomes[one].state is RecipientState.DELIVERED
        assert outcomes[two].state is RecipientState.QUEUED
        assert (outcomes[two].attempts, outcomes[two].last_error) == (1, "node basic-2 is down")
        await asyncio.sleep(0.5)  # a few polls: nothing else is due
        assert (mq.app.worker.delivered, mq.app.worker.deferred) == (1, 2)
        await mq.node_up("basic", 2)
        await mq.drained(timeout=5)
        (await mq.ledger()).assert_no_loss()


@pytest.mark.parametrize(("name", "why"), [
    ("basic-7", "(basic has nodes basic-1..basic-3)"),
    ("basic-0", "(basic has nodes basic-1..basic-3)"),
    ("basic-01", "(basic has nodes basic-1..basic-3)"),
    ("basic-99999999999999999999", "(basic has nodes basic-1..basic-3)"),
    ("hosted-exchange-2", "(hosted-exchange has one node: hosted-exchange-1)"),
    ("ghost-1", "(known: basic-1..basic-3, hosted-exchange-1)"),
    ("basic", "(known: basic-1..basic-3, hosted-exchange-1)"),
    ("basic-x", "(basic has nodes basic-1..basic-3)"),
    ("", "(known: basic-1..basic-3, hosted-exchange-1)"),
])
async def test_an_unknown_node_is_one_line_and_stores_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, why: str) -> None:
    path = write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}")
    code, out, err = await asyncio.to_thread(cli, capsys, "node", "set", name, "down",
                                             "-c", str(path))
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"mailqueue: error: no node {name!r} {why}"]
    assert not (tmp_path / "queue.db").exists(), "nothing is stored, not even a queue"


async def test_an_unknown_node_leaves_an_existing_queue_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}"
    path = write_config(tmp_path, url)
    async with opened_store(url):
        pass
    code, _, err = await asyncio.to_thread(cli, capsys, "node", "set", "basic-4", "down",
                                           "-c", str(path))
    assert code == 1 and "no node 'basic-4'" in err
    async with opened_store(url) as store:
        assert await store.nodes() == []


async def test_node_list_shows_every_configured_node(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}"
    path = write_config(tmp_path, url)
    async with opened_store(url):  # the server's queue
        pass
    code, out, err = await asyncio.to_thread(cli, capsys, "node", "list", "-c", str(path))
    assert code == 0, err
    assert out.splitlines() == ["basic-1 up", "basic-2 up", "basic-3 up", "hosted-exchange-1 up"]

    code, _, err = await asyncio.to_thread(cli, capsys, "node", "set", "basic-2", "flaky",
                                           "--fail-next", "2", "-c", str(path))
    assert code == 0, err
    code, out, err = await asyncio.to_thread(cli, capsys, "node", "list", "--json",
                                             "-c", str(path))
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["name"], r["store"], r["mode"]) for r in rows] == [
        ("basic-1", "basic", "up"), ("basic-2", "basic", "flaky"), ("basic-3", "basic", "up"),
        ("hosted-exchange-1", "hosted-exchange", "up")]
    assert rows[1]["fail_next"] == 2


@pytest.mark.parametrize(("nodes", "message"), [
    (0, "stores[0].nodes: Input should be greater than or equal to 1"),
    (1001, "stores[0].nodes: Input should be less than or equal to 1000"),
    ('"3"', "stores[0].nodes: Input should be a valid integer"),
])
async def test_a_bad_nodes_key_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           nodes: object, message: str) -> None:
    path = write_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}",
                        basic_nodes=None)
    path.write_text(path.read_text().replace('domains = ["basic.example"]\n',
                                             f'domains = ["basic.example"]\nnodes = {nodes}\n'))
    code, out, err = await asyncio.to_thread(cli, capsys, "node", "list", "-c", str(path))
    assert code == 1 and out == ""
    assert err.splitlines() == [f"mailqueue: error: {path}: {message}"]


async def test_harness_nodes_become_the_configs(tmp_path: Path) -> None:
    """The pytest harness's ``nodes`` option is the config's ``nodes``: the same shared
    stores, node names checked the same way, and a node's return lets its mail through."""
    config = MailqueueOptions(nodes={"mail": 2}).build(tmp_path)
    assert config.store("mail").nodes == 2
    async with AsyncMailqueue(config) as mq:
        address = on_node(1, 2, "example.com")
        assert mq.node_of(address) == 2
        await mq.node_down("mail", 2)
        await asyncio.to_thread(send, mq.port, address)
        await wait_for(lambda: mq.app.worker.deferred >= 1)
        with pytest.raises(NotDrainedError, match=rf"-> {address}: its node is down "
                                                  r"\(node_up\('mail', 2\)\)"):
            await mq.drained(timeout=0.2)
        await mq.node_up("mail", 2)
        await mq.drained(timeout=5)  # no advance(): the retry is not waited for
        assert len(await mq.mailbox(address).messages()) == 1
        with pytest.raises(ValueError, match=r"no node 'mail-3' \(mail has nodes "
                                              r"mail-1\.\.mail-2\)"):
            await mq.node_down("mail", 3)
    one = MailqueueOptions().build(tmp_path / "one")
    async with AsyncMailqueue(one, nodes=None) as mq:
        assert (await mq.node_down("mail", 1)).mode is NodeMode.DOWN
    with pytest.raises(ConfigError, match=r"nodes: unknown store 'ghost' \(known: mail\)"):
        MailqueueOptions(nodes={"ghost": 2}).build(tmp_path / "ghost")
