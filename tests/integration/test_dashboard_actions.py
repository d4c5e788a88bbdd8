"""What an operator does from the dashboard, in a real headless Chromium against a real
hub: find devices (search, filters, sort, grouped by site), read stale figures as stale,
and act by role: a viewer sees no action, an operator cancels a task, an admin renames,
relabels and revokes a device and starts and halts a roll-out. Every action is checked
through the API (the change and its audit entry), never through the page alone.

One hub and one browser serve the whole module (each test signs in afresh, with its own
devices under their own site names). Devices are put in their states through the
store's presence path, as the hub's ingest does (hello, heartbeat, connection lost):
test_dashboard.py follows real agents. Screenshots: see test_dashboard.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select

from hub.app import Hub
from hub.cli import load_config
from hub.initialise import initialise
from hub.paths import HubPaths
from hub.store import ConnectionLost, Device, HeartbeatSeen, HelloSeen, shadows
from outpost.aio import cancel_until_done
from tests.api_client import ApiClient
from tests.integration.test_dashboard import (
    DESKTOP,
    PHONE,
    chromium,
    click,
    console_problems,
    open_signed_in,
    row,
    screenshot,
    text_of,
    viewport,
    wait,
)
from tests.model_upload import bundle_parts, upload
from tests.support import SHIPPED_MODELS, eventually, free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

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


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dash(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Dashboard]:
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


async def _seed(
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


async def _api(dash: Dashboard, method: str, path: str, body: Any = None) -> Any:
    reply = await dash.api.call(method, path, token=dash.admin, body=body)
    assert reply.status < 300, (method, path, reply.status, reply.body)
    return reply.body


async def _audited(dash: Dashboard, action: str, subject: str, **detail: Any) -> dict[str, Any]:
    """The audit entry of `action` by `subject` whose detail holds `detail` (waited for:
    the entry is written as the answer goes out)."""

    async def found() -> dict[str, Any]:
        page = await _api(dash, "GET", "/api/v1/audit?limit=50")
        for entry in page["items"]:
            if (
                entry["action"] == action
                and entry["subject"] == subject
                and all(entry["detail"].get(k) == v for k, v in detail.items())
            ):
                return dict(entry)
        return {}

    entry = await eventually(found, timeout=API_WAIT_S, what=f"audit entry {action}")
    assert entry["status"] < 300, entry
    return entry


def _shown_actions(driver: WebDriver) -> list[str]:
    """The action controls a person could see and use now."""
    found = driver.execute_script(
        "return [...document.querySelectorAll('[data-action]')]"
        ".filter(e => e.offsetParent !== null).map(e => e.getAttribute('data-action'))"
    )
    return [str(a) for a in found]


def _rows(driver: WebDriver) -> list[str]:
    """The device ids of the fleet table's rows, in order."""
    found = driver.execute_script(
        "return [...document.querySelectorAll('#fleet tr[data-device]')]"
        ".map(r => r.getAttribute('data-device'))"
    )
    return [str(i) for i in found]


def _choose(driver: WebDriver, select_id: str, value: str) -> None:
    Select(driver.find_element(By.ID, select_id)).select_by_value(value)


def _confirm(driver: WebDriver, *expected: str) -> None:
    """The confirmation is open and says what will happen; confirm it."""
    wait(driver).until(ec.visibility_of_element_located((By.ID, "confirm")))
    said = text_of(driver, "#confirm")
    for text in expected:
        assert text in said, (text, said)
    click(driver, "#confirm-ok")
    wait(driver).until(ec.invisibility_of_element_located((By.ID, "confirm")))


# ---------------------------------------------------------------------------- viewer


