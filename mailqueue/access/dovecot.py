"""A Dovecot configuration that serves the stores' Maildirs over IMAP and POP3, and asks
mailqueue who may log in.

Dovecot checks the password itself (a passwd-file of Argon2id hashes, the same file
``mailqueue user add`` writes for SMTP ``AUTH``; or, for a rig on loopback, any password).
Only after a good password does it ask mailqueue, through its *auth policy* protocol: an
HTTP ``POST`` to the admin endpoint's ``/dovecot/policy`` (:mod:`mailqueue.admin_http`),
which answers with the decision of :func:`mailqueue.access.mailbox_closed` — the same that
makes ``/mailboxes/ADDRESS/messages`` answer ``503``. A refused login carries the reason,
which IMAP clients show as an alert (``NO [ALERT] Mailbox maintenance: ...``) and POP3
clients as the error (``-ERR [AUTH] Mailbox maintenance: ...``); a wrong password stays an
authentication failure, in a window or not.

If mailqueue cannot be asked (not running, no answer within two seconds), logins fail
closed: a mailbox platform in maintenance may be half-upgraded, and a user who cannot read
mail for a minute loses nothing, where one who reads a mailbox mid-upgrade may see it
inconsistent. ``fail_open`` turns that round.

Each store with Maildirs readable here (a Maildir store's ``path``, a remote store's
``verify_path``) is served at ``{root}/{domain}/{local}``, mailqueue's layout: Dovecot's
home for a user is chosen by the domain (``%{if;...}``), and the Maildir is the home.
Dovecot never serves mail as root: the mail user is the stores' ``owner``, else the owner
of their directories.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import pwd
import secrets
from collections.abc import Sequence
from pathlib import Path

from mailqueue.config import Config, StoreConfig, is_loopback
from mailqueue.errors import ConfigError
from mailqueue.mailbox.maildir import resolve_owner

DEFAULT_IMAP_PORT = 10143
DEFAULT_POP3_PORT = 10110
# Dovecot puts unix sockets under base_dir; sun_path holds 107 bytes, its longest name ~35.
_MAX_BASE_DIR = 70
_UNSAFE = set("%;{}\\\"'#$ \t\n")  # characters Dovecot's variable expansion or parser takes


@dataclasses.dataclass(frozen=True)
class DovecotOptions:
    """What ``mailqueue dovecot config`` is asked for."""

    directory: Path  # dovecot.conf, its log, run/ and state/
    imap_port: int | None = DEFAULT_IMAP_PORT  # None: no IMAP
    pop3_port: int | None = DEFAULT_POP3_PORT  # None: no POP3
    listen: str = "127.0.0.1"
    users_file: Path | None = None  # passwd-file of NAME:HASH; None: any password
    fail_open: bool = False
    failure_delay: str = "2 secs"  # Dovecot's auth_failure_delay
    # Any password only: a refused login is answered at once, with neither the failure
    # delay nor Dovecot's growing penalty for repeated failures from one address (for a
    # prober that logs in on a schedule, as a rehearsal's probes do).
    nodelay: bool = False


@dataclasses.dataclass(frozen=True)
class Served:
    """A store Dovecot serves: its name, domains and Maildir root."""

    name: str
    domains: tuple[str, ...]
    root: Path


def served_stores(stores: Sequence[StoreConfig]) -> list[Served]:
    """The stores whose Maildirs can be served (a remote store without ``verify_path``
    cannot)."""
    return [Served(s.name, tuple(s.domains), s.mailbox_root.resolve())
            for s in stores if s.mailbox_root is not None]


def render_config(config: Config, options: DovecotOptions) -> str:
    """The text of ``dovecot.conf`` for ``config``'s stores (ConfigError saying what to fix
    where it cannot be made)."""
    stores = served_stores(config.stores)
    if not stores:
        raise ConfigError("no store has Maildirs Dovecot could serve: a maildir store's "
                          "path, or verify_path on an lmtp or smtp store")
    if options.imap_port is None and options.pop3_port is None:
        raise ConfigError("neither IMAP nor POP3 is on: give --imap-port or --pop3-port")
    if options.imap_port == options.pop3_port:
        raise ConfigError(f"IMAP and POP3 cannot share port {options.imap_port}: give "
                          "--imap-port and --pop3-port different ports")
    _check_listen(options.listen)
    directory = options.directory.resolve()
    base_dir = directory / "run"
    if len(str(base_dir)) > _MAX_BASE_DIR:
        raise ConfigError(f"{directory}: too long a path for Dovecot's unix sockets (at "
                          f"most {_MAX_BASE_DIR - 4} characters); pick a shorter --dir")
    for store in stores:
        _check_path(store.root, f"store {store.name}'s Maildir root")
    _check_path(directory, "--dir")
    loopback = is_loopback(options.listen)
    if options.users_file is None and not loopback:
        raise ConfigError(f"any password is allowed only on loopback; to listen on "
                          f"{options.listen} give --users FILE")
    uid, gid = mail_user(config.stores)
    policy_url, header = _policy(config)
    lines = [
        "# Dovecot for mailqueue's mailbox stores, written by `mailqueue dovecot config`.",
        "# Start it with: dovecot -F -c " + str(directory / "dovecot.conf"),
        f"base_dir = {base_dir}",
        f"state_dir = {directory / 'state'}",
        f"log_path = {directory / 'dovecot.log'}",
        f"instance_name = mailqueue-{_digest(str(directory))}",
        "protocols = " + " ".join(p for p, port in (("imap", options.imap_port),
                                                    ("pop3", options.pop3_port))
                                  if port is not None),
        f"listen = {options.listen}",
        *_tls_lines(config, loopback),
        *_process_users(),
        f"first_valid_uid = {min(uid, 500) if uid else 1}",
        f"first_valid_gid = {min(gid, 500) if gid else 1}",
        "mail_location = maildir:~",
        "auth_username_format = %Lu",
        f"auth_failure_delay = {options.failure_delay}",
        "",
        "# Who may log in now is mailqueue's to say, after the password checked out.",
        f"auth_policy_server_url = {policy_url}",
        *([f"auth_policy_server_api_header = {header}"] if header else []),
        f"auth_policy_hash_nonce = {secrets.token_hex(16)}",
        "auth_policy_request_attributes = login=%{requested_username} protocol=%s "
        "remote=%{rip}",
        "auth_policy_check_before_auth = no",
        "auth_policy_check_after_auth = yes",
        "auth_policy_report_after_auth = no",
        f"auth_policy_reject_on_fail = {'no' if options.fail_open else 'yes'}",
        "",
        *_passdb(options.users_file, options.nodelay),
        "userdb {",
        "  driver = static",
        f"  args = allow_all_users=yes uid={uid} gid={gid} home={_home(stores)}",
        "}",
    ]
    for protocol, port in (("imap", options.imap_port), ("pop3", options.pop3_port)):
        if port is not None:
            lines += [f"service {protocol}-login {{",
                      f"  inet_listener {protocol} {{",
                      f"    port = {port}",
                      "  }",
                      *(_imaps(protocol) if protocol == "imap" else ()),
                      *(["  chroot ="] if os.geteuid() != 0 else []),
                      "}"]
    if os.geteuid() != 0:  # only root may chroot
        lines += ["service anvil {", "  chroot =", "}"]
    else:  # the users file is root's alone (mode 0600), as for the SMTP server
        lines += ["service auth {", "  user = root", "}"]
    return "\n".join(lines) + "\n"


def write_config(config: Config, options: DovecotOptions) -> Path:
    """Write ``DIR/dovecot.conf`` (and make ``run/`` and ``state/``); its path."""
    from mailqueue._files import replace_file

    text = render_config(config, options)
    directory = options.directory
    path = directory / "dovecot.conf"
    try:
        for sub in ("run", "state"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        replace_file(path, text.encode(), 0o600)  # it may hold the admin token
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise ConfigError(f"--dir {directory}: cannot write Dovecot's files there"
                          f"{where}: {exc.strerror or exc}; pick another --dir") from None
    return path


def mail_user(stores: Sequence[StoreConfig]) -> tuple[int, int]:
    """The (uid, gid) Dovecot reads and writes the Maildirs as: the stores' ``owner``, else
    the owner of their roots (or of the nearest directory above that exists). One user for
    all stores, and never root; the group is the first store's (Dovecot's mail processes
    read and write as the files' owner, whatever their group)."""
    found: dict[int, list[tuple[str, int]]] = {}
    for store in stores:
        root = store.mailbox_root
        if root is None:
            continue
        uid, gid = resolve_owner(store.owner) if store.owner is not None else _owner_of(root)
        found.setdefault(uid, []).append((store.name, gid))
    if len(found) > 1:
        described = "; ".join(f"{', '.join(name for name, _ in named)}: uid {uid}"
                              for uid, named in found.items())
        raise ConfigError(f"the stores' Maildirs belong to different users ({described}): "
                          "Dovecot serves them as one mail user; set the same owner on "
                          "every store")
    uid, named = next(iter(found.items()))
    if uid == 0:
        raise ConfigError(f"the Maildirs of {', '.join(name for name, _ in named)} belong "
                          'to root, and Dovecot serves no mail as root: set owner = "5000" '
                          '(or any user but root, as "vmail") on those [[stores]] before '
                          "their first delivery, or run mailqueue as a user who is not root")
    return uid, named[0][1]


