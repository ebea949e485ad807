"""``mailqueue dovecot config`` as a user runs it: the file it writes (which Dovecot's own
``doveconf`` parses), and one error line for every config or option it cannot serve."""

from __future__ import annotations

import io
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailqueue.testing.dovecot import require_dovecot_access
from tests.cli_run import Mq, cli_runner, one_line_error, tree, write_config

ADMIN = "[admin]\nport = 8025\n"
TLS_USERS = '[smtp]\ntls = "self-signed"\nusers_file = "users"\n'
# Dovecot serves no mail as root: when the tests run as root the Maildirs go to uid 5000.
OWNER = 'owner = "5000"\n' if os.geteuid() == 0 else ""
MAIL_UID = 5000 if os.geteuid() == 0 else os.geteuid()


def _gid_of(uid: int) -> int:
    """The group a uid alone brings: its passwd entry's, else the same number."""
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid


MAIL_GID = _gid_of(MAIL_UID) if os.geteuid() == 0 else os.getegid()


def stores(basic_owner: str = OWNER, exchange_owner: str = OWNER,
           basic_path: str = "mail/basic") -> str:
    return f"""
[[stores]]
name = "basic"
path = "{basic_path}"
domains = ["basic.example"]
{basic_owner}
[[stores]]
name = "hosted-exchange"
path = "mail/hosted-exchange"
domains = ["exchange.example"]
{exchange_owner}"""


REMOTE = """
[[stores]]
name = "tier"
kind = "lmtp"
hosts = ["127.0.0.1:24"]
domains = ["tier.example"]
"""


