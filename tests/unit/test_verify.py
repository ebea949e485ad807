"""Reading delivered files back, the audit's classification and the snapshot key."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mailqueue.mailbox.maildir import MaildirStore, render
from mailqueue.queue.values import Claim, LedgerEntry, LedgerRecipient, RecipientState
from mailqueue.verify.audit import audit
from mailqueue.verify.scan import DeliveredCopy, restore_message, scan_root
from mailqueue.verify.snapshot import compare_snapshot, take_snapshot

DELIVERED, BOUNCED, QUEUED = (RecipientState.DELIVERED, RecipientState.BOUNCED,
                              RecipientState.QUEUED)


def claim(body: bytes, address: str = "bob@example.com", qid: str = "JZ5AAAAAAAAAAA",
          helo: str = "client.test") -> Claim:
    return Claim(recipient_id=1, queue_id=qid, address=address, store="mail", attempts=1,
                 mail_from="a@src.test", received_at=1_700_000_000.0, helo=helo,
                 peer="127.0.0.1", body=body)


# Lines as SMTP delivers them: any bytes but LF inside a line (a bare CR is kept), CRLF ends.
lines = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12)


@given(lines, st.sampled_from(["", "client.test", "[127.0.0.1]"]))
def test_restore_undoes_render(parts: list[bytes], helo: str) -> None:
    body = b"".join(p + b"\r\n" for p in parts)
    restored = restore_message(render(claim(body, helo=helo), "mx.test"))
    assert restored is not None
    assert restored.message == body
    assert (restored.queue_id, restored.recipient) == ("JZ5AAAAAAAAAAA", "bob@example.com")


def test_restore_keeps_the_message_own_trace_headers() -> None:
    body = b"X-Mailqueue-Id: OTHER\r\nDelivered-To: x@y\r\nSubject: fwd\r\n\r\nhi\r\n"
    restored = restore_message(render(claim(body), "mx.test"))
    assert restored is not None and restored.message == body


def test_files_not_written_by_mailqueue_are_not_restored() -> None:
    assert restore_message(b"From: a@b\nSubject: old\n\nbody\n") is None
    assert restore_message(b"") is None
    assert restore_message(b"Return-Path: <a@b>\n") is None


def test_scan_reads_real_delivery(tmp_path: Path) -> None:
    body = b"Subject: s\r\n\r\nline\r\n.dot\r\n"
    store = MaildirStore("mail", tmp_path, "mx.test")
    assert store.deliver([claim(body)]) == [None]
    [copy] = scan_root("mail", tmp_path)
    assert copy.key == ("JZ5AAAAAAAAAAA", "bob@example.com")
    assert copy.digest == hashlib.sha256(body).hexdigest()


def entry(qid: str, *rcpts: tuple[str, RecipientState], digest: str = "d", count: int = -1,
          mid: str | None = None) -> LedgerEntry:
    return LedgerEntry(qid, mid or f"<{qid}@t>", digest, 0.0, 1,
                       len(rcpts) if count < 0 else count,
                       tuple(LedgerRecipient(a, "mail", s) for a, s in rcpts))


def copy(qid: str | None, rcpt: str | None, digest: str | None = "d",
         name: str = "f") -> DeliveredCopy:
    return DeliveredCopy("mail", Path(name), qid, rcpt, digest)


def test_audit_clean_and_equation() -> None:
    ledger = [entry("A", ("a@x", DELIVERED), ("b@x", QUEUED)), entry("B", ("a@x", BOUNCED))]
    result = audit(ledger, [copy("A", "a@x"), copy("A", "b@x"), copy(None, None, None)])
    assert result.ok, result.report()
    assert (result.accepted, result.delivered, result.bounced, result.queued) == (3, 1, 1, 1)
    assert result.equation().startswith(
        "accepted 3 = delivered 1 + bounced 1 + deleted 0 + still queued 1")
    assert result.foreign_files == ("f",) and len(result.pending) == 1


def test_audit_names_every_kind() -> None:
    ledger = [entry("A", ("a@x", DELIVERED)), entry("B", ("b@x", DELIVERED)),
              entry("C", ("c@x", DELIVERED)), entry("D", ("d@x", BOUNCED)),
              entry("E", ("e@x", DELIVERED), count=2)]
    result = audit(ledger, [copy("B", "b@x"), copy("B", "B@X", name="g"),
                            copy("C", "c@x", digest="other"), copy("D", "d@x"),
                            copy("Z", "z@x"), copy("A", "q@x"), copy("E", "e@x")])
    kinds = {(f.kind, f.queue_id, f.recipient) for f in result.findings}
    assert kinds == {("missing", "A", "a@x"), ("duplicated", "B", "b@x"),
                     ("corrupted", "C", "c@x"), ("unexpected", "D", "d@x"),
                     ("unexpected", "Z", "z@x"), ("unexpected", "A", "q@x"),
                     ("missing", "E", None)}
    assert result.unaccounted == 1 and not result.ok
    assert "accepted 6 != delivered 4 + bounced 1 + deleted 0 + still queued 0" in result.report()


def test_same_message_id_twice_is_information() -> None:
    ledger = [entry("A", ("a@x", DELIVERED), mid="<m@t>"),
              entry("B", ("a@x", DELIVERED), mid="<m@t>")]
    result = audit(ledger, [copy("A", "a@x"), copy("B", "a@x")])
    assert result.ok and not result.findings and not result.passed(strict=True)
    [group] = result.same_message_id
    assert group.message_id == "<m@t>" and "accepted as 2 messages (A, B)" in group.detail


def test_snapshot_follows_a_file_moved_to_cur(tmp_path: Path) -> None:
    box = tmp_path / "example.com" / "bob"
    for sub in ("new", "cur", "tmp"):
        (box / sub).mkdir(parents=True)
    (box / "new" / "1.M1.host").write_bytes(b"one")
    (box / "tmp" / "2.M2.host").write_bytes(b"in flight")
    before = take_snapshot({"mail": tmp_path})
    assert list(before.files) == ["mail:example.com/bob/1.M1.host"]
    (box / "new" / "1.M1.host").rename(box / "cur" / "1.M1.host:2,S")
    assert compare_snapshot(before, take_snapshot({"mail": tmp_path})).ok
    (box / "cur" / "1.M1.host:2,S").write_bytes(b"two")
    diff = compare_snapshot(before, take_snapshot({"mail": tmp_path}))
    assert not diff.ok and len(diff.changed) == 1 and not diff.missing
