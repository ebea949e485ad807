"""The pytest plugin's mailbox access: ``mq.imap()`` and ``mq.pop3()`` through a real
Dovecot, used from the outside as a user would (pytester runs, nothing in their conftest).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

# Imported before any in-process run, so that each run finds them (see _warm_imports).
import mailqueue.access.dovecot
import mailqueue.smtp.users
import mailqueue.testing.access
import mailqueue.testing.dovecot  # noqa: F401
from mailqueue.errors import ConfigError
from mailqueue.testing import AsyncMailqueue, MailqueueOptions
from mailqueue.testing.dovecot import mail_owner, require_dovecot_access
from tests.integration.test_testing_plugin import ROOT, _warm_imports, run  # noqa: F401


def docs_example() -> str:
    """The mailbox access example of the docs' "Testing your own system" page."""
    page = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    match = re.search(r"```python\n(# test_mailbox_access\.py\n.*?)```", page, re.S)
    assert match, "docs/testing.md: the mailbox access example is gone"
    return match.group(1)


def test_docs_example_passes(pytester: pytest.Pytester) -> None:
    require_dovecot_access()
    pytester.makepyfile(test_mailbox_access=docs_example())
    result = run(pytester, "asyncio_mode = strict")
    result.assert_outcomes(passed=2)


HELPERS = '''
import re
import smtplib
from datetime import datetime, timedelta, timezone

import pytest

from mailqueue.testing import MailboxAccessError, MailboxAuthFailed, MailboxClosed


def send(mq, to, n):
    body = f"Subject: m{n}\\r\\nMessage-ID: <m{n}@test>\\r\\n\\r\\nbody {n}\\r\\n"
    with smtplib.SMTP(mq.host, mq.port) as smtp:
        smtp.sendmail("a@src.test", [to], body)


def inbox(client):
    """Every message of the INBOX, as IMAP FETCH gives it."""
    typ, data = client.select("INBOX")
    assert typ == "OK"
    if int(data[0]) == 0:
        return []
    typ, data = client.fetch("1:*", "(BODY.PEEK[])")
    assert typ == "OK"
    return [part[1] for part in data if isinstance(part, tuple)]


def files(mq, store, address):
    local, domain = address.split("@")
    box = mq.maildir_root(store) / domain / local
    return [f.read_bytes() for sub in ("new", "cur") for f in (box / sub).iterdir()]


def iso(ts):
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")
'''

WINDOWS = HELPERS + '''

pytestmark = pytest.mark.mailqueue(stores={"basic": ["basic.example"],
                                           "exchange": ["exchange.example"]})


def test_refused_in_the_window_then_the_inbox_holds_the_mail(mailqueue_sync):
    mq = mailqueue_sync
    window = mq.start_window(stores="basic", name="upgrade", duration=timedelta(hours=3))
    for n in range(3):
        send(mq, "alice@basic.example", n)
    with pytest.raises(MailboxClosed) as refused:
        mq.imap("alice@basic.example")
    exc = refused.value
    assert str(exc) == exc.reason == (
        f"Mailbox maintenance: basic is being upgraded (window upgrade) until "
        f"{iso(window.end)}; please try again later")
    assert exc.reply == "[ALERT] " + exc.reason
    assert (exc.address, exc.protocol, exc.kind, exc.store) == \\
        ("alice@basic.example", "imap", "maintenance", "basic")
    assert exc.window.name == "upgrade" and exc.node is None
    with pytest.raises(MailboxClosed, match="window upgrade") as by_pop3:
        mq.pop3("alice@basic.example")
    assert by_pop3.value.protocol == "pop3" and by_pop3.value.kind == "maintenance"
    assert inbox(mq.imap("carol@exchange.example")) == []  # her store is not in the window

    mq.end_window()
    mq.drained()
    client = mq.imap("alice@basic.example")
    fetched = inbox(client)
    assert sorted(m.replace(b"\\r\\n", b"\\n") for m in fetched) == \\
        sorted(f.replace(b"\\r\\n", b"\\n") for f in files(mq, "basic", "alice@basic.example"))
    ledger = mq.ledger()
    assert sorted(e.queue_id for e in ledger.entries) == sorted(
        line.split(b": ")[1].strip().decode() for m in fetched for line in m.splitlines()
        if line.startswith(b"X-Mailqueue-Id: "))
    assert len(fetched) == 3
    ledger.assert_ok()  # Dovecot's reading moved and flagged files; nothing is lost
    pop = mq.pop3("alice@basic.example")
    assert pop.stat()[0] == 3


def test_follows_the_manual_clock(mailqueue_sync):
    mq = mailqueue_sync
    mq.start_window(stores="basic", duration=timedelta(hours=2))
    extended = mq.extend_window(timedelta(hours=1))
    with pytest.raises(MailboxClosed, match=re.escape(f"until {iso(extended.end)};")):
        mq.imap("alice@basic.example")
    mq.advance(timedelta(hours=3, seconds=1))   # the planned end passes: no end_window()
    assert mq.imap("alice@basic.example").noop()[0] == "OK"


async def test_async_harness(mailqueue):
    import aiosmtplib

    await mailqueue.start_window(stores="exchange")
    await mailqueue.start_window(stores="basic", name="second")
    with pytest.raises(MailboxClosed) as refused:
        await mailqueue.imap("dave@exchange.example")
    assert refused.value.window.name == "maintenance" and refused.value.store == "exchange"
    await aiosmtplib.send("Subject: a\\r\\n\\r\\nb\\r\\n", sender="a@src.test",
                          recipients=["dave@exchange.example"], hostname=mailqueue.host,
                          port=mailqueue.port)
    await mailqueue.end_window("maintenance")
    await mailqueue.drained()
    client = await mailqueue.imap("dave@exchange.example")
    assert len(inbox(client)) == 1
    pop = await mailqueue.pop3("dave@exchange.example")
    assert pop.stat()[0] == 1
    with pytest.raises(MailboxClosed):
        await mailqueue.pop3("erin@basic.example")
    dovecot = await mailqueue.dovecot()
    assert dovecot.imap_port and dovecot.pop3_port


def test_an_address_without_a_mailbox(mailqueue_sync):
    with pytest.raises(ValueError, match="no mailbox for it"):
        mailqueue_sync.imap("alice@elsewhere.example")
'''


