"""Where a remote mailbox server listens: a TCP ``host:port`` or a unix socket path.

One parser for the config (which checks ``hosts`` at load) and the stores (which connect
to what it returns). This module imports nothing of mailqueue, so both can use it.

Forms taken::

    127.0.0.1:24        mail.example:2525       [::1]:24
    mail.example        (the kind's default port: 24 for LMTP, 25 for SMTP)
    /run/dovecot/lmtp   unix:/run/dovecot/lmtp  (a unix socket; the path is absolute)
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$)({_LABEL}\.)*{_LABEL}\.?$")
DEFAULT_PORTS = {"lmtp": 24, "smtp": 25}


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A TCP host and port, or a unix socket ``path`` (then ``host`` is empty)."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_endpoint(text: str, default_port: int) -> Endpoint:
    """``text`` as an :class:`Endpoint`; ValueError saying which forms it takes."""
    if text.startswith("unix:") or text.startswith("/"):
        path = text.removeprefix("unix:")
        if not path.startswith("/"):
            raise ValueError(f"{text!r}: a unix socket path must be absolute")
        if "\x00" in path or path.endswith("/"):
            raise ValueError(f"{text!r} is not a socket path")
        return Endpoint(path=path)
    host, port = _split(text, default_port)
    if not _valid_host(host):
        raise ValueError(f"{text!r}: {host!r} is neither a host name nor an IP address "
                         "(use host:port, [IPv6]:port or an absolute unix socket path)")
    return Endpoint(host=host, port=port)


def _split(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: write an IPv6 address as [ADDRESS]:PORT")
        return host, _port(text, rest[1:]) if rest else default_port
    if text.count(":") > 1:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as [ADDRESS]:PORT")
    host, sep, port = text.partition(":")
    return host, _port(text, port) if sep else default_port


def _port(text: str, port: str) -> int:
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return int(port)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOSTNAME.match(host)) and not host.replace(".", "").isdigit()
    return True
