"""Headless Chromium for the dashboard's browser test and docs/screenshots.py: Debian's ``chromium`` and
``chromium-driver`` driven by selenium, the driver's path given so that selenium downloads nothing."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = "apt-get install chromium chromium-driver, pip install selenium"


def missing() -> str | None:
    """Why no browser can run here, or None."""
    if importlib.util.find_spec("selenium") is None:
        return f"selenium is not installed ({INSTALL})"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            return f"{path} not found ({INSTALL})"
    return None


@contextmanager
def chromium(width: int = 1400, height: int = 1000):
    """A fresh headless Chromium (its own profile, no background traffic) that keeps the console's log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="harness-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-sync", f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