def _owner_of(path: Path) -> tuple[int, int]:
    for candidate in (path, *path.parents):
        try:
            stat = candidate.stat()
        except OSError:
            continue
        if candidate == path:
            return stat.st_uid, stat.st_gid
        break
    return os.geteuid(), os.getegid()  # made later by whoever runs mailqueue


def _home(stores: Sequence[Served]) -> str:
    """A home chosen by domain: nested ``%{if;%Ld;eq;DOMAIN;ROOT/%Ld/%Ln;...}``."""
    expression = "/nonexistent/%Ld/%Ln"
    for store in reversed(stores):
        for domain in reversed(store.domains):
            expression = f"%{{if;%Ld;eq;{domain};{store.root}/%Ld/%Ln;{expression}}}"
    return expression


def _passdb(users_file: Path | None, nodelay: bool = False) -> list[str]:
    if users_file is None:
        return ["# Any password: for a test rig on loopback only.",
                "passdb {", "  driver = static",
                f"  args = nopassword=y{' nodelay=y' if nodelay else ''}", "}"]
    users = users_file.resolve()
    _check_path(users, "--users")
    return ["# The users file `mailqueue user add` writes: NAME:ARGON2ID-HASH.",
            "passdb {", "  driver = passwd-file",
            f"  args = scheme=ARGON2ID username_format=%Lu {users}", "}"]