def _viewer_finds_devices(driver: WebDriver, ids: dict[str, str]) -> None:
    north, hot, south, revoked = ids["fv-pump-1"], ids["fv-pump-2"], ids["fv-gate"], ids["fv-old"]
    search = driver.find_element(By.ID, "f-q")
    search.clear()
    search.send_keys("fv-")
    wait(driver).until(lambda d: sorted(_rows(d)) == sorted(ids.values()), "search")
    # Grouped by site (the default), each group headed by its counts.
    group = text_of(driver, "#fleet tbody[data-site='fv-north'] tr.group")
    for part in ("2 devices", "1 online", "1 offline"):
        assert part in group, group
    assert text_of(driver, f"{row(south)} td.name strong") == "fv-gate"

    # Stale: the silent device's last CPU of 99 % and its backlog, greyed, with their age.
    load = text_of(driver, f"{row(hot)} td.load-cell .stale")
    for part in ("cpu 99 %", "as of", "min ago"):
        assert part in load, load
    store = text_of(driver, f"{row(hot)} td.store-cell .stale")
    for part in ("last known:", "1234 rec", "as of"):
        assert part in store, store
    assert not driver.find_elements(By.CSS_SELECTOR, f"{row(north)} .stale")
    # Offline and revoked: different words, different marks.
    assert text_of(driver, f"{row(hot)} td.state") == "offline"
    assert text_of(driver, f"{row(revoked)} td.state") == "revoked"
    marks = driver.execute_script(
        "const pill = (id) => getComputedStyle(document.querySelector("
        "`#fleet tr[data-device='${id}'] td.state .pill`));"
        "return [pill(arguments[0]).backgroundColor, pill(arguments[1]).backgroundColor]",
        hot,
        revoked,
    )
    assert marks[0] != marks[1], marks

    _choose(driver, "f-state", "offline")
    wait(driver).until(lambda d: _rows(d) == [hot], "state filter")
    _choose(driver, "f-state", "")
    _choose(driver, "f-site", "fv-south")
    wait(driver).until(lambda d: sorted(_rows(d)) == sorted([south, revoked]), "site filter")
    _choose(driver, "f-site", "")
    _choose(driver, "f-group", "fv-b")
    wait(driver).until(lambda d: _rows(d) == [south], "group filter")
    _choose(driver, "f-group", "")
    # Sorted by CPU without groups: the busiest first.
    click(driver, "#f-bysite")
    _choose(driver, "f-sort", "cpu")
    wait(driver).until(lambda d: _rows(d)[:2] == [hot, south], "sort by CPU")
    # The choices are in the address (to bookmark or share), never the token.
    assert "sort=cpu" in driver.current_url
    assert "q=fv-" in driver.current_url
    click(driver, "#f-bysite")
    _choose(driver, "f-sort", "name")


def _chart_ticks_are_times(driver: WebDriver) -> None:
    """In the first seconds (one snapshot or a few), the time axis reads times of day."""
    ticks = wait(driver).until(
        lambda d: d.execute_script(
            "const t = [...document.querySelectorAll('.charts .uplot')]"
            ".map(u => u.getAttribute('data-x-ticks') || '');"
            "return t.length === 4 && t.every(Boolean) ? t : null"
        ),
        "charts not drawn",
    )
    for labels in ticks:
        assert not re.search(r"\b(19|20)\d\d\b", labels), labels  # no years
        assert all(":" in label for label in labels.split(" | ") if label), labels


def _viewer_sees_no_action(driver: WebDriver, device_id: str, task_id: str) -> None:
    wait(driver).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f"#tasks tr[data-task='{task_id}']")
    )
    wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#rollouts .rollout"))
    click(driver, row(device_id))
    wait(driver).until(ec.visibility_of_element_located((By.ID, "device")))
    assert _shown_actions(driver) == []
    assert not driver.find_element(By.ID, "audit-section").is_displayed()


def _fits(driver: WebDriver, width: int) -> None:
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


