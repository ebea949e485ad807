from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailqueue.logs import configure_logging
from mailqueue.testing.dovecot import Dovecot, require_dovecot
from tests import pg
from tests.rehearsed import Rehearsals, shared_root


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    configure_logging("console", "warning")


pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def rehearsals(tmp_path_factory: pytest.TempPathFactory) -> Rehearsals:
    """Rehearsals run once per test run and read by every test that asks for the same
    scenario (see tests/rehearsed.py): only for tests that read their output."""
    return Rehearsals(shared_root(tmp_path_factory.getbasetemp()) / "rehearsals")


# --- PostgreSQL (see tests/pg.py) ---------------------------------------------------------

@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """This session's own database on the test server, dropped at the end."""
    pg.require_server()
    name = pg.create_database()
    try:
        yield name
    finally:
        pg.drop_database(name)


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session database's queue URL, with every table emptied for this test."""
    pg.truncate_all(pg_database)
    return pg.sqlalchemy_url(pg_database)


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A new empty database (no tables at all) for this test only."""
    pg.require_server()
    name = pg.create_database()
    try:
        yield pg.sqlalchemy_url(name)
    finally:
        pg.drop_database(name)


# --- Dovecot (see mailqueue/testing/dovecot.py) ------------------------------------------

@pytest.fixture
def dovecot_installed() -> None:
    """Skips the test, saying what to install, where Dovecot with LMTP is missing."""
    require_dovecot()


@pytest.fixture
def dovecot(dovecot_installed: None) -> Iterator[Dovecot]:
    """A private Dovecot taking any ``user@domain`` over LMTP, stopped after the test."""
    with Dovecot() as server:
        yield server


@pytest.fixture
def scratch_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary directory (TMPDIR) a verify's scratch file goes in, for this test."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder
