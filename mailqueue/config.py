"""Typed configuration, validated at load.

A TOML file (``-c FILE`` or ``MAILQUEUE_CONFIG``) is read, ``MAILQUEUE_<KEY>``
environment variables override single keys (``MAILQUEUE_SMTP_PORT=2526``,
``MAILQUEUE_QUEUE_RETRY_INITIAL_DELAY=5s``, ``MAILQUEUE_STORES_0_PATH=/srv/mail``), and the
result is validated into frozen models. An error names the file, the key and what is
allowed.

Relative paths written in the file (the SQLite queue's, the stores') are relative to the
file's own directory, so every command run with the same ``-c`` sees the same queue
wherever it runs; a path given in an environment override is relative to the current
directory, as a path typed on a command line is.

Values are strict: an integer key takes an integer (not ``true``), a number is finite, and
a key where zero or an empty list cannot work refuses them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url

from mailqueue._overrides import ENV_PREFIX, Key, apply_overrides
from mailqueue.control.nodes import MAX_NODES
from mailqueue.endpoint import DEFAULT_PORTS, Endpoint, parse_endpoint
from mailqueue.errors import ConfigError, TimeParseError
from mailqueue.sqliteurl import sqlite_path
from mailqueue.timeparse import get_zone, parse_duration, parse_size, parse_time

DEFAULT_URL = "sqlite+aiosqlite:///var/queue.db"


def _duration(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str | int | float) else value


def _size(value: Any) -> Any:
    return parse_size(value) if isinstance(value, str | int) else value


Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0)]
# A duration where zero cannot work (a timeout, an interval, a lease).
PositiveDuration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Size = Annotated[int, BeforeValidator(_size), Field(ge=0)]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NAME_FORM = "use letters, digits, '.', '_' or '-', starting with a letter or digit"
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                        r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def _name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(_NAME_FORM)
    return value


def check_name(value: str, what: str) -> str:
    """``value`` if it is a valid store, window or node name (the rule the config file
    applies); otherwise ValueError saying ``what`` it is and the form it takes."""
    if not _NAME_RE.match(value):
        raise ValueError(f"{what} {value!r}: {_NAME_FORM}")
    return value


def _zone(value: str) -> str:
    get_zone(value)
    return value


Name = Annotated[str, AfterValidator(_name)]  # a store, window or node name


def _host_name(value: str) -> str:
    if not _DOMAIN_RE.match(value):
        raise ValueError(f"{value!r} is not a host name (letters, digits, '-' and dots, "
                         "as in mx.example.com)")
    return value


# The name a server gives itself (greeting, EHLO/LHLO, Received:): it goes on the wire and
# into headers, so no spaces, line ends or other characters a peer would choke on.
HostName = Annotated[str, AfterValidator(_host_name)]
Zone = Annotated[str, AfterValidator(_zone)]  # an IANA time zone


_CPU_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_CPU_FORMS = "use CPU numbers such as 0, \"0,2\" or \"0-3\""


def _cpus(value: Any) -> Any:
    """``"0"``, ``"0,2"``, ``"0-3"``, ``0`` or ``[0, 2]`` as a sorted tuple of CPU numbers;
    ``""`` or ``"all"`` as None (no pinning)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all")):
        return None
    if isinstance(value, bool):
        raise ValueError(_CPU_FORMS)
    if isinstance(value, int):
        value = [value]
    if isinstance(value, str):
        numbers: set[int] = set()
        for part in value.split(","):
            match = _CPU_RANGE.match(part.strip())
            if match is None:
                raise ValueError(f"bad CPU list {value!r}: {_CPU_FORMS}")
            first, last = int(match.group(1)), int(match.group(2) or match.group(1))
            if last < first:
                raise ValueError(f"bad CPU range {part.strip()!r}: the end comes first")
            numbers.update(range(first, last + 1))
        value = numbers
    if isinstance(value, list | tuple | set) and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value):
        return tuple(sorted(set(value))) or None
    raise ValueError(_CPU_FORMS)


CpuSet = Annotated[tuple[int, ...] | None, BeforeValidator(_cpus)]


def cpu_list(text: str) -> tuple[int, ...] | None:
    """A CPU list written as ``[server] cpus`` takes it; None for ``"all"`` or ``""``.
    Raises ValueError naming the forms it takes."""
    cpus: tuple[int, ...] | None = _cpus(text)
    return cpus