def _usable_on_a_phone(driver: WebDriver) -> None:
    """At 360 px nothing is wider than the screen and no two tiles overlap."""
    viewport(driver, *PHONE)
    _fits(driver, PHONE[0])
    overlaps = driver.execute_script(
        "const r = [...document.querySelectorAll('.tile, .charts figure')]"
        ".map(e => e.getBoundingClientRect());"
        "const hit = (a, b) => a.left < b.right - 1 && b.left < a.right - 1"
        " && a.top < b.bottom - 1 && b.top < a.bottom - 1;"
        "return r.flatMap((a, i) => r.slice(i + 1).filter(b => hit(a, b))).length"
    )
    assert overlaps == 0
    # The fleet's rows are cards, each value under its column's name.
    assert not driver.find_element(By.CSS_SELECTOR, "#fleet thead").is_displayed()


async def test_a_viewer_finds_devices_sees_stale_figures_and_no_action(dash: Dashboard) -> None:
    hub = dash.hub
    ids = {
        "fv-pump-1": await _seed(hub, "fv-pump-1", {"site": "fv-north", "group": "fv-a"}),
        "fv-pump-2": await _seed(
            hub, "fv-pump-2", {"site": "fv-north"}, state="offline", cpu=99.0, backlog=1234
        ),
        "fv-gate": await _seed(hub, "fv-gate", {"site": "fv-south", "group": "fv-b"}, cpu=50.0),
        "fv-old": await _seed(hub, "fv-old", {"site": "fv-south"}, state="offline", cpu=5.0),
    }
    await _api(dash, "POST", f"/api/v1/devices/{ids['fv-old']}/revoke")
    queued = await _api(
        dash,
        "POST",
        "/api/v1/tasks",
        {"model": "fv-absent", "input": [[1.0]], "wait_for_model": True},
    )
    await _api(
        dash,
        "POST",
        "/api/v1/rollouts",
        {"model": MODEL, "version": NEW_VERSION, "selector": {"site": "fv-north"}},
    )

    browser = dash.browser
    await asyncio.to_thread(viewport, browser, *DESKTOP)
    await asyncio.to_thread(open_signed_in, browser, dash.url, dash.viewer)
    await asyncio.to_thread(_chart_ticks_are_times, browser)
    await asyncio.to_thread(_viewer_finds_devices, browser, ids)
    await asyncio.to_thread(_viewer_sees_no_action, browser, ids["fv-gate"], queued["ids"][0])
    await asyncio.to_thread(_fits, browser, DESKTOP[0])
    await asyncio.to_thread(screenshot, browser, "dashboard-viewer-desktop")
    await asyncio.to_thread(_usable_on_a_phone, browser)
    await asyncio.to_thread(screenshot, browser, "dashboard-viewer-phone")
    problems = await asyncio.to_thread(console_problems, browser)
    assert not problems, problems


# ---------------------------------------------------------------------------- operator


def _operator_cancels(driver: WebDriver, task_id: str, waiting: str, dismiss: bool) -> None:
    task = f"#tasks tr[data-task='{task_id}']"
    wait(driver).until(lambda d: text_of(d, f"{task} td.why") == waiting, "why waiting")
    assert text_of(driver, f"{task} td.state") == "queued"
    # An operator may cancel tasks, nothing an admin does.
    assert set(_shown_actions(driver)) == {"cancel-task"}
    click(driver, f"{task} button[data-action='cancel-task']")
    if dismiss:  # changed their mind: nothing is sent
        wait(driver).until(ec.visibility_of_element_located((By.ID, "confirm")))
        click(driver, "#confirm-cancel")
        wait(driver).until(ec.invisibility_of_element_located((By.ID, "confirm")))
        return
    _confirm(driver, f"Cancel task {task_id}?", "fo-absent")
    wait(driver).until(lambda d: "cancelled" in text_of(d, "#notice"), "no notice")
    wait(driver).until(lambda d: not d.find_elements(By.CSS_SELECTOR, task), "still listed")


