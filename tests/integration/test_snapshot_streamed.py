"""``verify --snapshot`` writes the files as they are read, and ``verify --against`` compares
through a scratch file: the command prints, byte for byte, what the whole snapshot held in
memory gives (the oracle, tests/snapshot_reference.py), for a snapshot of either format on
an instance with every kind of finding. A damaged snapshot is one line, and neither the
snapshot's temporary file nor the scratch file outlives the command, however it ends."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailqueue.config import load_config
from mailqueue.mailbox.maildir import mailbox_path
from mailqueue.queue import _auditscratch
from mailqueue.verify import _jsonobject, snapshot
from mailqueue.verify.snapshot import (
    LINES_FORMAT,
    Comparison,
    FileRecord,
    SnapshotError,
    check_snapshot,
)
from tests import snapshot_reference as reference
from tests.cli_run import Mq, cli_runner, one_line_error, write_config

ALICE, BOB, CAROL = "alice@basic.example", "bob@basic.example", "carol@exchange.example"
UNCHANGED = 40  # more than a few chunks of records


@pytest.fixture
def mq(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    return cli_runner(capsys, monkeypatch)


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records go to the scratch file and come back from it in chunks far smaller than the
    mail, and a snapshot written as one document is read 7 characters at a time: every
    boundary is crossed many times."""
    monkeypatch.setattr(_auditscratch, "CHUNK", 7)
    monkeypatch.setattr(snapshot, "CHUNK", 7)
    monkeypatch.setattr(_jsonobject, "READ", 7)


def stores(config: Path) -> dict[str, Path]:
    """The stores' roots, as the command finds them."""
    return {s.name: root for s in load_config(str(config)).stores
            if (root := s.mailbox_root) is not None}


