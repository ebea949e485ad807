"""A private Postfix for tests and benchmarks: its own configuration, queue and data
directories under a temporary directory of its own, its own port on 127.0.0.1, started with
``postfix -c DIR start`` and always stopped — never the system's ``/etc/postfix``, which
other work on the machine may be using.

Usage::

    from mailqueue.testing.postfix import Postfix, require_postfix

    def test_relay() -> None:
        require_postfix()  # skips, naming what is missing, where Postfix cannot run
        with Postfix(main={"relayhost": "[127.0.0.1]:2525",
                           "smtp_tls_security_level": "encrypt"}) as pf:
            pf.send("a@src.test", ["bob@basic.example"], b"Subject: x\\r\\n\\r\\nhi\\r\\n")
            pf.wait_log(r"status=sent")

``Postfix(main=None, services=(), port=None, hostname="pf.test", keep=False)``

- ``main``: ``main.cf`` settings over :data:`DEFAULT_MAIN` (relaying for 127.0.0.0/8, no
  local delivery, retries every second, the log in ``<base>/postfix.log``).
- ``services``: extra ``master.cf`` lines, e.g. a second ``smtpd`` or an ``lmtp`` client
  with options; the defaults are :data:`MASTER` plus one ``smtpd`` on ``127.0.0.1:port``.
- ``port``: its ``smtpd`` port (default: a free one).
- ``keep``: leave the directory behind after :meth:`stop` (for a look at a failure).

Attributes: ``base`` (the directory: ``etc/``, ``spool/``, ``data/``, ``postfix.log``),
``config_dir``, ``port``, ``log_path``. Methods: :meth:`start` and :meth:`stop` (also
as a context manager), :meth:`set` then :meth:`reload` to change ``main.cf`` while it
runs, :meth:`postconf`, :meth:`send`, :meth:`queue` (``postqueue -j``), :meth:`flush`,
:meth:`log`, :meth:`wait_log`, :meth:`wait_empty`.

Postfix needs root (``postfix start``), the ``postfix`` user and ``postdrop`` group
(Debian's package makes them), and a directory its daemons can reach after they drop
privileges — hence a directory of mode 0755 under the system's temporary directory rather
than pytest's ``tmp_path`` (whose parents are 0700).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from mailqueue.loadtest import free_port

POSTFIX = shutil.which("postfix", path="/usr/sbin:/usr/bin:/sbin:/bin") or "postfix"
POSTQUEUE = shutil.which("postqueue", path="/usr/sbin:/usr/bin:/sbin:/bin") or "postqueue"
POSTCONF = shutil.which("postconf", path="/usr/sbin:/usr/bin:/sbin:/bin") or "postconf"
INSTALL_HINT = ("apt-get install postfix (.ci/run installs it, with debconf's "
                "postfix/main_mailer_type = No configuration)")

DEFAULT_MAIN: dict[str, str] = {
    "compatibility_level": "3.6",
    "mail_owner": "postfix",
    "setgid_group": "postdrop",
    "mydestination": "",
    "local_recipient_maps": "",
    "alias_maps": "",
    "alias_database": "",
    "inet_interfaces": "127.0.0.1",
    "inet_protocols": "ipv4",
    "mynetworks": "127.0.0.0/8",
    "smtputf8_enable": "no",
    "biff": "no",
    "queue_run_delay": "1s",
    "minimal_backoff_time": "1s",
    "maximal_backoff_time": "5s",
    "smtp_tls_loglevel": "1",
    "smtp_connect_timeout": "5s",
}

# The services a relaying Postfix needs, none chrooted (its directories are not set up for
# a chroot). An smtpd on 127.0.0.1:port is added in front.
MASTER = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def missing() -> str | None:
    """Why a private Postfix cannot run here, or None if it can."""
    if not Path(POSTFIX).exists() and shutil.which("postfix") is None:
        return f"postfix is not installed ({INSTALL_HINT})"
    if os.geteuid() != 0:
        return "starting Postfix needs root"
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return f"the postfix user or postdrop group is missing ({INSTALL_HINT})"
    return None


def require_postfix() -> None:
    """Skip the (pytest) test, saying why, where Postfix cannot run; in CI (``CI`` set),
    fail. pytest is imported only here, so benchmarks use the rig without it (they ask
    :func:`missing` first)."""
    reason = missing()
    if reason is None:
        return
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the Postfix tests)", pytrace=False)
    pytest.skip(reason)


class Postfix:
    """One private Postfix instance (see the module's docstring)."""

    def __init__(self, main: Mapping[str, str] | None = None, services: Iterable[str] = (),
                 port: int | None = None, hostname: str = "pf.test", keep: bool = False,
                 ) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="mq-postfix-"))
        os.chmod(self.base, 0o755)
        self.config_dir = self.base / "etc"
        self.queue_dir = self.base / "spool"
        self.data_dir = self.base / "data"
        self.log_path = self.base / "postfix.log"
        self.port = port or free_port()
        self.keep = keep
        self.main: dict[str, str] = {
            **DEFAULT_MAIN, "myhostname": hostname,
            "queue_directory": str(self.queue_dir), "data_directory": str(self.data_dir),
            "maillog_file": str(self.log_path), "maillog_file_prefixes": str(self.base),
            **(main or {})}
        self.services = [f"127.0.0.1:{self.port} inet n - n - - smtpd", *services]
        self._master_pid: int | None = None

    # --- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> Postfix:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        """Write the configuration, run ``postfix -c DIR start``, wait for its port."""
        for directory in (self.config_dir, self.queue_dir, self.data_dir):
            directory.mkdir(exist_ok=True)
        os.chown(self.data_dir, pwd.getpwnam("postfix").pw_uid, -1)
        self._write_main()
        (self.config_dir / "master.cf").write_text("\n".join(self.services) + "\n" + MASTER)
        try:
            self._postfix("start", timeout=timeout)
            self._master_pid = int((self.queue_dir / "pid" / "master.pid").read_text())
            self._wait_port(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the instance (``postfix stop``; its master killed by pid if it lingers),
        then remove its directory unless ``keep``."""
        try:
            if self._master_pid is not None:
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    self._postfix("stop", timeout=timeout)
                self._wait_gone(self._master_pid, timeout)
        finally:
            self._master_pid = None
            if not self.keep:
                shutil.rmtree(self.base, ignore_errors=True)

    def set(self, **main: str) -> None:
        """Change ``main.cf`` settings (see :meth:`reload` for a running instance)."""
        self.main.update(main)
        self._write_main()

    def reload(self, settle: float = 0.5) -> None:
        """``postfix reload``, then ``settle`` seconds for the master to restart its
        children as they finish (0: return at once, as a benchmark timing it does)."""
        self._postfix("reload")
        time.sleep(settle)

    # --- using it ----------------------------------------------------------------------

    def postconf(self, name: str) -> str:
        """The value of ``name`` as this instance sees it (``postconf -c DIR -h NAME``)."""
        out = subprocess.run([POSTCONF, "-c", str(self.config_dir), "-h", name],
                             capture_output=True, text=True, check=True, timeout=30)
        return out.stdout.strip()

    def send(self, sender: str, recipients: list[str], message: bytes) -> None:
        """Hand a message to this instance's smtpd (which queues it at once)."""
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test",
                          timeout=30) as client:
            client.sendmail(sender, recipients, message)

    def queue(self) -> list[dict[str, Any]]:
        """The messages this instance holds (``postqueue -j``, one object each)."""
        out = subprocess.run([POSTQUEUE, "-c", str(self.config_dir), "-j"],
                             capture_output=True, text=True, check=True, timeout=30)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def flush(self) -> None:
        """Attempt the deferred mail now (``postqueue -f``)."""
        subprocess.run([POSTQUEUE, "-c", str(self.config_dir), "-f"], check=True,
                       timeout=30, capture_output=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 30.0, count: int = 1) -> list[str]:
        """Wait until ``count`` log lines match the regular expression ``pattern``; the
        lines. Fails with the log's tail if they do not appear within ``timeout``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.log().splitlines() if regex.search(line)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                tail = "\n".join(self.log().splitlines()[-15:])
                raise AssertionError(f"Postfix logged {len(found)} of {count} lines "
                                     f"matching {pattern!r} within {timeout}s:\n{tail}")
            time.sleep(0.1)

    def wait_empty(self, timeout: float = 30.0) -> None:
        """Wait until this instance's queue is empty."""
        deadline = time.monotonic() + timeout
        while self.queue():
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix still holds {len(self.queue())} message(s)"
                                     f" after {timeout}s:\n{self.log()[-2000:]}")
            time.sleep(0.2)

    # --- helpers -----------------------------------------------------------------------

    def _write_main(self) -> None:
        lines = [f"{key} = {value}" for key, value in self.main.items()]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")

    def _postfix(self, command: str, timeout: float = 30.0) -> None:
        out = subprocess.run([POSTFIX, "-c", str(self.config_dir), command],
                             capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            tail = "\n".join(self.log().splitlines()[-10:])
            raise RuntimeError(f"postfix {command} failed ({out.returncode}): "
                               f"{out.stderr.strip()}\n{tail}")

    def _wait_port(self, timeout: float) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix does not listen on {self.port}:\n{self.log()}")
            time.sleep(0.05)

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # its children exit with their master
                return
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not reaped: the master is not our child) counts as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True