async def test_an_operator_cancels_a_task_after_confirming(dash: Dashboard) -> None:
    submitted = await dash.api.call(
        "POST",
        "/api/v1/tasks",
        token=dash.operator,
        body={"model": "fo-absent", "input": [[1.0]], "wait_for_model": True},
    )
    assert submitted.status == 202, submitted.body
    (task_id,) = submitted.body["ids"]
    before = await _api(dash, "GET", f"/api/v1/tasks/{task_id}")
    assert before["waiting"], before  # why it waits, as the page must show it

    browser = dash.browser
    await asyncio.to_thread(viewport, browser, *DESKTOP)
    await asyncio.to_thread(open_signed_in, browser, dash.url, dash.operator)
    await asyncio.to_thread(_operator_cancels, browser, task_id, before["waiting"], True)
    assert (await _api(dash, "GET", f"/api/v1/tasks/{task_id}"))["state"] == "queued"

    await asyncio.to_thread(_operator_cancels, browser, task_id, before["waiting"], False)
    after = await _api(dash, "GET", f"/api/v1/tasks/{task_id}")
    assert after["state"] == "cancelled", after
    await _audited(dash, "task.cancel", "otto", task=task_id)
    problems = await asyncio.to_thread(console_problems, browser)
    assert not problems, problems


# ---------------------------------------------------------------------------- admin


def _admin_renames_and_relabels(driver: WebDriver, device_id: str) -> None:
    click(driver, row(device_id))
    wait(driver).until(lambda d: "fa-pump-1" in text_of(d, "#device-title"))
    assert {"edit-device", "revoke-device", "start-rollout"} <= set(_shown_actions(driver))
    click(driver, "#device-edit")
    wait(driver).until(ec.visibility_of_element_located((By.ID, "edit-dialog")))
    name = driver.find_element(By.ID, "edit-name")
    name.clear()
    name.send_keys("fa-pump-one")
    labels = driver.find_element(By.ID, "edit-labels")
    labels.clear()
    labels.send_keys("site=fa-mill\ngroup=east")
    click(driver, "#edit-continue")
    _confirm(
        driver,
        "rename fa-pump-1 to fa-pump-one",
        "add the label group=east",
        "remove the label line=1",
    )
    # The open view follows: its new name, and the change in its event log.
    wait(driver).until(lambda d: "fa-pump-one" in text_of(d, "#device-title"), "title")
    wait(driver).until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#device-log tr[data-kind='renamed']")
            and d.find_elements(By.CSS_SELECTOR, "#device-log tr[data-kind='relabelled']")
        ),
        "event log",
    )


def _admin_revokes(driver: WebDriver, device_id: str) -> None:
    click(driver, row(device_id))
    wait(driver).until(lambda d: "fa-pump-2" in text_of(d, "#device-title"))
    click(driver, "#device-revoke")
    wait(driver).until(ec.visibility_of_element_located((By.ID, "confirm")))
    # Irreversible: the button stays disabled until the device's name is typed.
    assert not driver.find_element(By.ID, "confirm-ok").is_enabled()
    driver.find_element(By.ID, "confirm-typed-input").send_keys("fa-pump-2")
    screenshot(driver, "dashboard-admin-revoke-desktop")
    _confirm(driver, "Revoke fa-pump-2?", "cannot be undone")
    wait(driver).until(lambda d: text_of(d, f"{row(device_id)} td.state") == "revoked")
    wait(driver).until(lambda d: not d.find_element(By.ID, "device-revoke").is_displayed())


