"""Mail clients reading their mailboxes through the Dovecot ``mailqueue dovecot config``
writes, while windows open and close and nodes go down.

A real ``mailqueue serve`` runs in a process of its own (admin endpoint on, a users file of
Argon2id hashes, Maildirs given to a mail user), the generated Dovecot serves its Maildirs,
and ``imaplib`` and ``poplib`` are the clients. The windows and node states are changed with
the ``mailqueue`` command, as an operator changes them.

Dovecot delays the next login from an address after a failed one (2 s, 4 s, ... up to 15 s),
and a login refused for maintenance counts as failed: every connection here comes from a
loopback address of its own (127.0.x.y), so no login waits for another's penalty.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import imaplib
import itertools
import json
import os
import poplib
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from argon2 import PasswordHasher
from prometheus_client.parser import text_string_to_metric_families

from mailqueue.config import Config, load_config
from mailqueue.control.nodes import node_of
from mailqueue.smtp.users import editing
from mailqueue.testing.dovecot import AccessDovecot, require_dovecot_access
from tests.cli_run import Mq, cli_runner
from tests.served import free_port, start, wait_listening
from tests.tlshelp import hashed

T = TypeVar("T")

PASSWORD = "correct horse battery"
SENDER = "sender@src.test"
ALICE, BOB, ERIN = "alice@basic.example", "bob@basic.example", "erin@basic.example"
CAROL, FRANK = "carol@exchange.example", "frank@exchange.example"
# Three mailboxes of store basic (three nodes), one on each node: NODES[i] is on basic-(i+1).
NODES = [next(a for a in (f"user{n}@basic.example" for n in itertools.count())
              if node_of("basic", 3, a) == f"basic-{i + 1}") for i in range(3)]
USERS = [ALICE, BOB, ERIN, CAROL, FRANK, *NODES]
# Dovecot serves no mail as root: when the tests run as root, the Maildirs go to uid 5000.
OWNER = 'owner = "5000"\n' if os.geteuid() == 0 else ""

IMAP_OK, POP3_OK = "OK", "+OK Logged in."
IMAP_BAD_PASSWORD = "[AUTHENTICATIONFAILED] Authentication failed."
POP3_BAD_PASSWORD = "-ERR [AUTH] Authentication failed."

# A loopback address of its own for every connection (see the module's docstring).
_SOURCES = (f"127.0.{n // 250}.{n % 250 + 2}" for n in itertools.count())


# --- clients -----------------------------------------------------------------------------

class Imap(imaplib.IMAP4):
    """imaplib's client, connecting from a loopback address no other connection used."""

    def __init__(self, port: int) -> None:
        self.source = next(_SOURCES)
        super().__init__("127.0.0.1", port, timeout=20)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))


class Pop3(poplib.POP3):
    """poplib's client, connecting from a loopback address no other connection used."""

    def __init__(self, port: int) -> None:
        self.source = next(_SOURCES)
        super().__init__("127.0.0.1", port, timeout=20)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))


def imap_login(port: int, user: str, password: str = PASSWORD) -> str:
    """What an IMAP client hears when it logs in: ``OK``, or the text of the ``NO``."""
    client = Imap(port)
    try:
        typ, _ = client.login(user, password)
        return str(typ)
    except imaplib.IMAP4.error as exc:
        return _text(exc.args[0])
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            client.logout()


def pop3_login(port: int, user: str, password: str = PASSWORD) -> str:
    """What a POP3 client hears when it logs in: the ``+OK`` line, or the ``-ERR`` line."""
    client = Pop3(port)
    try:
        client.user(user)
        return _text(client.pass_(password))
    except poplib.error_proto as exc:
        return _text(exc.args[0])
    finally:
        with contextlib.suppress(poplib.error_proto, OSError):
            client.quit()


def imap_inbox(port: int, user: str) -> list[bytes]:
    """Every message in ``user``'s INBOX, as IMAP ``FETCH BODY.PEEK[]`` returns it."""
    client = Imap(port)
    try:
        client.login(user, PASSWORD)
        typ, count = client.select("INBOX", readonly=True)
        assert typ == "OK", count
        if count[0] == b"0":
            return []
        typ, data = client.fetch("1:*", "(BODY.PEEK[])")
        assert typ == "OK", data
        return [part[1] for part in data if isinstance(part, tuple)]
    finally:
        client.logout()


