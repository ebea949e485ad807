from __future__ import annotations

import pytest

from mailqueue.logs import configure_logging


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    configure_logging("console", "warning")


pytest_plugins = ["pytester"]