async def test_an_admin_renames_relabels_and_revokes_a_device(dash: Dashboard) -> None:
    renamed = await _seed(dash.hub, "fa-pump-1", {"site": "fa-mill", "line": "1"})
    revoked = await _seed(dash.hub, "fa-pump-2", {"site": "fa-mill"})

    browser = dash.browser
    await asyncio.to_thread(viewport, browser, *DESKTOP)
    await asyncio.to_thread(open_signed_in, browser, dash.url, dash.admin)
    await asyncio.to_thread(_admin_renames_and_relabels, browser, renamed)
    device = await _api(dash, "GET", "/api/v1/devices/fa-pump-one")  # by its new name
    assert (device["id"], device["labels"]) == (renamed, {"site": "fa-mill", "group": "east"})
    await _audited(dash, "device.update", "ada", device=renamed, name="fa-pump-one")

    await asyncio.to_thread(_admin_revokes, browser, revoked)
    device = await _api(dash, "GET", f"/api/v1/devices/{revoked}")
    assert (device["revoked"], device["revoked_by"]) == (True, "ada")
    await _audited(dash, "device.revoke", "ada", device_id=revoked)
    problems = await asyncio.to_thread(console_problems, browser)
    assert not problems, problems


def _admin_starts_rollout(driver: WebDriver) -> None:
    click(driver, "#rollout-start")
    wait(driver).until(ec.visibility_of_element_located((By.ID, "rollout-dialog")))
    option = f'["{MODEL}","{NEW_VERSION}"]'
    wait(driver).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f"#ro-model option[value='{option}']")
    )
    _choose(driver, "ro-model", option)
    driver.find_element(By.ID, "ro-selector").send_keys("site=fr-plant")
    canary = driver.find_element(By.ID, "ro-canary")
    canary.clear()
    canary.send_keys("50")
    wait(driver).until(lambda d: "Matches 2 devices" in text_of(d, "#ro-match"))
    click(driver, "#ro-continue")
    _confirm(driver, f"Roll out {MODEL} {NEW_VERSION}?", "site=fr-plant: 2 now", "50 %")


def _admin_halts_rollout(driver: WebDriver, rollout_id: int) -> None:
    button = f"#rollouts button[data-rollout='{rollout_id}']"
    wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, button), "no halt button")
    screenshot(driver, "dashboard-admin-desktop")
    click(driver, button)
    wait(driver).until(ec.visibility_of_element_located((By.ID, "confirm-reason-input")))
    driver.find_element(By.ID, "confirm-reason-input").send_keys("wrong build")
    _confirm(driver, f"Halt roll-out #{rollout_id}")
    wait(driver).until(
        lambda d: "halted" in text_of(d, f"#rollouts .rollout[data-rollout='{rollout_id}']")
    )


async def test_an_admin_starts_and_halts_a_rollout(dash: Dashboard) -> None:
    for name in ("fr-press-1", "fr-press-2"):
        await _seed(dash.hub, name, {"site": "fr-plant"})

    browser = dash.browser
    await asyncio.to_thread(viewport, browser, *DESKTOP)
    await asyncio.to_thread(open_signed_in, browser, dash.url, dash.admin)
    await asyncio.to_thread(_admin_starts_rollout, browser)

    async def started() -> dict[str, Any]:
        rollouts = (await _api(dash, "GET", "/api/v1/rollouts"))["items"]
        return next((dict(r) for r in rollouts if r["selector"] == {"site": "fr-plant"}), {})

    rollout = await eventually(started, timeout=API_WAIT_S, what="the roll-out")
    assert (rollout["model"], rollout["version"], rollout["canary_share"]) == (
        MODEL,
        NEW_VERSION,
        0.5,
    )
    assert (rollout["state"], rollout["created_by"]) == ("canary", "ada")
    await _audited(dash, "rollout.start", "ada", selector={"site": "fr-plant"})

    await asyncio.to_thread(_admin_halts_rollout, browser, rollout["id"])
    halted = await _api(dash, "GET", f"/api/v1/rollouts/{rollout['id']}")
    assert halted["state"] == "halted", halted
    assert "wrong build" in halted["reason"], halted
    await _audited(dash, "rollout.halt", "ada", rollout=str(rollout["id"]), reason="wrong build")
    # The admin's view at a phone's width: the audit log and the actions fit too.
    await asyncio.to_thread(_fits, browser, DESKTOP[0])
    await asyncio.to_thread(viewport, browser, *PHONE)
    await asyncio.to_thread(_fits, browser, PHONE[0])
    await asyncio.to_thread(screenshot, browser, "dashboard-admin-phone")
    problems = await asyncio.to_thread(console_problems, browser)
    assert not problems, problems


