"""What the sink tests against real message buses share (test_sink_nats.py,
test_sink_rabbitmq.py, test_sink_bus_tls.py): their timeouts, the events they publish,
a credentials file, and a RabbitMQ sink's configuration for the shared throwaway node
of tests/buses.py."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from hub.sinks.base import Event
from hub.sinks.config import SinkConfig
from tests.buses import ThrowawayRabbit

TIMEOUT_S = 2.0  # the sinks' timeout_s in the failure tests
# What a failure may take beyond timeout_s: nats-py's second connection attempt, the
# closing handshake, a machine five times slower than this one.
SLACK_S = 8.0
TYPES = ["org.outpost.task.succeeded", "org.outpost.device.online", "org.outpost.record.stored"]


def make_events(count: int, *, first: int = 1, size: int = 0) -> list[Event]:
    """`count` events over three devices, every fifth one fleet-wide (no device)."""
    out = []
    for number in range(first, first + count):
        fleet_wide = number % 5 == 0
        out.append(
            Event(
                id=f"evt-{number}",
                type="org.outpost.rollout.progress" if fleet_wide else TYPES[number % 3],
                source="https://hub.test",
                subject="" if fleet_wide else f"dev-bus00000000{number % 3}",
                time=f"2025-01-02T03:04:{number % 60:02d}.000Z",
                data={"n": number, "pad": "x" * size},
            )
        )
    return out


def outbox_number(event_id: str) -> int:
    """The outbox number an event id names (`evt-<number>-<ms>`, see hub/sinks/drain.py)."""
    return int(event_id.split("-")[1])


def credentials(tmp_path: Path, user: str, password: str) -> str:
    path = tmp_path / f"bus-{uuid.uuid4().hex[:8]}.creds"
    path.write_text(f"{user}:{password}\n")
    return str(path)


def rabbit_config(
    node: ThrowawayRabbit,
    tmp_path: Path,
    exchange: str,
    *,
    password: str | None = None,
    url: str | None = None,
    timeout_s: float = 10.0,
) -> SinkConfig:
    return SinkConfig(
        name="rabbit",
        kind="rabbitmq",
        url=url or node.address,
        credentials_file=credentials(
            tmp_path, node.user, node.password if password is None else password
        ),
        target=exchange,
        timeout_s=timeout_s,
    )


def exchange_of(request: pytest.FixtureRequest) -> str:
    return f"t.{request.node.name[:60]}.{uuid.uuid4().hex[:6]}"
