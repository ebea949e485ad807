"""MailqueueSMTP against aiosmtpd: the fast address parser, the verb tables."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.smtp import SMTP

from mailqueue.smtp import MailqueueSMTP


class _Plain(SMTP):
    def __init__(self) -> None:
        self.local_part_limit = 64


class _Fast(MailqueueSMTP):
    def __init__(self) -> None:
        self.local_part_limit = 64


@pytest.mark.parametrize("arg", [
    "<u1@example.test>", "<u1@example.test> SIZE=4096", "<a.b+c_d@x-y.example>  BODY=8BITMIME",
    "<A@B>", "<>", "<\"quoted local\"@example.test>", "<a..b@example.test>",
    "<@relay.example:u@example.test>", "u@example.test", " <u@example.test>",
    "<" + "x" * 65 + "@example.test>", "<u@[127.0.0.1]>", "<u@example.test",
])
def test_fast_path_agrees_with_aiosmtpd(arg: str) -> None:
    assert _Fast()._getaddr(arg) == _Plain()._getaddr(arg)


async def test_a_session_knows_every_verb_aiosmtpd_would_find() -> None:
    """``MailqueueSMTP.__dir__`` lists only what aiosmtpd's ``__init__`` looks for; the
    tables it builds from it are the ones the full ``dir()`` gives."""

    class Handler:
        async def handle_DATA(self, *args: object) -> str:
            return "250 OK"

    class FullDir(MailqueueSMTP):
        def __dir__(self) -> list[str]:
            return list(object.__dir__(self))

    loop = asyncio.get_running_loop()
    fast = MailqueueSMTP(Handler(), None, hostname="mx.test", loop=loop)  # type: ignore[arg-type]
    full = FullDir(Handler(), None, hostname="mx.test", loop=loop)  # type: ignore[arg-type]
    assert len(fast._smtp_methods) > 10
    assert fast._smtp_methods.keys() == full._smtp_methods.keys()
    assert fast._auth_methods.keys() == full._auth_methods.keys()
    assert all(method.__self__ is fast for method in fast._smtp_methods.values())
