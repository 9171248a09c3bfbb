"""Fixtures for the console suite: the API suite's keystore/server helpers (tests/api/kmsapi.py)
and a headless Chromium driven by chromedriver (Selenium), quit and killed by PID at the end."""

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from kmsapi import Api, Keystore, Server  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def api(request):
    """One keystore + `kmsfs serve` for the module, with alice, bob and carol's access keys."""
    keystore = Keystore()
    request.addfinalizer(keystore.cleanup)
    server = Server(keystore)
    request.addfinalizer(server.stop)
    return Api(keystore, server)


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def new_browser(request):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    profile = tempfile.mkdtemp(prefix="kmsfs-chromium-")
    request.addfinalizer(lambda: shutil.rmtree(profile, ignore_errors=True))
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,900",
    ):
        opts.add_argument(arg)
    service = DriverService(executable_path=CHROMEDRIVER, log_output=os.path.join(profile, "driver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver_pid = service.process.pid

    def stop():
        try:
            driver.quit()
        finally:
            # chromedriver takes its Chromium down with it; if quit failed, by PID.
            _kill(driver_pid)

    request.addfinalizer(stop)
    driver.set_page_load_timeout(20)
    return driver


@pytest.fixture(scope="module")
def browser(request):
    """A headless Chromium for the module."""
    return new_browser(request)


@pytest.fixture
def other_browser(request):
    """A second browser (another principal's session), for one test."""
    return new_browser(request)


@pytest.fixture(scope="session")
def screenshot_dir():
    """Where screenshots go: KMSFS_SCREENSHOT_DIR (docs/ to refresh the README's), else a
    temp dir removed afterwards."""
    wanted = os.environ.get("KMSFS_SCREENSHOT_DIR")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        yield Path(wanted)
        return
    d = Path(tempfile.mkdtemp(prefix="kmsfs-shots-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)
