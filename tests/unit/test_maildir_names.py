"""Maildir file names: a form readers do not misparse, and copies found again by name after
readers renamed them or an earlier version named them."""

from __future__ import annotations

import dataclasses
import hashlib
import mailbox
import os
import random
import re
from pathlib import Path

import pytest

from mailqueue.errors import TemporaryDeliveryError
from mailqueue.mailbox.maildir import (
    MaildirStore,
    claim_key,
    copy_key,
    list_maildir,
    maildir_name,
    render,
    unique_part,
)
from mailqueue.queue.values import Claim, new_queue_id

SECOND = 1_796_629_854


def claim(attempts: int = 1, address: str = "alice@basic.example", qid: str = "K054576PQSPKNM",
          received_at: float = SECOND + 0.25, body: bytes = b"Subject: x\r\n\r\nbody\r\n",
          ) -> Claim:
    return Claim(recipient_id=1, queue_id=qid, address=address, store="basic",
                 attempts=attempts, mail_from="a@src.test", received_at=received_at,
                 helo="client.test", peer="127.0.0.1", body=body)


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def old_name(c: Claim, hostname: str) -> str:
    """The name earlier versions gave a copy (``time.QQUEUEID_R<hash>.host``)."""
    rcpt = hashlib.sha256(c.address.lower().encode()).hexdigest()[:12]
    return f"{int(c.received_at)}.Q{c.queue_id}_R{rcpt}.{hostname}"


def mailutils_cmp(a: str, b: str) -> int:
    """GNU mailutils' ordering of two Maildir names (``maildir_message_cmp``, 3.x): seconds,
    then the number after the first ``M`` of each rest, then after the first ``Q``, then the
    bytes up to ``:``. 0 means "the same message": its scan keeps only one of the two."""
    def number(s: str, at: int) -> tuple[int, int]:
        end = at
        while end < len(s) and s[end].isdigit():
            end += 1
        return (int(s[at:end]) if end > at else 0), end

    la, ia = number(a, 0)
    lb, ib = number(b, 0)
    if la != lb:
        return la - lb
    if a[ia:ia + 1] != b[ib:ib + 1]:
        return ord(a[ia:ia + 1] or "\0") - ord(b[ib:ib + 1] or "\0")
    ia, ib = ia + 1, ib + 1
    for marker in "MQ":
        pa, pb = a.find(marker, ia), b.find(marker, ib)
        if pa >= 0 and pb >= 0:
            (la, ia), (lb, ib) = number(a, pa + 1), number(b, pb + 1)
            if la != lb:
                return la - lb
    rest_a, rest_b = a[ia:].split(":", 1)[0], b[ib:].split(":", 1)[0]
    return (rest_a > rest_b) - (rest_a < rest_b)


def one_second(count: int) -> list[Claim]:
    """``count`` messages to one mailbox, accepted within one second (real queue ids)."""
    rng = random.Random(7)
    out = []
    for i in range(count):
        at = SECOND + rng.random()
        out.append(claim(qid=new_queue_id(at), received_at=at,
                         body=f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode()))
    return out


def test_new_names_have_no_upper_case_after_the_time() -> None:
    for c in one_second(300):
        name = maildir_name(c, "MX1.Example.NET")
        assert name.split(".", 1)[1] == name.split(".", 1)[1].lower(), name
        assert name.endswith(".mx1.example.net")
        assert copy_key(name) == claim_key(c)


def test_hostname_part_is_sanitised_and_bounded() -> None:
    name = maildir_name(claim(), "Mx/One:2525,main host\n" + "x" * 300)
    host = name.split(".", 2)[2]
    assert not set(host) & set("/:,\n ") and len(host) <= 64
    assert unique_part(name) == name and copy_key(name) == claim_key(claim())
    assert maildir_name(claim(), "").endswith(".localhost")


def test_a_long_hostname_still_delivers(tmp_path: Path) -> None:
    store = MaildirStore("basic", tmp_path, "h" * 300)
    assert store.deliver([claim()]) == [None]
    assert len(files(tmp_path)) == 1


