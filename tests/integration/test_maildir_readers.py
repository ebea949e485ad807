"""Mail readers see every delivered message: 300 messages to one mailbox in one second.

GNU mailutils tells messages of one second apart by the markers in their names; Python's
``mailbox`` module reads any name. The mailutils check needs its ``messages`` and ``frm``
programs (Debian: ``apt-get install mailutils``) and is skipped without them.
"""

from __future__ import annotations

import mailbox
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.queue.values import Claim, new_queue_id

SECOND = 1_796_629_854
COUNT = 300


def deliver_in_one_second(root: Path) -> Path:
    """COUNT messages to bob, accepted within one second; bob's Maildir."""
    rng = random.Random(11)
    claims = []
    for i in range(COUNT):
        at = SECOND + rng.random()
        claims.append(Claim(recipient_id=i, queue_id=new_queue_id(at),
                            address="bob@basic.example", store="basic", attempts=1,
                            mail_from="a@src.test", received_at=at, helo="client.test",
                            peer="127.0.0.1",
                            body=f"Subject: m{i}\r\nMessage-ID: <m{i}@t>\r\n\r\n{i}\r\n".encode()))
    store = MaildirStore("basic", root, "MX1.Example.NET", writers=4)
    try:
        assert store.deliver(claims) == [None] * COUNT
    finally:
        store.close()
    return root / "basic.example" / "bob"


def test_python_mailbox_reads_every_message(tmp_path: Path) -> None:
    box = mailbox.Maildir(deliver_in_one_second(tmp_path), create=False)
    assert len(box) == COUNT
    assert {m["Message-ID"] for m in box} == {f"<m{i}@t>" for i in range(COUNT)}


@pytest.mark.skipif(shutil.which("messages") is None or shutil.which("frm") is None,
                    reason="GNU mailutils (messages, frm) not installed")
def test_mailutils_shows_every_message(tmp_path: Path) -> None:
    box = deliver_in_one_second(tmp_path)
    counted = subprocess.run(["messages", "--no-config", "-q", f"maildir:{box}"],
                             capture_output=True, text=True, timeout=60, check=True)
    assert counted.stdout.strip() == str(COUNT)
    # frm's exit status tells whether there is new mail; what it lists is what counts.
    listed = subprocess.run(["frm", "--no-config", f"maildir:{box}"],
                            capture_output=True, text=True, timeout=60)
    assert listed.stderr == ""
    assert sorted(line.split()[-1] for line in listed.stdout.splitlines()) == \
        sorted(f"m{i}" for i in range(COUNT))
