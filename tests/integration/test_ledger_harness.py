"""The testing ledger and a repeated delivery against real SMTP and real Maildirs, with the
queue in SQLite and in PostgreSQL: copies renamed by readers or written under the old name
are found again, misplaced copies and one Message-ID sent twice are named as such."""

from __future__ import annotations

import hashlib
import smtplib
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from mailqueue import faults
from mailqueue.mailbox.maildir import copy_key, mailbox_path
from mailqueue.testing import MailLossError, Mailqueue, MailqueueOptions

BOB, ANN = "bob@example.com", "ann@example.com"


@pytest.fixture(params=["sqlite", "postgresql"])
def mq(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mailqueue]:
    config = {"queue": {"url": request.getfixturevalue("pg_url")}} \
        if request.param == "postgresql" else None
    with Mailqueue(MailqueueOptions(config=config).build(tmp_path)) as running:
        yield running


def send(mq: Mailqueue, to: str, n: int, mid: str | None = None) -> None:
    body = f"Subject: m{n}\r\nMessage-ID: {mid or f'<m{n}@test>'}\r\n\r\nbody {n}\r\n"
    with smtplib.SMTP(mq.host, mq.port) as smtp:
        smtp.sendmail("a@src.test", [to], body)


def files(mq: Mailqueue) -> list[Path]:
    return sorted(p for p in mq.maildir_root().rglob("*") if p.is_file() and
                  p.parent.name in ("new", "cur"))


def first_attempt_left_a_copy(mq: Mailqueue) -> Path:
    """Send one message whose first delivery writes its file, then fails (deferred, as a
    crash before the settle would leave it); the file."""
    faults.arm("deliver.linked:raise")
    try:
        send(mq, BOB, 1)
        deadline = time.monotonic() + 10
        while not any("fault injected" in (r.last_error or "")
                      for e in mq.ledger().entries for r in e.recipients):
            assert time.monotonic() < deadline, "the first attempt was not deferred"
            time.sleep(0.05)
    finally:
        faults.arm("")
    [path] = files(mq)
    return path


def test_a_copy_a_reader_renamed_is_not_written_again(mq: Mailqueue) -> None:
    path = first_attempt_left_a_copy(mq)
    # GNU mailutils reads it before the retry: new/NAME -> cur/NAME,u=1:2,S
    renamed = path.parent.parent / "cur" / f"{path.name},u=1:2,S"
    path.rename(renamed)
    mq.advance(timedelta(hours=2))  # the retry falls due: a second attempt
    mq.drained()
    assert files(mq) == [renamed]
    mq.ledger().assert_ok()
    assert [m["Subject"] for m in mq.mailbox(BOB).messages()] == ["m1"]


def test_a_copy_under_the_old_name_is_not_written_again(mq: Mailqueue) -> None:
    # Written by an earlier version (time.QQUEUEID_R<hash>.host), retried after the upgrade.
    path = first_attempt_left_a_copy(mq)
    key = copy_key(path.name)
    assert key is not None
    rcpt = hashlib.sha256(BOB.encode()).hexdigest()[:12]
    old = path.with_name(f"{path.name.split('.', 1)[0]}.Q{key[0]}_R{rcpt}.mailqueue.test")
    path.rename(old)
    mq.advance(timedelta(hours=2))
    mq.drained()
    assert files(mq) == [old]
    mq.ledger().assert_ok()


def test_a_copy_in_another_mailbox_fails_the_ledger(mq: Mailqueue) -> None:
    send(mq, BOB, 1)
    send(mq, ANN, 2)
    mq.drained()
    mq.ledger().assert_ok()
    bobs = next(p for p in files(mq) if b"Subject: m1" in p.read_bytes())
    anns_box = mailbox_path(mq.maildir_root(), ANN)
    bobs.rename(anns_box / "cur" / (bobs.name + ":2,S"))
    assert [m["Subject"] for m in mq.mailbox(BOB).messages()] == []
    assert [m["Subject"] for m in mq.mailbox(ANN).messages()] == ["m2"]
    with pytest.raises(MailLossError) as lost:
        mq.ledger().assert_no_loss()
    assert "MISPLACED (1):\n  " in str(lost.value) and f"-> {BOB}: in {anns_box}, not in " \
        f"the mailbox of {BOB}" in str(lost.value)
    with pytest.raises(MailLossError, match=r"MISPLACED \(1\)"):
        mq.ledger().assert_no_duplicates()


def test_one_message_id_sent_twice_is_named_as_such(mq: Mailqueue) -> None:
    send(mq, BOB, 1, "<once@test>")
    send(mq, BOB, 1, "<once@test>")
    send(mq, ANN, 2)
    mq.drained()
    ledger = mq.ledger()
    assert ledger.audit.ok and ledger.audit.findings == ()
    ledger.assert_no_loss()
    ledger.assert_ok(allow_sent_twice=True)
    with pytest.raises(MailLossError) as twice:
        ledger.assert_no_duplicates()
    text = str(twice.value)
    assert text.startswith(f"mailqueue: sent twice: the same Message-ID was accepted as 2 "
                           f"messages for {BOB}\n  <once@test>: accepted as 2 messages (")
    assert "delivered more than once" not in text
    assert [m["Subject"] for m in mq.mailbox(BOB).messages()] == ["m1", "m1"]
