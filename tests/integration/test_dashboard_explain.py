"""Explanations in the dashboard's device view, in a real headless Chromium against a
real hub holding the shipped surface-defect release: an operator has a flagged result
that carried its input explained (the heat map shown as a 96x96 PNG, with its label),
and sees the hub's refusal named; a viewer sees the control disabled; a result without
its input offers none; a result the device explained itself is marked from its event.

The device's records are written through the store's upload path, as the hub's ingest
stores them; their bodies are what the agent's own code makes of a real inference
(edge/inference/reporting.py) and of a real explanation (edge/inference/explaining.py)
on the real interpreter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from edge.inference.explaining import explain_blocking
from edge.inference.reporting import input_field, result_record
from edge.inference.runner import Inference, ModelRunner
from edge.inference.runtime import choose_runtime
from hub.app import Hub
from hub.store import Upload
from outpost.modelbundle import Manifest, read_bundle
from scripts.model_data import vibration_windows
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
from tests.integration.test_explain_accuracy import _surface
from tests.model_upload import bundle_parts, upload
from tests.support import SHIPPED_MODELS, add_device

DEVICE = "dev-explainview01"
CARRIED, KEPT, ON_DEVICE, UNKNOWN_RELEASE, SERIES = 1, 2, 3, 4, 5  # the results' seqs
MISSING_VERSION = "9.9.9"  # a release the hub does not hold


@pytest.fixture
def hub_settings() -> str:
    return "api_rate_per_s = 1e6\napi_rate_burst = 100000\n"


@pytest.fixture
def browser(hub: Hub, tmp_path: Path) -> Iterator[webdriver.Chrome]:
    driver = chromium(hub.paths.ca_cert, tmp_path)
    try:
        yield driver
    finally:
        driver.quit()


def _answered(
    folder: Path, value: Any, **options: Any
) -> tuple[Manifest, Inference, dict[str, Any]]:
    """The shipped model in `folder`: its manifest, its answer on `value`, and that
    answer explained as the device explains it, with `options` (patch, stride...)
    (blocking: run it in a thread)."""
    runner = ModelRunner(
        read_bundle(folder), choose_runtime(), num_threads=1, interpreters=1, queue_limit=4
    )
    runner.load()
    try:
        inference = asyncio.run(runner.infer(value))
        explained = explain_blocking(runner, {"input": value, **options})
    finally:
        runner.close()
    assert inference.label != runner.manifest.normal_label  # flagged
    return runner.manifest, inference, explained


def _flagged(m: Manifest, inference: Inference, *, carried: bool, version: str = "") -> Any:
    """A flagged result as the agent records it (policy inference.flagged_inputs:
    `carried`)."""
    record = result_record(m.name, version or m.version, m.labels, inference)
    record.update(flag="label", context={})
    if carried:
        record["input"] = input_field(inference)
    return record


def _records() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The results (by seq) and the device's explanation event of ON_DEVICE."""
    image, _ = _surface(np.random.default_rng(11), "spot")
    surface, spot, explained = _answered(
        SHIPPED_MODELS[1], image[None].tolist(), patch=16, stride=8
    )
    assert spot.label == "spot"
    windows, labels = vibration_windows(20, np.random.default_rng(3))
    window = windows[int(np.argmax(labels == 3))]  # a bearing fault, as the model learnt it
    vibration, fault, _ = _answered(SHIPPED_MODELS[0], [window.tolist()])
    results = [
        _flagged(surface, spot, carried=True),  # CARRIED
        _flagged(surface, spot, carried=False),  # KEPT: the default policy
        _flagged(surface, spot, carried=False),  # ON_DEVICE: explained by the device
        _flagged(surface, spot, carried=True, version=MISSING_VERSION),  # UNKNOWN_RELEASE
        _flagged(vibration, fault, carried=True),  # SERIES
    ]
    return results, {"event": "explanation", "result_seq": ON_DEVICE, **explained}


async def _seed(hub: Hub) -> dict[str, Any]:
    """The device and its records at the hub; the device's explanation event."""
    await add_device(hub, DEVICE)
    results, event = await asyncio.to_thread(_records)
    now = time.time()
    bodies = [(seq, now, msgspec.msgpack.encode(r)) for seq, r in enumerate(results, 1)]
    await hub.parts.store.apply_uploads(
        [
            Upload(DEVICE, "results", 1, len(bodies), bodies),
            Upload(DEVICE, "events", 1, 1, [(1, now, msgspec.msgpack.encode(event))]),
        ],
        now=now,
    )
    return event


def _result(seq: int) -> str:
    return f"#device-results tbody tr[data-seq='{seq}']"


def _open_device(driver: WebDriver) -> None:
    click(driver, row(DEVICE))
    wait(driver).until(
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "#device-results tbody tr[data-seq]")) == SERIES
            and "explanation of result" in text_of(d, "#device-events tbody")
        ),
        "the device's results and events not shown",
    )


def _button(driver: WebDriver, seq: int) -> dict[str, Any] | None:
    """The Explain control of a result: whether it is enabled, and its title."""
    found: dict[str, Any] | None = driver.execute_script(
        "const b = document.querySelector(arguments[0]);"
        "return b ? {enabled: !b.disabled, title: b.title, text: b.innerText} : null",
        f"{_result(seq)} button.explain",
    )
    return found


