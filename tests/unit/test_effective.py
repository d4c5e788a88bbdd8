"""The settings an agent runs on: a policy's fields over its own, and the task caps."""

from __future__ import annotations

from typing import Any

from edge.config import AgentConfig
from edge.effective import Caps, TaskBudget, resolve, task_budget
from edge.store import Bounds
from outpost import policy, wire

OWN = AgentConfig()


def effective_of(sets: dict[str, Any]) -> Any:
    return resolve(OWN, policy.load(policy.merge(sets)), sets)


def test_a_policy_that_sets_nothing_leaves_the_agents_own_settings() -> None:
    e = effective_of({})
    assert e.heartbeat_interval == OWN.heartbeat_interval
    assert e.metrics_interval == OWN.metrics_interval
    assert e.log_level == OWN.log_level.upper()
    assert e.caps == Caps()
    assert (e.reporting.mode, e.reporting.confidence_below) == (
        OWN.inference.report,
        OWN.inference.confidence_below,
    )
    assert e.rate_bytes_per_s == OWN.sync.rate_bytes_per_s
    assert e.bounds["results"] == Bounds(
        OWN.bounds.results.max_records, OWN.bounds.results.max_bytes, OWN.bounds.results.max_age_s
    )


def test_each_field_a_policy_sets_wins_and_only_that_field() -> None:
    e = effective_of(
        {
            "heartbeat_interval": 3.0,
            "tasks": {"cpu_max_percent": 80.0},
            "bounds": {"metrics": {"max_records": 500}},
            "inference": {"report": "all"},
            "allowed_models": ["vibration-anomaly"],
        }
    )
    assert e.heartbeat_interval == 3.0
    assert e.metrics_interval == OWN.metrics_interval
    assert e.caps == Caps(cpu_max_percent=80.0)  # the temperature cap stays off
    assert e.bounds["metrics"].max_records == 500
    assert e.bounds["metrics"].max_bytes == OWN.bounds.metrics.max_bytes
    assert e.bounds["results"].max_records == OWN.bounds.results.max_records
    assert e.reporting.mode == "all"
    assert e.reporting.confidence_below == OWN.inference.confidence_below
    assert e.allowed_models == frozenset({"vibration-anomaly"})


def load(cpu: float, heat: float | None = None) -> wire.Load:
    return wire.Load(
        cpu_percent=cpu, memory_percent=10, disk_percent=10, rss_bytes=1, temperature_c=heat
    )


def test_caps_refuse_over_the_line_with_the_reason_and_never_on_an_unknown_load() -> None:
    caps = Caps(cpu_max_percent=80.0, temperature_max_c=70.0)
    assert caps.refusal(None) is None
    assert caps.refusal(load(80.0, 70.0)) is None  # at the line is allowed
    assert caps.refusal(load(91.0)) == "CPU at 91 %, over the policy's 80 %"
    assert caps.refusal(load(10.0, 75.0)) == "at 75 C, over the policy's 70 C"
    assert Caps().refusal(load(100.0, 99.0)) is None


def test_a_task_budget_comes_from_the_kept_policy_only_where_it_sets_one() -> None:
    assert task_budget(4, 0, {}) == TaskBudget(4, 0)  # no policy kept
    assert task_budget(4, 0, {"tasks": {"concurrency": 0}}) == TaskBudget(4, 0)  # the profile's
    assert task_budget(4, 0, {"tasks": {"concurrency": 2}}) == TaskBudget(2, 0)
    assert task_budget(4, 0, {"tasks": {"prefetch": 3}}) == TaskBudget(4, 7)
    assert task_budget(4, 5, {"tasks": {"concurrency": 2, "prefetch": 10}}) == TaskBudget(2, 5)
    assert task_budget(4, 0, {"log_level": "debug"}) == TaskBudget(4, 0)  # sets no tasks
