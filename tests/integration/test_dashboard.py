"""The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
installed by scripts/setup.sh), against the real hub, broker and two agents.

Chromium trusts the hub's CA the way a person's browser would: the CA is added to the NSS
database of a throw-away HOME (`certutil`), so TLS is verified, never ignored.
The browser's calls block: they run in a thread, the hub runs in this test's loop.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from hub.app import Hub
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.support import REPO, AgentProcess, add_device, eventually

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")  # Debian's: Selenium Manager cannot download
ARTIFACTS = REPO / "test-artifacts"
# Loading the page, signing in and opening a view: generous, for a CI machine running
# the whole suite on two cores (the liveness bound below is what the issue sets).
PAGE_WAIT_S = 30.0
LIVE_WITHIN_S = 10.0  # "within a few seconds", with room for a loaded CI machine


@pytest.fixture
def hub_settings() -> str:
    return "api_rate_per_s = 1e6\napi_rate_burst = 100000\n"


@pytest.fixture
def browser(hub: Hub, tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Headless Chromium at 1280x800 that trusts the hub's CA, and nothing else extra."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    missing += [] if shutil.which("certutil") else [Path("certutil")]
    assert not missing, f"missing {missing}: run scripts/setup.sh (as root) to install them"
    home = tmp_path / "browser-home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(
        ["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, timeout=30
    )
    trust = ["-A", "-t", "C,,", "-n", "outpost-test-ca", "-i", str(hub.paths.ca_cert)]
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", *trust], check=True, timeout=30)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",  # the test runs as root in a container
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        f"--user-data-dir={tmp_path / 'browser-profile'}",
        "--no-first-run",
        "--disable-background-networking",  # nothing but the hub: no network here anyway
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(
        executable_path=str(CHROMEDRIVER),
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},  # Chromium reads HOME's NSS db
        log_output=str(tmp_path / "chromedriver.log"),
    )
    driver = webdriver.Chrome(options=options, service=service)
    try:
        # The page's own area is 1280x800, whatever the window around it would take.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        yield driver
    finally:
        driver.quit()


def _wait(driver: WebDriver, timeout: float) -> WebDriverWait[WebDriver]:
    """A wait that looks again when the live page re-rendered what it was reading."""
    return WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    )


def _row(device_id: str) -> str:
    return f"#fleet tbody tr[data-device='{device_id}']"


def _state(driver: WebDriver, device_id: str) -> str:
    """The text of a device's state cell ("" while its row is not on the page), read in
    one step in the page: live updates replace rows between two WebDriver calls."""
    text = driver.execute_script(
        "const c = document.querySelector(arguments[0]); return c ? c.textContent : ''",
        f"{_row(device_id)} td.state",
    )
    return str(text).strip()


def _shows(driver: WebDriver, device_id: str, state: str, timeout: float) -> None:
    _wait(driver, timeout).until(
        lambda d: _state(d, device_id) == state,
        f"{device_id} not shown {state} within {timeout} s",
    )


def _visible(driver: WebDriver, element_id: str) -> bool:
    return bool(driver.find_element(By.ID, element_id).is_displayed())


def _open_without_token(driver: WebDriver, url: str) -> None:
    driver.get(url + "/dashboard")
    assert driver.title == "Outpost fleet"  # TLS verified: no certificate error page
    _wait(driver, PAGE_WAIT_S).until(ec.visibility_of_element_located((By.ID, "signin")))
    assert not _visible(driver, "app")
    assert driver.find_elements(By.CSS_SELECTOR, "#fleet tbody tr") == []


def _sign_in(driver: WebDriver, token: str) -> None:
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.ID, "signin-button").click()


def _refused_then_signed_in(driver: WebDriver, token: str, devices: list[str]) -> None:
    _sign_in(driver, "not.a.token")
    _wait(driver, PAGE_WAIT_S).until(
        lambda d: "Refused" in d.find_element(By.ID, "signin-error").text
    )
    assert not _visible(driver, "app")
    _sign_in(driver, token)
    _wait(driver, PAGE_WAIT_S).until(ec.visibility_of_element_located((By.ID, "app")))
    for device_id in devices:
        _shows(driver, device_id, "online", LIVE_WITHIN_S)
    # Marks this page: a reload would lose it, so its survival proves updates are live.
    driver.execute_script("window.__sameLoad = true")


def _sees_it_go_offline(driver: WebDriver, gone: str, alive: str, screenshot: Path) -> float:
    started = time.monotonic()
    _shows(driver, gone, "offline", LIVE_WITHIN_S)
    took = time.monotonic() - started
    # The other stays online (waited for, not read once: on a loaded machine its row
    # may be mid-update when the first one flips).
    _shows(driver, alive, "online", LIVE_WITHIN_S)
    assert driver.execute_script("return window.__sameLoad === true"), "the page reloaded"
    _wait(driver, PAGE_WAIT_S).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".charts .uplot")) == 4
    )
    screenshot.parent.mkdir(exist_ok=True)
    driver.save_screenshot(str(screenshot))
    return took


def _device_view(driver: WebDriver, device_id: str, screenshot: Path) -> None:
    # Clicked in the page, in one step, for the same reason as `_state`.
    driver.execute_script("document.querySelector(arguments[0]).click()", _row(device_id))
    _wait(driver, PAGE_WAIT_S).until(ec.visibility_of_element_located((By.ID, "device")))
    _wait(driver, PAGE_WAIT_S).until(
        lambda d: (
            device_id in d.find_element(By.ID, "device-title").text
            and "online" in d.find_element(By.ID, "device-facts").text
            and d.find_elements(By.CSS_SELECTOR, "#device-events tbody tr td:nth-child(3)")
        )
    )
    driver.save_screenshot(str(screenshot))


def _token_never_in_a_url(driver: webdriver.Chrome, token: str) -> None:
    urls = driver.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]"
    )
    assert "/api/v1/whoami" in " ".join(urls)  # (the stream's entry comes when it ends)
    assert not [u for u in urls if token in u]
    problems = [
        entry
        for entry in driver.get_log("browser")  # type: ignore[no-untyped-call]  # untyped in Selenium
        if entry["level"] == "SEVERE"
        and "/api/v1/drift" not in entry["message"]  # another part of the hub; may be absent
        and "status of 401" not in entry["message"]  # the refused sign-in, on purpose
    ]
    assert not problems, problems


async def test_dashboard_signs_in_and_follows_the_fleet_live(
    hub: Hub,
    api: ApiClient,
    enroll_device: Enroller,
    agents: Callable[..., AgentProcess],
    browser: webdriver.Chrome,
) -> None:
    started: dict[str, AgentProcess] = {}
    for site in ("north", "south"):
        paths, identity = await enroll_device("generic", {"site": site, "line": "3"})
        # 1 s heartbeats: offline 3 s after the last one, and a busy machine (CI runs
        # the whole suite on two cores) does not make a live agent look silent.
        started[identity.device_id] = agents(paths, heartbeat_interval=1.0)

    async def all_online() -> bool:
        return all(d.online for d in await hub.parts.store.devices()) and len(started) == 2

    await eventually(all_online, timeout=20, what="both agents online")
    gone, alive = sorted(started)

    # The data needs a token; the page itself holds none.
    refused = await api.call("GET", "/api/v1/stream")
    assert refused.status == 401
    viewer = await api.token("viewer", subject="dashboard-test")
    snapshot = await api.call("GET", "/api/v1/stream", token=viewer)
    assert snapshot.status == 200
    assert {d["id"] for d in snapshot.body["devices"]} == set(started)

    await asyncio.to_thread(_open_without_token, browser, hub.config.hub_url)
    await asyncio.to_thread(_refused_then_signed_in, browser, viewer, sorted(started))

    started[gone].stop()  # kill -9: no goodbye; the hub notices the missing heartbeats
    took = await asyncio.to_thread(
        _sees_it_go_offline, browser, gone, alive, ARTIFACTS / "dashboard.png"
    )
    await asyncio.to_thread(_device_view, browser, alive, ARTIFACTS / "dashboard-device.png")
    await asyncio.to_thread(_token_never_in_a_url, browser, viewer)
    print(f"offline on the page {took:.1f} s after the kill")


async def test_the_summary_counts_revoked_devices_apart_from_offline_ones(
    hub: Hub, api: ApiClient
) -> None:
    await add_device(hub, "dev-revoked01")
    await add_device(hub, "dev-offline01")
    reply = await api.call(
        "POST",
        "/api/v1/devices/dev-revoked01/revoke",
        token=await api.token("admin", subject="carol"),
    )
    assert reply.status == 200, reply.body

    snapshot = await api.call("GET", "/api/v1/stream", token=await api.token("viewer"))

    assert snapshot.status == 200
    # The "devices online" tile reads online of online + offline; revoked has its own.
    assert snapshot.body["fleet"] == {
        "total": 2,
        "online": 0,
        "offline": 1,
        "revoked": 1,
        "shown": 2,
    }
    states = {
        d["id"]: (d["online"], d.get("revoked"), d.get("revoked_by"))
        for d in snapshot.body["devices"]
    }
    assert states == {
        "dev-revoked01": (False, True, "carol"),
        "dev-offline01": (False, False, None),
    }
