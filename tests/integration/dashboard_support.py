"""What test_dashboard_viewer.py and test_dashboard_actions.py share: a module's hub, with
a new model version uploaded, and its API client, browser and tokens; devices seeded in
their states through the store's presence path; and the page's actions, a select's
choice and a page's width, read or made through the browser."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from hub.app import Hub
from hub.cli import load_config
from hub.initialise import initialise
from hub.paths import HubPaths
from hub.store import ConnectionLost, Device, HeartbeatSeen, HelloSeen
from outpost.aio import cancel_until_done
from tests.api_client import ApiClient
from tests.integration.test_dashboard import chromium, wait
from tests.model_upload import bundle_parts, upload
from tests.support import SHIPPED_MODELS, free_port

MODEL = "vibration-anomaly"
NEW_VERSION = "1.1.0"  # uploaded once for the module; devices run 1.0.0
HEARTBEAT_S = 3600.0  # seeded online devices stay online for the whole module
API_WAIT_S = 30.0


@dataclass(frozen=True)
class Dashboard:
    """The module's hub, its API client, the browser, and a token of each role."""

    hub: Hub
    api: ApiClient
    browser: webdriver.Chrome
    viewer: str
    operator: str
    admin: str

    @property
    def url(self) -> str:
        return self.hub.config.hub_url


@contextlib.asynccontextmanager
async def _running(paths: HubPaths) -> AsyncIterator[Hub]:
    """A hub on `paths`, ready and connected to its broker, until the block ends."""
    hub = Hub(paths, load_config(paths.root))
    task = asyncio.create_task(hub.run(), name="test-dashboard-hub")
    ready = asyncio.create_task(hub.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()  # raises the hub's start-up error
    assert ready in done, "hub did not become ready"
    try:
        await asyncio.wait_for(hub.parts.link.state.connected.wait(), 30)
        yield hub
    finally:
        await cancel_until_done(task)
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def dashboard(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Dashboard]:
    """A hub, its API client, a browser and a token of each role, for one test module
    (its `dash` fixture): the hub has a model version uploaded, no device and no sink."""
    root = tmp_path_factory.mktemp("dashboard")
    paths = HubPaths(root / "hub")
    initialise(paths, server_names=[])
    paths.config.write_text(
        "[hub]\n"
        f"mqtt_port = {free_port()}\n"
        f"web_port = {free_port()}\n"
        "offline_after_heartbeats = 3\n"
        "api_rate_per_s = 1e6\n"
        "api_rate_burst = 100000\n"
    )
    async with _running(paths) as hub:
        api = ApiClient(hub)
        try:
            admin = await api.token("admin", subject="ada", ttl=3600)
            model, manifest, sample = bundle_parts(SHIPPED_MODELS[0], version=NEW_VERSION)
            uploaded = await upload(hub, admin, model, manifest, sample)
            assert uploaded.status == 201, uploaded.body
            browser = await asyncio.to_thread(chromium, hub.paths.ca_cert, root)
            try:
                yield Dashboard(
                    hub,
                    api,
                    browser,
                    viewer=await api.token("viewer", subject="vic", ttl=3600),
                    operator=await api.token("operator", subject="otto", ttl=3600),
                    admin=admin,
                )
            finally:
                await asyncio.to_thread(browser.quit)
        finally:
            await api.close()


async def seed_device(
    hub: Hub,
    name: str,
    labels: dict[str, str],
    *,
    state: str = "online",
    cpu: float = 20.0,
    backlog: int = 0,
) -> str:
    """Enroll a device named `name` and bring it to `state` (online, or offline after
    10 minutes of silence, with `cpu` % and `backlog` records in its last report) through
    the store's presence path; its id."""
    device_id = f"dev-{secrets.token_hex(6)}"
    now = time.time()
    await hub.parts.store.add_device(
        Device(
            device_id=device_id,
            profile="generic",
            labels=labels,
            online=False,
            last_seen=None,
            last_heartbeat=None,
            heartbeat_interval=None,
            agent_version=None,
            capabilities={},
            load={},
            enrolled_at=now - 3600,
            cert_serial=secrets.token_hex(8),
            cert_not_before=now - 3600,
            cert_not_after=now + 90 * 86400,
            name=name,
        )
    )
    at = now if state == "online" else now - 600
    model = {"name": MODEL, "version": "1.0.0", "sha256": "0" * 64, "state": "ready", "error": ""}
    streams = {"results": {"records": backlog, "bytes": backlog * 180, "fill": backlog / 10_000}}
    seen: list[Any] = [
        HelloSeen(device_id, "c1", at, "generic", "0.1.0", HEARTBEAT_S, {}, models=[model]),
        HeartbeatSeen(
            device_id,
            "c1",
            at + 1,
            HEARTBEAT_S,
            load={"cpu_percent": cpu, "memory_percent": 40.0},
            store={"streams": streams, "counters": {}, "bytes_written_per_record": 0.0},
        ),
    ]
    if state == "offline":
        seen.append(ConnectionLost(device_id, "c1", at + 2))
    await hub.parts.store.record_presence(seen)
    return device_id


async def api_call(dash: Dashboard, method: str, path: str, body: Any = None) -> Any:
    reply = await dash.api.call(method, path, token=dash.admin, body=body)
    assert reply.status < 300, (method, path, reply.status, reply.body)
    return reply.body


def shown_actions(driver: WebDriver) -> list[str]:
    """The action controls a person could see and use now."""
    found = driver.execute_script(
        "return [...document.querySelectorAll('[data-action]')]"
        ".filter(e => e.offsetParent !== null).map(e => e.getAttribute('data-action'))"
    )
    return [str(a) for a in found]


def choose(driver: WebDriver, select_id: str, value: str) -> None:
    Select(driver.find_element(By.ID, select_id)).select_by_value(value)


def fits(driver: WebDriver, width: int) -> None:
    """The page is `width` wide and nothing in it is wider: no sideways scrolling."""
    wait(driver).until(
        lambda d: d.execute_script("return window.innerWidth") == width, f"width {width}"
    )
    wait(driver).until(
        lambda d: d.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth"
        ),
        f"the page is wider than {width} px",
    )
    wide = driver.execute_script(
        "return [...document.querySelectorAll('main *')]"
        ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)"
        ".map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 5)"
    )
    assert wide == [], wide