def no_duplicates(what: str, values: list[str]) -> None:
    """Raise ``ValueError`` naming the first value that occurs twice."""
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r}")
        seen.add(value)


class ConfigModel(BaseModel):
    """The base of every config and scenario table: unknown keys are errors; values are
    strict (``port = true`` is not port 1, ``"5"`` is not 5) and numbers finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


TlsMode = Literal["off", "files", "self-signed"]
_TLS_NEEDED = ("needs TLS: set [smtp] tls = \"self-signed\", or tls_cert and tls_key")


class ListenerConfig(ConfigModel):
    """``[[smtp.listeners]]``: a further SMTP listener beside ``[smtp] host:port``, with its
    own TLS and AUTH policy (a submission port, an implicit-TLS port) and every other
    ``[smtp]`` setting shared."""

    name: Name = Field(description="The listener's name, in logs (`submission`, `smtps`).")
    host: str | None = Field(None, description="Address it binds (default: `[smtp] host`).")
    port: int = Field(ge=0, le=65535, description="Port it binds (0: any free port).")
    implicit_tls: bool = Field(False, description="TLS from the first byte, as on port 465 "
                               "(RFC 8314), instead of `STARTTLS`; needs `[smtp] tls`.")
    require_tls: bool = Field(False, description="Mail commands before `STARTTLS` get "
                              "`530 5.7.0`; needs `[smtp] tls`.")
    auth_required: bool = Field(False, description="Mail commands before a successful `AUTH` "
                                "get `530 5.7.0 Authentication required`; needs "
                                "`[smtp] users_file`.")


class SmtpConfig(ConfigModel):
    """The SMTP front end."""

    host: str = Field("127.0.0.1", description="Address the SMTP listener binds.")
    port: int = Field(2525, ge=0, le=65535,
                      description="Port the SMTP listener binds (0: any free port).")
    hostname: HostName = Field("mailqueue.localdomain", description="Name in the greeting, in "
                          "`Received:` headers and in Maildir file names.")
    max_message_size: Size = Field(10 * 1024 * 1024, description="Advertised `SIZE`; "
                                   "larger messages get `552 5.3.4` (0: no limit).")
    max_recipients: int = Field(100, ge=1, description="Recipients per message; more get "
                                "`452 4.5.3`.")
    max_connections: int = Field(500, ge=1, description="Open sessions in all; more get "
                                 "`421 4.7.0` at connect.")
    max_connections_per_ip: int = Field(100, ge=1, description="Open sessions per client "
                                        "address; more get `421 4.7.0` at connect.")
    timeout: PositiveDuration = Field(300.0, description="How long a client may send "
                                      "nothing before `421 4.4.2 Idle timeout`; every byte "
                                      "received restarts it, also inside a message.")
    shutdown_grace: Duration = Field(10.0, description="How long in-flight sessions and "
                                     "deliveries get at SIGTERM before they are closed "
                                     "(`\"1d\"` waits for practically every session).")
    tls: TlsMode = Field("off", description="`STARTTLS` on every listener: `\"files\"` "
                         "serves `tls_cert` and `tls_key` (the default when they are set); "
                         "`\"self-signed\"` makes a key and a certificate for `hostname` "
                         "in `tls_dir` on first start and reuses them; `\"off\"`: "
                         "plain SMTP only.")
    tls_cert: Annotated[Path, Field(strict=False)] | None = Field(
        None, description="PEM certificate (its chain after it) for `tls = \"files\"`; "
        "relative to the config file's directory.")
    tls_key: Annotated[Path, Field(strict=False)] | None = Field(
        None, description="PEM private key of `tls_cert`, unencrypted.")
    tls_dir: Annotated[Path, Field(strict=False)] | None = Field(
        None, description="Where `tls = \"self-signed\"` keeps `key.pem` (mode 0600) and "
        "`cert.pem` (default: a `tls` directory beside the SQLite queue file; required "
        "with PostgreSQL). A certificate that expired or no longer names `hostname` is "
        "made anew.")
    require_tls: bool = Field(False, description="On `host:port`: mail commands before "
                              "`STARTTLS` get `530 5.7.0 Must issue a STARTTLS command "
                              "first`.")
    users_file: Annotated[Path, Field(strict=False)] | None = Field(
        None, description="Users for `AUTH PLAIN` and `AUTH LOGIN`, offered only after TLS: "
        "`NAME:ARGON2-HASH` lines, written by `mailqueue user add`. Reread when it "
        "changes. Unset: no AUTH.")
    auth_required: bool = Field(False, description="On `host:port`: mail commands before a "
                                "successful `AUTH` get `530 5.7.0 Authentication "
                                "required`.")
    auth_max_failures: int = Field(5, ge=1, description="Failed `AUTH` attempts one client "
                                   "address may make within `auth_lockout`; after that its "
                                   "`AUTH` gets `421 4.7.0` (and no password is checked) "
                                   "until the oldest failure is `auth_lockout` old.")
    auth_lockout: PositiveDuration = Field(300.0, description="The span over which failed "
                                           "`AUTH` attempts count against "
                                           "`auth_max_failures`.")
    listeners: list[ListenerConfig] = Field([], description="Further listeners, each with "
                                            "its own port and TLS and AUTH policy.")

    @model_validator(mode="before")
    @classmethod
    def _tls_from_files(cls, data: Any) -> Any:
        """``tls_cert`` and ``tls_key`` without ``tls``: serve those files."""
        if isinstance(data, dict) and "tls" not in data and (
                data.get("tls_cert") is not None or data.get("tls_key") is not None):
            return {**data, "tls": "files"}
        return data

    @model_validator(mode="after")
    def _tls_and_auth_fit(self) -> SmtpConfig:
        files = self.tls_cert is not None or self.tls_key is not None
        if self.tls == "files" and (self.tls_cert is None or self.tls_key is None):
            raise ValueError('tls = "files" needs both tls_cert and tls_key')
        if self.tls != "files" and files:
            raise ValueError(f'tls_cert and tls_key are served with tls = "files", '
                             f'not tls = "{self.tls}"')
        if self.tls_dir is not None and self.tls != "self-signed":
            raise ValueError('tls_dir is where tls = "self-signed" keeps its certificate; '
                             "remove it, or set that")
        policies = [("", self.require_tls, self.auth_required, False)] + [
            (f"listeners[{i}].", lst.require_tls, lst.auth_required, lst.implicit_tls)
            for i, lst in enumerate(self.listeners)]
        for where, require_tls, auth_required, implicit in policies:
            for key, on in (("require_tls", require_tls), ("implicit_tls", implicit),
                            ("auth_required", auth_required)):
                if on and self.tls == "off":
                    raise ValueError(f"{where}{key} {_TLS_NEEDED}")
            if auth_required and self.users_file is None:
                raise ValueError(f"{where}auth_required needs users_file (AUTH checks "
                                 "passwords there; mailqueue user add writes it)")
        if self.users_file is not None and self.tls == "off":
            raise ValueError(f"users_file: AUTH is offered only after TLS, so it {_TLS_NEEDED}")
        names = [lst.name for lst in self.listeners]
        if "smtp" in names:
            raise ValueError("listener name 'smtp' is the [smtp] host:port listener's; "
                             "choose another")
        no_duplicates("listener name", names)
        return self


class RetryConfig(ConfigModel):
    """Backoff for temporary delivery failures."""

    initial_delay: PositiveDuration = Field(60.0, description="Wait after the first "
                                            "failed attempt.")
    multiplier: float = Field(2.0, ge=1.0, description="Each further failure waits this "
                              "many times longer: `initial_delay * multiplier^(n-1)`.")
    max_delay: PositiveDuration = Field(3600.0, description="The longest wait between "
                                        "attempts.")
    jitter: float = Field(0.1, ge=0.0, le=1.0, description="Each wait is spread by ± this "
                          "share, so a store coming back is not hit all at once.")


class QueueConfig(ConfigModel):
    """The durable queue."""

    url: str = Field(DEFAULT_URL, description="SQLAlchemy URL of the queue: "
                     "`sqlite+aiosqlite:///PATH` (three slashes before a relative path, "
                     "four before an absolute one) or `postgresql+asyncpg://USER@HOST/DB`.")
    max_messages: int = Field(1_000_000, ge=1, description="Messages not yet done the "
                              "queue holds; beyond it new mail gets `452 4.3.1`.")
    max_bytes: Annotated[Size, Field(ge=1)] = Field(
        10 * 1024**3, description="Bytes of messages not yet done the queue holds; beyond "
        "it new mail gets `452 4.3.1`.")
    max_lifetime: Duration = Field(5 * 86400.0, description="A recipient still failing "
                                   "after this long bounces (0: try once, then bounce).")
    window_time_counts: bool = Field(False, description="Whether time a recipient's store "
                                     "spends inside a window counts against `max_lifetime`.")
    delay_warning: Duration = Field(0.0, description="After this long, a local sender gets "
                                    "one delay notice per message (0: off).")
    retry: RetryConfig = Field(RetryConfig(), description="Backoff after temporary "
                               "delivery failures.")
    commit_batch: int = Field(256, ge=1, description="Most messages one group commit "
                              "takes.")
    writer: Literal["auto", "thread", "process"] = Field(
        "auto", description="Where an SQLite file queue's group commit runs: a thread of "
        "the server's, or a child process of its own on the CPUs `writer_cpus` names. "
        "`auto`: `mailqueue serve` starts a process where it has two CPUs or more to run "
        "on, a thread otherwise, and logs its choice (`server_tuned`); a server embedded "
        "in another process (the pytest plugin, `rehearse`) uses a thread.")
    writer_cpus: CpuSet = Field(None, description="With `writer = \"process\"` (or "
                                "`auto`, which it then makes a process): the CPUs the child "
                                "runs on (default: those `[server] cpus` leaves free).")

    @model_validator(mode="after")
    def _writer_fits(self) -> QueueConfig:
        if self.writer == "process" and sqlite_path(self.url) is None:
            raise ValueError('writer = "process" is for a queue in an SQLite file; '
                             'remove it, or set it to "thread"')
        if self.writer_cpus is not None and sqlite_path(self.url) is None:
            raise ValueError("writer_cpus is for a queue in an SQLite file; remove it")
        if self.writer_cpus is not None and self.writer == "thread":
            raise ValueError('writer_cpus applies only with writer = "process" or "auto"')
        return self

    @field_validator("url")
    @classmethod
    def _known_driver(cls, url: str) -> str:
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://",
                               "postgresql+psycopg://")):
            raise ValueError("use sqlite+aiosqlite:///PATH or postgresql+asyncpg://HOST/DB")
        if url.startswith("sqlite") and not url.startswith("sqlite+aiosqlite:///"):
            raise ValueError("a SQLite URL has three slashes before a relative path "
                             "(sqlite+aiosqlite:///var/queue.db) and four before an "
                             "absolute one (sqlite+aiosqlite:////srv/queue.db)")
        return url


class DeliveryConfig(ConfigModel):
    """The delivery worker."""

    batch_size: int = Field(1000, ge=1, description="Recipients one claim takes.")
    batch_bytes: Size = Field(64 * 1024 * 1024, description="A claim also stops before its "
                              "bodies pass this size (one recipient is claimed however "
                              "large; 0: no limit); `concurrency` x `batch_bytes` bounds "
                              "the bodies in memory.")
    concurrency: int = Field(4, ge=1, le=64, description="Delivery lanes, each claiming and "
                             "writing its own batch.")
    lease: PositiveDuration = Field(300.0, description="How long a claim is held before it "
                                    "returns to the queue.")
    poll_interval: PositiveDuration = Field(1.0, description="Fallback poll; new mail, "
                                            "window and node changes wake the worker at "
                                            "once. On an SQLite queue file the server "
                                            "also sees other processes' commits and the "
                                            "next retry time, and an idle worker claims "
                                            "only then (at least every 30 s).")
    reclaim_interval: PositiveDuration = Field(30.0, description="How often expired leases "
                                               "are returned and lifetimes checked.")
    ramp: Duration = Field(0.0, description="After a window ends, delivery rises from "
                           "`ramp_from` to full speed over this long (0: no ramp).")
    ramp_from: float = Field(0.1, gt=0.0, le=1.0, description="The share of full speed a "
                             "ramp starts at.")
    max_rate: float = Field(0.0, ge=0.0, description="Recipients per clock hour at full "
                            "speed (0: no cap; a ramp then limits the lanes instead).")


class AdminConfig(ConfigModel):
    """The admin HTTP endpoint: metrics, health, mailbox access (off unless configured)."""

    enabled: bool = Field(True, description="Serve the endpoint (the section being "
                          "present turns it on).")
    host: str = Field("127.0.0.1", description="Address the endpoint binds; anything but "
                      "loopback needs a `token`.")
    port: int = Field(8025, ge=0, le=65535, description="Port the endpoint binds.")
    token: str | None = Field(None, description="When set, every path but the health checks "
                              "needs `Authorization: Bearer TOKEN`.")

    @model_validator(mode="after")
    def _token_off_loopback(self) -> AdminConfig:
        if not is_loopback(self.host) and not self.token:
            raise ValueError(f"host {self.host!r} is not a loopback address: set admin.token "
                             "(clients send 'Authorization: Bearer TOKEN')")
        return self


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or ``localhost``) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoggingConfig(ConfigModel):
    """Structured logs on stderr."""

    format: Literal["console", "json"] = Field("console", description="`json` for one "
                                               "object per line.")
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="The least severe events logged.")


class RemoteTimeouts(ConfigModel):
    """How long an `lmtp` or `smtp` store waits at each step of a transaction.

    RFC 5321 §4.5.3.2 recommends 5 minutes for the greeting, MAIL and RCPT, 2 for DATA,
    3 per data block and 10 for the reply to the final dot, for mail crossing the open
    Internet. The defaults here are shorter: a mailbox server on the local network that
    takes a minute to answer is down, and its mail is better retried with backoff than held
    by a lane. Every wait also ends before the claim's `[delivery] lease` runs out, so a
    recipient is never in two transactions under two leases."""

    connect: PositiveDuration = Field(30.0, description="Opening the connection (TCP or "
                                      "unix socket), and each TLS handshake.")
    greeting: PositiveDuration = Field(60.0, description="The server's `220` greeting, and "
                                       "each reply to `LHLO`/`EHLO`, `STARTTLS`, `AUTH` and "
                                       "`RSET` (RFC 5321: 5 minutes).")
    mail: PositiveDuration = Field(60.0, description="The reply to `MAIL FROM` (RFC 5321: "
                                   "5 minutes).")
    rcpt: PositiveDuration = Field(60.0, description="Each reply to `RCPT TO` (RFC 5321: "
                                   "5 minutes).")
    data_init: PositiveDuration = Field(60.0, description="The `354` reply to `DATA` "
                                        "(RFC 5321: 2 minutes).")
    data_block: PositiveDuration = Field(60.0, description="Sending each block of the "
                                         "message (RFC 5321: 3 minutes).")
    data_done: PositiveDuration = Field(120.0, description="The reply to the final `.` — "
                                        "for LMTP each recipient's (RFC 5321: 10 minutes). A "
                                        "server that has the message but answers too late "
                                        "gets it again at the retry.")
    idle: PositiveDuration = Field(10.0, description="How long an idle connection stays "
                                   "open for the next message before it is closed with "
                                   "`QUIT`.")


StoreKind = Literal["maildir", "lmtp", "smtp"]
_OWNER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$")
_REMOTE_ONLY = ("hosts", "verify_path", "helo", "starttls", "tls_ca_file", "auth_user",
                "auth_password")


class StoreConfig(ConfigModel):
    """A mailbox store: Maildirs mailqueue writes at ``{path}/{domain}/{local_part}/``
    (``kind = "maildir"``), or mailbox servers it delivers to over LMTP or SMTP."""

    name: Name = Field(description="The store's name (letters, digits, `.`, `_`, `-`).")
    kind: StoreKind = Field("maildir", description="How mail is stored: `maildir` (files "
                            "mailqueue writes), `lmtp` (delivered to mailbox servers over "
                            "LMTP, as to Dovecot or Cyrus) or `smtp` (relayed to servers "
                            "over SMTP).")
    path: Annotated[Path | None, Field(strict=False)] = Field(
        None, description="`maildir` stores (required there): root of the Maildirs: mail "
        "for `local@domain` lands in `{path}/{domain}/{local}/new/`; relative to the config "
        "file's directory.")
    domains: list[str] = Field(min_length=1, description="Domains this store serves; "
                               "others get `550 5.7.1 Relay access denied`.")
    mailboxes: list[str] | None = Field(None, description="The local parts that exist "
                                        "(others get `550 5.1.1`); any is accepted when "
                                        "absent.")
    owner: str | None = Field(None, description="`maildir` stores: the user (and group) the "
                              "Maildirs and their files belong to, as `vmail`, `vmail:mail`, "
                              "`5000` or `5000:5000` (mailqueue then runs as root, or as "
                              "that user): the mail user a Dovecot serving them runs as "
                              "(`mailqueue dovecot config`). Unset: whoever runs mailqueue.")
    writers: int = Field(16, ge=1, le=256, description="`maildir` stores: copies written at "
                         "once, each waiting on its own fsync.")
    nodes: int = Field(1, ge=1, le=MAX_NODES, strict=True, description="Mailbox nodes the "
                       "store is sharded over (`NAME-1` … `NAME-N`), each of which can be "
                       "set down, slow or flaky (`mailqueue node`); a mailbox's node is a "
                       "stable hash of its address. An `lmtp` or `smtp` store has one node "
                       "per host (the default here).")
    hosts: list[str] | None = Field(None, description="`lmtp` and `smtp` stores (required "
                                    "there): the servers, as `host:port`, `[IPv6]:port`, "
                                    "`host` (port 24 for LMTP, 25 for SMTP) or an absolute "
                                    "unix socket path. Host N is node `NAME-N`: a mailbox is "
                                    "delivered to the host its node is.")
    connections: int = Field(10, ge=1, le=100, strict=True, description="`lmtp` and `smtp` "
                             "stores: connections open at once to each host; each carries "
                             "one message after another (`RSET` between). A mailbox server "
                             "spends most of a delivery in its own fsync, so several "
                             "connections overlap them (Postfix allows 20 per destination).")
    verify_path: Annotated[Path | None, Field(strict=False)] = Field(
        None, description="`lmtp` and `smtp` stores: the root of the Maildirs the servers "
        "write, laid out as `{verify_path}/{domain}/{local}/` (Dovecot: `mail_location = "
        "maildir:ROOT/%Ld/%Ln`), where `verify`, the pytest ledger and the admin endpoint "
        "read what was delivered; relative to the config file's directory. Unset: "
        "delivered mail is not checked.")
    helo: HostName | None = Field(None, description="`lmtp` and `smtp` stores: the name sent in "
                             "`LHLO`/`EHLO` (default: `[smtp] hostname`).")
    starttls: Literal["off", "opportunistic", "required"] | None = Field(
        None, description="`lmtp` and `smtp` stores: `opportunistic` uses TLS where the "
        "server offers `STARTTLS` and does not check its certificate (RFC 7435); "
        "`required` defers mail for a server that does not offer it, and checks the "
        "certificate unless `tls_verify = false`; `off` never starts TLS. Default: "
        "`opportunistic` for `smtp`, `off` for `lmtp`.")
    tls_verify: bool = Field(True, description="With `starttls = \"required\"`: check the "
                             "server's certificate and that it names the host.")
    tls_ca_file: Annotated[Path | None, Field(strict=False)] = Field(
        None, description="PEM file of the certificate authorities `tls_verify` trusts "
        "(default: the system's).")
    auth_user: str | None = Field(None, description="`smtp` stores: log in with `AUTH` "
                                  "(`PLAIN`, else `LOGIN`) as this user, only over TLS. "
                                  "Needs `auth_password`.")
    auth_password: str | None = Field(None, repr=False, description="The password for "
                                      "`auth_user`. Keep it out of the file by setting "
                                      "`MAILQUEUE_STORES_<N>_AUTH_PASSWORD` in the "
                                      "environment.")
    timeouts: RemoteTimeouts = Field(RemoteTimeouts(), description="`lmtp` and `smtp` "
                                     "stores: how long each step of a transaction may take. "
                                     "The defaults are shorter than RFC 5321's, for a mailbox "
                                     "tier on the local network; whatever they are, no wait "
                                     "lasts past 80% of the claim's `[delivery] lease`.")

    @model_validator(mode="before")
    @classmethod
    def _nodes_from_hosts(cls, data: Any) -> Any:
        """A remote store has one node per host unless ``nodes`` says otherwise (which
        :meth:`_kind_fits` then refuses)."""
        if isinstance(data, dict) and data.get("kind") in ("lmtp", "smtp") and \
                data.get("nodes") is None and isinstance(data.get("hosts"), list) and \
                data["hosts"]:
            return {**data, "nodes": len(data["hosts"])}
        return data

    @field_validator("domains")
    @classmethod
    def _domains(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _DOMAIN_RE.match(value):
                raise ValueError(f"{value!r} is not a domain name")
        return [v.lower() for v in values]

    @field_validator("owner")
    @classmethod
    def _owner(cls, value: str | None) -> str | None:
        if value is not None and not _OWNER_RE.match(value):
            raise ValueError(f"{value!r}: give a user, user:group, uid or uid:gid")
        return value

    @field_validator("mailboxes")
    @classmethod
    def _mailboxes(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        for value in values:
            if not value or "/" in value or value.startswith(".") or "@" in value:
                raise ValueError(f"{value!r} is not a local part")
        return [v.lower() for v in values]

    @model_validator(mode="after")
    def _kind_fits(self) -> StoreConfig:
        if self.kind == "maildir":
            if self.path is None:
                raise ValueError("path: required for a maildir store (the root of its "
                                 "Maildirs)")
            for key in _REMOTE_ONLY:
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: only lmtp and smtp stores take it (this "
                                     "store's kind is maildir)")
            return self
        if self.owner is not None:
            raise ValueError(f"owner: only maildir stores take it (an {self.kind} store's "
                             "servers write its Maildirs, as their own user)")
        self._check_remote()
        return self

    def _check_remote(self) -> None:
        if self.path is not None:
            raise ValueError(f"path: an {self.kind} store delivers to its hosts and has no "
                             "path; set verify_path to the Maildir root its servers write "
                             "to have deliveries verified")
        if not self.hosts:
            raise ValueError(f"hosts: required for an {self.kind} store (host:port or a "
                             "unix socket path, one per node)")
        for index, host in enumerate(self.hosts):
            try:
                parse_endpoint(host, DEFAULT_PORTS[self.kind])
            except ValueError as exc:
                raise ValueError(f"hosts[{index}]: {exc}") from None
        no_duplicates("host", self.hosts)
        if self.nodes != len(self.hosts):
            count = f"{len(self.hosts)} host" + ("s" if len(self.hosts) > 1 else "")
            raise ValueError(f"nodes: an {self.kind} store has one node per host ({count}, "
                             f"nodes = {self.nodes}); leave nodes out")
        if (self.auth_user is None) != (self.auth_password is None):
            raise ValueError("auth_user and auth_password go together: set both or neither")
        if self.auth_user is not None and self.tls == "off":
            raise ValueError('auth_user: credentials are only sent over TLS; set starttls '
                             'to "opportunistic" or "required"')

    @property
    def tls(self) -> Literal["off", "opportunistic", "required"]:
        """``starttls``, or the kind's default when it is unset."""
        if self.starttls is not None:
            return self.starttls
        return "opportunistic" if self.kind == "smtp" else "off"

    @property
    def mailbox_root(self) -> Path | None:
        """Where this store's Maildirs can be read: ``path`` for a Maildir store,
        ``verify_path`` for a remote one (None: not readable here)."""
        return self.path if self.kind == "maildir" else self.verify_path

    def endpoints(self) -> list[Endpoint]:
        """The hosts of a remote store, parsed (node N is entry N-1); [] for a Maildir
        store."""
        port = DEFAULT_PORTS.get(self.kind, 0)
        return [parse_endpoint(host, port) for host in self.hosts or ()]