def _viewer_cannot_explain(driver: WebDriver, event: dict[str, Any]) -> None:
    _open_device(driver)
    carried = _button(driver, CARRIED)
    assert carried is not None
    assert not carried["enabled"], carried
    assert "operator role" in carried["title"]
    assert _button(driver, KEPT) is None  # no input: nothing to explain
    assert _button(driver, ON_DEVICE) is None
    top = event["top"]
    marked = text_of(driver, _result(ON_DEVICE))
    assert f"explained on device: spot, top patch row {top['row']} col {top['col']}" in marked
    assert "explained on device" not in text_of(driver, _result(CARRIED))
    assert not driver.find_element(By.ID, "device-explain").is_displayed()


def _heat_map(driver: WebDriver) -> dict[str, Any] | None:
    """The panel's image once it has decoded: its natural size, and the panel's text."""
    found: dict[str, Any] | None = driver.execute_script(
        "const img = document.querySelector('#device-explain img.heat');"
        "if (!img || !img.complete || !img.naturalWidth) return null;"
        "return {width: img.naturalWidth, height: img.naturalHeight,"
        " text: document.getElementById('device-explain').innerText}"
    )
    return found and {**found, "facts": _facts(driver)}


def _facts(driver: WebDriver) -> dict[str, str]:
    """The explanation panel's facts, by name."""
    found: dict[str, str] = driver.execute_script(
        "const facts = {};"
        "for (const dt of document.querySelectorAll('#device-explain dt'))"
        "  facts[dt.innerText] = dt.nextElementSibling.innerText;"
        "return facts"
    )
    return found


def _channel_shares(driver: WebDriver) -> list[int] | None:
    """The panel's channel shares, in whole percents, once shown."""
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#device-explain table.channels tbody tr')]"
        ".map((tr) => tr.cells[1].innerText)"
    )
    return [int(text.strip().rstrip("%").strip()) for text in found] or None


def _fits_a_phone(driver: WebDriver) -> None:
    """At 360 px the results (as cards) and the open panel are no wider than the screen."""
    viewport(driver, *PHONE)
    try:
        wait(driver).until(
            lambda d: d.execute_script(
                "return window.innerWidth === arguments[0]"
                " && document.documentElement.scrollWidth <= window.innerWidth",
                PHONE[0],
            ),
            f"the page is wider than {PHONE[0]} px",
        )
        screenshot(driver, "dashboard-explain-phone")
    finally:
        viewport(driver, *DESKTOP)


def _operator_explains(driver: WebDriver) -> None:
    _open_device(driver)
    assert (_button(driver, CARRIED) or {}).get("enabled"), _button(driver, CARRIED)
    assert _button(driver, KEPT) is None
    click(driver, f"{_result(CARRIED)} button.explain")
    shown = wait(driver).until(_heat_map, "no heat map shown")
    assert shown is not None
    assert (shown["width"], shown["height"]) == (96, 96)  # the decoded PNG: the input's size
    assert f"Explanation of result {CARRIED}" in shown["text"]
    facts = shown["facts"]
    assert (facts["label"], facts["model"]) == ("spot", "surface-defect 1.0.0"), facts
    assert facts["method"] == "occlusion, 451 model calls"  # the defaults: patch 12, stride 6
    assert 0 < float(facts["score"]) <= 1
    assert facts["top patch"].startswith("row "), facts
    assert driver.find_elements(By.CSS_SELECTOR, f"{_result(CARRIED)}.explaining")
    screenshot(driver, "dashboard-explain-desktop")

    # A time series: each channel's share, no image.
    click(driver, f"{_result(SERIES)} button.explain")
    shares = wait(driver).until(_channel_shares, "no channel shares shown")
    assert shares is not None
    assert len(shares) == 3, shares  # x, y and z
    assert sum(shares) == pytest.approx(100, abs=2), shares  # whole percents
    facts = _facts(driver)
    assert facts["model"] == "vibration-anomaly 1.0.0", facts
    assert facts["method"] == "occlusion, 49 model calls"  # 8 windows of 16, 3 channels
    assert facts["top"].startswith("window "), facts
    assert not driver.find_elements(By.CSS_SELECTOR, "#device-explain img")
    screenshot(driver, "dashboard-explain-series-desktop")
    _fits_a_phone(driver)

    # The hub's refusal, by name: a result answered by a release it does not hold.
    click(driver, f"{_result(UNKNOWN_RELEASE)} button.explain")
    wait(driver).until(
        lambda d: "Not explained" in text_of(d, "#device-explain .error"), "no refusal shown"
    )
    refusal = text_of(driver, "#device-explain .error")
    assert f"no model surface-defect {MISSING_VERSION} on this hub" in refusal, refusal
    assert "HTTP 404" in refusal
    assert not driver.find_elements(By.CSS_SELECTOR, "#device-explain img")
    click(driver, "#device-explain .explain-head button")  # Close
    wait(driver).until(
        lambda d: not d.find_element(By.ID, "device-explain").is_displayed(), "not closed"
    )
    problems = console_problems(driver, "status of 404")  # the refusal, on purpose
    assert not problems, problems


async def test_an_operator_sees_a_flagged_result_explained_beside_it(
    hub: Hub, api: ApiClient, browser: webdriver.Chrome
) -> None:
    admin = await api.token("admin", subject="explain-admin")
    for folder in SHIPPED_MODELS:
        model, manifest, sample = bundle_parts(folder)
        assert (await upload(hub, admin, model, manifest, sample)).status == 201
    event = await _seed(hub)
    url = hub.config.hub_url

    viewer = await api.token("viewer", subject="explain-viewer")
    await asyncio.to_thread(open_signed_in, browser, url, viewer)
    await asyncio.to_thread(_viewer_cannot_explain, browser, event)

    operator = await api.token("operator", subject="explain-operator")
    await asyncio.to_thread(open_signed_in, browser, url, operator)
    await asyncio.to_thread(_operator_explains, browser)
