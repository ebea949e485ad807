"""Remote stores against scripted servers: what each kind of answer does to the queue.

The servers are aiosmtpd (``tests/backends.py``) told what to answer: ``4xx`` for a
while, ``5xx`` for one mailbox, a reply per recipient after the dot (LMTP), a dropped
connection, a slow reply, STARTTLS and AUTH. The queue runs on a manual clock, so a retry
happens when the test advances time past the store's backoff (60 s, then 120 s, ...).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailqueue.config import Config
from mailqueue.queue.values import Action, LedgerRecipient, RecipientState
from mailqueue.testing.harness import AsyncMailqueue
from tests.backends import Backend, self_signed
from tests.helpers import all_files, make_config, message, wait_for

BASIC = "basic.example"
CAROL = "carol@exchange.example"  # a local sender: bounces come back to her Maildir
ANN, BOB, CID, GHOST = (f"{n}@{BASIC}" for n in ("ann", "bob", "cid", "ghost"))
DAY = 86400.0


def remote_config(tmp_path: Path, backend: Backend, **basic: Any) -> Config:
    store: dict[str, Any] = {"name": "basic", "kind": backend.kind, "hosts": [backend.host],
                             "domains": [BASIC], **basic}
    if backend.root is not None:
        store["verify_path"] = str(backend.root)
    if backend.kind == "smtp":
        store.setdefault("starttls", "off")
    return make_config(tmp_path, stores=[
        store,
        {"name": "hosted-exchange", "path": str(tmp_path / "mail" / "hosted-exchange"),
         "domains": ["exchange.example"], "mailboxes": ["carol", "dave"]}],
        delivery={"poll_interval": 0.1, "batch_size": 50})


async def send(port: int, rcpts: list[str], subject: str, sender: str = CAROL) -> None:
    def post() -> None:
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail(sender, rcpts, message(subject).encode())
    await asyncio.to_thread(post)


async def recipients(mq: AsyncMailqueue) -> dict[tuple[str, str], LedgerRecipient]:
    """(subject's queue id, address) -> where it stands."""
    return {(e.queue_id, r.address): r for e in await mq.app.queue.ledger()
            for r in e.recipients}


async def settled(mq: AsyncMailqueue, count: int, store: str = "basic",
                  timeout: float = 10.0) -> list[LedgerRecipient]:
    """Wait until ``count`` recipients of ``store`` are not in delivery and have been
    attempted (queued again with an error, or final); return them all."""
    found: list[LedgerRecipient] = []

    async def ready() -> bool:
        nonlocal found
        found = [r for e in await mq.app.queue.ledger() for r in e.recipients
                 if r.store == store]
        done = [r for r in found if r.state is not RecipientState.ACTIVE and
                (r.last_error or r.state is not RecipientState.QUEUED)]
        return len(done) >= count
    await wait_for(ready, timeout)
    return found


def dsn_blocks(path: Path) -> list[dict[str, str]]:
    notice = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(notice, EmailMessage)
    _, status, _ = notice.get_payload()  # type: ignore[misc]
    return [dict(block.items()) for block in status.get_payload()][1:]


def notices(tmp_path: Path) -> list[Path]:
    return all_files(tmp_path / "mail" / "hosted-exchange")


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
async def test_4xx_for_a_while_and_5xx_for_one_mailbox(tmp_path: Path,
                                                        pipelining: bool) -> None:
    """Windows, retries and bounces: the backend is busy (451) when the window ends and
    for one retry, then takes the mail; one mailbox never exists (550)."""
    with Backend("lmtp", tmp_path / "backend", pipelining=pipelining) as backend:
        backend.script.mail = "451 4.3.0 Mailbox platform starting up"
        backend.script.rcpt[GHOST] = "550 5.1.1 <ghost@basic.example> User unknown"
        async with AsyncMailqueue(remote_config(tmp_path, backend)) as mq:
            await mq.start_window("basic")
            for n in range(5):
                await send(mq.port, [ANN, GHOST, BOB], f"note {n}")
            await send(mq.port, [GHOST], "from afar", sender="someone@elsewhere.example")
            assert backend.transactions == [] and backend.connections == 0
            await mq.end_window()
            first = await settled(mq, 16)
            assert {r.state for r in first} == {RecipientState.QUEUED}
            assert all("451 4.3.0 Mailbox platform starting up" in (r.last_error or "")
                       for r in first)
            mq.advance(59)  # not yet due
            await asyncio.sleep(0.3)
            assert backend.transactions == []
            mq.advance(2)  # the first retry, a minute after: still busy
            await wait_for(lambda: backend.connections >= 2)
            await asyncio.sleep(0.3)
            assert backend.transactions == []
            backend.script.mail = None
            mq.advance(121)  # the second retry, two minutes later: the platform is up
            await mq.drained(timeout=10)
            ledger = await mq.ledger()
            ledger.assert_ok(allow_bounced=True)
            final = await recipients(mq)
        assert len(backend.transactions) == 5  # ann and bob of one message: one transaction
        assert all(sorted(rcpts) == [ANN, BOB] for _, rcpts, _ in backend.transactions)
    states = {(a, r.state) for (_, a), r in final.items() if r.store == "basic"}
    assert states == {(ANN, RecipientState.DELIVERED), (BOB, RecipientState.DELIVERED),
                      (GHOST, RecipientState.BOUNCED)}
    assert ledger.audit.by_store["basic"] == {"delivered": 10, "bounced": 6, "deleted": 0,
                                              "queued": 0}
    # Exactly one notice per message from the local sender; none for the remote one.
    found = notices(tmp_path)
    assert len(found) == 5
    for path in found:
        [block] = dsn_blocks(path)
        assert block["Final-Recipient"] == f"rfc822; {GHOST}"
        assert block["Action"] == "failed" and block["Status"] == "5.1.1"
        assert block["Remote-MTA"] == "dns; 127.0.0.1"
        assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 <ghost@basic.example> User unknown"


async def test_lmtp_replies_after_the_dot_decide_each_recipient(tmp_path: Path) -> None:
    with Backend("lmtp", tmp_path / "backend") as backend:
        backend.script.data[BOB] = "452 4.2.2 <bob@basic.example> Mailbox full"
        backend.script.data[CID] = "552 5.2.2 <cid@basic.example> Quota exceeded for good"
        async with AsyncMailqueue(remote_config(tmp_path, backend)) as mq:
            await send(mq.port, [ANN, BOB, CID], "three answers")
            found = {r.address: r for r in await settled(mq, 3)}
            assert found[ANN].state is RecipientState.DELIVERED
            assert found[BOB].state is RecipientState.QUEUED
            assert "452 4.2.2" in (found[BOB].last_error or "")
            assert "(in reply to end of data)" in (found[BOB].last_error or "")
            assert found[CID].state is RecipientState.BOUNCED
            assert len(backend.transactions) == 1  # one transaction carried all three
            del backend.script.data[BOB]
            mq.advance(61)
            await mq.drained(timeout=10)
            (await mq.ledger()).assert_ok(allow_bounced=True)
        assert [rcpts for _, rcpts, _ in backend.transactions] == [[ANN, BOB, CID], [BOB]]
    [notice] = notices(tmp_path)
    [block] = dsn_blocks(notice)
    assert block["Status"] == "5.2.2"
    assert block["Diagnostic-Code"].startswith("smtp; 552 5.2.2")


async def test_smtp_one_reply_after_the_dot_decides_all(tmp_path: Path) -> None:
    with Backend("smtp", tmp_path / "backend") as backend:
        backend.script.data[ANN] = "451 4.3.0 Try again later"
        async with AsyncMailqueue(remote_config(tmp_path, backend)) as mq:
            await send(mq.port, [ANN, BOB], "one answer")
            found = await settled(mq, 2)
            assert {r.state for r in found} == {RecipientState.QUEUED}
            backend.script.data.clear()
            mq.advance(61)
            await mq.drained(timeout=10)
            (await mq.ledger()).assert_ok()


async def test_a_connection_dropped_after_the_data_delivers_again(tmp_path: Path) -> None:
    """At-least-once: the server kept the message but its reply never came, so the retry
    sends it again; the copy's X-Mailqueue-Id lets the ledger name the repeat."""
    with Backend("lmtp", tmp_path / "backend") as backend:
        backend.script.drop_after_data = True
        async with AsyncMailqueue(remote_config(tmp_path, backend)) as mq:
            await send(mq.port, [ANN], "dropped")
            [found] = await settled(mq, 1)
            assert found.state is RecipientState.QUEUED
            assert "may have the message" in (found.last_error or "")
            backend.script.drop_after_data = False
            mq.advance(61)
            await mq.drained(timeout=10)
            ledger = await mq.ledger()
    ledger.assert_no_loss()
    [duplicated] = ledger.audit.of_kind("duplicated")
    assert duplicated.recipient == ANN and len(duplicated.paths) == 2


async def test_a_slow_server_times_out_and_the_retry_delivers(tmp_path: Path) -> None:
    with Backend("lmtp") as backend:
        backend.script.delay = 3.0
        config = remote_config(tmp_path, backend, timeouts={"data_done": 0.5})
        async with AsyncMailqueue(config) as mq:
            await send(mq.port, [ANN], "slow")
            [found] = await settled(mq, 1)
            assert "timed out waiting for the reply to end of data" in (found.last_error or "")
            backend.script.delay = 0
            mq.advance(61)
            await mq.drained(timeout=10)


async def test_messages_share_a_connection_with_rset_between(tmp_path: Path) -> None:
    with Backend("lmtp", pipelining=True) as backend:
        config = remote_config(tmp_path, backend, connections=1,
                               timeouts={"idle": 0.5})
        async with AsyncMailqueue(config) as mq:
            await mq.start_window("basic")
            for n in range(6):
                await send(mq.port, [ANN, BOB], f"note {n}")
            await mq.end_window()
            await mq.drained(timeout=10)
            assert backend.connections == 1 and backend.resets == 5
            assert len(backend.transactions) == 6
            await asyncio.sleep(1.0)  # the idle connection is closed meanwhile
            await send(mq.port, [ANN], "later")
            await mq.drained(timeout=10)
            assert backend.connections == 2 and backend.resets == 5


async def test_a_connection_the_server_closed_is_replaced_at_once(tmp_path: Path) -> None:
    backend = Backend("lmtp")
    config = remote_config(tmp_path, backend, connections=1, timeouts={"idle": 60})
    async with AsyncMailqueue(config) as mq:
        with backend:
            await send(mq.port, [ANN], "first")
            await mq.drained(timeout=10)
        # The server went away with the pooled connection, and came back.
        with Backend("lmtp", port=backend.port) as again:
            await send(mq.port, [BOB], "second")
            await mq.drained(timeout=10)
            [found] = [r for r in await settled(mq, 2) if r.address == BOB]
            assert found.state is RecipientState.DELIVERED and found.last_error is None
            assert len(again.transactions) == 1


async def test_expiry_hold_and_release_work_as_for_maildir(tmp_path: Path) -> None:
    with Backend("lmtp", tmp_path / "backend") as backend:
        backend.script.rcpt[ANN] = "450 4.2.1 <ann@basic.example> Mailbox busy"
        config = remote_config(tmp_path, backend)
        async with AsyncMailqueue(config) as mq:
            await mq.start_window("basic")
            await send(mq.port, [ANN], "doomed")
            await send(mq.port, [BOB], "held")
            held = [e.queue_id for e in await mq.app.queue.ledger()
                    if e.recipients[0].address == BOB]
            await mq.app.queue.change(Action.HOLD, held, mq.clock.now())
            await mq.end_window()
            await settled(mq, 1)
            mq.advance(6 * DAY)  # past the five-day lifetime: ann's mail expires
            await wait_for(lambda: len(notices(tmp_path)) == 1, timeout=15)
            assert backend.transactions == []  # bob's is held
            await mq.app.queue.change(Action.RELEASE, held, mq.clock.now())
            mq.app.worker.wake()
            await mq.drained(timeout=10)
            (await mq.ledger()).assert_ok(allow_bounced=True)
        assert [rcpts for _, rcpts, _ in backend.transactions] == [[BOB]]
    [block] = dsn_blocks(notices(tmp_path)[0])
    assert block["Status"] == "5.4.7"  # expired, quoting the last reply
    assert block["Diagnostic-Code"] == "smtp; 450 4.2.1 <ann@basic.example> Mailbox busy"


# --- STARTTLS and AUTH (SMTP relay) --------------------------------------------------------

async def test_smtp_relay_with_required_tls_and_auth(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with Backend("smtp", tmp_path / "backend", tls=(cert, key), require_tls=True,
                 users={"relay": "s3cret"}) as backend:
        config = remote_config(tmp_path, backend, starttls="required", tls_ca_file=str(cert),
                               auth_user="relay", auth_password="s3cret")
        async with AsyncMailqueue(config) as mq:
            await send(mq.port, [ANN, BOB], "over TLS")
            await mq.drained(timeout=10)
            (await mq.ledger()).assert_ok()
        assert backend.logins == ["PLAIN relay"]


@pytest.mark.parametrize(("server", "store", "reason"), [
    ({"users": {"relay": "right"}}, {"auth_password": "wrong"}, "535"),
    ({}, {"tls_ca_file": None}, "certificate verify failed"),
    ({"tls": None}, {}, "does not offer STARTTLS"),
], ids=["bad-password", "untrusted-certificate", "no-starttls"])
async def test_tls_or_auth_trouble_defers(tmp_path: Path, server: dict[str, Any],
                                          store: dict[str, Any], reason: str) -> None:
    cert, key = self_signed(tmp_path)
    options: dict[str, Any] = {"tls": (cert, key), **server}
    with Backend("smtp", **options) as backend:
        settings: dict[str, Any] = {"starttls": "required", "tls_ca_file": str(cert),
                                    "auth_user": "relay", "auth_password": "right", **store}
        if settings["tls_ca_file"] is None:
            del settings["tls_ca_file"]
        async with AsyncMailqueue(remote_config(tmp_path, backend, **settings)) as mq:
            await send(mq.port, [ANN], "trouble")
            [found] = await settled(mq, 1)
        assert found.state is RecipientState.QUEUED and reason in (found.last_error or "")
        assert "right" not in (found.last_error or "")  # never a password in a reason
        assert backend.transactions == []


async def test_opportunistic_tls_takes_any_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with Backend("smtp", tls=(cert, key), require_tls=True) as backend:
        config = remote_config(tmp_path, backend, starttls="opportunistic")
        async with AsyncMailqueue(config) as mq:
            await send(mq.port, [ANN], "some TLS")
            await mq.drained(timeout=10)
        assert len(backend.transactions) == 1


# --- settling as replies arrive, and the lease -----------------------------------------------

async def test_each_outcome_is_recorded_as_its_reply_arrives(tmp_path: Path) -> None:
    """The worker records a remote store's replies as they come, not when the whole batch
    is done: the stretch in which a crash would deliver a message twice stays short."""
    with Backend("lmtp") as backend:
        backend.script.delay = 0.5
        config = remote_config(tmp_path, backend, connections=1)
        async with AsyncMailqueue(config) as mq:
            await mq.start_window("basic")
            for n in range(4):
                await send(mq.port, [f"user{n}@{BASIC}"], f"note {n}")
            await mq.end_window()  # one batch; one connection: the replies come 0.5 s apart

            async def some_delivered() -> bool:
                states = [r.state for r in await settled(mq, 0)]
                return RecipientState.DELIVERED in states
            await wait_for(some_delivered, timeout=10, interval=0.02)
            states = [r.state for r in await settled(mq, 0)]
            assert RecipientState.ACTIVE in states  # the rest of the batch is still going
            await mq.drained(timeout=10)


def test_nothing_starts_or_waits_past_the_deadline(tmp_path: Path) -> None:
    from mailqueue.endpoint import parse_endpoint
    from mailqueue.mailbox._session import Settings
    from mailqueue.mailbox.remote import RemoteStore
    from mailqueue.queue.values import Claim

    def claim(n: int) -> Claim:
        return Claim(recipient_id=n, queue_id=f"Q{n}", address=f"user{n}@{BASIC}",
                     store="basic", attempts=1, mail_from=CAROL, received_at=0.0, helo="h",
                     peer="p", body=b"Subject: x\r\n\r\nx\r\n")

    with Backend("lmtp") as backend:
        store = RemoteStore("basic", [parse_endpoint(backend.host, 24)],
                            Settings(kind="lmtp", helo="mx.test"), "mx.test")
        told: list[int] = []
        [late] = store.deliver_reporting([claim(1)], lambda i, o: told.append(i),
                                         time.monotonic() - 1)
        assert told == [0] and late is not None and "not attempted" in str(late)
        assert backend.connections == 0
        backend.script.delay = 3
        started = time.monotonic()
        [cut] = store.deliver_reporting([claim(2)], lambda i, o: None, started + 0.5)
        assert time.monotonic() - started < 2
        assert cut is not None and "lease ran out waiting for the reply" in str(cut)
        store.close()


async def test_a_busy_421_greeting_defers_only_its_own_transaction(tmp_path: Path) -> None:
    """A server at its connection limit says 421 to a new connection: that transaction
    is deferred, the others go on the connections that are open."""
    with Backend("lmtp") as backend:
        config = remote_config(tmp_path, backend, connections=2)
        async with AsyncMailqueue(config) as mq:
            await mq.start_window("basic")
            for n in range(6):
                await send(mq.port, [f"user{n}@{BASIC}"], f"note {n}")
            backend.script.busy = 1
            await mq.end_window()
            found = await settled(mq, 6)
            deferred = [r for r in found if r.state is RecipientState.QUEUED]
            assert len(deferred) == 1 and "421 4.7.0 Too busy" in (deferred[0].last_error or "")
            assert len(backend.transactions) == 5
            mq.advance(61)
            await mq.drained(timeout=10)