class WindowConfig(ConfigModel):
    """A planned maintenance window."""

    name: Name = Field(description="The window's name.")
    stores: list[str] | None = Field(None, description="Stores the window covers; leave it "
                                     "out for every store (an empty list is an error).")
    start: str = Field(description="Planned start: RFC 3339 with an offset, or a local time "
                       "with `timezone`.")
    end: str = Field(description="Planned end, as `start`.")
    timezone: Zone | None = Field(None, description="IANA zone of local times "
                                  "(`America/Chicago`); daylight saving is honoured.")
    inbound: Literal["queue", "tempfail", "reject"] = Field(
        "queue", description="New mail for a covered store while the window is active: "
        "queued, `451 4.3.2`, or `554 5.3.2`.")

    @field_validator("stores", mode="before")
    @classmethod
    def _some_stores(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("an empty list names no store: list the stores the window "
                             "covers, or leave the key out for every store")
        return value

    @model_validator(mode="after")
    def _times(self) -> WindowConfig:
        for key in ("start", "end"):
            try:
                parse_time(getattr(self, key), self.timezone)
            except TimeParseError as exc:
                raise ValueError(f"{key}: {exc}") from None
        if self.start_ts >= self.end_ts:
            raise ValueError(f"window {self.name!r}: end must be after start")
        return self

    @property
    def start_ts(self) -> float:
        return parse_time(self.start, self.timezone)

    @property
    def end_ts(self) -> float:
        return parse_time(self.end, self.timezone)


class ServerConfig(ConfigModel):
    """``[server]``: the ``mailqueue serve`` process."""

    cpus: CpuSet = Field(None, description="CPUs `mailqueue serve` and all its threads run "
                         "on, as `taskset` lists them (`\"0\"`, `\"0,2\"`, `\"0-3\"`); "
                         "unset: wherever the OS puts them.")


class Config(ConfigModel):
    """The whole configuration."""

    server: ServerConfig = ServerConfig()
    smtp: SmtpConfig = SmtpConfig()
    queue: QueueConfig = QueueConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    logging: LoggingConfig = LoggingConfig()
    admin: AdminConfig | None = None
    stores: list[StoreConfig] = Field(min_length=1)
    windows: list[WindowConfig] = []

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        names = [s.name for s in self.stores]
        no_duplicates("store name", names)
        no_duplicates("domain", [d for s in self.stores for d in s.domains])
        no_duplicates("window name", [w.name for w in self.windows])
        for window in self.windows:
            for store in window.stores or []:
                if store not in names:
                    raise ValueError(f"window {window.name!r} names unknown store {store!r} "
                                     f"(known: {', '.join(names)})")
        return self

    def store(self, name: str) -> StoreConfig:
        for store in self.stores:
            if store.name == name:
                return store
        raise KeyError(name)


def load_config(path: str | Path | None = None,
                environ: dict[str, str] | None = None) -> Config:
    """Read, override and validate; raise :class:`ConfigError` naming what to fix.

    Relative paths in the file are made absolute against the file's directory; those set by
    an environment override against the current directory."""
    env = dict(os.environ if environ is None else environ)
    if path is None:
        path = env.get(ENV_PREFIX + "CONFIG")
    if path is None:
        raise ConfigError("no config file: pass -c FILE or set MAILQUEUE_CONFIG")
    source = Path(path)
    data = read_toml(source, "config")
    applied = apply_overrides(data, env, source, Config)
    # an error in an overridden key names the override too, not only the file
    config = config_from_dict(data, " + ".join([str(source), *applied]))
    return resolve_paths(config, source.absolute().parent, set(applied.values()))


def read_toml(source: Path, what: str,
              error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """Parse a TOML file; raise ``error`` naming the file (a ``what`` file) and the trouble."""
    try:
        return tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{source}: no such {what} file") from None
    except OSError as exc:
        raise error(f"{source}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{source}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: invalid TOML: {exc}") from None


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a parsed mapping (the tests and the pytest plugin build configs this way)."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_errors(exc)}") from None
    except TimeParseError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def describe_errors(exc: ValidationError) -> str:
    """The first three problems as ``key: what is wrong``, for a one-line error."""
    problems = []
    for error in exc.errors()[:3]:
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                      for p in error["loc"]).lstrip(".") or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        problems.append(f"{key}: {message}")
    more = len(exc.errors()) - 3
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


