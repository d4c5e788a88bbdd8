"""The dashboard's Sinks panel in a real headless Chromium, against a real hub whose
webhook sink posts to a real local HTTP receiver: the sink shown healthy while the
receiver takes the events, then failing with the receiver's answer while it says 503.
(A hub without sinks hides the panel: test_dashboard_viewer.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from selenium import webdriver
from selenium.webdriver.remote.webdriver import WebDriver

from hub.app import Hub
from tests.api_client import ApiClient
from tests.integration.test_dashboard import (
    chromium,
    console_problems,
    open_signed_in,
    screenshot,
    text_of,
    wait,
)
from tests.support import add_device, eventually, free_port

SINK = "#sinks tr[data-sink='hook']"


@dataclass
class Receiver:
    """A webhook endpoint that answers `status` (204: it takes the event)."""

    port: int
    status: int = 204
    taken: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        if self.status != 204:
            return web.Response(status=self.status, text="down for maintenance")
        self.taken += 1
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver(free_port())
    app = web.Application()
    app.router.add_post("/events", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", found.port).start()
    yield found
    await runner.cleanup()


@pytest.fixture
def hub_settings(receiver: Receiver, tmp_path: Path) -> str:
    secret = tmp_path / "webhook.secret"
    secret.write_text("a-secret-for-the-panel\n")
    return (
        "api_rate_per_s = 1e6\napi_rate_burst = 100000\n"
        "[[hub.sinks]]\n"
        'name = "hook"\n'
        'kind = "webhook"\n'
        f'url = "http://127.0.0.1:{receiver.port}/events"\n'
        f'credentials_file = "{secret}"\n'
    )


@pytest.fixture
def browser(hub: Hub, tmp_path: Path) -> Iterator[webdriver.Chrome]:
    driver = chromium(hub.paths.ca_cert, tmp_path)
    try:
        yield driver
    finally:
        driver.quit()


def _state(driver: WebDriver) -> tuple[str, str]:
    """The sink's state pill: its text and its class."""
    found = driver.execute_script(
        "const p = document.querySelector(arguments[0]); return p ? [p.innerText, p.className]"
        " : ['', '']",
        f"{SINK} td.state .pill",
    )
    return str(found[0]).strip(), str(found[1])


def _shows_healthy(driver: WebDriver) -> None:
    wait(driver).until(lambda d: "active" in _state(d)[1], "the sink not shown healthy")
    assert _state(driver)[0] in ("delivering", "idle")
    assert text_of(driver, "#sinks-title").startswith("Sinks")
    assert text_of(driver, f"{SINK} td[data-label='kind']") == "webhook"
    assert int(text_of(driver, f"{SINK} td[data-label='delivered']")) >= 1
    assert text_of(driver, f"{SINK} td[data-label='dead-lettered']") == "0"
    assert text_of(driver, f"{SINK} td[data-label='overflowed']") == "0"
    assert text_of(driver, f"{SINK} .sink-error") == ""


def _shows_failing(driver: WebDriver) -> None:
    wait(driver).until(lambda d: _state(d) == ("failing", "pill failed"), "no failing sink")
    # The receiver's answer, and the event it holds up.
    wait(driver).until(lambda d: "503" in text_of(d, f"{SINK} .sink-error"), "no error")
    assert "down for maintenance" in text_of(driver, f"{SINK} .sink-error")
    wait(driver).until(lambda d: "event" in text_of(d, f"{SINK} td[data-label='lag']"), "no lag")
    screenshot(driver, "dashboard-sinks-failing-desktop")


async def test_the_panel_shows_a_sink_healthy_then_failing_with_its_error(
    hub: Hub, api: ApiClient, receiver: Receiver, browser: webdriver.Chrome
) -> None:
    viewer = await api.token("viewer", subject="sinks-panel")
    await add_device(hub, "dev-sinkpanel0001")  # its enrolment is an event for the sink

    async def delivered() -> bool:
        (hook,) = (await api.call("GET", "/api/v1/sinks", token=viewer)).body["items"]
        return bool(hook["delivered"] >= 1 and receiver.taken >= 1)

    await eventually(delivered, timeout=30, what="the first event delivered")
    await asyncio.to_thread(open_signed_in, browser, hub.config.hub_url, viewer)
    await asyncio.to_thread(_shows_healthy, browser)

    receiver.status = 503
    await add_device(hub, "dev-sinkpanel0002")  # an event the receiver now turns away
    await asyncio.to_thread(_shows_failing, browser)
    problems = await asyncio.to_thread(console_problems, browser)
    assert not problems, problems