def box(config: Path, store: str, address: str) -> Path:
    home = mailbox_path(stores(config)[store], address)
    for sub in ("new", "cur", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return home


def snapshotted(tmp_path: Path, count: int) -> tuple[Path, Path, Path]:
    """A config whose store holds ``count`` mails over ``count // 100`` mailboxes, a
    snapshot of them taken by the command, and an empty directory for TMPDIR."""
    config = write_config(tmp_path)
    for n in range(count):
        put(box(config, "basic", f"user{n % (count // 100)}@basic.example") / "cur" /
            f"1500{n:06}.M1.x:2,S", f"mail {n}")
    lines = tmp_path / "before.json"
    subprocess.run([sys.executable, "-m", "mailqueue", "verify", "-c", str(config),
                    "--snapshot", str(lines)], check=True, capture_output=True, timeout=60)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return config, lines, scratch


def put(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode())
    return path


def existing_mail(config: Path) -> dict[str, Path]:
    """Mail from before the window in two stores, named as MTAs and readers name it, some
    of it with names beyond ASCII."""
    alice, carol = box(config, "basic", ALICE), box(config, "hosted-exchange", CAROL)
    box(config, "basic", BOB)
    files = {
        "changed": put(alice / "cur" / "1500000000.M1P1.old:2,S", "one"),
        "seen": put(alice / "new" / "1500000001.M2P1.old", "two"),
        "reflagged": put(alice / "cur" / "1500000002.M3P1.old:2,S", "three"),
        "missing": put(alice / "cur" / "1500000003.M4P1.old:2,", "four"),
        "renamed": put(alice / "cur" / "1500000004.M5P1.old:2,S", "five"),
        "filed": put(alice / "cur" / "1500000005.M6P1.old:2,S", "six"),
        "twin1": put(alice / "cur" / "1500000006.M7P1.old:2,S", "same"),
        "twin2": put(alice / "cur" / "1500000007.M8P1.old:2,S", "same"),
        "to-bob": put(alice / "cur" / "1500000008.M9P1.old:2,S", "nine"),
        "umlaut": put(alice / "cur" / "1500000009.M10P1.h\u00f6st:2,S", "ten"),
        "emoji": put(alice / "cur" / "1500000009.M10P1.h\U0001f600st:2,S", "twelve"),
        "carol-changed": put(carol / "cur" / "1500000100.M1P2.old:2,S", "c1"),
        "carol-missing": put(carol / "new" / "1500000101.M2P2.old", "c2"),
    }
    for n in range(UNCHANGED):
        put(alice / "cur" / f"15000002{n:02}.M{n}P3.old:2,S", f"kept {n}")
        put(carol / "cur" / f"15000003{n:02}.M{n}P4.old:2,S", f"kept {n}")
    return files


def the_window(config: Path, files: dict[str, Path]) -> None:
    """What a window and its readers do to the mail: one of every finding."""
    alice, bob = box(config, "basic", ALICE), box(config, "basic", BOB)
    files["changed"].write_bytes(b"overwritten by the upgrade\n")
    files["carol-changed"].write_bytes(b"truncated")
    for gone in ("missing", "carol-missing", "umlaut", "emoji"):
        files[gone].unlink()
    # A reader: new/ to cur/ with flags, flags changed, mailutils' attributes.
    files["seen"].rename(alice / "cur" / "1500000001.M2P1.old:2,S")
    files["reflagged"].rename(alice / "cur" / "1500000002.M3P1.old,u=7:2,RS")
    # A reader renames altogether, files in a folder; the same content twice, and once
    # more as new mail: the first two new names in key order are the moves.
    files["renamed"].rename(alice / "cur" / "1796600000.R1.reader:2,S")
    (alice / ".Archive" / "cur").mkdir(parents=True)
    files["filed"].rename(alice / ".Archive" / "cur" / "1500000005.M6P1.old:2,S")
    files["twin1"].rename(alice / "cur" / "1796600005.R5.reader:2,S")
    files["twin2"].rename(alice / "cur" / "1796600003.R3.reader:2,S")
    put(alice / "new" / "1796600004.R4.reader", "same")
    # Into another user's mailbox: missing from hers, new in his.
    files["to-bob"].rename(bob / "cur" / "1500000008.M9P1.old:2,S")
    # New mail since.
    put(alice / "new" / "1796700000.q3k9x2_rab12cd34ef56.mx.test", "new mail")
    put(box(config, "hosted-exchange", CAROL) / "new" / "1796700001.q3k9x3_r0123456789ab.mx.test",
        "new mail")


def header(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8") as lines:
        data: dict[str, str] = json.loads(lines.readline())
    return data


def test_against_prints_what_the_whole_snapshot_in_memory_gives(
        tmp_path: Path, mq: Mq, small_chunks: None, scratch_dir: Path) -> None:
    config = write_config(tmp_path)
    files = existing_mail(config)
    document, lines = tmp_path / "before-document.json", tmp_path / "before.json"
    kept = reference.take_snapshot(stores(config))
    kept.dump(document)
    written = mq("verify", "-c", config, "--snapshot", lines)
    assert written.code == 0 and written.err == ""
    assert written.out == f"snapshot: {len(kept.files)} mailbox files in 2 stores written to " \
                          f"{lines}\n"
    assert header(lines)["format"] == LINES_FORMAT

    the_window(config, files)
    now = reference.take_snapshot(stores(config))
    expected = {document: (json.loads(document.read_text())["created_at"],
                           reference.compare_snapshot(reference.Manifest.load(document), now)),
                lines: (header(lines)["created_at"], reference.compare_snapshot(kept, now))}
    for source, (since, diff) in expected.items():
        text = mq("verify", "-c", config, "--against", source)
        assert (text.code, text.err) == (1, "")
        assert text.out == diff.report(since) + "\n"
        as_json = mq("verify", "-c", config, "--against", source, "--json")
        assert (as_json.code, as_json.err) == (1, "")
        assert as_json.out == json.dumps(diff.as_dict(), indent=1) + "\n"
    assert os.listdir(scratch_dir) == []

    # What that is: every kind of finding, in key order.
    report = mq("verify", "-c", config, "--against", lines).out.splitlines()
    checked = len(kept.files)
    assert report[0].endswith(f": {checked} files checked, 5 missing, 2 changed, 4 new since, "
                              "4 moved by a reader")
    names = {name: path.name for name, path in files.items()}
    assert [line.rsplit("/", 1)[-1] for line in report[2:7]] == [
        names[n] for n in ("missing", "to-bob", "umlaut", "emoji", "carol-missing")]
    assert report[7] == "CHANGED (2):"
    assert [line.split(" -> ")[-1].rsplit("/", 1)[-1] for line in report[-4:]] == [
        "1796600000.R1.reader:2,S", "1500000005.M6P1.old:2,S", "1796600003.R3.reader:2,S",
        "1796600004.R4.reader"]


def test_two_files_with_one_unique_part_are_both_kept(tmp_path: Path, mq: Mq) -> None:
    config = write_config(tmp_path)
    alice = box(config, "basic", ALICE)
    put(alice / "cur" / "1500000000.M1P1.old,S=5:2,S", "first")
    put(alice / "cur" / "1500000000.M1P1.old,S=6:2,S", "second")
    lines = tmp_path / "before.json"
    assert mq("verify", "-c", config, "--snapshot", lines).code == 0
    keys = [json.loads(line).get("key") for line in lines.read_text().splitlines()[1:-1]]
    assert sorted(keys) == ["basic:basic.example/alice/1500000000.M1P1.old",
                            "basic:basic.example/alice/1500000000.M1P1.old,S=6:2,S"]
    same = mq("verify", "-c", config, "--against", lines)
    assert same.code == 0, same.out
    assert same.out.split(": ", 1)[1] == "2 files checked, 0 missing, 0 changed, 0 new since\n"
    # A snapshot written as one document read its keys as alike: what it gave, it gives.
    document = tmp_path / "before-document.json"
    reference.take_snapshot(stores(config)).dump(document)
    diff = reference.compare_snapshot(reference.Manifest.load(document),
                                      reference.take_snapshot(stores(config)))
    since = json.loads(document.read_text())["created_at"]
    assert mq("verify", "-c", config, "--against", document).out == diff.report(since) + "\n"


def test_the_snapshot_file_is_json_lines_with_a_count(tmp_path: Path, mq: Mq) -> None:
    config = write_config(tmp_path)
    alice = box(config, "basic", ALICE)
    put(alice / "cur" / "1500000000.M1P1.old:2,S", "one")
    put(alice / "new" / "1500000001.M2P1.old", "two")
    lines = tmp_path / "before.json"
    result = mq("verify", "-c", config, "--snapshot", lines, "--json")
    assert json.loads(result.out) == {"snapshot": str(lines), "files": 2}
    first, *records, last = [json.loads(line) for line in lines.read_text().splitlines()]
    assert set(first) == {"format", "created_at"} and first["format"] == LINES_FORMAT
    assert last == {"files": 2}
    assert {r["key"]: (Path(r["path"]).name, r["size"]) for r in records} == {
        "basic:basic.example/alice/1500000000.M1P1.old": ("1500000000.M1P1.old:2,S", 3),
        "basic:basic.example/alice/1500000001.M2P1.old": ("1500000001.M2P1.old", 3)}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize(("content", "fragment"), [
    (None, "before.json: no such snapshot file"),
    ("{}", "before.json: not a mailqueue snapshot (expected format "
           "'mailqueue-snapshot/2' or 'mailqueue-snapshot/1'"),
    ('{"format": "mailqueue-snapshot/9"}\n', "not a mailqueue snapshot"),
    ("From: someone\n\nnot json\n", "before.json: cannot read snapshot: Expecting value"),
    ("HEADER\n", "before.json: damaged snapshot (it ends at line 1, before its last line"),
    ("HEADER\nRECORD\n", "before.json: damaged snapshot (it ends at line 2, before its last"),
    ("HEADER\nRECORD\n{\"files\": 2}\n", "damaged snapshot (it records 1 files, its last line "
                                         "says 2)"),
    ("HEADER\nRECORD\n{\"files\": 1}\nRECORD\n", "damaged snapshot (line 4: a line after the "
                                                 "last)"),
    ("HEADER\n{\"key\": \"k\", \"path\"\n", "damaged snapshot (line 2: Expecting ':'"),
    ("HEADER\n[1, 2]\n", "damaged snapshot (line 2: not a JSON object)"),
    ("HEADER\n{\"key\": \"k\", \"path\": \"p\", \"sha256\": null, \"size\": 1}\n",
     "damaged snapshot (line 2: sha256 is not a string)"),
    ("HEADER\n{\"key\": \"k\", \"path\": \"p\", \"size\": 1}\n",
     "damaged snapshot (line 2: a file record has the fields path, sha256, size)"),
    ("HEADER\n{\"files\": \"2\"}\n", "damaged snapshot (line 2: neither a file nor the last"),
    ("HEADER\n\xff\n", "damaged snapshot (line 2: 'utf-8' codec can't decode"),
    ('{"format": "mailqueue-snapshot/1", "files": {"k": {"path": "p"}}}',
     "damaged snapshot (k: a file record has the fields path, sha256, size)"),
    ('{"format": "mailqueue-snapshot/1", "files": []}',
     "damaged snapshot ('files' is not an object)"),
    # Read a member at a time: its format and time come first.
    ('{"format": "mailqueue-snapshot/1", "created_at": "then", "files": {"k": {"path": "p"}}}',
     "damaged snapshot (k: a file record has the fields path, sha256, size)"),
    ('{"format": "mailqueue-snapshot/1", "created_at": "then", "files": {"k": {"path": "p"',
     "before.json: cannot read snapshot: Expecting ',' delimiter: character 84"),
    ('{"format": "mailqueue-snapshot/1", "created_at": "then", "files": {"k": DOCRECORD',
     "before.json: cannot read snapshot: Expecting ',' or '}': character 174"),
    ('{"format": "mailqueue-snapshot/1", "created_at": "then", "files": {}} and more',
     "before.json: cannot read snapshot: Extra data: character 70"),
    ('{\n"format": "mailqueue-snapshot/1", "created_at": "then", "files": {}, "format": 2}',
     "damaged snapshot ('format' is given twice)"),
    ('{"format": "mailqueue-snapshot/1", "created_at": "then", "files": [1]}',
     "before.json: cannot read snapshot: Expecting '{': character 66"),
    ('{"format": "mailqueue-snapshot/1", "created_at": "then", "files": {"k": DOCRECORD}}\n',
     "QUIETLY"),
])
def test_a_snapshot_that_cannot_be_read_is_one_line(
        tmp_path: Path, mq: Mq, scratch_dir: Path, content: str | None, fragment: str) -> None:
    config = write_config(tmp_path)
    source = tmp_path / "before.json"
    if content is not None:
        content = content.replace("HEADER", json.dumps({"format": LINES_FORMAT,
                                                        "created_at": "then"}))
        content = content.replace("DOCRECORD", json.dumps({"path": "p", "sha256": "0" * 64,
                                                           "size": 1}))
        content = content.replace("RECORD", json.dumps({"key": "k", "path": "p",
                                                        "sha256": "0" * 64, "size": 1}))
        source.write_bytes(content.encode("utf-8", "surrogateescape")
                           if "\xff" not in content else content.encode("latin-1"))
    result = mq("verify", "-c", config, "--against", source)
    if fragment == "QUIETLY":  # the control: read, one file missing
        assert result.code == 1 and result.err == "", result.err
        assert result.out == "snapshot of then: 1 files checked, 1 missing, 0 changed, 0 new " \
                             "since\nMISSING (1):\n  p\n"
    else:
        one_line_error(result, fragment)
    assert os.listdir(scratch_dir) == []


def test_names_that_are_not_utf8_keep_their_order(tmp_path: Path, mq: Mq) -> None:
    # In the order Python sorts strings in: U+00F6 < U+DCFC (a byte that is not UTF-8, as
    # a surrogate) < U+1F600.
    config = write_config(tmp_path)
    alice = box(config, "basic", ALICE)
    old = [put(alice / "cur" / f"1500000009.M10P1.h{c}st:2,S", f"mail {c!a}")
           for c in ("\U0001f600", "\udcfc", "\u00f6", "o")]
    lines = tmp_path / "before.json"
    assert mq("verify", "-c", config, "--snapshot", lines).code == 0
    kept = reference.take_snapshot(stores(config))
    for path in old[:3]:
        path.unlink()
    old[3].write_bytes(b"changed")
    diff = reference.compare_snapshot(kept, reference.take_snapshot(stores(config)))
    result = mq("verify", "-c", config, "--against", lines, "--json")
    assert result.out == json.dumps(diff.as_dict(), indent=1) + "\n"
    assert [Path(r["path"]).name.split(".")[2][1] for r in json.loads(result.out)["missing"]] == [
        "\u00f6", "\udcfc", "\U0001f600"]


def test_no_room_for_the_scratch_file_is_one_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(SnapshotError) as caught:
        check_snapshot(empty_snapshot(tmp_path), {}, directory=str(not_a_dir))
    assert str(caught.value) == (
        f"cannot make the snapshot check's scratch directory in {not_a_dir}: Not a directory "
        "(set TMPDIR to a writable directory with room)")


def test_a_full_temporary_directory_is_one_line(tmp_path: Path) -> None:
    # The scratch file may not grow past 64 KiB (as on a full disk): one line, naming
    # TMPDIR, and nothing left behind.
    config, lines, scratch = snapshotted(tmp_path, 2000)

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))

    result = subprocess.run([sys.executable, "-m", "mailqueue", "verify", "-c", str(config),
                             "--against", str(lines)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "TMPDIR": str(scratch)},
                            preexec_fn=small_files)
    assert result.returncode == 1, result.stdout
    assert re.fullmatch(r"mailqueue: error: cannot write the snapshot check's scratch file in "
                        rf"{re.escape(str(scratch))}/mailqueue-verify-\w+: .+ \(set TMPDIR to "
                        r"a directory with room\)\n", result.stderr), result.stderr
    assert os.listdir(scratch) == []


