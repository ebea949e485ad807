"""``[[stores]] owner``: a Maildir store whose Maildirs and files belong to a mail user (the
user a Dovecot serving them runs as), the config forms it takes, and the line ``serve``
stops with when ownership cannot be given."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from mailqueue.config import load_config
from mailqueue.errors import ConfigError
from mailqueue.mailbox.maildir import MaildirStore, resolve_owner
from tests.unit.test_maildir import claim

ROOT = os.geteuid() == 0
# Only root gives files away; another user can only "give" them to itself.
OWNER = (5000, 5001) if ROOT else (os.getuid(), os.getgid())
NOBODY = 65534


def owner_of(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid


def test_delivered_files_and_their_directories_belong_to_the_owner(tmp_path: Path) -> None:
    root = tmp_path / "mail" / "basic"
    store = MaildirStore("basic", root, "mx.test", owner=OWNER)
    assert store.check_writable() is None
    assert owner_of(root) == OWNER  # a reader makes the Maildirs of new mailboxes there
    assert [p.name for p in root.iterdir()] == []  # the probe is gone
    assert store.deliver([claim()]) == [None]
    box = root / "basic.example" / "alice"
    [delivered] = (box / "new").iterdir()
    for path in (delivered, box, box / "tmp", box / "new", box / "cur", box.parent, root):
        assert owner_of(path) == OWNER, path
    assert store.deliver([claim(address="bob@basic.example")]) == [None]
    assert owner_of(root / "basic.example" / "bob" / "new") == OWNER


def test_without_an_owner_files_belong_to_whoever_runs_mailqueue(tmp_path: Path) -> None:
    store = MaildirStore("basic", tmp_path, "mx.test")
    store.deliver([claim()])
    [delivered] = (tmp_path / "basic.example" / "alice" / "new").iterdir()
    assert owner_of(delivered) == (os.geteuid(), os.getegid())


def in_unprivileged(action: Callable[[], str | None]) -> str | None:
    """``action()`` run as a user who is not root (as root: in a child as ``nobody``)."""
    if not ROOT:
        return action()
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork in a threaded process
        pid = os.fork()
    if pid == 0:  # the child: give up root, answer, leave without running pytest's exit
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write, (action() or "").encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        said = answer.read().decode()
    os.waitpid(pid, 0)
    return said or None


def test_check_writable_says_when_ownership_cannot_be_given() -> None:
    # A directory the unprivileged user may write in, so only the ownership can fail.
    root = Path(tempfile.mkdtemp(prefix="mq-owner-"))
    try:
        root.chmod(0o777)
        other = (5000, 5001) if ROOT else (os.getuid() + 1, os.getgid() + 1)
        said = in_unprivileged(
            lambda: MaildirStore("basic", root / "basic", "mx.test", owner=other)
            .check_writable())
        assert said == (f"its files cannot be given to owner uid {other[0]} gid {other[1]} "
                        "(Operation not permitted): run mailqueue as root or as that user")
        # the same user without an owner can write there: only the ownership was refused
        assert in_unprivileged(
            lambda: MaildirStore("basic", root / "plain", "mx.test").check_writable()) is None
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _gid_of(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid  # a bare uid needs no passwd entry; its gid alike


@pytest.mark.parametrize(("spec", "ids"), [
    ("5000", (5000, _gid_of(5000))),    # the passwd entry's group, where there is one
    ("5000:5001", (5000, 5001)),
    ("root", (0, 0)),
    ("root:5001", (0, 5001)),
    ("0:root", (0, 0)),
])
def test_resolve_owner(spec: str, ids: tuple[int, int]) -> None:
    assert resolve_owner(spec) == ids


@pytest.mark.parametrize(("spec", "says"), [
    ("no-such-user-here", "owner 'no-such-user-here': there is no user 'no-such-user-here'"),
    ("5000:no-such-group", "owner '5000:no-such-group': there is no group 'no-such-group'"),
])
def test_resolve_owner_names_what_is_unknown(spec: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        resolve_owner(spec)


def write(tmp_path: Path, store: str) -> Path:
    path = tmp_path / "mq.toml"
    path.write_text(f'[[stores]]\nname = "basic"\ndomains = ["basic.example"]\n{store}')
    return path


@pytest.mark.parametrize("owner", ["vmail", "vmail:mail", "5000", "5000:5000", "_mail.x-1"])
def test_owner_forms_a_config_takes(tmp_path: Path, owner: str) -> None:
    config = load_config(write(tmp_path, f'path = "mail"\nowner = "{owner}"\n'), environ={})
    assert config.stores[0].owner == owner


@pytest.mark.parametrize("owner", ["", ":5000", "5000:", "a:b:c", "-x", "mail user", "x" * 33,
                                   "vmail;rm"])
def test_owner_forms_a_config_refuses(tmp_path: Path, owner: str) -> None:
    with pytest.raises(ConfigError, match=r"stores\[0\]\.owner: .*give a user, user:group, "
                                          r"uid or uid:gid"):
        load_config(write(tmp_path, f'path = "mail"\nowner = "{owner}"\n'), environ={})


@pytest.mark.parametrize("kind", ["lmtp", "smtp"])
def test_only_maildir_stores_take_an_owner(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ConfigError, match=rf"stores\[0\]: owner: only maildir stores take "
                                          rf"it \(an {kind} store's servers write"):
        load_config(write(tmp_path, f'kind = "{kind}"\nhosts = ["127.0.0.1:2424"]\n'
                                    'owner = "5000"\n'), environ={})
