"""Unit tests of backoff.Reconnect (a fleet's return after a lost broker is spread) and of
the MQTT loop that asks it, with sleep faked; plus the agent setting that feeds it."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge.config import AgentConfig
from outpost import backoff, mqtt, schema
from outpost.settings import SettingsError, load_file

DEVICES = [f"dev-{i:04d}" for i in range(1000)]


def waits(policy: backoff.Reconnect, count: int) -> list[float]:
    return [policy.next_delay() for _ in range(count)]


def test_a_device_always_draws_the_same_sequence() -> None:
    first = waits(backoff.Reconnect(cap=60, spread=10, seed="dev-0042"), 20)
    again = waits(backoff.Reconnect(cap=60, spread=10, seed="dev-0042"), 20)
    other = waits(backoff.Reconnect(cap=60, spread=10, seed="dev-0043"), 20)
    assert first == again
    assert first != other


def test_the_first_retries_of_a_fleet_are_spread_over_the_spread() -> None:
    spread = 10.0
    firsts = [backoff.Reconnect(cap=60, spread=spread, seed=d).next_delay() for d in DEVICES]
    assert all(0.0 <= w <= spread for w in firsts)
    assert max(firsts) > 0.95 * spread
    assert min(firsts) < 0.05 * spread
    per_second = Counter(int(w) for w in firsts)
    share = len(DEVICES) / spread
    assert max(per_second.values()) <= 3 * share
    assert len(per_second) == spread  # every second of the spread gets some


def test_without_spread_the_first_retry_is_immediate_as_before() -> None:
    firsts = [backoff.Reconnect(cap=60, spread=0, seed=d).next_delay() for d in DEVICES]
    assert all(0.0 <= w <= 1.0 for w in firsts)  # backoff.delay(0, ...): within a second


def test_a_connection_starts_a_new_outage_with_a_new_spread() -> None:
    after_reset = []
    for device in DEVICES:
        policy = backoff.Reconnect(cap=60, spread=10, seed=device)
        waits(policy, 8)  # ceilings up to 25.6 s by now
        policy.reset()
        assert policy.attempt == 0
        after_reset.append(policy.next_delay())
    assert all(0.0 <= w <= 10.0 for w in after_reset)
    assert max(after_reset) > 9.5


@pytest.mark.parametrize(("cap", "spread"), [(0.5, 10.0), (2.0, 10.0), (60.0, 10.0), (60, 0)])
def test_no_wait_exceeds_the_cap(cap: float, spread: float) -> None:
    for device in DEVICES[:100]:
        assert all(
            0.0 <= w <= cap
            for w in waits(backoff.Reconnect(cap=cap, spread=spread, seed=device), 60)
        )


@pytest.mark.parametrize("spread", [0.0, 10.0])
def test_waits_grow_exponentially_in_expectation(spread: float) -> None:
    rounds = 14
    samples = [waits(backoff.Reconnect(cap=3600, spread=spread, seed=d), rounds) for d in DEVICES]
    mean = [sum(s[k] for s in samples) / len(samples) for k in range(rounds)]
    # Full jitter: the mean is half the ceiling, max(spread, 1.5**k) below the cap.
    start = 6 if spread else 1  # 1.5**6 = 11.4 is the first ceiling above a 10 s spread
    for k in range(start, rounds):
        assert mean[k] == pytest.approx(1.5**k / 2, rel=0.1)
        if k > start:
            assert mean[k] / mean[k - 1] == pytest.approx(1.5, rel=0.15)
    if spread:  # until then every round stays spread: none bunches a fleet into 1-3 s
        assert all(m == pytest.approx(spread / 2, rel=0.1) for m in mean[:start])


def test_the_policy_refuses_contradictory_arguments() -> None:
    with pytest.raises(ValueError, match="spread must be 0 or more"):
        backoff.Reconnect(cap=60, spread=-1)
    with pytest.raises(ValueError, match="cap must be positive"):
        backoff.Reconnect(cap=0)


# ---------------------------------------------------------------------------- the loop


class Stop(Exception):
    """Ends the loop under test from its faked sleep."""


class FakeClient:
    """Connects or refuses as told; a connected session ends at once."""

    def __init__(self, log: list[tuple[str, float]], refuse: bool) -> None:
        self._log = log
        self._refuse = refuse

    async def __aenter__(self) -> FakeClient:
        self._log.append(("connect", 0.0))
        if self._refuse:
            raise aiomqtt.MqttError("connection refused")
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


async def run_loop(
    monkeypatch: pytest.MonkeyPatch,
    outcomes: list[bool],
    sleeps: int,
    session_s: float = mqtt.STABLE_S,
) -> list[tuple[str, float]]:
    """Run `run_forever` as the agent does; `outcomes[i]`: attempt i connects, and a
    session lasts `session_s` (on a clock faked as time is)."""
    log: list[tuple[str, float]] = []
    attempts = iter(outcomes)
    now = 0.0

    async def fake_sleep(seconds: float) -> None:  # time is faked, as unit tests may
        log.append(("sleep", seconds))
        if sum(1 for kind, _ in log if kind == "sleep") == sleeps:
            raise Stop

    async def session(client: Any) -> None:
        nonlocal now
        log.append(("session", 0.0))
        now += session_s

    def make_client() -> Any:
        return FakeClient(log, refuse=not next(attempts))

    monkeypatch.setattr("outpost.mqtt.asyncio.sleep", fake_sleep)
    link = mqtt.LinkState(logging.getLogger("test"), "link")
    with pytest.raises(Stop):
        await mqtt.run_forever(
            make_client,
            session,
            link,
            address="broker:8883",
            backoff_cap=60.0,
            backoff_spread=10.0,
            backoff_seed="dev-0007",
            clock=lambda: now,
        )
    return log


async def test_the_first_connect_at_start_does_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    log = await run_loop(monkeypatch, [True, False], sleeps=1)
    assert log[:2] == [("connect", 0.0), ("session", 0.0)]  # no sleep before either


async def test_the_loop_sleeps_what_the_policy_says(monkeypatch: pytest.MonkeyPatch) -> None:
    # Booting against a broker that is down, connected, lost it, down again.
    log = await run_loop(monkeypatch, [False, False, True, False, False], sleeps=5)
    reference = backoff.Reconnect(cap=60.0, spread=10.0, seed="dev-0007")
    expected = [reference.next_delay(), reference.next_delay()]
    reference.reset()  # the third attempt connected
    expected += [reference.next_delay(), reference.next_delay(), reference.next_delay()]
    assert [seconds for kind, seconds in log if kind == "sleep"] == expected
    assert log[0] == ("connect", 0.0)
    assert [kind for kind, _ in log][:6] == [
        "connect",
        "sleep",
        "connect",
        "sleep",
        "connect",
        "session",
    ]


async def test_a_link_that_drops_as_soon_as_it_connects_backs_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two agents on one device id (a cloned SD card) take each other's session over the
    moment they connect: each CONNACK started the back-off afresh, so they reconnected
    within the first retry's spread, every few seconds, for ever."""
    log = await run_loop(monkeypatch, [True] * 8, sleeps=8, session_s=1.0)
    reference = backoff.Reconnect(cap=60.0, spread=10.0, seed="dev-0007")
    assert [seconds for kind, seconds in log if kind == "sleep"] == [
        reference.next_delay() for _ in range(8)
    ]  # one outage: no reset between the short sessions


# ---------------------------------------------------------------------------- the setting


def test_the_spread_defaults_to_ten_seconds_and_zero_turns_it_off(tmp_path: Path) -> None:
    assert AgentConfig().reconnect_spread_s == 10.0
    path = tmp_path / "agent.toml"
    path.write_text("[agent]\nreconnect_spread_s = 0\n", encoding="utf-8")
    assert load_file(AgentConfig, path, "agent", {}).reconnect_spread_s == 0.0


def test_a_negative_spread_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[agent]\nreconnect_spread_s = -1\n", encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_file(AgentConfig, path, "agent", {})
    assert "agent.reconnect_spread_s" in str(info.value)
    assert "must be at least 0" in str(info.value)


def test_the_settings_reference_row_matches_the_help_text() -> None:
    row = {key: text for key, _tp, _default, text in schema.describe(AgentConfig)}
    reference = (Path(__file__).parents[2] / "docs" / "settings.md").read_text(encoding="utf-8")
    assert f"| `reconnect_spread_s` | float | `10.0` | {row['reconnect_spread_s']} |" in reference