def _policy(config: Config) -> tuple[str, str | None]:
    admin = config.admin
    if admin is None:
        raise ConfigError("Dovecot asks mailqueue's admin endpoint who may log in: add an "
                          "[admin] section to the config (host and port), and run serve "
                          "with it")
    if not admin.enabled:
        raise ConfigError("Dovecot asks mailqueue's admin endpoint who may log in, and "
                          "[admin] enabled = false turns it off: remove that line")
    if admin.port == 0:
        raise ConfigError("[admin] port = 0 picks a port at each start: set a fixed port "
                          "for Dovecot to ask")
    host = admin.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    header = f"Authorization: Bearer {admin.token}" if admin.token else None
    return f"http://{host}:{admin.port}/dovecot/policy", header


def _tls_lines(config: Config, loopback: bool) -> list[str]:
    if loopback:
        return ["ssl = no", "disable_plaintext_auth = no"]
    smtp = config.smtp
    if smtp.tls == "files" and smtp.tls_cert is not None and smtp.tls_key is not None:
        cert, key = smtp.tls_cert, smtp.tls_key
    elif smtp.tls == "self-signed":
        from mailqueue.smtp.tls import self_signed, tls_dir

        cert, key = self_signed(tls_dir(config), smtp.hostname)
    else:
        raise ConfigError("off loopback, passwords must not cross the network in clear: "
                          "set [smtp] tls (its certificate serves IMAP and POP3 too)")
    return ["ssl = required", f"ssl_cert = <{cert.resolve()}", f"ssl_key = <{key.resolve()}",
            "disable_plaintext_auth = yes"]


def _imaps(protocol: str) -> list[str]:
    return ["  inet_listener imaps {", "    port = 0", "  }"] if protocol == "imap" else []


def _process_users() -> list[str]:
    """Dovecot's own users: its packaged ones under root; else the user running it."""
    if os.geteuid() == 0:
        for name in ("dovecot", "dovenull"):
            try:
                pwd.getpwnam(name)
            except KeyError:
                raise ConfigError(f"there is no user {name!r}: install Dovecot "
                                  "(apt-get install dovecot-imapd dovecot-pop3d)") from None
        return ["default_internal_user = dovecot", "default_internal_group = dovecot",
                "default_login_user = dovenull"]
    entry = pwd.getpwuid(os.getuid())
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    return [f"default_internal_user = {entry.pw_name}",
            f"default_internal_group = {group}",
            f"default_login_user = {entry.pw_name}"]


def _check_path(path: Path, what: str) -> None:
    bad = sorted(set(str(path)) & _UNSAFE)
    if bad:
        raise ConfigError(f"{what} {path}: Dovecot's config cannot hold the characters "
                          f"{' '.join(repr(c) for c in bad)}; use a path without them")


def _check_listen(host: str) -> None:
    """``host`` is an address Dovecot's ``listen`` takes: an IP address, ``*`` (every IPv4
    address) or ``localhost``."""
    if host in ("*", "localhost"):
        return
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"--listen {host!r}: give an IP address (127.0.0.1, ::1, "
                          "0.0.0.0, ::), * or localhost") from None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]