@pytest.fixture
def mq(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    return cli_runner(capsys, monkeypatch)


@pytest.fixture
def short() -> Iterator[Path]:
    """A directory with a short path: Dovecot's unix sockets go under ``--dir``, and
    pytest's ``tmp_path`` can be longer than their limit allows."""
    path = Path(tempfile.mkdtemp(prefix="mq-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def add_user(mq: Mq, monkeypatch: pytest.MonkeyPatch, users: Path, name: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("secret\n"))
    assert mq("user", "add", name, "--file", users, "--password-stdin").code == 0


def settings(path: Path) -> dict[str, str]:
    """``key = value`` lines of a Dovecot config (top level and inside blocks alike)."""
    found = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition(" = ")
        if sep and not key.startswith("#"):
            found[key] = value
    return found


def doveconf_accepts(path: Path) -> None:
    """Dovecot's own parser reads ``path`` without an error."""
    require_dovecot_access()
    doveconf = shutil.which("doveconf") or shutil.which("doveconf", path="/usr/bin:/usr/sbin")
    assert doveconf is not None
    done = subprocess.run([doveconf, "-n", "-c", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr


# --- what it writes ------------------------------------------------------------------------

def test_writes_a_config_dovecot_reads(short: Path, mq: Mq,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(short, ADMIN, stores())
    users = short / "users"
    add_user(mq, monkeypatch, users, "alice@basic.example")
    out = short / "dc"
    result = mq("dovecot", "config", "-c", config, "--users", users, "--dir", out)
    assert result.code == 0, result.err
    path = out / "dovecot.conf"
    assert result.out == (f"wrote {path}\n  IMAP: 127.0.0.1:10143\n  POP3: 127.0.0.1:10110\n"
                          f"start it with: dovecot -F -c {path}\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it may hold the admin token
    assert (out / "run").is_dir() and (out / "state").is_dir()
    found = settings(path)
    assert found["auth_policy_server_url"] == "http://127.0.0.1:8025/dovecot/policy"
    assert found["auth_policy_reject_on_fail"] == "yes"  # fail closed
    assert found["args"].startswith("allow_all_users=yes")  # the last args: the userdb
    assert f"uid={MAIL_UID} gid={MAIL_GID} " in found["args"]
    for root in (short / "mail" / "basic", short / "mail" / "hosted-exchange"):
        assert f"{root}/%Ld/%Ln" in found["args"]  # mailqueue's layout
    text = path.read_text()
    assert f"driver = passwd-file\n  args = scheme=ARGON2ID username_format=%Lu {users}" in text
    assert found["listen"] == "127.0.0.1" and found["ssl"] == "no"
    doveconf_accepts(path)


def test_defaults_users_file_from_the_config_and_dir_beside_the_queue(
        short: Path, mq: Mq, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(short, TLS_USERS + ADMIN, stores())
    add_user(mq, monkeypatch, short / "users", "alice@basic.example")
    result = mq("dovecot", "config", "-c", config, "--imap-port", "20143", "--pop3-port", "0")
    assert result.code == 0, result.err
    path = short / "var" / "dovecot" / "dovecot.conf"  # the queue is var/queue.db
    assert result.out.splitlines() == [f"wrote {path}", "  IMAP: 127.0.0.1:20143",
                                       f"start it with: dovecot -F -c {path}"]
    text = path.read_text()
    assert "protocols = imap\n" in text and "pop3" not in text
    assert f"username_format=%Lu {short / 'users'}\n" in text
    doveconf_accepts(path)


def test_any_password_fail_open_and_the_admin_token(short: Path, mq: Mq) -> None:
    config = write_config(short, '[admin]\nport = 8025\ntoken = "s3cret"\n', stores())
    result = mq("dovecot", "config", "-c", config, "--any-password", "--fail-open",
                "--dir", short / "dc")
    assert result.code == 0, result.err
    path = short / "dc" / "dovecot.conf"
    text = path.read_text()
    assert "passdb {\n  driver = static\n  args = nopassword=y\n}" in text
    assert "auth_policy_reject_on_fail = no\n" in text
    assert "auth_policy_server_api_header = Authorization: Bearer s3cret\n" in text
    doveconf_accepts(path)


def test_a_remote_store_is_served_from_its_verify_path(short: Path, mq: Mq) -> None:
    tier = short / "tier"
    tier.mkdir()
    os.chown(tier, MAIL_UID, MAIL_UID)  # the servers' mail user writes there
    config = write_config(short, ADMIN, stores() + REMOTE + f'verify_path = "{tier}"\n')
    result = mq("dovecot", "config", "-c", config, "--any-password", "--dir", short / "dc")
    assert result.code == 0, result.err
    assert f"eq;tier.example;{tier}/%Ld/%Ln;" in (short / "dc" / "dovecot.conf").read_text()


# --- what it refuses, in one line ------------------------------------------------------------

@pytest.mark.parametrize(("text", "store_text", "args", "fragments"), [
    ("", stores(), ["--any-password"], ["add an [admin] section"]),
    ("[admin]\nenabled = false\n", stores(), ["--any-password"],
     ["[admin] enabled = false turns it off"]),
    ("[admin]\nport = 0\n", stores(), ["--any-password"],
     ["[admin] port = 0 picks a port at each start", "set a fixed port"]),
    (ADMIN, stores(), [], ["say who may log in: --users FILE", "--any-password"]),
    (ADMIN, stores(), ["--users", "nosuch"],
     ["users file nosuch: no such file", "mailqueue user add NAME --file nosuch"]),
    (ADMIN, stores(), ["--users", "users", "--any-password"],
     ["--users and --any-password exclude each other"]),
    (ADMIN, stores('owner = "5000"\n', 'owner = "5001"\n'), ["--any-password"],
     ["the stores' Maildirs belong to different users",
      "basic: uid 5000; hosted-exchange: uid 5001",
      "set the same owner on every store"]),
    (ADMIN, stores(), ["--any-password", "--dir", "/tmp/" + "d" * 80],
     ["too long a path for Dovecot's unix sockets", "pick a shorter --dir"]),
    (ADMIN, stores(basic_path="mail/ba sic"), ["--any-password"],
     ["store basic's Maildir root", "cannot hold the characters ' '"]),
    (ADMIN, stores(), ["--any-password", "--dir", "dc%d"],
     ["--dir", "cannot hold the characters '%'"]),
    (ADMIN, stores(), ["--any-password", "--listen", "0.0.0.0"],
     ["any password is allowed only on loopback", "give --users FILE"]),
    (ADMIN, stores(), ["--users", "users", "--listen", "0.0.0.0"],
     ["off loopback, passwords must not cross the network in clear", "set [smtp] tls"]),
    (ADMIN, stores(), ["--any-password", "--listen", "mail host"],
     ["--listen 'mail host': give an IP address"]),
    (ADMIN, stores(), ["--any-password", "--imap-port", "0", "--pop3-port", "0"],
     ["neither IMAP nor POP3 is on"]),
    (ADMIN, stores(), ["--any-password", "--imap-port", "2000", "--pop3-port", "2000"],
     ["IMAP and POP3 cannot share port 2000"]),
    (ADMIN, REMOTE, ["--any-password"],
     ["no store has Maildirs Dovecot could serve", "verify_path"]),
    ('[queue]\nurl = "postgresql+asyncpg://mq@db.example/mq"\n' + ADMIN, stores(),
     ["--any-password"], ["not a SQLite file", "give --dir"]),
], ids=["no-admin", "admin-disabled", "admin-port-0", "no-users", "users-missing",
        "users-and-any", "owners-differ", "dir-too-long", "unsafe-store-path", "unsafe-dir",
        "any-password-off-loopback", "no-tls-off-loopback", "listen-not-an-address",
        "no-protocol", "one-port", "remote-without-verify-path", "queue-not-a-file"])
def test_errors_are_one_line_and_write_nothing(
        short: Path, mq: Mq, monkeypatch: pytest.MonkeyPatch, text: str, store_text: str,
        args: list[str], fragments: list[str]) -> None:
    config = write_config(short, text, store_text)
    if "users" in args:
        add_user(mq, monkeypatch, short / "users", "alice@basic.example")
    monkeypatch.chdir(short)  # relative --users and --dir are the user's own
    before = tree(short)
    one_line_error(mq("dovecot", "config", "-c", config, *args), *fragments)
    assert tree(short) == before  # nothing written


@pytest.mark.skipif(os.geteuid() != 0, reason="Maildirs belong to root only when run as root")
def test_root_owned_maildirs_need_an_owner(short: Path, mq: Mq) -> None:
    config = write_config(short, ADMIN, stores(basic_owner="", exchange_owner=""))
    one_line_error(mq("dovecot", "config", "-c", config, "--any-password", "--dir",
                      short / "dc"),
                   "the Maildirs of basic, hosted-exchange belong to root",
                   "Dovecot serves no mail as root", 'set owner = "5000" (or any user but root')
    assert not (short / "dc").exists()


def test_more_one_line_errors(short: Path, mq: Mq) -> None:
    config = write_config(short, ADMIN, stores())
    one_line_error(mq("dovecot", "config", "--any-password"), "give -c CONFIG")
    (short / "users").write_text("alice:plaintext\n")
    one_line_error(mq("dovecot", "config", "-c", config, "--users", short / "users"),
                   "line 1: not NAME:ARGON2-HASH")
    (short / "file").write_text("")
    one_line_error(mq("dovecot", "config", "-c", config, "--any-password", "--dir",
                      short / "file" / "dc"),
                   f"--dir {short / 'file' / 'dc'}: cannot write Dovecot's files there")
    one_line_error(mq("dovecot", "config", "-c", write_config(
        short / "remote", ADMIN, stores() + REMOTE + 'owner = "5000"\n'), "--any-password"),
                   "owner: only maildir stores take it")
