"""Hostile and malformed SMTP input, one table row per case, over a real TCP connection.

Each row is a script of (bytes sent, expected reply code) steps after the greeting and, unless
the row says otherwise, an EHLO. Every reply of every row is checked for leaked internals,
and the number of messages stored must equal the number of 250 replies to end of DATA.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailqueue import faults
from mailqueue.app import MailqueueApp
from mailqueue.smtp import rewrite_reply
from tests.helpers import all_files, make_config, running, wait_for
from tests.smtpraw import LEAK, RawSmtp

OK_MAIL = b"MAIL FROM:<a@src.test>\r\n"
OK_RCPT = b"RCPT TO:<alice@basic.example>\r\n"
BODY = b"Subject: t\r\n\r\nhello\r\n.\r\n"
TAIL = (b"MAIL FROM:<evil@src.test>\r\nRCPT TO:<victim@basic.example>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    steps: list[tuple[bytes, str]]
    stored: int = 0
    ehlo: bool = True
    closes: bool = False  # the server must close the connection after the last step
    smtp: dict[str, Any] = dataclasses.field(default_factory=dict)
    fault: str = ""


def txn(*rcpts: bytes, body: bytes = BODY, end: str = "250") -> list[tuple[bytes, str]]:
    """MAIL, RCPT..., DATA, body: a whole transaction expecting ``end`` after the body."""
    steps = [(OK_MAIL, "250")] + [(r, "250") for r in rcpts or (OK_RCPT,)]
    return [*steps, (b"DATA\r\n", "354"), (body, end)]


def smuggle(sequence: bytes) -> Case:
    body = b"Subject: one\r\n\r\nhello" + sequence + TAIL
    return Case(f"smuggling {sequence!r}", [*txn(body=body), (b"QUIT\r\n", "221")],
                stored=1)


def long_lines_body(lines: int, width: int) -> bytes:
    return b"Subject: big\r\n\r\n" + (b"x" * width + b"\r\n") * lines + b".\r\n"


CASES = [
    Case("well-formed transaction", txn(), stored=1),
    Case("null reverse-path (a bounce)", [(b"MAIL FROM:<>\r\n", "250"), (OK_RCPT, "250"),
                                           (b"DATA\r\n", "354"), (BODY, "250")], stored=1),
    Case("command line over 512 octets", [(b"NOOP " + b"x" * 600 + b"\r\n", "500"),
                                          (b"NOOP\r\n", "250")]),
    Case("command line over the stream limit",
         [(b"NOOP " + b"x" * 5000 + b"\r\n", "500"), (b"NOOP\r\n", "250")]),
    Case("MAIL line over 512 octets",
         [(b"MAIL FROM:<" + b"a" * 600 + b"@src.test>\r\n", "500"), (OK_MAIL, "250")]),
    Case("text line over 1000 octets", [*txn(body=long_lines_body(1, 1500), end="500"),
                                        *txn()], stored=1),
    Case("oversize declared with SIZE", [(b"MAIL FROM:<a@src.test> SIZE=100000000\r\n", "552")]),
    Case("oversize without SIZE", [*txn(body=long_lines_body(100, 900), end="552"), *txn()],
         stored=1),
    Case("relay attempt to a foreign domain",
         [(OK_MAIL, "250"), (b"RCPT TO:<x@foreign.example>\r\n", "550")]),
    Case("relay attempt with a source route",
         [(OK_MAIL, "250"), (b"RCPT TO:<@relay.example:x@foreign.example>\r\n", "5")]),
    Case("relay attempt with a percent hack",
         [(OK_MAIL, "250"), (b"RCPT TO:<x%foreign.example@foreign.example>\r\n", "550")]),
    Case("unknown user", [(OK_MAIL, "250"), (b"RCPT TO:<zed@exchange.example>\r\n", "550")]),
    Case("RCPT before MAIL", [(OK_RCPT, "503")]),
    Case("DATA before RCPT", [(OK_MAIL, "250"), (b"DATA\r\n", "503")]),
    Case("DATA before MAIL", [(b"DATA\r\n", "503")]),
    Case("MAIL before EHLO", [(OK_MAIL, "503")], ehlo=False),
    Case("nested MAIL", [(OK_MAIL, "250"), (OK_MAIL, "503")]),
    Case("too many recipients",
         [(OK_MAIL, "250"), *[(f"RCPT TO:<u{i}@basic.example>\r\n".encode(), "250")
                              for i in range(5)], (b"RCPT TO:<u9@basic.example>\r\n", "452")]),
    Case("malformed sender", [(b"MAIL FROM:<a@@b>\r\n", "553")]),
    Case("malformed recipient", [(OK_MAIL, "250"), (b"RCPT TO:<no-at-sign>\r\n", "553")]),
    Case("recipient without angle brackets or address", [(OK_MAIL, "250"),
                                                         (b"RCPT TO:\r\n", "501")]),
    Case("over-long recipient", [(OK_MAIL, "250"),
                                 (b"RCPT TO:<" + b"a" * 250 + b"@basic.example>\r\n", "553")]),
    Case("over-long local part", [(OK_MAIL, "250"),
                                  (b"RCPT TO:<" + b"a" * 65 + b"@basic.example>\r\n", "553")]),
    Case("over-long sender", [(b"MAIL FROM:<" + b"a" * 250 + b"@src.test>\r\n", "553")]),
    Case("NUL in sender", [(b"MAIL FROM:<a\x00b@src.test>\r\n", "5"), (OK_MAIL, "250")]),
    Case("NUL in recipient", [(OK_MAIL, "250"), (b"RCPT TO:<al\x00ice@basic.example>\r\n", "5"),
                              (OK_RCPT, "250")]),
    Case("bare CR in sender", [(b"MAIL FROM:<a\rb@src.test>\r\n", "5"), (OK_MAIL, "250")]),
    Case("bare CR in recipient", [(OK_MAIL, "250"),
                                  (b"RCPT TO:<al\rice@basic.example>\r\n", "5")]),
    Case("non-ASCII in sender", [("MAIL FROM:<jösé@src.test>\r\n".encode(), "5"),
                                 (OK_MAIL, "250")]),
    Case("non-ASCII in recipient", [(OK_MAIL, "250"),
                                    ("RCPT TO:<jösé@basic.example>\r\n".encode(), "5")]),
    Case("non-ASCII (Latin-1) in EHLO", [(b"EHLO h\xe9llo\r\n", "5")], ehlo=False),
    Case("SMTPUTF8 when not advertised", [(b"MAIL FROM:<a@src.test> SMTPUTF8\r\n", "555")]),
    Case("unknown MAIL parameter", [(b"MAIL FROM:<a@src.test> FOO=BAR\r\n", "555")]),
    Case("malformed MAIL parameter", [(b"MAIL FROM:<a@src.test> =\r\n", "501")]),
    Case("bad BODY parameter", [(b"MAIL FROM:<a@src.test> BODY=BINARYMIME\r\n", "501")]),
    Case("unknown RCPT parameter", [(OK_MAIL, "250"),
                                    (b"RCPT TO:<alice@basic.example> NOTIFY=NEVER\r\n", "555")]),
    Case("DATA with an argument", [(OK_MAIL, "250"), (OK_RCPT, "250"), (b"DATA x\r\n", "501")]),
    Case("empty command line", [(b"\r\n", "500"), (b"NOOP\r\n", "250")]),
    Case("non-ASCII command verb", [(b"N\xd6OP\r\n", "500"), (b"NOOP\r\n", "250")]),
    smuggle(b"\n.\n"),
    smuggle(b"\n.\r\n"),
    smuggle(b"\r\n.\n"),
    smuggle(b"\r.\r"),
    smuggle(b"\r.\r\n"),
    Case("too many unknown commands",
         [*[(b"FOO\r\n", "500")] * 4, (b"FOO\r\n", "502")], closes=True),
    Case("NOOP flood", [*[(b"NOOP\r\n", "250")] * 100, (b"NOOP\r\n", "421")], closes=True),
    Case("RSET flood", [*[(b"RSET\r\n", "250")] * 100, (b"RSET\r\n", "421")], closes=True),
    Case("VRFY and HELP flood", [*[(b"VRFY x\r\n", "252"), (b"HELP\r\n", "250")] * 50,
                                 (b"NOOP\r\n", "421")], closes=True),
    Case("junk count restarts after each accepted message",
         [*([(b"NOOP\r\n", "250")] * 60 + txn()) * 3], stored=3),
    Case("storage exception at end of DATA", [*txn(end="451"), *txn()], stored=1,
         fault="commit.before:raise"),
    Case("HELP does not describe internals", [(b"HELP\r\n", "250"), (b"HELP MAIL\r\n", "250")]),
    Case("VRFY answers without confirming", [(b"VRFY alice@basic.example\r\n", "252")]),
    Case("EXPN is not offered", [(b"EXPN staff\r\n", "502")]),
    Case("AUTH is not offered", [(b"AUTH PLAIN AGFAYg==\r\n", "5")]),
    Case("STARTTLS is not offered", [(b"STARTTLS\r\n", "454")]),
]


def _code_ok(reply: str, expected: str) -> bool:
    return reply[:3].startswith(expected)


async def _run_case(case: Case, port: int) -> list[str]:
    client = await RawSmtp.connect(port)
    try:
        assert (await client.reply()).startswith("220")
        if case.ehlo:
            assert (await client.cmd(b"EHLO client.test\r\n")).startswith("250")
        for sent, expected in case.steps:
            reply = await client.cmd(sent)
            assert _code_ok(reply, expected), (case.name, sent[:80], reply)
        if case.closes:
            assert await client.closed(), f"{case.name}: connection left open"
        return client.replies
    finally:
        await client.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_hostile_input(case: Case, tmp_path: Path) -> None:
    config = make_config(tmp_path, smtp=case.smtp)
    faults.arm(case.fault)
    try:
        async with running(config, run_worker=False) as app:
            assert app.port
            replies = await _run_case(case, app.port)
            stats = await app.queue.stats()
    finally:
        faults.arm("")
    for reply in replies:
        assert not LEAK.search(reply), f"{case.name}: reply leaks detail: {reply!r}"
    accepted = sum(1 for r in replies if r.startswith("250 2.0.0 Ok: queued as"))
    assert stats.messages_total == accepted == case.stored, case.name


@contextlib.asynccontextmanager
async def idle_timeout_session(tmp_path: Path) -> AsyncIterator[tuple[MailqueueApp, RawSmtp]]:
    """A server whose idle timeout is 0.5 s, and a raw session to it."""
    config = make_config(tmp_path, smtp={"timeout": 0.5})
    async with running(config, run_worker=False) as app:
        assert app.port
        client = await RawSmtp.connect(app.port)
        try:
            yield app, client
        finally:
            await client.close()


async def test_idle_client_past_timeout_gets_421(tmp_path: Path) -> None:
    async with idle_timeout_session(tmp_path) as (_, client):
        assert (await client.reply()).startswith("220")
        assert (await client.cmd(b"EHLO client.test\r\n")).startswith("250")
        assert (await client.reply(timeout=5)).startswith("421 4.4.2")
        assert await client.closed()


async def test_each_command_pushes_the_idle_deadline_back(tmp_path: Path) -> None:
    """A session busy for longer than the timeout is not cut; once quiet, it is cut one
    timeout after its last command, not one after its first."""
    async with idle_timeout_session(tmp_path) as (_, client):
        assert (await client.reply()).startswith("220")
        for _ in range(8):  # 1.6 s of commands 0.2 s apart
            assert (await client.cmd(b"NOOP\r\n")).startswith("250")
            await asyncio.sleep(0.2)
        quiet = time.monotonic()
        assert (await client.reply(timeout=5)).startswith("421 4.4.2")
        assert 0.25 <= time.monotonic() - quiet <= 1.5


async def test_idle_client_inside_data_gets_421(tmp_path: Path) -> None:
    async with idle_timeout_session(tmp_path) as (app, client):
        await client.reply()
        for line, code in [(b"EHLO c\r\n", "250"), (OK_MAIL, "250"), (OK_RCPT, "250"),
                           (b"DATA\r\n", "354")]:
            assert (await client.cmd(line)).startswith(code)
        await client.send(b"Subject: stalled\r\n\r\npart")
        assert (await client.reply(timeout=5)).startswith("421 4.4.2")
        assert await client.closed()
        assert (await app.queue.stats()).messages_total == 0


async def test_connections_over_per_ip_limit_get_421(tmp_path: Path) -> None:
    config = make_config(tmp_path, smtp={"max_connections_per_ip": 3})
    async with running(config, run_worker=False) as app:
        assert app.port
        held = [await RawSmtp.connect(app.port) for _ in range(3)]
        try:
            for client in held:
                assert (await client.reply()).startswith("220")
            extra = await RawSmtp.connect(app.port)
            reply = await extra.reply()
            assert reply.startswith("421 4.7.0"), reply
            assert await extra.closed()
            await extra.close()
            await held[0].close()
            await asyncio.sleep(0.1)
            again = await RawSmtp.connect(app.port)  # a slot freed: admitted again
            assert (await again.reply()).startswith("220")
            await again.close()
        finally:
            for client in held:
                await client.close()


async def test_null_sender_is_delivered_with_an_empty_return_path(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config) as app:
        assert app.port
        client = await RawSmtp.connect(app.port)
        try:
            await client.reply()
            for line, code in [(b"EHLO c\r\n", "250"), (b"MAIL FROM:<>\r\n", "250"),
                               (OK_RCPT, "250"), (b"DATA\r\n", "354"), (BODY, "250")]:
                assert (await client.cmd(line)).startswith(code)
        finally:
            await client.close()
        root = tmp_path / "mail" / "basic"
        await wait_for(lambda: len(all_files(root)) == 1)
    assert all_files(root)[0].read_bytes().startswith(b"Return-Path: <>\n")


@pytest.mark.parametrize(("library", "ours"), [
    ('500 Error: command "XYZZY" not recognized', "500 5.5.1 Command not recognized"),
    ("553 5.1.3 Error: malformed address", "553 5.1.3 Malformed address"),
    ("501 Error: BODY can only be one of 7BIT, 8BITMIME",
     "501 5.5.4 BODY can only be one of 7BIT, 8BITMIME"),
    ("503 Error: need MAIL command", "503 5.5.1 Need MAIL command"),
    ("250 OK", "250 OK"),
])
def test_library_replies_are_rewritten(library: str, ours: str) -> None:
    assert rewrite_reply(library) == ours
