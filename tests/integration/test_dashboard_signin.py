"""The dashboard's sign-in in a real headless Chromium (see test_dashboard.py): a reload
of a signed-in tab while the hub answers anything but yes or no keeps the token."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from hub.app import Hub
from tests.api_client import ApiClient
from tests.integration.test_dashboard import chromium, text_of, visible, wait

TOKEN = "return sessionStorage.getItem('outpost.token')"
SIGNED_IN_WITHIN_S = 60.0  # the budget refills in 10 s; the page waits out Retry-After


@pytest.fixture
def hub_settings() -> str:
    # A subject's budget refills at one request per 10 s (the least allowed): the test
    # can hold it empty, so the hub answers the token 429 for as long as it wants.
    return "api_rate_per_s = 0.1\napi_rate_burst = 2\n"


@pytest.fixture
def browser(hub: Hub, tmp_path: Path) -> Iterator[webdriver.Chrome]:
    driver = chromium(hub.paths.ca_cert, tmp_path)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.asynccontextmanager
async def refused_meanwhile(api: ApiClient, token: str) -> AsyncIterator[None]:
    """Keep `token`'s rate budget empty until the block ends: whoever else asks with it
    meanwhile (the page) is answered 429, though the token is valid."""
    first = await api.call("GET", "/api/v1/whoami", token=token)
    assert first.status == 200, first.body

    async def drain() -> None:
        while True:
            await api.call("GET", "/api/v1/whoami", token=token)
            await asyncio.sleep(0.05)  # pacing the load, not waiting for anything

    draining = asyncio.create_task(drain(), name="drain-whoami")
    try:
        while (await api.call("GET", "/api/v1/whoami", token=token)).status != 429:
            pass  # the burst is 2: a few calls empty it
        yield
    finally:
        draining.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await draining


def _load_with_token(driver: webdriver.Chrome, url: str, token: str) -> None:
    """The page as a tab signed in with `token` has it (in its sessionStorage)."""
    driver.get(url + "/dashboard")
    wait(driver).until(ec.visibility_of_element_located((By.ID, "signin")), "no sign-in")
    driver.execute_script("sessionStorage.setItem('outpost.token', arguments[0])", token)


def _reload_until_answered(driver: webdriver.Chrome) -> str:
    """Reload; wait until the page has had the hub's answer to its whoami; its status."""
    driver.refresh()
    wait(driver).until(
        lambda d: text_of(d, "#status").startswith("retrying") or visible(d, "signin"),
        "the page never had an answer to its whoami",
    )
    return text_of(driver, "#status")


def _signed_in(driver: webdriver.Chrome) -> str:
    wait(driver, SIGNED_IN_WITHIN_S).until(
        ec.visibility_of_element_located((By.ID, "app")), "not signed in after the refusal"
    )
    return text_of(driver, "#who")


async def test_a_reload_during_a_refusal_keeps_the_token_and_signs_in_after(
    hub: Hub, api: ApiClient, browser: webdriver.Chrome
) -> None:
    """A 429 (or a 5xx, or no answer while the hub restarts) to the reloaded page's
    whoami signed it out and deleted the still-valid token: only a 401 may."""
    viewer = await api.token("viewer", subject="vic", ttl=3600)
    await asyncio.to_thread(_load_with_token, browser, hub.config.hub_url, viewer)

    async with refused_meanwhile(api, viewer):
        status = await asyncio.to_thread(_reload_until_answered, browser)
        kept = await asyncio.to_thread(browser.execute_script, TOKEN)
        form_shown = await asyncio.to_thread(visible, browser, "signin")

    assert kept == viewer, f"a valid token forgotten on a 429; the page said {status!r}"
    assert not form_shown, "sent back to the sign-in form by a 429"
    assert "too many requests" in status, status
    assert await asyncio.to_thread(_signed_in, browser) == "vic (viewer)"
    assert await asyncio.to_thread(browser.execute_script, TOKEN) == viewer
