"""Headless Chromium for the dashboard's tests: Debian's ``chromium`` driven through its
``chromedriver`` (Selenium). Without them the tests are skipped, saying what to install."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Where screenshots are kept; default: the test's own temporary directory.
ARTIFACTS_ENV = "TEST_ARTIFACTS"  # not MAILQUEUE_*: those override the config


@pytest.fixture
def chrome() -> Iterator[Any]:
    """A headless Chromium at a laptop's size (1280x800) that keeps the console's messages."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("needs /usr/bin/chromium and /usr/bin/chromedriver "
                    "(apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1280,800", "--disable-gpu", "--no-first-run"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    # The page itself at 1280x800, whatever the window's frame takes.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": 800, "deviceScaleFactor": 1,
                            "mobile": False})
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """The directory for screenshots: ``$TEST_ARTIFACTS`` or the test's tmp dir."""
    given = os.environ.get(ARTIFACTS_ENV)
    path = Path(given) if given else tmp_path / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def console_problems(driver: Any) -> list[str]:
    """The console's errors and warnings since the last call (each read once)."""
    return [f"{entry['level']}: {entry['message']}" for entry in driver.get_log("browser")
            if entry["level"] in ("SEVERE", "WARNING")]


def keep(path: Path, artifacts: Path) -> Path:
    """Copy ``path`` into the artifacts directory; the copy."""
    target = artifacts / path.name
    if path != target:
        shutil.copyfile(path, target)
    return target
