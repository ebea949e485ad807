"""``[smtp]`` TLS and AUTH keys and ``[[smtp.listeners]]``: defaults unchanged, paths
relative to the file, and every contradiction one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailqueue.config import load_config
from mailqueue.errors import ConfigError
from mailqueue.smtp.server import listeners

MINIMAL = """
[[stores]]
name = "basic"
path = "mail"
domains = ["basic.example"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mq.toml"
    path.write_text(text + MINIMAL)
    return path


def test_defaults_are_plain_smtp_without_auth(tmp_path: Path) -> None:
    smtp = load_config(write(tmp_path, ""), environ={}).smtp
    assert smtp.tls == "off" and not smtp.require_tls and smtp.users_file is None
    assert not smtp.auth_required and smtp.listeners == []
    assert [(lst.name, lst.port) for lst in listeners(smtp)] == [("smtp", 2525)]


def test_files_and_listeners(tmp_path: Path) -> None:
    smtp = load_config(write(tmp_path, """
[smtp]
tls_cert = "pki/cert.pem"
tls_key = "pki/key.pem"
users_file = "users"
require_tls = true

[[smtp.listeners]]
name = "submission"
port = 2587
auth_required = true

[[smtp.listeners]]
name = "smtps"
host = "127.0.0.2"
port = 2465
implicit_tls = true
"""), environ={}).smtp
    assert smtp.tls == "files"  # implied by the files
    assert smtp.tls_cert == tmp_path / "pki" / "cert.pem"
    assert smtp.users_file == tmp_path / "users"
    assert [(lst.name, lst.host, lst.port, lst.implicit_tls, lst.require_tls,
             lst.auth_required) for lst in listeners(smtp)] == [
        ("smtp", "127.0.0.1", 2525, False, True, False),
        ("submission", "127.0.0.1", 2587, False, False, True),
        ("smtps", "127.0.0.2", 2465, True, False, False)]


def test_self_signed_and_overrides(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[smtp]\ntls = "self-signed"\n'), environ={
        "MAILQUEUE_SMTP_TLS_DIR": "certs", "MAILQUEUE_SMTP_AUTH_LOCKOUT": "10m"})
    assert config.smtp.tls == "self-signed"
    assert config.smtp.tls_dir == Path.cwd() / "certs"  # from the environment: the cwd's
    assert config.smtp.auth_lockout == 600
    off = load_config(write(tmp_path, '[smtp]\ntls = "self-signed"\n'),
                      environ={"MAILQUEUE_SMTP_TLS": "off"})
    assert off.smtp.tls == "off"


@pytest.mark.parametrize(("text", "expected"), [
    ('[smtp]\ntls = "on"\n', "smtp.tls: Input should be 'off', 'files' or 'self-signed'"),
    ('[smtp]\ntls = "files"\n', 'tls = "files" needs both tls_cert and tls_key'),
    ('[smtp]\ntls_cert = "c.pem"\n', 'tls = "files" needs both tls_cert and tls_key'),
    ('[smtp]\ntls = "self-signed"\ntls_cert = "c.pem"\ntls_key = "k.pem"\n',
     'tls_cert and tls_key are served with tls = "files", not tls = "self-signed"'),
    ('[smtp]\ntls_dir = "tls"\n', "tls_dir is where tls = \"self-signed\" keeps"),
    ("[smtp]\nrequire_tls = true\n", "require_tls needs TLS: set [smtp] tls"),
    ('[smtp]\nusers_file = "users"\n', "users_file: AUTH is offered only after TLS"),
    ('[smtp]\ntls = "self-signed"\nauth_required = true\n', "auth_required needs users_file"),
    ('[smtp]\nauth_max_failures = 0\n', "smtp.auth_max_failures: Input should be greater"),
    ('[smtp]\nauth_lockout = 0\n', "smtp.auth_lockout: Input should be greater than 0"),
    ("[[smtp.listeners]]\nname = 'smtps'\nport = 2465\nimplicit_tls = true\n",
     "listeners[0].implicit_tls needs TLS"),
    ("[smtp]\ntls = 'self-signed'\n[[smtp.listeners]]\nname = 'sub'\nport = 2587\n"
     "auth_required = true\n", "listeners[0].auth_required needs users_file"),
    ("[[smtp.listeners]]\nname = 'smtp'\nport = 2587\n", "listener name 'smtp' is the"),
    ("[[smtp.listeners]]\nname = 'a'\nport = 1\n[[smtp.listeners]]\nname = 'a'\nport = 2\n",
     "duplicate listener name 'a'"),
    ("[[smtp.listeners]]\nname = 'a'\n", "smtp.listeners[0].port: required key is missing"),
    ("[[smtp.listeners]]\nname = 'a'\nport = 1\ntls = 'x'\n",
     "smtp.listeners[0].tls: unknown key"),
])
def test_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message, message
    assert "\n" not in message
