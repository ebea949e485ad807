"""The users file's format and the per-address failure limit, without a server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailqueue.errors import ConfigError, UsersError
from mailqueue.smtp.auth import Authenticator, FailureLimit, Verdict
from mailqueue.smtp.users import check_user_name, editing, parse_users, read_users
from tests.tlshelp import write_users

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"


def test_parse_accepts_comments_and_dovecot_style_lines() -> None:
    text = f"# users\n\nalice:{HASH}\nbob@x.test:{{ARGON2ID}}{HASH}::::\n"
    assert parse_users(text, Path("u")) == {"alice": HASH, "bob@x.test": HASH}


@pytest.mark.parametrize(("text", "expected"), [
    ("alice\n", "u line 1: not NAME:ARGON2-HASH"),
    ("alice:$2b$12$bcrypt\n", "u line 1: not NAME:ARGON2-HASH"),
    (f"# c\nalice:{HASH}\nalice:{HASH}\n", "u line 3: user 'alice' is there twice"),
    (f"al ice:{HASH}\n", "u line 1: not NAME:ARGON2-HASH"),
])
def test_parse_errors_name_the_line(text: str, expected: str) -> None:
    with pytest.raises(UsersError, match=expected):
        parse_users(text, Path("u"))


@pytest.mark.parametrize("name", ["", "a:b", "a b", "a\tb", "x" * 256, "a\x00"])
def test_names_a_users_file_cannot_hold(name: str) -> None:
    with pytest.raises(UsersError, match="use 1 to 255 characters"):
        check_user_name(name)


def test_editing_writes_mode_0600_and_keeps_other_users(tmp_path: Path) -> None:
    path = write_users(tmp_path / "sub" / "users", alice="a", bob="b")
    assert path.stat().st_mode & 0o777 == 0o600
    with editing(path) as users:
        del users["bob"]
    assert set(read_users(path)) == {"alice"}
    with pytest.raises(UsersError, match="no such users file"):
        read_users(tmp_path / "missing")


def test_failure_limit_counts_failures_over_a_sliding_span() -> None:
    now = [0.0]
    limit = FailureLimit(3, 10.0, clock=lambda: now[0])
    for _ in range(3):
        assert limit.admit("192.0.2.1")
        limit.settle("192.0.2.1", failed=True)
        now[0] += 1
    assert not limit.admit("192.0.2.1") and limit.locked_out("192.0.2.1")
    assert limit.admit("192.0.2.2")  # another address is not affected
    limit.settle("192.0.2.2", failed=False)
    now[0] = 10.5  # the first failure (at 0) has aged out
    assert limit.admit("192.0.2.1")


def test_attempts_being_checked_count_against_the_limit() -> None:
    limit = FailureLimit(2, 60.0)
    assert limit.admit("a") and limit.admit("a")
    assert not limit.admit("a")  # two in flight: a third would pass the cap if both failed
    limit.settle("a", failed=False)
    limit.settle("a", failed=False)
    assert limit.admit("a")


def test_successes_do_not_clear_failures() -> None:
    limit = FailureLimit(2, 60.0)
    for failed in (True, False, True):
        assert limit.admit("a")
        limit.settle("a", failed=failed)
    assert limit.locked_out("a")


async def test_authenticator_verifies_and_limits(tmp_path: Path) -> None:
    path = write_users(tmp_path / "users", alice="secret")
    auth = Authenticator(path, max_failures=2, lockout=60)
    try:
        await asyncio.to_thread(auth.load)
        assert await auth.verify("a", b"alice", b"secret") == (Verdict.OK, "alice")
        assert (await auth.verify("a", b"alice", b"nope"))[0] is Verdict.FAILED
        assert (await auth.verify("a", b"\xff\xfe", b"x"))[0] is Verdict.FAILED
        assert (await auth.verify("a", b"alice", b"secret"))[0] is Verdict.LOCKED_OUT
    finally:
        auth.close()


def test_authenticator_load_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^smtp.users_file: .*no such users file"):
        Authenticator(tmp_path / "none", 5, 60).load()
    (tmp_path / "bad").write_text("alice=secret\n")
    with pytest.raises(ConfigError, match=r"^smtp.users_file: .*bad line 1: not NAME"):
        Authenticator(tmp_path / "bad", 5, 60).load()
