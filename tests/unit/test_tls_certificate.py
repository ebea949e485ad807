"""The self-signed certificate and where it is kept, without a server."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509

from mailqueue.errors import ConfigError
from mailqueue.smtp import tls
from tests.helpers import make_config
from tests.tlshelp import make_cert


def test_made_for_the_hostname_with_a_private_key(tmp_path: Path) -> None:
    cert_path, key_path = tls.self_signed(tmp_path / "tls", "MX.Example.test")
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mx.example.test", "localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1",
                                                                              "::1"]
    lifetime = certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=824) < lifetime <= datetime.timedelta(days=825)
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == [".lock", "cert.pem",
                                                                     "key.pem"]
    # Reused for the same name, whatever its case; made anew for another.
    first = cert_path.read_bytes()
    tls.self_signed(tmp_path / "tls", "mx.example.test")
    assert cert_path.read_bytes() == first
    tls.self_signed(tmp_path / "tls", "other.test")
    assert cert_path.read_bytes() != first


def test_kept_beside_the_sqlite_queue_or_where_tls_dir_says(tmp_path: Path) -> None:
    config = make_config(tmp_path, smtp={"tls": "self-signed"})
    assert tls.tls_dir(config) == tmp_path / "tls"
    config = make_config(tmp_path, smtp={"tls": "self-signed", "tls_dir": str(tmp_path / "x")})
    assert tls.tls_dir(config) == tmp_path / "x"
    on_postgres = make_config(tmp_path, smtp={"tls": "self-signed"},
                              queue={"url": "postgresql+asyncpg://mq@db/mailqueue"})
    with pytest.raises(ConfigError, match=r"^smtp.tls_dir: .*set tls_dir"):
        tls.tls_dir(on_postgres)


def test_a_configured_pair_is_checked(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, hostname="mx.test")
    checked = tls.check_pair(cert, key, "smtp.tls_cert", "smtp.tls_key")
    assert checked.names == ("mx.test", "127.0.0.1")
    context, served = tls.server_context(make_config(
        tmp_path, smtp={"tls_cert": str(cert), "tls_key": str(key)})) or (None, None)
    assert context is not None and served is not None and served.cert_path == cert
    assert tls.server_context(make_config(tmp_path)) is None