def test_windows(pytester: pytest.Pytester) -> None:
    require_dovecot_access()
    pytester.makepyfile(test_windows=WINDOWS)
    result = run(pytester, "asyncio_mode = auto")
    result.assert_outcomes(passed=4)


NODES = HELPERS + '''

@pytest.mark.mailqueue(nodes={"mail": 2})
def test_node_down_refuses_only_its_mailboxes(mailqueue_sync):
    mq = mailqueue_sync
    users = [f"user{n}@example.com" for n in range(12)]
    on_1 = [u for u in users if mq.node_of(u) == 1]
    on_2 = [u for u in users if mq.node_of(u) == 2]
    mq.node_down("mail", 1)
    for user in on_1[:2]:
        with pytest.raises(MailboxClosed) as refused:
            mq.imap(user)
        assert str(refused.value) == \\
            "Mailbox unavailable: its node mail-1 is down; please try again later"
        assert (refused.value.kind, refused.value.node, refused.value.window) == \\
            ("node-down", "mail-1", None)
    for user in on_2[:2]:
        assert mq.imap(user).noop()[0] == "OK"
    mq.node_up("mail", 1)
    assert mq.imap(on_1[0]).noop()[0] == "OK"
'''


def test_node_down(pytester: pytest.Pytester) -> None:
    require_dovecot_access()
    pytester.makepyfile(test_nodes=NODES)
    result = run(pytester, "asyncio_mode = auto")
    result.assert_outcomes(passed=1)


PASSWORDS = HELPERS + '''

@pytest.mark.mailqueue(passwords={"Alice@example.com": "s3cret"})
def test_wrong_password_is_an_auth_failure(mailqueue_sync):
    mq = mailqueue_sync
    assert mq.imap("alice@example.com").state == "AUTH"       # the password of the option
    assert mq.imap("alice@example.com", "s3cret").state == "AUTH"
    with pytest.raises(MailboxAuthFailed, match="Authentication failed") as failed:
        mq.imap("alice@example.com", password="wrong")
    assert not isinstance(failed.value, MailboxClosed)
    mq.start_window()
    for login in (mq.imap, mq.pop3):    # in the window too: the password is checked first
        with pytest.raises(MailboxAuthFailed):
            login("alice@example.com", "wrong")
    with pytest.raises(MailboxClosed):
        mq.imap("alice@example.com")
    with pytest.raises(MailboxAuthFailed):
        mq.imap("bob@example.com", "guess")               # not a user
    with pytest.raises(ValueError, match="has no password in passwords"):
        mq.imap("bob@example.com")


@pytest.mark.mailqueue(config={"admin": {"port": 0, "token": "t0ken"}})
def test_the_apps_own_admin_endpoint_decides(mailqueue_sync):
    """With [admin] in the config, Dovecot asks that endpoint (with its token)."""
    import urllib.request

    mq = mailqueue_sync
    mq.start_window()
    with pytest.raises(MailboxClosed):
        mq.imap("alice@example.com")
    mq.end_window()
    mq.imap("alice@example.com")
    port = mq.inner.app.admin.port
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Authorization": "Bearer t0ken"})
    with urllib.request.urlopen(request, timeout=10) as response:
        metrics = response.read().decode()
    assert 'mailqueue_mailbox_logins_total{result="maintenance",store="mail"} 1.0' in metrics
    assert 'mailqueue_mailbox_logins_total{result="allowed",store="mail"} 1.0' in metrics
'''


