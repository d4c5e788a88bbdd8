"""What a viewer reads on the dashboard, in a real headless Chromium against a real hub:
find devices (search, filters, sort, grouped by site), read stale figures as stale and
the charts' axis as times of day, see no action, on a desktop's width and a phone's; no
sinks panel on a hub without sinks; a shadow roll-out's live and candidate side by side.
(What an operator and an admin do: test_dashboard_actions.py.)

One hub and one browser serve the whole module (each test signs in afresh, with its own
devices under their own site names). Devices are put in their states through the
store's presence path, as the hub's ingest does (hello, heartbeat, connection lost):
test_dashboard.py follows real agents. Screenshots: see test_dashboard.py.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec

from hub.store import shadows
from tests.integration.dashboard_support import (
    MODEL,
    NEW_VERSION,
    Dashboard,
    api_call,
    choose,
    dashboard,
    fits,
    seed_device,
    shown_actions,
)
from tests.integration.test_dashboard import (
    DESKTOP,
    PHONE,
    click,
    console_problems,
    open_signed_in,
    row,
    screenshot,
    text_of,
    viewport,
    wait,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dash(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Dashboard]:
    async with dashboard(tmp_path_factory) as running:
        yield running


def _rows(driver: WebDriver) -> list[str]:
    """The device ids of the fleet table's rows, in order."""
    found = driver.execute_script(
        "return [...document.querySelectorAll('#fleet tr[data-device]')]"
        ".map(r => r.getAttribute('data-device'))"
    )
    return [str(i) for i in found]


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

    choose(driver, "f-state", "offline")
    wait(driver).until(lambda d: _rows(d) == [hot], "state filter")
    choose(driver, "f-state", "")
    choose(driver, "f-site", "fv-south")
    wait(driver).until(lambda d: sorted(_rows(d)) == sorted([south, revoked]), "site filter")
    choose(driver, "f-site", "")
    choose(driver, "f-group", "fv-b")
    wait(driver).until(lambda d: _rows(d) == [south], "group filter")
    choose(driver, "f-group", "")
    # Sorted by CPU without groups: the busiest first.
    click(driver, "#f-bysite")
    choose(driver, "f-sort", "cpu")
    wait(driver).until(lambda d: _rows(d)[:2] == [hot, south], "sort by CPU")
    # The choices are in the address (to bookmark or share), never the token.
    assert "sort=cpu" in driver.current_url
    assert "q=fv-" in driver.current_url
    click(driver, "#f-bysite")
    choose(driver, "f-sort", "name")


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
    assert shown_actions(driver) == []
    assert not driver.find_element(By.ID, "audit-section").is_displayed()


def _usable_on_a_phone(driver: WebDriver) -> None:
    """At 360 px nothing is wider than the screen and no two tiles overlap."""
    viewport(driver, *PHONE)
    fits(driver, PHONE[0])
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
        "fv-pump-1": await seed_device(hub, "fv-pump-1", {"site": "fv-north", "group": "fv-a"}),
        "fv-pump-2": await seed_device(
            hub, "fv-pump-2", {"site": "fv-north"}, state="offline", cpu=99.0, backlog=1234
        ),
        "fv-gate": await seed_device(
            hub, "fv-gate", {"site": "fv-south", "group": "fv-b"}, cpu=50.0
        ),
        "fv-old": await seed_device(hub, "fv-old", {"site": "fv-south"}, state="offline", cpu=5.0),
    }
    await api_call(dash, "POST", f"/api/v1/devices/{ids['fv-old']}/revoke")
    queued = await api_call(
        dash,
        "POST",
        "/api/v1/tasks",
        {"model": "fv-absent", "input": [[1.0]], "wait_for_model": True},
    )
    await api_call(
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
    await asyncio.to_thread(fits, browser, DESKTOP[0])
    await asyncio.to_thread(screenshot, browser, "dashboard-viewer-desktop")
    await asyncio.to_thread(_usable_on_a_phone, browser)
    await asyncio.to_thread(screenshot, browser, "dashboard-viewer-phone")
    problems = await asyncio.to_thread(console_problems, browser)
    assert not problems, problems


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


async def test_a_shadow_rollout_shows_live_beside_candidate(dash: Dashboard) -> None:
    device_id = await seed_device(dash.hub, "fs-press", {"site": "fs-plant"})
    started = await api_call(
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
