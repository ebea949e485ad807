"""The ledger tells the truth about what the Maildirs hold: where each copy lies, one
Message-ID accepted twice, files readers renamed, stores that share a root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.queue.values import Claim, LedgerEntry, LedgerRecipient, RecipientState
from mailqueue.verify import scan
from mailqueue.verify.audit import audit
from mailqueue.verify.scan import (
    DeliveredCopy,
    ScanError,
    mailbox_files,
    scan_root,
    scan_stores,
    store_roots,
)

DELIVERED = RecipientState.DELIVERED
ROOTS = {"basic": Path("/m/basic"), "exchange": Path("/m/exchange")}


def entry(qid: str, address: str, store: str = "basic", mid: str | None = None) -> LedgerEntry:
    return LedgerEntry(qid, mid or f"<{qid}@t>", "d", 0.0, 1, 1,
                       (LedgerRecipient(address, store, DELIVERED),))


def copy_at(qid: str, address: str, path: str, store: str = "basic") -> DeliveredCopy:
    return DeliveredCopy(store, Path(path), qid, address, "d")


# --- misplaced ----------------------------------------------------------------------------

def test_a_copy_in_its_recipients_mailbox_is_in_place() -> None:
    ledger = [entry("A", "alice@basic.example")]
    for where in ("/m/basic/basic.example/alice/new/f", "/m/basic/basic.example/alice/cur/f:2,S",
                  "/m/basic/basic.example/alice/.Archive/cur/f:2,S",
                  "/m/basic/basic.example/alice/Lists/new/f"):
        result = audit(ledger, [copy_at("A", "alice@basic.example", where)], ROOTS)
        assert result.ok and result.intact == 1, (where, result.report())


@pytest.mark.parametrize("where", [
    "/m/basic/basic.example/bob/new/f",            # another user's Maildir
    "/m/basic/basic.example/alice2/cur/f",         # a name that merely starts alike
    "/m/exchange/basic.example/alice/new/f",       # the same path in another store's tree
    "/m/basic/other.example/alice/new/f",          # another domain
    "/m/basic/basic.example/new/f",                # the domain directory itself
])
def test_a_copy_anywhere_else_is_misplaced(where: str) -> None:
    result = audit([entry("A", "alice@basic.example")],
                   [copy_at("A", "alice@basic.example", where)], ROOTS)
    [found] = result.findings
    assert found.kind == "misplaced" and found.paths == (where,)
    assert "not in the mailbox of alice@basic.example (/m/basic/basic.example/alice)" in \
        found.detail
    assert not result.ok and result.intact == 0
    assert "MISPLACED (1):" in result.report()
    assert [f["queue_id"] for f in result.as_dict()["misplaced"]] == ["A"]


def test_a_stray_second_copy_is_misplaced_not_missing() -> None:
    result = audit([entry("A", "alice@basic.example")],
                   [copy_at("A", "alice@basic.example", "/m/basic/basic.example/alice/new/f"),
                    copy_at("A", "alice@basic.example", "/m/basic/basic.example/bob/new/f")],
                   ROOTS)
    assert [f.kind for f in result.findings] == ["misplaced"] and result.intact == 1


def test_a_store_no_longer_configured_is_named() -> None:
    result = audit([entry("A", "alice@gone.example", store="gone")],
                   [copy_at("A", "alice@gone.example", "/m/basic/gone.example/alice/new/f")],
                   ROOTS)
    [found] = result.findings
    assert found.kind == "misplaced" and "store 'gone' is not configured" in found.detail


def test_without_roots_placement_is_not_checked() -> None:
    result = audit([entry("A", "alice@basic.example")],
                   [copy_at("A", "alice@basic.example", "/anywhere/new/f")])
    assert result.ok


# --- one Message-ID, several accepted messages ---------------------------------------------

def test_one_message_id_accepted_twice_is_information() -> None:
    ledger = [entry("A", "alice@basic.example", mid="<post@list>"),
              entry("B", "alice@basic.example", mid="<post@list>"),
              entry("C", "bob@basic.example", mid="<post@list>")]
    copies = [copy_at("A", "alice@basic.example", "/m/basic/basic.example/alice/new/a"),
              copy_at("B", "alice@basic.example", "/m/basic/basic.example/alice/new/b"),
              copy_at("C", "bob@basic.example", "/m/basic/basic.example/bob/new/c")]
    result = audit(ledger, copies, ROOTS)
    assert result.ok and result.passed() and not result.passed(strict=True)
    assert result.findings == () and result.intact == 3
    [group] = result.same_message_id
    assert (group.message_id, group.recipient) == ("<post@list>", "alice@basic.example")
    assert group.detail == "accepted as 2 messages (A, B)"
    assert "SAME MESSAGE-ID" not in result.report()
    assert result.notes().startswith("SAME MESSAGE-ID (1, information")
    data = result.as_dict()
    assert data["ok"] is True and data["duplicated"] == []
    assert [g["message_id"] for g in data["same_message_id"]] == ["<post@list>"]


def test_the_same_accepted_message_twice_is_still_a_duplicate() -> None:
    result = audit([entry("A", "alice@basic.example")],
                   [copy_at("A", "alice@basic.example", "/m/basic/basic.example/alice/new/a"),
                    copy_at("A", "alice@basic.example", "/m/basic/basic.example/alice/cur/b")],
                   ROOTS)
    assert [f.kind for f in result.findings] == ["duplicated"]
    assert result.same_message_id == ()


# --- scanning: shared roots, files moved during the walk, unreadable directories -----------

def claim(qid: str, address: str) -> Claim:
    return Claim(recipient_id=1, queue_id=qid, address=address, store="x", attempts=1,
                 mail_from="a@src.test", received_at=1_796_629_854.0, helo="h",
                 peer="127.0.0.1", body=b"Subject: s\r\n\r\nb\r\n")


def test_stores_sharing_a_root_are_read_once(tmp_path: Path) -> None:
    MaildirStore("a", tmp_path, "mx").deliver([claim("A1", "ann@a.example")])
    MaildirStore("b", tmp_path, "mx").deliver([claim("B1", "bob@b.example")])
    roots = store_roots({"a": tmp_path, "b": tmp_path / "." / ".." / tmp_path.name})
    copies = scan_stores(roots)
    digests = {c.queue_id: c.digest or "" for c in copies}
    assert sorted(c.queue_id or "" for c in copies) == ["A1", "B1"]
    ledger = [LedgerEntry(qid, None, digests[qid], 0.0, 1, 1,
                          (LedgerRecipient(address, store, DELIVERED),))
              for qid, address, store in (("A1", "ann@a.example", "a"),
                                          ("B1", "bob@b.example", "b"))]
    assert audit(ledger, copies, roots).ok


def test_a_root_inside_another_is_read_as_its_own(tmp_path: Path) -> None:
    MaildirStore("outer", tmp_path, "mx").deliver([claim("O1", "ann@o.example")])
    MaildirStore("inner", tmp_path / "inner", "mx").deliver([claim("I1", "ann@i.example")])
    copies = scan_stores(store_roots({"outer": tmp_path, "inner": tmp_path / "inner"}))
    assert sorted((c.store, c.queue_id) for c in copies) == [("inner", "I1"), ("outer", "O1")]


def test_a_file_a_reader_moves_during_the_scan_is_still_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    MaildirStore("a", tmp_path, "mx").deliver([claim("A1", "ann@a.example")])
    real = scan.read_copy

    def read_while_moved(store: str, path: Path) -> DeliveredCopy:
        if path.parent.name == "new":  # the reader takes it to cur/ first
            path.rename(path.parent.parent / "cur" / (path.name + ",u=1:2,S"))
        return real(store, path)

    monkeypatch.setattr(scan, "read_copy", read_while_moved)
    [found] = scan_root("a", tmp_path)
    assert found.queue_id == "A1" and found.path.name.endswith(",u=1:2,S")


def test_an_unreadable_directory_is_an_error_not_a_loss(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    MaildirStore("a", tmp_path, "mx").deliver([claim("A1", "ann@a.example")])
    real = os.scandir

    def scandir(path: str) -> object:
        if str(path).endswith("ann"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ScanError, match=r"cannot read .*/a.example/ann: Permission denied"):
        list(mailbox_files(tmp_path))
    assert list(mailbox_files(tmp_path / "absent")) == []