def test_passwords_and_admin(pytester: pytest.Pytester) -> None:
    require_dovecot_access()
    pytester.makepyfile(test_passwords=PASSWORDS)
    result = run(pytester, "asyncio_mode = auto")
    result.assert_outcomes(passed=2)


TEARDOWN = '''
import json
import os
from pathlib import Path


def children(pid):
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_leaves_clients_open(mailqueue_sync):
    mq = mailqueue_sync
    imap = mq.imap("alice@example.com")
    imap.select("INBOX")
    pop = mq.pop3("bob@example.com")
    dovecot = mq.dovecot()
    assert children(dovecot.pid)
    Path("state.json").write_text(json.dumps({
        "pids": [dovecot.pid, *children(dovecot.pid)], "dovecot": str(dovecot.root),
        "maildirs": str(mq.maildir_root()), "owner": mq.config.stores[0].owner,
        "uid": mq.maildir_root().stat().st_uid, "tmp_path": str(Path.cwd())}))


def test_not_using_imap_starts_nothing(mailqueue_sync):
    assert mailqueue_sync.inner._access is None
    assert mailqueue_sync.inner.app.admin is None
'''


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_teardown_stops_everything(pytester: pytest.Pytester) -> None:
    """Dovecot (master and children) is gone after the test, its directory too, and the
    clients the test left open were closed (no ResourceWarning: warnings are errors)."""
    require_dovecot_access()
    pytester.makepyfile(test_teardown=TEARDOWN)
    result = run(pytester, "asyncio_mode = auto")
    result.assert_outcomes(passed=2)
    state = json.loads((pytester.path / "state.json").read_text())
    assert len(state["pids"]) > 1
    assert [pid for pid in state["pids"] if _running(pid)] == []
    assert not Path(state["dovecot"]).exists()
    if os.geteuid() == 0:  # the Maildirs were where Dovecot's mail user can go, and removed
        assert not Path(state["maildirs"]).exists()
        assert not state["maildirs"].startswith(str(pytester.path))
        assert state["owner"] == mail_owner() and state["uid"] == int(mail_owner().split(":")[0])
    else:
        assert state["maildirs"].startswith(str(pytester.path)) and state["owner"] is None


MISSING = '''
import pytest


@pytest.fixture(autouse=True)
def no_dovecot(monkeypatch):
    monkeypatch.setattr("mailqueue.testing.dovecot.access_binary", lambda: None)


def test_sync(mailqueue_sync):
    mailqueue_sync.imap("alice@example.com")


async def test_async(mailqueue):
    await mailqueue.pop3("alice@example.com")
'''


def test_skips_without_dovecot(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_missing=MISSING)
    result = run(pytester, "asyncio_mode = auto", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*Dovecot with IMAP and POP3 is not installed (apt-get "
                                 "install dovecot-core dovecot-imapd dovecot-pop3d)*"])


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's Maildirs can be out of reach")
async def test_maildirs_out_of_dovecots_reach(tmp_path: Path) -> None:
    """A harness built by hand as root with its Maildirs under tmp_path: a clear error."""
    require_dovecot_access()
    config = MailqueueOptions().build(tmp_path, owner=mail_owner())
    async with AsyncMailqueue(config) as mq:
        with pytest.raises(ConfigError, match=r"store mail: Dovecot reads its Maildirs as "
                           r"uid \d+, which cannot enter /\S+ \(mode 0700, owner uid 0\)"):
            await mq.imap("alice@example.com")