def pop3_messages(port: int, user: str) -> list[bytes]:
    """Every message POP3 lists for ``user``, as ``RETR`` returns it (unstuffed)."""
    client = Pop3(port)
    try:
        client.user(user)
        client.pass_(PASSWORD)
        count, _ = client.stat()
        return [b"".join(line + b"\r\n" for line in client.retr(i)[1])
                for i in range(1, count + 1)]
    finally:
        client.quit()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def maintenance(store: str, window: str, until: str) -> str:
    """The reason a client shows while ``window`` holds ``store``."""
    return (f"Mailbox maintenance: {store} is being upgraded (window {window}) until "
            f"{until}; please try again later")


def node_down(node: str) -> str:
    """The reason a client shows while ``node`` is down."""
    return f"Mailbox unavailable: its node {node} is down; please try again later"


def poll(check: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05) -> T:
    """The first result of ``check`` that is not None, asking until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing within {timeout}s")
        time.sleep(interval)


# --- the served mailqueue and its Dovecots ------------------------------------------------

def write_config(root: Path, smtp_port: int, admin_port: int) -> Path:
    """``mq.toml`` in ``root``: TLS and a users file (AUTH needs both, and Dovecot reads the
    same users), the admin endpoint on ``admin_port``, store ``basic`` on three nodes and
    store ``hosted-exchange``."""
    path = root / "mq.toml"
    path.write_text(f"""
[smtp]
port = {smtp_port}
hostname = "mx.test"
tls = "self-signed"
users_file = "{root / 'users'}"
[queue]
url = "sqlite+aiosqlite:///{root / 'queue.db'}"
[delivery]
poll_interval = 0.2
[admin]
port = {admin_port}
[logging]
level = "warning"

