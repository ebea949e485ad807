"""``lmtp`` and ``smtp`` stores in the config: what is taken, what is refused (one line
naming the key), and that every Maildir config stays as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailqueue.config import load_config
from mailqueue.endpoint import Endpoint, parse_endpoint
from mailqueue.errors import ConfigError

LMTP = """
[[stores]]
name = "basic"
kind = "lmtp"
hosts = {hosts}
domains = ["basic.example"]
{extra}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mq.toml"
    path.write_text(text)
    return path


def lmtp(tmp_path: Path, hosts: str = '["127.0.0.1:24"]', extra: str = "",
         environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return load_config(write(tmp_path, LMTP.format(hosts=hosts, extra=extra)),
                       environ=environ or {})


@pytest.mark.parametrize(("text", "port", "expected"), [
    ("127.0.0.1:2424", 24, Endpoint(host="127.0.0.1", port=2424)),
    ("mail.example", 24, Endpoint(host="mail.example", port=24)),
    ("mail.example", 25, Endpoint(host="mail.example", port=25)),
    ("[::1]:24", 24, Endpoint(host="::1", port=24)),
    ("[::1]", 25, Endpoint(host="::1", port=25)),
    ("/run/dovecot/lmtp", 24, Endpoint(path="/run/dovecot/lmtp")),
    ("unix:/run/dovecot/lmtp", 24, Endpoint(path="/run/dovecot/lmtp")),
])
def test_endpoints(text: str, port: int, expected: Endpoint) -> None:
    assert parse_endpoint(text, port) == expected


@pytest.mark.parametrize(("text", "says"), [
    ("host:0", "the port must be a number from 1 to 65535"),
    ("host:65536", "the port must be a number from 1 to 65535"),
    ("host:lmtp", "the port must be a number from 1 to 65535"),
    ("::1:24", "write an IPv6 address in brackets"),
    ("[::1:24", "write an IPv6 address as [ADDRESS]:PORT"),
    ("bad host:24", "is neither a host name nor an IP address"),
    ("300.1.1.1:24", "is neither a host name nor an IP address"),
    ("unix:run/lmtp", "a unix socket path must be absolute"),
    ("", "is neither a host name nor an IP address"),
])
def test_bad_endpoints_say_what_to_write(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("[", r"\[")):
        parse_endpoint(text, 24)


def test_a_remote_store_has_one_node_per_host(tmp_path: Path) -> None:
    config = lmtp(tmp_path, '["10.0.0.1", "10.0.0.2:2424", "/run/lmtp"]')
    [store] = config.stores
    assert store.nodes == 3 and store.path is None and store.mailbox_root is None
    assert [str(e) for e in store.endpoints()] == ["10.0.0.1:24", "10.0.0.2:2424",
                                                    "/run/lmtp"]
    assert store.tls == "off" and store.connections == 10
    assert store.timeouts.data_done == 120 and store.timeouts.connect == 30


def test_relative_paths_are_the_config_files(tmp_path: Path) -> None:
    config = lmtp(tmp_path, extra='verify_path = "vmail"\ntls_ca_file = "ca.pem"\n'
                                  'starttls = "required"')
    [store] = config.stores
    assert store.verify_path == tmp_path / "vmail" == store.mailbox_root
    assert store.tls_ca_file == tmp_path / "ca.pem"


def test_the_password_can_come_from_the_environment(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, LMTP.format(
        hosts='["relay.example"]', extra='auth_user = "mq"').replace('"lmtp"', '"smtp"')),
        environ={"MAILQUEUE_STORES_0_AUTH_PASSWORD": "12345"})
    [store] = config.stores
    assert store.auth_password == "12345" and store.tls == "opportunistic"
    assert "12345" not in repr(store)


def test_durations_and_overrides_reach_the_timeouts(tmp_path: Path) -> None:
    config = lmtp(tmp_path, extra='[stores.timeouts]\ndata_done = "10m"',
                  environ={"MAILQUEUE_STORES_0_TIMEOUTS_RCPT": "5m"})
    assert config.stores[0].timeouts.data_done == 600
    assert config.stores[0].timeouts.rcpt == 300


@pytest.mark.parametrize(("hosts", "extra", "says"), [
    ('["127.0.0.1:99999"]', "", "stores[0]: hosts[0]: '127.0.0.1:99999': the port must be"),
    ("[]", "", "stores[0]: hosts: required for an lmtp store"),
    ('["a:24", "a:24"]', "", "duplicate host 'a:24'"),
    ('["a:24", "b:24"]', "nodes = 3", "nodes: an lmtp store has one node per host (2 hosts"),
    ('["a:24"]', 'path = "mail"', "path: an lmtp store delivers to its hosts and has no path"),
    ('["a:24"]', 'auth_user = "u"', "auth_user and auth_password go together"),
    ('["a:24"]', 'auth_user = "u"\nauth_password = "p"',
     "auth_user: credentials are only sent over TLS"),
    ('["a:24"]', 'starttls = "sometimes"', "starttls: Input should be 'off', "),
    ('["a:24"]', 'connections = 0', "connections: Input should be greater than or equal to 1"),
    ('["a:24"]', '[stores.timeouts]\nrcpt = "0s"', "timeouts.rcpt: Input should be greater"),
])
def test_bad_remote_stores_are_one_line_naming_the_key(tmp_path: Path, hosts: str,
                                                        extra: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        lmtp(tmp_path, hosts, extra)
    message = str(caught.value)
    assert says in message and "\n" not in message


@pytest.mark.parametrize(("extra", "says"), [
    ('hosts = ["a:24"]', "hosts: only lmtp and smtp stores take it"),
    ('verify_path = "v"', "verify_path: only lmtp and smtp stores take it"),
    ('starttls = "required"', "starttls: only lmtp and smtp stores take it"),
])
def test_a_maildir_store_refuses_remote_keys(tmp_path: Path, extra: str, says: str) -> None:
    text = f'[[stores]]\nname = "basic"\npath = "mail"\ndomains = ["b.example"]\n{extra}\n'
    with pytest.raises(ConfigError, match=says):
        load_config(write(tmp_path, text), environ={})


def test_a_maildir_store_without_a_path_is_one_line(tmp_path: Path) -> None:
    text = '[[stores]]\nname = "basic"\ndomains = ["b.example"]\n'
    with pytest.raises(ConfigError, match=r"stores\[0\]: path: required for a maildir store"):
        load_config(write(tmp_path, text), environ={})
