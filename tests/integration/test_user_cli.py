"""``mailqueue user`` and what ``queue show`` says about a sender, as a user sees them; and a
TLS or users-file setting that cannot work stops ``serve`` with one line naming the key."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailqueue.config import load_config
from mailqueue.smtp.users import read_users
from tests.cli_run import Mq, cli_runner, one_line_error, write_config
from tests.helpers import running
from tests.smtpraw import RawSmtp
from tests.tlshelp import PASSWORD, make_cert

TLS = '[smtp]\nport = 0\ntls = "self-signed"\nusers_file = "etc/users"\n'


@pytest.fixture
def mq(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    return cli_runner(capsys, monkeypatch)


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def test_add_list_replace_remove(tmp_path: Path, mq: Mq,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, TLS)
    users_file = tmp_path / "etc" / "users"  # its directory is made
    _stdin(monkeypatch, "first secret\n")
    added = mq("user", "add", "alice", "-c", config, "--password-stdin")
    assert added.code == 0 and added.out == f"added user alice in {users_file}\n"
    assert users_file.stat().st_mode & 0o777 == 0o600
    first = read_users(users_file)["alice"]
    assert first.startswith("$argon2id$") and "first secret" not in users_file.read_text()

    _stdin(monkeypatch, "x\n")
    one_line_error(mq("user", "add", "alice", "-c", config, "--password-stdin"),
                   "user 'alice' is already in", "add --replace")
    _stdin(monkeypatch, "second secret\n")
    assert mq("user", "add", "alice", "-c", config, "--password-stdin", "--replace").code == 0
    assert read_users(users_file)["alice"] != first
    _stdin(monkeypatch, "third\n")
    assert mq("user", "add", "bob@basic.example", "-c", config, "--password-stdin").code == 0
    assert mq("user", "list", "-c", config).out == "alice\nbob@basic.example\n"

    one_line_error(mq("user", "remove", "carol", "alice", "-c", config), "no user 'carol'")
    assert mq("user", "list", "-c", config).out == "alice\nbob@basic.example\n"
    assert mq("user", "remove", "alice", "-c", config).code == 0
    assert mq("user", "list", "--file", users_file).out == "bob@basic.example\n"


def test_user_errors_are_one_line(tmp_path: Path, mq: Mq,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    plain = write_config(tmp_path / "plain")
    one_line_error(mq("user", "list", "-c", plain), "sets no [smtp] users_file")
    one_line_error(mq("user", "list"), "give -c CONFIG (its [smtp] users_file) or --file")
    config = write_config(tmp_path, TLS)
    one_line_error(mq("user", "list", "-c", config), "no such users file",
                   "mailqueue user add NAME creates it")
    _stdin(monkeypatch, "\n")
    one_line_error(mq("user", "add", "alice", "-c", config, "--password-stdin"),
                   "the password is empty")
    _stdin(monkeypatch, "pw\n")
    one_line_error(mq("user", "add", "al:ice", "-c", config, "--password-stdin"),
                   "user name 'al:ice'")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "users").write_text("alice=pw\n")
    one_line_error(mq("user", "list", "-c", config), "users line 1: not NAME:ARGON2-HASH")


def test_add_prompts_twice_without_echo(tmp_path: Path) -> None:
    users_file = tmp_path / "users"
    pid, terminal = pty.fork()
    if pid == 0:  # the child: mailqueue on a terminal of its own
        os.execv(sys.executable, [sys.executable, "-m", "mailqueue", "user", "add", "carol",
                                  "--file", str(users_file)])
    seen = b""
    try:
        for answer in (b"typed secret\n", b"typed secret\n"):
            seen += _read_until(terminal, b": ")
            os.write(terminal, answer)
        seen += _read_until(terminal, b"\n", closed_ok=True)
        seen += _read_until(terminal, b"\n", closed_ok=True)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(terminal)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert b"typed secret" not in seen  # not echoed
    assert b"Password: " in seen and b"Repeat for confirmation: " in seen
    assert set(read_users(users_file)) == {"carol"}


def _read_until(fd: int, end: bytes, closed_ok: bool = False, timeout: float = 30) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(end):
        assert time.monotonic() < deadline, data
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the child has exited and closed the terminal
            chunk = b""
        if not chunk:
            assert closed_ok, data
            break
        data += chunk
    return data


async def _send_as_alice(config_path: Path) -> str:
    """Send one message over STARTTLS after AUTH LOGIN as alice; the reply to its data."""
    async with running(load_config(config_path, environ={})) as app:
        client = await RawSmtp.connect(app.port)
        try:
            await client.reply()
            await client.cmd(b"EHLO client.test\r\n")
            await client.starttls()
            await client.cmd(b"EHLO client.test\r\n")
            await client.cmd(b"AUTH LOGIN YWxpY2U=\r\n")  # alice
            assert (await client.cmd(base64.b64encode(PASSWORD.encode()) + b"\r\n")
                    ).startswith("235")
            for line in (b"MAIL FROM:<a@src.test>\r\n", b"RCPT TO:<x@basic.example>\r\n",
                         b"DATA\r\n"):
                await client.cmd(line)
            return await client.cmd(b"Subject: s\r\n\r\nhi\r\n.\r\n")
        finally:
            await client.close()


def test_queue_show_names_the_tls_and_the_user(tmp_path: Path, mq: Mq,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    config_path = write_config(tmp_path, TLS)
    _stdin(monkeypatch, PASSWORD + "\n")
    assert mq("user", "add", "alice", "-c", config_path, "--password-stdin").code == 0
    reply = asyncio.run(_send_as_alice(config_path))
    queue_id = reply.rsplit(" ", 1)[1]
    shown = mq("queue", "show", queue_id, "-c", config_path)
    assert shown.code == 0, shown.err
    assert re.search(r"^tls: +TLSv1\.[23] \S+$", shown.out, re.M), shown.out
    assert re.search(r"^auth: +alice$", shown.out, re.M), shown.out
    listed = json.loads(mq("queue", "list", "--all", "--json", "-c", config_path).out)
    assert listed["auth_user"] == "alice" and listed["tls"].startswith("TLSv1.")


def _refusals(tmp: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each case: the [smtp] settings, and what the one error line must say."""
    cert, key = make_cert(tmp / "pki")
    _, other_key = make_cert(tmp / "pki", name="other")
    return {
        "missing cert": (f'tls_cert = "{tmp}/none.pem"\ntls_key = "{key}"\n',
                         (f"smtp.tls_cert: {tmp}/none.pem: no such certificate file",)),
        "cert is a directory": (f'tls_cert = "{tmp}"\ntls_key = "{key}"\n',
                                ("smtp.tls_cert: ", "is a directory, not a certificate file")),
        "not PEM": (f'tls_cert = "{key}"\ntls_key = "{key}"\n',
                    (f"smtp.tls_cert: {key} is not a PEM certificate",)),
        "key of another certificate": (
            f'tls_cert = "{cert}"\ntls_key = "{other_key}"\n',
            (f"smtp.tls_key: {other_key} is not the key of the certificate in {cert} "
             "(smtp.tls_cert)",)),
        "encrypted key": (f'tls_cert = "{cert}"\ntls_key = "{_encrypted(key)}"\n',
                          ("smtp.tls_key: ", "is encrypted; give the key without")),
        "tls_dir blocked": (f'tls = "self-signed"\ntls_dir = "{cert}"\n',
                            (f"smtp.tls_dir: cannot keep a certificate in {cert}",)),
        "users file missing": ('tls = "self-signed"\nusers_file = "nobody"\n',
                               ("smtp.users_file: ", "no such users file")),
        "users file malformed": (f'tls = "self-signed"\nusers_file = "{key}"\n',
                                 ("smtp.users_file: ", "line 1: not NAME:ARGON2-HASH")),
    }


REFUSALS = ["missing cert", "cert is a directory", "not PEM", "key of another certificate",
            "encrypted key", "tls_dir blocked", "users file missing", "users file malformed"]


@pytest.mark.parametrize("case", REFUSALS)
def test_serve_refuses_tls_and_users_settings_that_cannot_work(tmp_path: Path,
                                                               case: str) -> None:
    settings, fragments = _refusals(tmp_path)[case]
    config = write_config(tmp_path, f"[smtp]\nport = 0\n{settings}")
    result = subprocess.run([sys.executable, "-m", "mailqueue", "serve", "-c", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("mailqueue: error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not (tmp_path / "var" / "queue.db").exists()  # refused before the queue opened


def _encrypted(key: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    path = key.with_name("encrypted.key")
    path.write_bytes(loaded.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    return path
