"""Checking ``AUTH`` credentials against the users file, off the event loop, within limits.

An Argon2 verification costs tens of milliseconds of CPU and 64 MiB of memory by design.
It runs on a small pool of threads of its own (argon2-cffi releases the interpreter lock
while it hashes), never on the event loop, so sessions carry on while a password is
checked. :class:`FailureLimit` caps what one client address can make the server hash:
after ``auth_max_failures`` failures within ``auth_lockout`` its ``AUTH`` is refused
before any hashing, and an attempt still being checked counts against the limit already,
so parallel connections cannot slip past it. An unknown user costs the same hash as a
known one (against a stand-in hash), so timing does not tell which names exist.

The users file is reread, on the verifying thread, whenever its size, inode or
modification time changes: ``mailqueue user add`` takes effect without a restart.
"""

from __future__ import annotations

import asyncio
import enum
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from mailqueue.errors import ConfigError, UsersError
from mailqueue.smtp.users import hasher, read_users

log = structlog.get_logger("mailqueue.smtp")

VERIFY_THREADS = 2


class Verdict(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    LOCKED_OUT = "locked out"


class FailureLimit:
    """Failed attempts per client address over a sliding span of ``span`` seconds.

    :meth:`admit` reserves an attempt (False: the address has used up its failures);
    :meth:`settle` records how it ended. ``clock`` is monotonic seconds (a lockout is
    about real time, whatever clock the mail runs on)."""

    _SWEEP_EVERY = 1024

    def __init__(self, max_failures: int, span: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.span = span
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._checking: Counter[str] = Counter()
        self._calls = 0

    def _recent(self, address: str, now: float) -> int:
        failures = self._failures.get(address)
        if failures is None:
            return 0
        while failures and failures[0] <= now - self.span:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return 0
        return len(failures)

    def locked_out(self, address: str) -> bool:
        """Whether an attempt from ``address`` would be refused now."""
        now = self.clock()
        return self._recent(address, now) + self._checking[address] >= self.max_failures

    def admit(self, address: str) -> bool:
        self._calls += 1
        if self._calls % self._SWEEP_EVERY == 0:
            self._sweep()
        if self.locked_out(address):
            return False
        self._checking[address] += 1
        return True

    def settle(self, address: str, failed: bool) -> None:
        self._checking[address] -= 1
        if self._checking[address] <= 0:
            del self._checking[address]
        if failed:
            self._failures.setdefault(address, deque()).append(self.clock())

    def _sweep(self) -> None:
        """Forget addresses whose failures have all aged out (memory stays bounded by the
        addresses that failed within one span)."""
        now = self.clock()
        for address in list(self._failures):
            self._recent(address, now)


class Authenticator:
    """The users file and the limits around checking a password against it."""

    def __init__(self, path: Path, max_failures: int, lockout: float,
                 threads: int = VERIFY_THREADS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.limit = FailureLimit(max_failures, lockout, clock)
        self._hasher = hasher()
        self._users: dict[str, str] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._stand_in = ""
        self._executor = ThreadPoolExecutor(max_workers=threads,
                                            thread_name_prefix="mailqueue-auth")

    def load(self) -> None:
        """Read the users file (blocking: call it off the event loop, before serving);
        :class:`ConfigError` naming ``smtp.users_file`` if it cannot be used."""
        try:
            self._users = read_users(self.path)
            stamp = _stamp(self.path)
        except UsersError as exc:
            raise ConfigError(f"smtp.users_file: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"smtp.users_file: {self.path}: "
                              f"{exc.strerror or exc}") from None
        self._stamp = stamp
        self._stand_in = self._hasher.hash(os.urandom(16))
        if not self._users:
            log.warning("users_file_empty", path=str(self.path))

    @property
    def users(self) -> int:
        return len(self._users)

    def locked_out(self, address: str) -> bool:
        return self.limit.locked_out(address)

    async def verify(self, address: str, login: bytes, password: bytes) -> tuple[Verdict, str]:
        """Check ``login`` and ``password`` for a client at ``address``: the verdict and
        the user name (as sent, when it is text)."""
        name = login.decode("utf-8", "replace")
        if not self.limit.admit(address):
            return Verdict.LOCKED_OUT, name
        failed = True
        try:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(self._executor, self._check, login, password)
            failed = not ok
        finally:
            # A client that goes away while its password is checked has failed: otherwise
            # dropping each connection at once would be a way round the limit.
            self.limit.settle(address, failed)
        return (Verdict.FAILED if failed else Verdict.OK), name

    def _check(self, login: bytes, password: bytes) -> bool:
        """On a verifying thread: reread the file if it changed, then hash."""
        self._reload()
        try:
            encoded = self._users.get(login.decode("utf-8"))
        except UnicodeDecodeError:
            encoded = None
        try:
            self._hasher.verify(encoded or self._stand_in, password)
        except VerifyMismatchError:
            return False
        except (VerificationError, InvalidHashError):
            log.error("users_file_bad_hash", path=str(self.path))
            return False
        return encoded is not None

    def _reload(self) -> None:
        try:
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return
            self._users, self._stamp = read_users(self.path), stamp
        except (UsersError, OSError) as exc:
            # Keep the users last read: a file being replaced by hand is not a reason
            # to lock everyone out.
            log.error("users_file_unreadable", path=str(self.path), error=str(exc))
            return
        log.info("users_file_reread", path=str(self.path), users=len(self._users))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _stamp(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_ino, info.st_size, info.st_mtime_ns