def test_the_hostname_is_made_safe_for_the_file_name_only(tmp_path: Path) -> None:
    store = MaildirStore("basic", tmp_path, "MX/One:2525")
    assert store.deliver([claim()]) == [None]
    [path] = files(tmp_path)
    assert path.name.endswith(".mx_one_2525") and copy_key(path.name) == claim_key(claim())
    assert b"\tby MX/One:2525 (mailqueue) with ESMTP id K054576PQSPKNM\n" in path.read_bytes()


def test_mailutils_tells_apart_every_message_of_one_second() -> None:
    # 300 messages to one mailbox in one second: no two names may compare equal, or
    # mailutils shows one of them only.
    names = [maildir_name(c, "mx.test") for c in one_second(300)]
    equal = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
             if mailutils_cmp(a, b) == 0]
    assert equal == []
    # The example of the report: two upper-case queue ids ending in M look alike to it.
    looks_same = [old_name(claim(qid=q), "mx.test") for q in ("K054577NX9C32M", "K05457CBX41VNM")]
    assert mailutils_cmp(*looks_same) == 0


def test_python_mailbox_sees_every_message(tmp_path: Path) -> None:
    store = MaildirStore("basic", tmp_path, "mx.test", writers=4)
    try:
        assert store.deliver(one_second(300)) == [None] * 300
    finally:
        store.close()
    box = mailbox.Maildir(tmp_path / "basic.example" / "alice", create=False)
    assert sorted(m["Subject"] for m in box) == sorted(f"m{i}" for i in range(300))


def test_names_readers_append_to_keep_the_key() -> None:
    name = maildir_name(claim(), "mx.test")
    for renamed in (f"{name}:2,S", f"{name},u=1:2,", f"{name},a=O,u=12:2,S",
                    f"{name},S=1234,W=1260:2,FS", f"{name},U=7,FMD5=abc:2,S"):
        assert unique_part(renamed) == name
        assert copy_key(renamed) == claim_key(claim())
    old = old_name(claim(), "mx.test")
    assert copy_key(old) == copy_key(old + ":2,S") == claim_key(claim())
    for foreign in ("1500000000.M1P1.oldhost:2,S", "1500000000.Qabc.host", "stray", ""):
        assert copy_key(foreign) is None


def test_a_copy_renamed_by_a_reader_is_found_on_retry(tmp_path: Path) -> None:
    for renamed in ("{},u=1:2,S", "{},a=O,u=3:2,S", "{}:2,S"):
        root = tmp_path / renamed.replace("{}", "n").replace(":", "_")
        store = MaildirStore("basic", root, "mx.test")
        assert store.deliver([claim()]) == [None]
        [path] = files(root)
        path.rename(path.parent.parent / "cur" / renamed.format(path.name))
        assert store.deliver([claim(attempts=2)]) == [None]  # repeated after a crash
        assert len(files(root)) == 1, renamed


def test_a_copy_under_the_old_name_is_found_on_retry(tmp_path: Path) -> None:
    box = tmp_path / "basic.example" / "alice"
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True)
    first, second = claim(qid="JZ5BBBBBBBBBBB"), claim(qid="JZ5CCCCCCCCCCC")
    (box / "new" / old_name(first, "mx.test")).write_bytes(render(first, "mx.test"))
    (box / "cur" / (old_name(second, "mx.test") + ":2,S")).write_bytes(
        render(second, "mx.test"))
    store = MaildirStore("basic", tmp_path, "mx.test")
    retried = [dataclasses.replace(c, attempts=2) for c in (first, second)]
    assert store.deliver(retried) == [None, None]
    assert len(files(tmp_path)) == 2


def test_a_repeat_knows_a_copy_by_name_only(tmp_path: Path) -> None:
    # A file with exactly the content of the copy, under a name that is not its own, is
    # not taken for it (the check reads no file): the copy is written.
    store = MaildirStore("basic", tmp_path, "mx.test")
    box = tmp_path / "basic.example" / "alice"
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True)
    (box / "cur" / "1796629900.M12P34.reader:2,S").write_bytes(render(claim(), "mx.test"))
    assert store.deliver([claim(attempts=2)]) == [None]
    assert len(files(tmp_path)) == 2