# ---------------------------------------------------------------------------- sinks


def _sinks_read_and_hidden(driver: WebDriver) -> None:
    """The page asked for the sinks (a request that has ended), and, with none, keeps
    the panel hidden (test_dashboard_sinks.py shows it with one)."""
    wait(driver).until(
        lambda d: d.execute_script(
            "return performance.getEntriesByType('resource')"
            ".some(e => new URL(e.name).pathname === '/api/v1/sinks' && e.responseEnd > 0)"
        ),
        "the page never read /api/v1/sinks",
    )
    assert driver.execute_script("return document.getElementById('sinks-section').hidden")
    assert text_of(driver, "#sinks tbody") == ""


async def test_a_hub_without_sinks_shows_no_sinks_panel(dash: Dashboard) -> None:
    assert not dash.hub.config.sinks
    await asyncio.to_thread(viewport, dash.browser, *DESKTOP)
    await asyncio.to_thread(open_signed_in, dash.browser, dash.url, dash.viewer)
    await asyncio.to_thread(_sinks_read_and_hidden, dash.browser)


# ---------------------------------------------------------------------------- shadow


async def test_a_shadow_rollout_shows_live_beside_candidate(dash: Dashboard) -> None:
    device_id = await _seed(dash.hub, "fs-press", {"site": "fs-plant"})
    started = await _api(
        dash,
        "POST",
        "/api/v1/rollouts",
        {"model": MODEL, "version": NEW_VERSION, "selector": {"site": "fs-plant"},
         "mode": "shadow", "promote_if": {"min_samples": 500}},
    )  # fmt: skip
    # What the device's roll-ups would bring: 30 inputs, 27 agreeing.
    reported = {
        f"{MODEL}@{NEW_VERSION}": {
            "live": "1.0.0", "count": 30, "agree": 27,
            "pairs": {"normal|normal": 27, "imbalance|looseness": 3},
            "live_latency_ms": {"0.1": 30}, "candidate_latency_ms": {"0.25": 30},
            "live_latency_sum_ms": 1.5, "candidate_latency_sum_ms": 3.0,
            "live_confidence": [0] * 9 + [30], "candidate_confidence": [0] * 8 + [30, 0],
        }
    }  # fmt: skip
    await dash.hub.parts.store.run(shadows.fold, device_id, reported, time.time())

    browser = dash.browser
    await asyncio.to_thread(viewport, browser, *DESKTOP)
    await asyncio.to_thread(open_signed_in, browser, dash.url, dash.viewer)
    card = f"#rollouts .rollout[data-rollout='{started['id']}']"
    await asyncio.to_thread(
        lambda: wait(browser).until(
            lambda d: "30 of 500 samples" in text_of(d, card), "the shadow's comparison"
        )
    )
    text = await asyncio.to_thread(text_of, browser, card)
    assert "agreement 0.900 (needs ≥ 0.97)" in text, text
    assert "latency ratio 2.00" in text, text
    assert "imbalance → looseness: 3" in text, text
    rows = await asyncio.to_thread(
        lambda: [
            r.text
            for r in browser.find_elements(By.CSS_SELECTOR, f"{card} .shadow-compare tbody tr")
        ]
    )
    assert rows[0].startswith("live 0.050"), rows  # p50 within its bucket (0 to 0.1 ms)
    assert rows[1].startswith("candidate 0.175"), rows  # within 0.1 to 0.25 ms
    problems = await asyncio.to_thread(console_problems, browser)
    assert not problems, problems