# --- paths ---------------------------------------------------------------------------------

def resolve_paths(config: Config, base: Path, from_cwd: set[Key] | frozenset[Key] = frozenset()
                  ) -> Config:
    """``config`` with its relative paths (the SQLite queue's, each store's, the TLS and
    users files) made absolute against ``base``, or against the current directory for the
    keys in ``from_cwd``."""
    def root(key: Key) -> Path:
        return Path.cwd() if key in from_cwd else base

    queue = config.queue.model_copy(
        update={"url": sqlite_url_against(config.queue.url, root(("queue", "url")))})
    smtp = config.smtp.model_copy(update={
        key: _against(path, root(("smtp", key)))
        for key in ("tls_cert", "tls_key", "tls_dir", "users_file")
        if (path := getattr(config.smtp, key)) is not None})
    stores = [store.model_copy(update={
                  key: _against(value, root(("stores", i, key)))
                  for key in ("path", "verify_path", "tls_ca_file")
                  if (value := getattr(store, key)) is not None})
              for i, store in enumerate(config.stores)]
    return config.model_copy(update={"smtp": smtp, "queue": queue, "stores": stores})


def _against(path: Path, root: Path) -> Path:
    return path if path.is_absolute() else Path(os.path.normpath(root / path))


def sqlite_url_against(url: str, root: Path) -> str:
    """``url`` with a relative SQLite database path made absolute against ``root`` (other
    URLs, in-memory databases, SQLite URIs and absolute paths as they are)."""
    database = sqlite_path(url)
    if database is None or os.path.isabs(database):
        return url
    absolute = os.path.normpath(root / database)
    return make_url(url).set(database=absolute).render_as_string(hide_password=False)