def test_a_repeat_looks_in_new_and_cur_only(tmp_path: Path) -> None:
    # A copy filed in a folder before the repeat is not looked for there: a second copy is
    # written (and verify reports it as duplicated).
    store = MaildirStore("basic", tmp_path, "mx.test")
    assert store.deliver([claim()]) == [None]
    [path] = files(tmp_path)
    folder = path.parent.parent / ".Archive" / "cur"
    folder.mkdir(parents=True)
    path.rename(folder / (path.name + ":2,S"))
    assert store.deliver([claim(attempts=2)]) == [None]
    assert len(files(tmp_path)) == 2


def test_a_repeat_reads_and_stats_no_file(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store = MaildirStore("basic", tmp_path, "mx.test")
    box = tmp_path / "basic.example" / "alice"
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True)
    for n in range(50):
        (box / "cur" / f"15000000{n:02d}.M{n}P1.old:2,S").write_bytes(b"x" * n)
    touched: list[str] = []
    real_stat, real_open = os.stat, os.open

    def stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        touched.append(f"stat {path}")
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    def open_(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if not flags & os.O_CREAT:
            touched.append(f"open {path}")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr("builtins.open", lambda *a, **k: touched.append(f"read {a[0]}"))
    assert store.deliver([claim(attempts=2)]) == [None]
    monkeypatch.undo()
    assert [t for t in touched if "old:2,S" in t] == []
    assert len(files(tmp_path)) == 51


def test_an_unlistable_mailbox_fails_the_retry_temporarily(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = MaildirStore("basic", tmp_path, "mx.test")
    assert store.deliver([claim()]) == [None]
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        if str(path).endswith("cur"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    # Without the listing a copy cannot be ruled out: fail now, try again later.
    [outcome] = store.deliver([claim(attempts=2, qid="K054576PQSPKNN")])
    assert isinstance(outcome, TemporaryDeliveryError)
    assert "Permission denied" in str(outcome)
    monkeypatch.undo()
    assert len(files(tmp_path)) == 1


def test_first_attempts_do_not_list_the_mailbox(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Only a repeated claim looks for an earlier copy; a first one goes straight to tmp/.
    store = MaildirStore("basic", tmp_path, "mx.test")
    listed: list[str] = []
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        listed.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert store.deliver([claim(qid=f"K0545{i:09d}") for i in range(5)]) == [None] * 5
    assert listed == []
    assert re.fullmatch(r"\d+\.q[0-9a-z]+_r[0-9a-f]{12}\.mx\.test", files(tmp_path)[0].name)


def test_a_listing_is_empty_without_a_maildir(tmp_path: Path) -> None:
    assert list_maildir(tmp_path / "absent") == []
    (tmp_path / "file").write_bytes(b"x")
    assert list_maildir(tmp_path / "file") == []
    box = tmp_path / "box"
    (box / "new").mkdir(parents=True)
    (box / "cur").write_bytes(b"not a directory")
    (box / "new" / "1500000000.M1P1.old").write_bytes(b"x")
    (box / "new" / ".hidden").write_bytes(b"x")
    (box / "new" / "sub").mkdir()
    assert [e.name for e in list_maildir(box)] == ["1500000000.M1P1.old"]
    store = MaildirStore("basic", tmp_path / "file", "mx.test")
    [outcome] = store.deliver([claim(attempts=2)])  # no Maildir can be made there
    assert isinstance(outcome, TemporaryDeliveryError)


def test_the_received_line_says_how_the_message_came() -> None:
    sent = dataclasses.replace(claim(), tls="TLSv1.3 TLS_AES_128_GCM_SHA256", auth_user="alice")
    assert b") with ESMTPSA id " in render(sent, "mx.test")
    assert b") with ESMTPS id " in render(dataclasses.replace(sent, auth_user=None), "mx.test")
    assert b") with ESMTP id " in render(claim(), "mx.test")
