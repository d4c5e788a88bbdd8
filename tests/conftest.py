"""Fixtures: a real hub (with its managed, mTLS Mosquitto on a free loopback port),
enrolled devices, and agents running as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from edge.enroll import enroll
from edge.identity import DevicePaths, Identity
from hub.app import Hub
from hub.cli import load_config
from hub.initialise import initialise
from hub.paths import HubPaths
from outpost.aio import cancel_until_done
from tests.api_client import ApiClient
from tests.buses import ThrowawayNats, ThrowawayRabbit
from tests.postgres import ThrowawayPostgres
from tests.schedule import known_durations, long_first
from tests.support import PROFILES, AgentProcess, free_port, mint_token


@pytest.hookimpl(trylast=True)  # after -k, -m and --deselect took out what is not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests first, spread over the workers (see tests/schedule.py)."""
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    items[:] = long_first(items, workers, known_durations(), _shared_by)


def _shared_by(item: pytest.Item) -> str:
    """The module, for a test that uses a fixture built once per module; else the test."""
    info = getattr(item, "_fixtureinfo", None)
    if info is not None:
        for definitions in info.name2fixturedefs.values():
            if any(d.scope in ("module", "package") for d in definitions):
                return item.nodeid.split("::")[0]
    return item.nodeid


@pytest.fixture(autouse=True)
def root_logging() -> Iterator[None]:
    """Put the root logger back after each test: a command run in-process configures
    logging onto the stderr that pytest captured for that test and closes after it."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        # Exactly StreamHandler: pytest's own capture handlers are subclasses of it.
        if type(handler) is logging.StreamHandler and handler not in before:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[ThrowawayPostgres]:
    """One throwaway PostgreSQL cluster for the whole run (started on first use)."""
    server = ThrowawayPostgres()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server: ThrowawayPostgres) -> str:
    """A new, empty database on the throwaway server, for this test alone."""
    return postgres_server.new_database()


@pytest.fixture
def hub_settings() -> str:
    """Extra lines for hub.toml; a test module overrides this fixture to change them."""
    return ""


@pytest.fixture
def hub_backend() -> str:
    """The fixture hub's database: "sqlite" (its own file) or "postgresql" (a new database
    on the throwaway server). A test module overrides this with `params=BACKENDS` to run
    its tests on both."""
    return "sqlite"


@pytest.fixture
def hub_paths(
    tmp_path: Path, hub_settings: str, hub_backend: str, request: pytest.FixtureRequest
) -> HubPaths:
    """An initialised hub data folder whose hub.toml names free loopback ports."""
    paths = HubPaths(tmp_path / "hub")
    initialise(paths, server_names=[])
    database = ""
    if hub_backend == "postgresql":
        database = f"db_url = {json.dumps(request.getfixturevalue('pg_url'))}\n"
    paths.config.write_text(
        "[hub]\n"
        f"mqtt_port = {free_port()}\n"
        f"web_port = {free_port()}\n"
        "offline_after_heartbeats = 3\n" + database + hub_settings
    )
    return paths


# The task running each fixture hub, so a test can stop its hub early (a restart test).
HUB_TASKS: dict[int, asyncio.Task[None]] = {}


@pytest.fixture
async def hub(hub_paths: HubPaths) -> AsyncIterator[Hub]:
    """A running hub, connected to its own broker."""
    running = Hub(hub_paths, load_config(hub_paths.root))
    task = asyncio.create_task(running.run(), name="test-hub")
    HUB_TASKS[id(running)] = task
    ready = asyncio.create_task(running.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()  # raises the hub's start-up error
    assert ready in done, "hub did not become ready"
    await asyncio.wait_for(running.parts.link.state.connected.wait(), 10)
    yield running
    await cancel_until_done(task)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    del HUB_TASKS[id(running)]


Enroller = Callable[..., Awaitable[tuple[DevicePaths, Identity]]]


@pytest.fixture
def enroll_device(hub: Hub, tmp_path: Path) -> Enroller:
    """Enroll a fresh device folder with a profile; return its paths and identity."""
    count = 0

    async def _enroll(
        profile: str = "generic", labels: dict[str, str] | None = None
    ) -> tuple[DevicePaths, Identity]:
        nonlocal count
        count += 1
        paths = DevicePaths(tmp_path / f"device-{count}")
        token = await mint_token(hub, labels=labels)
        identity = await enroll(token, paths, PROFILES / f"{profile}.toml")
        return paths, identity

    return _enroll


@pytest.fixture
async def api(hub: Hub) -> AsyncIterator[ApiClient]:
    """An HTTPS client of the running hub's API."""
    client = ApiClient(hub)
    yield client
    await client.close()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start agents as child processes; every one is killed when the test ends."""
    started: list[AgentProcess] = []

    def _start(paths: DevicePaths, heartbeat_interval: float = 0.5) -> AgentProcess:
        agent = AgentProcess(
            paths.root,
            heartbeat_interval=heartbeat_interval,
            log=tmp_path / f"agent-{len(started)}.log",
        )
        started.append(agent)
        return agent

    yield _start
    for agent in started:
        agent.stop()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[ThrowawayNats]:
    """One throwaway `nats-server -js` (user `outpost`, a random password) per run and
    xdist worker, shared read-only: a test makes its own stream and deletes it."""
    server = ThrowawayNats(user="outpost", password=secrets.token_hex(12))
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[ThrowawayRabbit]:
    """One throwaway RabbitMQ node per run and xdist worker (it boots in seconds), shared
    read-only: a test declares its own exchange and queues."""
    node = ThrowawayRabbit()
    node.start()
    yield node
    node.close()
