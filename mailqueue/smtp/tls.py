"""TLS for the SMTP listeners: the server's certificate and the context that serves it.

``[smtp] tls`` says where the certificate comes from: ``"files"`` serves ``tls_cert`` and
``tls_key``; ``"self-signed"`` makes an ECDSA P-256 key and a certificate for
``[smtp] hostname`` once, in ``tls_dir``, and reuses them on every start (a certificate
that has expired, or no longer names the hostname, is made anew). The key file is mode
0600 in a directory of mode 0700; both files are written beside their final names and
renamed into place under a lock, so servers starting together reuse one pair.

Everything a user can get wrong — a missing or unreadable file, a file that is not PEM, an
encrypted key, a key that is not the certificate's — is a :class:`ConfigError` naming the
key to fix. The work here reads and writes files: call it off the event loop.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailqueue._files import replace_file
from mailqueue.config import Config
from mailqueue.errors import ConfigError
from mailqueue.sqliteurl import sqlite_path

log = structlog.get_logger("mailqueue.smtp")

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"
SELF_SIGNED_DAYS = 825  # what browsers and most clients still accept for a leaf
RENEW_BEFORE = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Certificate:
    """The certificate a server presents: where its files are, and what it says."""

    cert_path: Path
    key_path: Path
    names: tuple[str, ...]  # its DNS names and IP addresses
    not_after: datetime.datetime


def server_context(config: Config) -> tuple[ssl.SSLContext, Certificate] | None:
    """The TLS context the listeners serve (None with ``tls = "off"``), and its certificate.

    Raises :class:`ConfigError` naming the key to fix."""
    smtp = config.smtp
    if smtp.tls == "off":
        return None
    if smtp.tls == "self-signed":
        cert_path, key_path = self_signed(tls_dir(config), smtp.hostname)
        cert_key, key_key = "smtp.tls_dir", "smtp.tls_dir"
    else:
        assert smtp.tls_cert is not None and smtp.tls_key is not None
        cert_path, key_path = smtp.tls_cert, smtp.tls_key
        cert_key, key_key = "smtp.tls_cert", "smtp.tls_key"
    certificate = check_pair(cert_path, key_path, cert_key, key_key)
    if certificate.not_after <= _now():
        log.warning("tls_certificate_expired", cert=str(cert_path),
                    not_after=certificate.not_after.isoformat())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as exc:  # checked above; a race with a rewrite
        raise ConfigError(f"{cert_key}: {cert_path} and {key_path} cannot be loaded: "
                          f"{getattr(exc, 'reason', None) or exc}") from None
    return context, certificate


def tls_dir(config: Config) -> Path:
    """Where ``tls = "self-signed"`` keeps its files: ``tls_dir``, or ``tls/`` beside the
    SQLite queue file."""
    if config.smtp.tls_dir is not None:
        return config.smtp.tls_dir
    database = sqlite_path(config.queue.url)
    if database is None or database.startswith("file:") or database == ":memory:":
        raise ConfigError('smtp.tls_dir: tls = "self-signed" needs a directory for its key '
                          "and certificate (the queue is not a file to keep them beside); "
                          "set tls_dir")
    return Path(database).absolute().parent / "tls"


# --- self-signed ---------------------------------------------------------------------------

def self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """The certificate and key in ``directory``: reused when they are good for
    ``hostname``, otherwise made (anew)."""
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _locked(directory):
            if _reusable(cert_path, key_path, hostname):
                return cert_path, key_path
            _generate(cert_path, key_path, hostname)
    except OSError as exc:
        raise ConfigError(f"smtp.tls_dir: cannot keep a certificate in {directory}: "
                          f"{exc.strerror or exc}") from None
    log.info("tls_certificate_generated", cert=str(cert_path), hostname=hostname,
             days=SELF_SIGNED_DAYS)
    return cert_path, key_path


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _reusable(cert_path: Path, key_path: Path, hostname: str) -> bool:
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        certificate = check_pair(cert_path, key_path, "smtp.tls_dir", "smtp.tls_dir")
    except ConfigError as exc:
        log.warning("tls_certificate_replaced", cert=str(cert_path), reason=str(exc))
        return False
    return certificate.not_after - RENEW_BEFORE > _now() and \
        hostname.lower() in certificate.names


def _generate(cert_path: Path, key_path: Path, hostname: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64]),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailqueue self-signed")])
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname.lower())]
    if hostname.lower() != "localhost":
        alt_names.append(x509.DNSName("localhost"))
    alt_names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                  x509.IPAddress(ipaddress.ip_address("::1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    replace_file(key_path, key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    replace_file(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)


def check_pair(cert_path: Path, key_path: Path, cert_key: str, key_key: str
               ) -> Certificate:
    """Read ``cert_path`` and ``key_path`` and check that the key is the certificate's;
    :class:`ConfigError` naming ``cert_key`` or ``key_key`` (the config keys) otherwise."""
    cert_data = _read(cert_path, cert_key, "certificate")
    key_data = _read(key_path, key_key, "key")
    try:
        certificate = x509.load_pem_x509_certificate(cert_data)
    except ValueError:
        raise ConfigError(f"{cert_key}: {cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise ConfigError(f"{key_key}: {key_path} is encrypted; give the key without a "
                          "passphrase (openssl pkey -in KEY -out PLAIN)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{key_key}: {key_path} is not a PEM private key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != \
            certificate.public_key().public_bytes(serialization.Encoding.DER, public):
        raise ConfigError(f"{key_key}: {key_path} is not the key of the certificate in "
                          f"{cert_path} ({cert_key})")
    return Certificate(cert_path=cert_path, key_path=key_path, names=_names(certificate),
                       not_after=certificate.not_valid_after_utc)


def _read(path: Path, key: str, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path}: no such {what} file") from None
    except IsADirectoryError:
        raise ConfigError(f"{key}: {path} is a directory, not a {what} file") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None


def _names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(a.value).lower() for a in common)
    dns = [name.lower() for name in alt.value.get_values_for_type(x509.DNSName)]
    ips = [str(ip) for ip in alt.value.get_values_for_type(x509.IPAddress)]
    return (*dns, *ips)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)