[[stores]]
name = "basic"
path = "{root / 'mail' / 'basic'}"
domains = ["basic.example"]
nodes = 3
{OWNER}
[[stores]]
name = "hosted-exchange"
path = "{root / 'mail' / 'hosted-exchange'}"
domains = ["exchange.example"]
{OWNER}""")
    return path


def add_users(path: Path, names: list[str]) -> None:
    """``names`` in the users file at ``path``, all with PASSWORD. ALICE's hash is the one
    ``mailqueue user add`` makes; the others' are Argon2id at its lowest cost, since Dovecot
    checks the hash at every login and Argon2id is slow on purpose."""
    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    with editing(path, create=True) as users:
        for name in names:
            users[name] = hashed(PASSWORD) if name == ALICE else cheap


@dataclasses.dataclass
class Served:
    """A ``mailqueue serve`` in its own process, with its config and ports."""

    root: Path
    config_path: Path
    config: Config
    smtp_port: int
    admin_port: int
    process: subprocess.Popen[bytes]

    def mailbox(self, address: str) -> tuple[int, Any]:
        """``GET /mailboxes/ADDRESS/messages``: its status and JSON body."""
        url = f"http://127.0.0.1:{self.admin_port}/mailboxes/{address}/messages"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())

    def closed(self, address: str) -> dict[str, Any]:
        """The ``503`` body for ``address``, once the server has seen it closed."""
        def refused() -> dict[str, Any] | None:
            status, body = self.mailbox(address)
            return body if status == 503 else None

        return poll(refused)

    def opened(self, address: str) -> None:
        """Wait until the server has seen ``address`` open again (``200``, or ``404`` for
        a mailbox that has no Maildir yet)."""
        poll(lambda: True if self.mailbox(address)[0] != 503 else None)

    def admin_answers(self) -> bool | None:
        try:
            self.mailbox(CAROL)
        except urllib.error.URLError:
            return None
        return True

    def send(self, recipients: list[str], subject: str) -> tuple[str, bytes]:
        """One message over SMTP: its queue id and its bytes as sent."""
        body = (f"From: <{SENDER}>\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
                f"Message-ID: <{subject}@src.test>\r\n\r\nHello {subject},\r\n"
                ".a line that starts with a dot\r\n\r\n  indented, then the end\r\n").encode()
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=20) as smtp:
            smtp.ehlo("client.test")
            smtp.mail(SENDER)
            for recipient in recipients:
                assert smtp.rcpt(recipient)[0] == 250
            code, reply = smtp.data(body)
        assert code == 250, reply
        return reply.decode().split()[-1], body  # "2.0.0 Ok: queued as ID"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextlib.contextmanager
def served(users: list[str]) -> Iterator[Served]:
    """A served mailqueue with ``users`` in its users file, stopped and removed after."""
    # Not pytest's tmp_path: only root may pass its parents, and Dovecot reads the Maildirs
    # as the mail user.
    root = Path(tempfile.mkdtemp(prefix="mq-acc-"))
    root.chmod(0o711)
    smtp_port, admin_port = free_port(), free_port()
    config_path = write_config(root, smtp_port, admin_port)
    add_users(root / "users", users)
    process = start(config_path)
    server = Served(root, config_path, load_config(config_path), smtp_port, admin_port,
                    process)
    try:
        asyncio.run(wait_listening(smtp_port, process))
        poll(server.admin_answers)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclasses.dataclass
class Rig:
    """One served mailqueue and two Dovecots for it: ``dovecot`` checks passwords against
    the users file, ``any_password`` lets any password through (its logins cost no
    Argon2id, so it can be polled)."""

    server: Served
    dovecot: AccessDovecot
    any_password: AccessDovecot

    @property
    def imap(self) -> int:
        return self.dovecot.imap_port

    @property
    def pop3(self) -> int:
        return self.dovecot.pop3_port


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    require_dovecot_access()
    with served(USERS) as server, \
            AccessDovecot(server.config, users_file=server.root / "users") as dovecot, \
            AccessDovecot(server.config) as any_password:
        yield Rig(server, dovecot, any_password)


@pytest.fixture
def mq(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    return cli_runner(capsys, monkeypatch)


@pytest.fixture(autouse=True)
def _every_mailbox_open_after(request: pytest.FixtureRequest, mq: Mq) -> Iterator[None]:
    """After each test of the shared rig: no window active and every node up (the test
    normally leaves it so; this keeps a failed test from failing the next)."""
    yield
    if "rig" not in request.fixturenames:
        return
    server: Served = request.getfixturevalue("rig").server
    config = str(server.config_path)
    for line in mq("window", "list", "--json", "-c", config).out.splitlines():
        window = json.loads(line)
        if window["state"] == "active":
            mq("window", "end", window["name"], "-c", config)
    for line in mq("node", "list", "--json", "-c", config).out.splitlines():
        node = json.loads(line)
        if node["mode"] != "up":
            mq("node", "set", node["name"], "up", "-c", config)
    for address in (ALICE, CAROL, *NODES):
        server.opened(address)


def run_ok(mq: Mq, *args: str | Path) -> str:
    result = mq(*args)
    assert result.code == 0, result.err
    return result.out


def delivered_ids(mq: Mq, server: Served, address: str) -> list[str]:
    """The queue ids of the messages the queue records as delivered to ``address``."""
    out = run_ok(mq, "queue", "list", "--json", "--all", "--recipient", address,
                 "-c", server.config_path)
    return sorted(message["queue_id"] for message in map(json.loads, out.splitlines())
                  for recipient in message["recipients"]
                  if recipient["address"] == address and recipient["state"] == "delivered")


def assert_inbox_holds(rig: Rig, address: str, sent: dict[str, bytes],
                       delivered: list[str]) -> None:
    """``address``'s INBOX, over IMAP and over POP3, holds one copy of each delivered
    message and nothing else: each as it was sent, byte for byte, under the trace headers
    mailqueue adds at delivery (``mailqueue.mailbox.maildir.render``)."""
    assert sorted(sent) == delivered
    for read in (imap_inbox(rig.imap, address), pop3_messages(rig.pop3, address)):
        found: dict[str, bytes] = {}
        for message in read:
            trace, _, rest = message.partition(b"\r\nX-Mailqueue-Id: ")
            queue_id, _, original = rest.partition(b"\r\n")
            assert trace.startswith(f"Return-Path: <{SENDER}>\r\nDelivered-To: {address}\r\n"
                                    "Received: from client.test (127.0.0.1)\r\n".encode())
            assert queue_id.decode() not in found, "a message twice"
            found[queue_id.decode()] = original
        assert found == sent


# --- the cases ---------------------------------------------------------------------------

def test_a_window_refuses_its_stores_logins_and_the_mail_is_there_after(
        rig: Rig, mq: Mq) -> None:
    server = rig.server
    config = server.config_path
    run_ok(mq, "window", "start", "upgrade", "--stores", "basic", "--for", "2h", "-c", config)
    [window] = [w for w in map(json.loads, run_ok(mq, "window", "list", "--json", "-c", config)
                               .splitlines()) if w["name"] == "upgrade"]
    server.closed(ALICE)
    reason = maintenance("basic", "upgrade", window["end"])
    assert imap_login(rig.imap, ALICE) == f"[ALERT] {reason}"
    assert pop3_login(rig.pop3, ALICE) == f"-ERR [AUTH] {reason}"
    # the other store is not in the window: its users read mail throughout
    assert imap_login(rig.imap, CAROL) == IMAP_OK
    assert pop3_login(rig.pop3, CAROL) == POP3_OK

    to_alice = dict(server.send([ALICE], f"during-{n}") for n in range(3))
    both_id, both = server.send([ALICE, CAROL], "both")
    to_alice[both_id] = both
    to_carol = {both_id: both}
    # carol's copy is delivered now (her store is open), and she can read it now
    poll(lambda: True if delivered_ids(mq, server, CAROL) == [both_id] else None)
    assert_inbox_holds(rig, CAROL, to_carol, delivered_ids(mq, server, CAROL))
    assert delivered_ids(mq, server, ALICE) == []
    assert imap_login(rig.imap, ALICE) == f"[ALERT] {reason}"

    run_ok(mq, "window", "end", "upgrade", "--wait", "--timeout", "30s", "-c", config)
    server.opened(ALICE)
    assert imap_login(rig.imap, ALICE) == IMAP_OK
    assert pop3_login(rig.pop3, ALICE) == POP3_OK
    assert_inbox_holds(rig, ALICE, to_alice, delivered_ids(mq, server, ALICE))


def test_a_node_down_refuses_only_its_mailboxes(rig: Rig, mq: Mq) -> None:
    config = rig.server.config_path
    run_ok(mq, "node", "set", "basic-2", "down", "-c", config)
    rig.server.closed(NODES[1])
    reason = node_down("basic-2")
    assert imap_login(rig.imap, NODES[1]) == f"[ALERT] {reason}"
    assert pop3_login(rig.pop3, NODES[1]) == f"-ERR [AUTH] {reason}"
    for address in (NODES[0], NODES[2], CAROL):  # the other nodes, the other store
        assert imap_login(rig.imap, address) == IMAP_OK
        assert pop3_login(rig.pop3, address) == POP3_OK

    run_ok(mq, "node", "set", "basic-2", "up", "-c", config)
    rig.server.opened(NODES[1])
    assert imap_login(rig.imap, NODES[1]) == IMAP_OK
    assert pop3_login(rig.pop3, NODES[1]) == POP3_OK


def test_a_wrong_password_is_an_authentication_failure_in_a_window_or_not(
        rig: Rig, mq: Mq) -> None:
    def wrong_everywhere() -> None:
        for user in (BOB, "nobody@basic.example"):  # a wrong password; no such user
            assert imap_login(rig.imap, user, "wrong") == IMAP_BAD_PASSWORD
            assert pop3_login(rig.pop3, user, "wrong") == POP3_BAD_PASSWORD

    wrong_everywhere()
    assert imap_login(rig.imap, BOB) == IMAP_OK

    run_ok(mq, "window", "start", "passwords", "--stores", "basic", "--for", "1h",
           "-c", rig.server.config_path)
    until = rig.server.closed(BOB)["until"]
    wrong_everywhere()  # not "maintenance": the password is checked first
    assert imap_login(rig.imap, BOB) == f"[ALERT] {maintenance('basic', 'passwords', until)}"


def test_a_window_started_from_the_cli_refuses_new_logins_within_a_second(rig: Rig) -> None:
    port = rig.any_password.imap_port
    assert imap_login(port, FRANK) == IMAP_OK
    started = subprocess.run(
        [sys.executable, "-m", "mailqueue", "window", "start", "quick", "--stores",
         "hosted-exchange", "--for", "1h", "-c", str(rig.server.config_path)],
        capture_output=True, text=True, timeout=60, check=False)
    returned = time.monotonic()
    assert started.returncode == 0, started.stderr
    attempts: list[float] = []  # when each login began, after the CLI returned

    def refused() -> str | None:
        attempts.append(time.monotonic() - returned)
        said = imap_login(port, FRANK)
        return None if said == IMAP_OK else said

    answer = poll(refused, timeout=5, interval=0.02)
    assert answer.startswith("[ALERT] Mailbox maintenance: hosted-exchange is being "
                             "upgraded (window quick)")
    # The first login begun a second or more after the CLI returned is refused (the
    # reply itself may take Dovecot a moment longer).
    assert attempts[-1] < 1.0, f"logins went through until {attempts[-1]:.2f}s after " \
                               "the CLI returned"


def test_the_http_503_and_the_login_refusal_give_one_reason(rig: Rig, mq: Mq) -> None:
    config = rig.server.config_path
    run_ok(mq, "window", "start", "agree", "--stores", "basic", "--for", "3h", "-c", config)
    body = rig.server.closed(ERIN)
    assert body["reason"] == maintenance("basic", "agree", body["until"])
    assert imap_login(rig.imap, ERIN) == f"[ALERT] {body['reason']}"
    assert pop3_login(rig.pop3, ERIN) == f"-ERR [AUTH] {body['reason']}"
    assert rig.server.mailbox(ERIN) == (503, body)  # still the same, after the logins
    run_ok(mq, "window", "end", "agree", "-c", config)
    rig.server.opened(NODES[2])

    run_ok(mq, "node", "set", "basic-3", "down", "-c", config)
    body = rig.server.closed(NODES[2])
    assert body["reason"] == node_down("basic-3")
    assert imap_login(rig.imap, NODES[2]) == f"[ALERT] {body['reason']}"
    assert pop3_login(rig.pop3, NODES[2]) == f"-ERR [AUTH] {body['reason']}"
    assert rig.server.mailbox(NODES[2]) == (503, body)
    # and each answer is counted
    url = f"http://127.0.0.1:{rig.server.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        logins = {tuple(sorted(sample.labels.items())): sample.value
                  for family in text_string_to_metric_families(response.read().decode())
                  for sample in family.samples
                  if sample.name == "mailqueue_mailbox_logins_total"}
    assert logins[(("result", "maintenance"), ("store", "basic"))] >= 2
    assert logins[(("result", "node-down"), ("store", "basic"))] >= 2


def test_logins_fail_closed_when_mailqueue_cannot_be_asked_unless_fail_open(
        mq: Mq) -> None:
    require_dovecot_access()
    with served([ALICE]) as server, AccessDovecot(server.config) as closed, \
            AccessDovecot(server.config, fail_open=True) as open_:
        for dovecot in (closed, open_):
            assert imap_login(dovecot.imap_port, ALICE) == IMAP_OK
        # fail_open opens nothing mailqueue answers for: a window still refuses
        run_ok(mq, "window", "start", "w", "--stores", "basic", "--for", "1h",
               "-c", server.config_path)
        until = server.closed(ALICE)["until"]
        assert imap_login(open_.imap_port, ALICE) == \
            f"[ALERT] {maintenance('basic', 'w', until)}"

        server.stop()  # mailqueue cannot be asked now
        # fail closed: refused, as Dovecot refuses when it cannot ask (no reason to give)
        assert imap_login(closed.imap_port, CAROL) == IMAP_BAD_PASSWORD
        assert pop3_login(closed.pop3_port, CAROL) == POP3_BAD_PASSWORD
        assert "Policy server HTTP error" in closed.log_text()
        # fail open: let in, even the mailbox whose window is still active
        for address in (CAROL, ALICE):
            assert imap_login(open_.imap_port, address) == IMAP_OK
            assert pop3_login(open_.pop3_port, address) == POP3_OK
