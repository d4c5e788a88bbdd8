"""What `outpost-agent` imports before it does anything: the commands other than `run`
skip the daemon's libraries, and the daemon leaves numpy until a model needs it."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO

HEAVY = ["aiohttp", "aiomqtt", "sqlite3", "numpy", "cryptography"]


def _all_modules_after(code: str) -> set[str]:
    """Every module (by its full name) loaded in a fresh interpreter after running `code`."""
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return set(done.stdout.split())


def _modules_after(code: str) -> set[str]:
    """Top-level modules loaded in a fresh interpreter after running `code`."""
    return {name.split(".")[0] for name in _all_modules_after(code)}


def test_the_command_line_imports_no_daemon_library() -> None:
    loaded = _modules_after("import edge.cli")

    assert loaded.isdisjoint(HEAVY), loaded.intersection(HEAVY)


def test_the_daemon_starts_without_numpy_and_loads_it_for_a_model() -> None:
    loaded = _modules_after("import edge.cli\nedge.cli._daemon()")
    later = _modules_after("import edge.cli\nedge.cli._daemon()\nimport edge.inference.runner")

    assert {"aiohttp", "aiomqtt", "sqlite3"} <= loaded
    assert "numpy" not in loaded
    assert "numpy" in later


def test_the_daemon_imports_no_command_line_or_date_library_for_its_store() -> None:
    """The store is plain sqlite3 (outpost/sqlite.py): sqlite-utils, which it used to
    wrap, brought click, dateutil, pluggy, ctypes and csv along, 4.1 MiB on a device."""
    loaded = _modules_after("import edge.cli\nedge.cli._daemon()")

    unwanted = {"sqlite_utils", "click", "dateutil", "pluggy", "ctypes", "csv"}
    assert loaded.isdisjoint(unwanted), loaded & unwanted


def test_the_daemon_leaves_key_formats_and_courier_bundles_until_they_are_used() -> None:
    """cryptography's general key loader (SSH, RSA, DSA, EC formats) and the courier's
    sealing hold about 1.5 MiB of a device's memory; the daemon needs neither to run.
    (The `outpost.courier` package itself holds one number, the largest bundle the local
    API takes, shared with the hub.)"""
    loaded = _all_modules_after("import edge.cli\nedge.cli._daemon()")

    assert "edge.agent" in loaded
    assert "cryptography.hazmat.primitives.asymmetric.ed25519" in loaded  # it verifies with it
    unwanted = {
        "cryptography.hazmat.primitives.serialization",
        "edge.courier",
        "edge.couriercerts",
        "outpost.courier.sealing",
        "outpost.courier.parts",
        "outpost.courier.content",
    }
    assert loaded.isdisjoint(unwanted), loaded & unwanted


def test_the_daemon_serves_its_local_api_without_aiohttp_s_server() -> None:
    """The local API is edge/localhttp/ on httptools: aiohttp's server package (its
    application, router, middlewares: 1.4 MiB resident, measured) stays out of the agent."""
    loaded = _all_modules_after("import edge.cli\nedge.cli._daemon()")

    assert "httptools" in loaded
    assert not {"aiohttp.web", "aiohttp.web_app", "aiohttp.web_protocol"} & loaded
