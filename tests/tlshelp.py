"""Helpers for the TLS and AUTH tests: configs with TLS on, users files, certificates."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
import shutil
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailqueue.config import Config
from mailqueue.smtp.users import editing, hasher
from tests.helpers import make_config
from tests.smtpraw import insecure_context as insecure_context

PASSWORD = "correct horse battery staple"


def write_users(path: Path, **passwords: str) -> Path:
    """A users file at ``path`` with each name's password hashed, as ``user add`` writes."""
    with editing(path, create=True) as users:
        for name, password in passwords.items():
            users[name] = hashed(password)
    return path


@functools.cache
def hashed(password: str) -> str:
    """``password`` hashed as ``user add`` hashes it (Argon2id, slow on purpose): once per
    test process, each users file holding the same password gets the same hash."""
    return hasher().hash(password)


def tls_config(tmp_path: Path, users: dict[str, str] | None = None,
               **smtp: Any) -> Config:
    """``make_config`` with a self-signed certificate in ``tmp_path/tls`` and, with
    ``users``, a users file (and AUTH) holding them."""
    settings: dict[str, Any] = {"tls": "self-signed", **smtp}
    if users is not None:
        settings["users_file"] = str(write_users(tmp_path / "users", **users))
    return make_config(tmp_path, smtp=settings)


def trusting(cert: Path, hostname: bool = True) -> ssl.SSLContext:
    """A client context that trusts ``cert`` (and checks the host name, unless told not)."""
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = hostname
    return context


def make_cert(directory: Path, hostname: str = "mx.test", days: int = 30,
              expired: bool = False, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate and its key (PEM) in ``directory``: valid for ``days``,
    or expired a day ago; named for ``hostname`` and 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start, end = ((now - datetime.timedelta(days=days + 1), now - datetime.timedelta(days=1))
                  if expired else (now - datetime.timedelta(minutes=5),
                                   now + datetime.timedelta(days=days)))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def require_program(name: str, package: str) -> str:
    """The path of ``name``; skip the test (naming the package) if it is not installed —
    in CI (``CI`` set), fail."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (apt-get install {package}; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must run these tests)", pytrace=False)
        pytest.skip(reason)
    return path