def empty_snapshot(tmp_path: Path) -> Path:
    source = tmp_path / "empty.json"
    source.write_text(json.dumps({"format": LINES_FORMAT, "created_at": "then"}) + "\n" +
                      json.dumps({"files": 0}) + "\n")
    return source


def test_an_interrupted_snapshot_leaves_no_file(tmp_path: Path, mq: Mq,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path)
    for n in range(30):
        put(box(config, "basic", f"user{n}@basic.example") / "new" / f"15000000{n:02}.M1P1.x",
            "mail")
    read = snapshot._digest
    seen = []

    def digest(path: Path) -> tuple[str, int]:
        seen.append(path)
        if len(seen) == 20:
            assert (tmp_path / "before.json.tmp").exists()  # written as the files are read
            raise KeyboardInterrupt  # Ctrl-C in the middle of the scan
        return read(path)

    monkeypatch.setattr(snapshot, "_digest", digest)
    assert mq("verify", "-c", config, "--snapshot", tmp_path / "before.json").code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mail", "mq.toml"]


def test_an_interrupted_check_removes_the_scratch_file(
        tmp_path: Path, scratch_dir: Path, small_chunks: None) -> None:
    def records(count: int, stop: int | None = None) -> Iterator[tuple[str, FileRecord]]:
        for n in range(count):
            if n == stop:
                assert len(os.listdir(scratch_dir)) == 1
                raise KeyboardInterrupt
            yield f"s:d/u/{n}", FileRecord(f"/m/d/u/cur/{n}", "0" * 64, 1)

    with pytest.raises(KeyboardInterrupt), Comparison() as comparison:
        comparison.add_before(records(100))
        comparison.add_now(records(100, stop=50))
    assert os.listdir(scratch_dir) == []
    comparison.close()  # again: nothing to do
    with pytest.raises(SnapshotError, match="the snapshot check was stopped"):
        comparison.result()


def test_ctrl_c_during_against_removes_the_scratch_file(tmp_path: Path) -> None:
    config, lines, scratch = snapshotted(tmp_path, 3000)
    proc = subprocess.Popen([sys.executable, "-m", "mailqueue", "verify", "-c", str(config),
                             "--against", str(lines)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(scratch)})
    deadline = time.monotonic() + 30
    # The scratch directory, not the probe file Python's tempfile writes and removes in
    # TMPDIR on its first use (a signal in between would leave that one behind).
    while (not any(name.startswith("mailqueue-verify-") for name in os.listdir(scratch))
           and proc.poll() is None and time.monotonic() < deadline):
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    # Interrupted (130), or done before the signal came.
    assert proc.returncode in (130, 0), err
    assert "Traceback" not in err
    assert proc.returncode == 130 or "3000 files checked, 0 missing" in out
    assert os.listdir(scratch) == []
