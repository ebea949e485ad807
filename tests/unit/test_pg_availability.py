"""No PostgreSQL: skipped with the reason on a laptop, a failure in CI."""

from __future__ import annotations

import re

import pytest

from tests import pg


@pytest.fixture
def nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg, "ADMIN_URL", "postgresql://postgres@127.0.0.1:1/postgres")


def test_skipped_with_the_reason_outside_ci(nowhere: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=re.escape(
            "PostgreSQL not reachable at postgresql://postgres@127.0.0.1:1/postgres")):
        pg.require_server()


def test_fails_in_ci(nowhere: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the PostgreSQL tests"):
        pg.require_server()
