"""What an operator and an admin do from the dashboard, in a real headless Chromium against
a real hub, each acting by role: an operator cancels a task, after confirming; an admin
renames, relabels and revokes a device and starts and halts a roll-out, and the view
fits a phone's width. Every action is checked through the API (the change and its audit
entry), never through the page alone. (What a viewer reads: test_dashboard_viewer.py.)

One hub and one browser serve the whole module (each test signs in afresh, with its own
devices under their own site names). Devices are put in their states through the
store's presence path, as the hub's ingest does (hello, heartbeat, connection lost):
test_dashboard.py follows real agents. Screenshots: see test_dashboard.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec

from tests.integration.dashboard_support import (
    API_WAIT_S,
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
from tests.support import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dash(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Dashboard]:
    async with dashboard(tmp_path_factory) as running:
        yield running


async def _audited(dash: Dashboard, action: str, subject: str, **detail: Any) -> dict[str, Any]:
    """The audit entry of `action` by `subject` whose detail holds `detail` (waited for:
    the entry is written as the answer goes out)."""

    async def found() -> dict[str, Any]:
        page = await api_call(dash, "GET", "/api/v1/audit?limit=50")
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


def _confirm(driver: WebDriver, *expected: str) -> None:
    """The confirmation is open and says what will happen; confirm it."""
    wait(driver).until(ec.visibility_of_element_located((By.ID, "confirm")))
    said = text_of(driver, "#confirm")
    for text in expected:
        assert text in said, (text, said)
    click(driver, "#confirm-ok")
    wait(driver).until(ec.invisibility_of_element_located((By.ID, "confirm")))


def _operator_cancels(driver: WebDriver, task_id: str, waiting: str, dismiss: bool) -> None:
    task = f"#tasks tr[data-task='{task_id}']"
    wait(driver).until(lambda d: text_of(d, f"{task} td.why") == waiting, "why waiting")
    assert text_of(driver, f"{task} td.state") == "queued"
    # An operator may cancel tasks, nothing an admin does.
    assert set(shown_actions(driver)) == {"cancel-task"}
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
    before = await api_call(dash, "GET", f"/api/v1/tasks/{task_id}")
    assert before["waiting"], before  # why it waits, as the page must show it

    browser = dash.browser
    await asyncio.to_thread(viewport, browser, *DESKTOP)
    await asyncio.to_thread(open_signed_in, browser, dash.url, dash.operator)
    await asyncio.to_thread(_operator_cancels, browser, task_id, before["waiting"], True)
    assert (await api_call(dash, "GET", f"/api/v1/tasks/{task_id}"))["state"] == "queued"

    await asyncio.to_thread(_operator_cancels, browser, task_id, before["waiting"], False)
    after = await api_call(dash, "GET", f"/api/v1/tasks/{task_id}")
    assert after["state"] == "cancelled", after
    await _audited(dash, "task.cancel", "otto", task=task_id)
    problems = await asyncio.to_thread(console_problems, browser)
    assert not problems, problems


def _admin_renames_and_relabels(driver: WebDriver, device_id: str) -> None:
    click(driver, row(device_id))
    wait(driver).until(lambda d: "fa-pump-1" in text_of(d, "#device-title"))
    assert {"edit-device", "revoke-device", "start-rollout"} <= set(shown_actions(driver))
    click(driver, "#device-edit")
    wait(driver).until(ec.visibility_of_element_located((By.ID, "edit-dialog")))
    name = driver.find_element(By.ID, "edit-name")
    name.clear()
    name.send_keys("fa-pump-one")
    labels = driver.find_element(By.ID, "edit-labels")
    labels.clear()
    labels.send_keys("site=fa-mill\ngroup=east,west")  # a value may hold a comma
    click(driver, "#edit-continue")
    _confirm(
        driver,
        "rename fa-pump-1 to fa-pump-one",
        "add the label group=east,west",
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
    renamed = await seed_device(dash.hub, "fa-pump-1", {"site": "fa-mill", "line": "1"})
    revoked = await seed_device(dash.hub, "fa-pump-2", {"site": "fa-mill"})

    browser = dash.browser
    await asyncio.to_thread(viewport, browser, *DESKTOP)
    await asyncio.to_thread(open_signed_in, browser, dash.url, dash.admin)
    await asyncio.to_thread(_admin_renames_and_relabels, browser, renamed)
    device = await api_call(dash, "GET", "/api/v1/devices/fa-pump-one")  # by its new name
    assert (device["id"], device["labels"]) == (
        renamed,
        {"site": "fa-mill", "group": "east,west"},
    )
    await _audited(dash, "device.update", "ada", device=renamed, name="fa-pump-one")

    await asyncio.to_thread(_admin_revokes, browser, revoked)
    device = await api_call(dash, "GET", f"/api/v1/devices/{revoked}")
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
    choose(driver, "ro-model", option)
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
        await seed_device(dash.hub, name, {"site": "fr-plant"})

    browser = dash.browser
    await asyncio.to_thread(viewport, browser, *DESKTOP)
    await asyncio.to_thread(open_signed_in, browser, dash.url, dash.admin)
    await asyncio.to_thread(_admin_starts_rollout, browser)

    async def started() -> dict[str, Any]:
        rollouts = (await api_call(dash, "GET", "/api/v1/rollouts"))["items"]
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
    halted = await api_call(dash, "GET", f"/api/v1/rollouts/{rollout['id']}")
    assert halted["state"] == "halted", halted
    assert "wrong build" in halted["reason"], halted
    await _audited(dash, "rollout.halt", "ada", rollout=str(rollout["id"]), reason="wrong build")
    # The admin's view at a phone's width: the audit log and the actions fit too.
    await asyncio.to_thread(fits, browser, DESKTOP[0])
    await asyncio.to_thread(viewport, browser, *PHONE)
    await asyncio.to_thread(fits, browser, PHONE[0])
    await asyncio.to_thread(screenshot, browser, "dashboard-admin-phone")
    problems = await asyncio.to_thread(console_problems, browser)
    assert not problems, problems
