"""A private Dovecot for tests and benchmarks: its own config, sockets, state, log and
Maildirs, all under one temporary directory; the system's Dovecot config is never read.

API::

    from mailqueue.testing.dovecot import Dovecot, require_dovecot

    dovecot = Dovecot(users=None, unix_socket=True)
    with dovecot:                  # start() ... stop()
        dovecot.root               # its directory (removed by stop(), unless keep=True)
        dovecot.lmtp_host          # "127.0.0.1:PORT": an lmtp store's hosts entry
        dovecot.lmtp_socket        # the LMTP unix socket (a Path), when unix_socket
        dovecot.mail_root          # Maildirs at {mail_root}/{domain}/{local}/: verify_path
        dovecot.maildir(address)   # one mailbox's Maildir
        dovecot.files(address)     # its message files (new/ and cur/)
        dovecot.queue_ids(address) # X-Mailqueue-Id of each message, read with doveadm
        dovecot.count(address)     # messages in its INBOX, read with doveadm
        dovecot.doveadm(*args)     # doveadm -c CONFIG ARGS..., its output
        dovecot.log_text()         # Dovecot's log
        dovecot.stop_process()     # down, keeping its directory and port; start() again

- ``users``: None accepts any ``user@domain`` (a static userdb); a list of addresses makes
  a passwd-file userdb of just those, so any other gets Dovecot's own ``550 5.1.1``.
- ``protocols``: what Dovecot serves (``lmtp`` by default; the listeners of other
  protocols are the caller's to add through ``extra``, config text appended as is).
- Mail is written by a user that is not root: when the tests run as root, uid and gid
  5000 (``vmail`` if that user exists, else the bare ids, which Dovecot accepts); otherwise
  the user running the tests, with Dovecot's internal and login users that user too.
- Its directory is a new one under the system's temporary directory (not pytest's
  ``tmp_path``, whose parents only root may enter, and whose length would pass a unix
  socket path's limit), open to the mail user to pass through.
- Where Dovecot is not installed, :class:`Dovecot` raises :class:`DovecotMissing`;
  :func:`require_dovecot` skips a pytest test instead, with the reason (``.ci/run``
  installs ``dovecot-core`` and ``dovecot-lmtpd``). pytest is imported only there, so
  benchmarks and scripts use the rig without it.

Starting waits (under a timeout) until the LMTP listener answers; stopping sends SIGTERM,
then SIGKILL after the timeout. A port taken between choosing and binding it is retried
with another.

:class:`AccessDovecot` is the other kind: the Dovecot ``mailqueue dovecot config`` writes
for a mailqueue config (IMAP and POP3 on the stores' Maildirs, logins decided by the
running mailqueue's admin endpoint), started on free loopback ports::

    with AccessDovecot(config, users_file=None) as dovecot:   # None: any password
        imap = imaplib.IMAP4("127.0.0.1", dovecot.imap_port)
        dovecot.pop3_port

It sets Dovecot's failure delay to 0 so that a test of refusals does not wait two seconds
for each; Dovecot's penalty for repeated failures from one address still applies (tests
that fail many logins connect from different 127.x addresses), unless ``nodelay=True``
(any password only), which answers every refusal at once.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from mailqueue.config import Config
from mailqueue.loadtest import free_port
from mailqueue.mailbox.maildir import list_maildir, mailbox_path

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
LOG_WAIT = 1.0  # seconds Dovecot's master waits for its log process when it stops
MAIL_ID = 5000  # uid and gid of the mail when the tests run as root
INSTALL_HINT = "apt-get install dovecot-core dovecot-lmtpd"
ACCESS_HINT = "apt-get install dovecot-core dovecot-imapd dovecot-pop3d"


class DovecotMissing(RuntimeError):
    """Dovecot with its LMTP server is not installed on this machine."""


def dovecot_binary() -> str | None:
    """The ``dovecot`` program, if installed (also where ``/usr/sbin`` is not on PATH)."""
    found = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/sbin")
    if found is None or not Path("/usr/lib/dovecot/lmtp").exists():
        return None
    return found


def require_dovecot() -> str:
    """The ``dovecot`` program, or skip the (pytest) test saying what to install."""
    found = dovecot_binary()
    if found is None:
        import pytest

        pytest.skip(f"Dovecot with LMTP is not installed ({INSTALL_HINT})")
    return found


def access_binary() -> str | None:
    """The ``dovecot`` program, if installed with its IMAP and POP3 servers."""
    found = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/sbin")
    if found is None or not all(Path(f"/usr/lib/dovecot/{name}").exists()
                                for name in ("imap", "pop3")):
        return None
    return found


def require_dovecot_access() -> str:
    """The ``dovecot`` program with IMAP and POP3, or skip the (pytest) test saying what to
    install."""
    found = access_binary()
    if found is None:
        import pytest

        pytest.skip(f"Dovecot with IMAP and POP3 is not installed ({ACCESS_HINT})")
    return found


def mail_owner() -> str:
    """``UID:GID`` of the user Dovecot serves mail as (a store's ``owner``), as
    :class:`Dovecot` chooses it."""
    return "{}:{}".format(*_mail_ids())


def _mail_ids() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    with contextlib.suppress(KeyError):
        entry = pwd.getpwnam("vmail")
        return entry.pw_uid, entry.pw_gid
    return MAIL_ID, MAIL_ID


class _Private:
    """A Dovecot of its own under ``root``: started with a config written for each attempt
    (a port taken between choosing and binding it is retried), stopped, its log read."""

    def __init__(self, binary: str, prefix: str, keep: bool) -> None:
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.root.chmod(0o711)
        self.keep = keep
        self.config_path = self.root / "dovecot.conf"
        self.log_path = self.root / "dovecot.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The Dovecot master process's id while it runs."""
        return None if self._process is None else self._process.pid

    def _configure(self, attempt: int) -> None:
        """Write the config for this start attempt (0 first)."""
        raise NotImplementedError

    def _answers(self) -> bool:
        """Whether its listeners answer."""
        raise NotImplementedError

    def start(self, timeout: float = START_TIMEOUT) -> None:
        for attempt in range(3):
            self._configure(attempt)
            with (self.root / "stderr.txt").open("ab") as stderr:
                self._process = subprocess.Popen(
                    [self.binary, "-c", str(self.config_path), "-F"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
            if _wait_until(self._process, timeout, self._answers):
                return
            taken = "Address already in use" in self.log_text()
            self.stop_process()
            if not taken or attempt == 2:
                raise RuntimeError(f"Dovecot did not start within {timeout}s:\n"
                                   f"{self.log_text()[-2000:]}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop Dovecot and remove its directory (unless ``keep``)."""
        self.stop_process(timeout)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def stop_process(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop Dovecot, keeping its directory: ``start()`` brings it back."""
        process, self._process = self._process, None
        _terminate(process, timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        text = ""
        for path in (self.log_path, self.root / "stderr.txt"):
            with contextlib.suppress(FileNotFoundError):
                text += path.read_text(errors="replace")
        return text


class Dovecot(_Private):
    """One private Dovecot (see the module)."""

    def __init__(self, *, users: Sequence[str] | None = None,
                 protocols: Sequence[str] = ("lmtp",), unix_socket: bool = True,
                 extra: str = "", keep: bool = False) -> None:
        binary = dovecot_binary()
        if binary is None:
            raise DovecotMissing(f"Dovecot with LMTP is not installed ({INSTALL_HINT})")
        super().__init__(binary, "mq-dovecot-", keep)
        self.users = None if users is None else [u.lower() for u in users]
        self.protocols = tuple(protocols)
        self.unix_socket = unix_socket
        self.extra = extra
        self.mail_root = self.root / "mail"
        self.port = 0
        self.uid, self.gid = _mail_ids()

    # --- where it listens ------------------------------------------------------------------

    @property
    def lmtp_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def lmtp_socket(self) -> Path:
        return self.root / "lmtp.sock"

    # --- life ------------------------------------------------------------------------------

    def _configure(self, attempt: int) -> None:
        # The port it had before, if any (a restart), else a free one.
        self._prepare(self.port if self.port and not attempt else free_port())

    def stop_process(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop Dovecot, keeping its directory, mail and port: ``start()`` brings it back
        where it was (a backend host that goes down and comes back)."""
        super().stop_process(timeout)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return sock.recv(64).startswith(b"220")
        except OSError:
            return False

    # --- the config ------------------------------------------------------------------------

    def _prepare(self, port: int) -> None:
        self.port = port
        for sub in ("run", "state"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.mail_root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(self.mail_root, self.uid, self.gid)
        userdb = self._userdb()
        self.config_path.write_text(self._config(userdb))

    def _userdb(self) -> str:
        home = f"home={self.mail_root}/%Ld/%Ln"
        if self.users is None:
            return f"driver = static\n  args = uid={self.uid} gid={self.gid} {home}"
        users = self.root / "users"
        users.write_text("".join(f"{u}::{self.uid}:{self.gid}::"
                                 f"{mailbox_path(self.mail_root, u)}::\n" for u in self.users))
        return f"driver = passwd-file\n  args = username_format=%Lu {users}"

    def _config(self, userdb: str) -> str:
        unchroot = ""
        if os.geteuid() == 0:
            internal, group, login = "dovecot", "dovecot", "dovenull"
        else:
            internal = login = pwd.getpwuid(os.getuid()).pw_name
            group = grp.getgrgid(os.getgid()).gr_name
            # Only root may chroot: the services that do by default do not here.
            unchroot = "".join(f"service {name} {{\n  chroot =\n}}\n" for name in
                               ("anvil", "imap-login", "pop3-login", "submission-login"))
        unix = f"""
  unix_listener {self.lmtp_socket} {{
    mode = 0666
  }}""" if self.unix_socket else ""
        return f"""# A private Dovecot for mailqueue's tests and benchmarks.
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.log_path}
instance_name = mailqueue-test-{self.port}
protocols = {" ".join(self.protocols)}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
default_internal_user = {internal}
default_internal_group = {group}
default_login_user = {login}
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:{self.mail_root}/%Ld/%Ln
auth_username_format = %Lu
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  {userdb}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.port}
  }}{unix}
}}
{unchroot}{self.extra}
"""

    # --- reading back ----------------------------------------------------------------------

    def maildir(self, address: str) -> Path:
        return mailbox_path(self.mail_root, address)

    def files(self, address: str) -> list[Path]:
        """The message files in ``address``'s Maildir (``new/`` and ``cur/``)."""
        return [Path(entry.path) for entry in list_maildir(self.maildir(address))]

    def doveadm(self, *args: str) -> str:
        done = subprocess.run([shutil.which("doveadm", path="/usr/bin:/usr/sbin") or "doveadm",
                               "-c", str(self.config_path), *args],
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def count(self, address: str) -> int:
        """Messages in ``address``'s INBOX, as Dovecot counts them."""
        out = self.doveadm("mailbox", "status", "-u", address, "messages", "INBOX")
        return int(out.split("messages=")[1].split()[0])

    def queue_ids(self, address: str) -> list[str]:
        """The ``X-Mailqueue-Id`` of each message in ``address``'s INBOX, as Dovecot reads
        them (one per message, in Dovecot's order)."""
        out = self.doveadm("fetch", "-u", address, "hdr.x-mailqueue-id", "mailbox", "INBOX")
        return [line.split(":", 1)[1].strip() for line in out.splitlines()
                if line.lower().startswith("hdr.x-mailqueue-id:")]

class AccessDovecot(_Private):
    """The Dovecot of ``mailqueue dovecot config`` for ``config`` (see the module), on free
    loopback ports, with its files in a new temporary directory."""

    def __init__(self, config: Config, *, users_file: Path | None = None,
                 fail_open: bool = False, keep: bool = False, nodelay: bool = False) -> None:
        binary = access_binary()
        if binary is None:
            raise DovecotMissing(f"Dovecot with IMAP and POP3 is not installed ({ACCESS_HINT})")
        super().__init__(binary, "mq-access-", keep)
        self.config = config
        self.users_file = users_file
        self.fail_open = fail_open
        self.nodelay = nodelay
        self.imap_port = 0
        self.pop3_port = 0

    def _configure(self, attempt: int) -> None:
        from mailqueue.access.dovecot import DovecotOptions, write_config

        self.imap_port, self.pop3_port = free_port(), free_port()
        write_config(self.config, DovecotOptions(
            directory=self.root, imap_port=self.imap_port, pop3_port=self.pop3_port,
            users_file=self.users_file, fail_open=self.fail_open, failure_delay="0",
            nodelay=self.nodelay))

    def _answers(self) -> bool:
        return all(_greets(port, prefix) for port, prefix in
                   ((self.imap_port, b"* OK"), (self.pop3_port, b"+OK")))


def _greets(port: int, prefix: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(64).startswith(prefix)
    except OSError:
        return False


def _terminate(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout``, unless it has ended already.

    Dovecot's master ends its ``log`` process last, and once it has reaped the others it
    waits a second for the log to go: as soon as every other child has ended (within the
    second the master would wait), the log is sent SIGTERM as well, and the master ends
    without that second."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    # A child still serving a client may take longer to end than the master waits for.
    watch = min(deadline, time.monotonic() + LOG_WAIT)
    while process.poll() is None and time.monotonic() < watch:
        children = _children(process.pid)
        if children is None:  # no /proc to read them from: wait for the master
            break
        logs = [pid for pid, name, _ in children if name == "log"]
        if len(logs) != 1 or not all(state == "Z" for _, name, state in children
                                     if name != "log"):
            time.sleep(0.001)
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(logs[0], signal.SIGTERM)
        break
    try:
        process.wait(max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def _children(pid: int) -> list[tuple[int, str, str]] | None:
    """The (pid, name, state) of each child of ``pid`` (``Z``: ended, not yet reaped), from
    ``/proc``; None where it cannot be read (no ``/proc``, or no children lists)."""
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    children = []
    for child in map(int, listed):
        with contextlib.suppress(OSError, IndexError):
            stat = Path(f"/proc/{child}/stat").read_text()
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            children.append((child, name, stat[stat.rindex(")") + 2:].split()[0]))
    return children


def _wait_until(process: subprocess.Popen[bytes], timeout: float,
                answers: Callable[[], bool]) -> bool:
    """Whether ``answers()`` came true within ``timeout`` while ``process`` ran."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if answers():
            return True
        time.sleep(0.05)
    return False
