"""The users file: who may ``AUTH``, each with a salted Argon2id hash of their password.

One user a line, ``NAME:HASH``; blank lines and lines starting with ``#`` are ignored. The
hash is argon2-cffi's encoded form (``$argon2id$v=19$m=65536,t=3,p=4$SALT$HASH``, the
parameters of RFC 9106's low-memory profile); a ``{ARGON2ID}`` scheme prefix and fields
after the hash, as in a Dovecot passwd-file, are accepted too. ``mailqueue user add``
writes it: the whole file anew beside the old one, mode 0600, fsync'd and renamed into
place under a lock, so a running server never reads half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
from collections.abc import Iterator
from pathlib import Path

from argon2 import PasswordHasher

from mailqueue._files import replace_file
from mailqueue.errors import UsersError

# A name is what a client sends as its login: any text but ':', whitespace and controls.
_NAME_RE = re.compile(r"^[^\s:\x00-\x1f\x7f]{1,255}$")
_SCHEME_PREFIXES = ("{ARGON2ID}", "{ARGON2I}")


def check_user_name(name: str) -> str:
    """``name`` if a users file can hold it; UsersError saying why not otherwise."""
    if not _NAME_RE.match(name):
        raise UsersError(f"user name {name!r}: use 1 to 255 characters, none of them ':', "
                         "a space or a control character")
    return name


def hasher() -> PasswordHasher:
    """The hasher every new password goes through (argon2-cffi's defaults: Argon2id,
    RFC 9106's low-memory profile)."""
    return PasswordHasher()


def parse_users(text: str, source: Path) -> dict[str, str]:
    """The users in ``text`` (the file at ``source``): name -> encoded hash."""
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, rest = line.partition(":")
        encoded = rest.split(":", 1)[0]
        for prefix in _SCHEME_PREFIXES:
            encoded = encoded.removeprefix(prefix)
        if not colon or not _NAME_RE.match(name) or not encoded.startswith("$argon2"):
            raise UsersError(f"{source} line {number}: not NAME:ARGON2-HASH "
                             "(write the file with: mailqueue user add NAME)")
        if name in users:
            raise UsersError(f"{source} line {number}: user {name!r} is there twice")
        users[name] = encoded
    return users


def read_users(path: Path) -> dict[str, str]:
    """The users in the file at ``path``; UsersError naming the file if it cannot be read
    or is not a users file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsersError(f"{path}: no such users file "
                         "(mailqueue user add NAME creates it)") from None
    except UnicodeDecodeError:
        raise UsersError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise UsersError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_users(text, path)


def format_users(users: dict[str, str]) -> str:
    lines = ["# mailqueue users: NAME:ARGON2-HASH (mailqueue user add|remove|list)"]
    lines += [f"{name}:{encoded}" for name, encoded in sorted(users.items())]
    return "\n".join(lines) + "\n"


def write_users(path: Path, users: dict[str, str]) -> None:
    """Replace the file at ``path`` with ``users``, mode 0600, whole or not at all."""
    replace_file(path, format_users(users).encode("utf-8"), 0o600)


@contextlib.contextmanager
def editing(path: Path, create: bool = False) -> Iterator[dict[str, str]]:
    """The users of ``path`` to change in place; written back when the block ends without
    an error. Holds a lock (``.NAME.lock`` beside the file) so that two edits at once do
    not lose one another. ``create``: a missing file (and its directory) starts empty."""
    try:
        if create:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = open(path.parent / f".{path.name}.lock", "a")  # noqa: SIM115
    except OSError as exc:
        raise UsersError(f"{path}: cannot write the users file here: "
                         f"{exc.strerror or exc}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        users = {} if create and not path.exists() else read_users(path)
        before = dict(users)
        yield users
        if users != before:
            try:
                write_users(path, users)
            except OSError as exc:
                raise UsersError(f"{path}: cannot write: {exc.strerror or exc}") from None
