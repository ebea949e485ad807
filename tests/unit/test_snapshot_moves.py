"""Snapshots of existing mailbox content know a file by the unique part of its name, and
find by content a file a reader renamed altogether or filed in a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailqueue.mailbox.maildir import mailbox_path
from mailqueue.verify.snapshot import (
    FORMAT,
    Manifest,
    SnapshotError,
    compare_snapshot,
    take_snapshot,
)


def maildir(root: Path, address: str) -> Path:
    box = mailbox_path(root, address)
    for sub in ("new", "cur", "tmp"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    return box


def test_snapshot_knows_a_file_by_its_unique_part(tmp_path: Path) -> None:
    box = maildir(tmp_path, "alice@basic.example")
    (box / "new" / "1500000000.M1P1.old").write_bytes(b"one")
    (box / "cur" / "1500000001.M2P1.old:2,S").write_bytes(b"two")
    before = take_snapshot({"mail": tmp_path})
    (box / "new" / "1500000000.M1P1.old").rename(box / "cur" / "1500000000.M1P1.old,u=1:2,")
    (box / "cur" / "1500000001.M2P1.old:2,S").rename(
        box / "cur" / "1500000001.M2P1.old,a=O,u=2:2,S")
    diff = compare_snapshot(before, take_snapshot({"mail": tmp_path}))
    assert diff.ok and diff.moved == () and diff.added == 0, diff.report("then")


def test_a_file_renamed_entirely_or_filed_is_moved_not_missing(tmp_path: Path) -> None:
    box = maildir(tmp_path, "alice@basic.example")
    other = maildir(tmp_path, "bob@basic.example")
    for n in range(4):
        (box / "cur" / f"150000000{n}.M{n}P1.old:2,S").write_bytes(b"same" if n < 2 else
                                                                 f"mail {n}".encode())
    before = take_snapshot({"mail": tmp_path})
    (box / "cur" / "1500000000.M0P1.old:2,S").rename(box / "cur" / "1796600000.R1.reader:2,S")
    (box / ".Archive" / "cur").mkdir(parents=True)
    (box / "cur" / "1500000002.M2P1.old:2,S").rename(box / ".Archive" / "cur" / "x:2,S")
    (box / "cur" / "1500000003.M3P1.old:2,S").rename(other / "cur" / "y:2,S")  # not hers
    diff = compare_snapshot(before, take_snapshot({"mail": tmp_path}))
    assert [(b.path.rsplit("/", 1)[1], n.path.rsplit("/", 1)[1]) for b, n in diff.moved] == [
        ("1500000000.M0P1.old:2,S", "1796600000.R1.reader:2,S"),
        ("1500000002.M2P1.old:2,S", "x:2,S")]
    assert [r.path.rsplit("/", 1)[1] for r in diff.missing] == ["1500000003.M3P1.old:2,S"]
    assert diff.added == 1 and not diff.ok
    text = diff.report("then")
    assert "2 moved by a reader" in text and "MOVED (2" in text and "MISSING (1)" in text
    assert len(diff.as_dict()["moved"]) == 2


def test_a_snapshot_written_before_keeps_matching(tmp_path: Path) -> None:
    # Earlier versions keyed files by the name up to ':' only.
    box = maildir(tmp_path, "alice@basic.example")
    path = box / "cur" / "1500000000.M1P1.old,S=3:2,S"
    path.write_bytes(b"one")
    written = tmp_path / "old.json"
    record = {"path": str(path), "sha256": take_snapshot({"mail": tmp_path}).files[
        "mail:basic.example/alice/1500000000.M1P1.old"].sha256, "size": 3}
    written.write_text(json.dumps({"format": FORMAT, "created_at": "then", "files": {
        "mail:basic.example/alice/1500000000.M1P1.old,S=3": record}}))
    before = Manifest.load(written)
    path.rename(box / "cur" / "1500000000.M1P1.old,S=3,u=4:2,ST")
    diff = compare_snapshot(before, take_snapshot({"mail": tmp_path}))
    assert diff.ok and diff.moved == () and diff.added == 0


def test_a_snapshot_that_cannot_be_written_is_one_clear_error(tmp_path: Path) -> None:
    manifest = take_snapshot({"mail": tmp_path})
    with pytest.raises(SnapshotError, match=r"no-such-dir/snap.json: cannot write the "
                                            r"snapshot: No such file or directory"):
        manifest.dump(tmp_path / "no-such-dir" / "snap.json")


def test_stores_sharing_a_root_record_each_file_once(tmp_path: Path) -> None:
    box = maildir(tmp_path, "alice@basic.example")
    (box / "cur" / "1500000000.M1P1.old:2,S").write_bytes(b"one")
    manifest = take_snapshot({"b": tmp_path, "a": tmp_path / "."})
    assert list(manifest.files) == ["a:basic.example/alice/1500000000.M1P1.old"]
    again = take_snapshot({"a": tmp_path, "b": tmp_path})  # the order of the config
    assert compare_snapshot(manifest, again).ok and compare_snapshot(manifest, again).added == 0
