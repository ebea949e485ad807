"""The fast path of the SMTP address parser agrees with aiosmtpd's own parser."""

from __future__ import annotations

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
