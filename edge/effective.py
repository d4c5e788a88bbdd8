"""The settings an agent runs on: its own settings file, with a verified policy's fields
over them.

Each field the policy sets wins; a field it leaves out (or stops setting) falls back to
the agent's own setting. Resolving is pure, so the agent applies the result in one step
and the rules can be tested without an agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge.config import AgentConfig
from edge.inference.reporting import Reporting
from edge.store import Bounds
from outpost import policy, wire

STREAMS = ("results", "events", "metrics")


@dataclass(frozen=True)
class Caps:
    """Above these the agent takes no new tasks; none until a policy sets them."""

    cpu_max_percent: float = 100.0
    temperature_max_c: float = 1000.0

    def refusal(self, load: wire.Load | None) -> str | None:
        """Why the device should refuse a task at this load, or None (unknown load: no)."""
        if load is None:
            return None
        if load.cpu_percent > self.cpu_max_percent:
            return (
                f"CPU at {load.cpu_percent:.0f} %, over the policy's {self.cpu_max_percent:.0f} %"
            )
        if load.temperature_c is not None and load.temperature_c > self.temperature_max_c:
            return (
                f"at {load.temperature_c:.0f} C, over the policy's {self.temperature_max_c:.0f} C"
            )
        return None


@dataclass(frozen=True)
class TaskBudget:
    """How many tasks the agent runs at once, and holds at most (running and waiting):
    said in its hello, and the hub gives it no more. Set at the start (the runner's
    slots are its worker count), from the kept policy if there is one."""

    slots: int
    inbox: int  # 0: no limit said


def task_budget(profile_slots: int, config_inbox: int, sets: dict[str, Any]) -> TaskBudget:
    """From the kept policy's fields `sets` (empty: none kept): its `tasks.concurrency`
    (0: the profile's budget), and its `tasks.prefetch`, if it sets one, as the tasks
    held beyond those run, within the agent's own `task_inbox` if that is set. A policy
    that sets no prefetch leaves it to the hub's `task_prefetch`."""
    tasks = sets.get("tasks")
    given = tasks if isinstance(tasks, dict) else {}
    concurrency, prefetch = given.get("concurrency"), given.get("prefetch")
    slots = concurrency if isinstance(concurrency, int) and concurrency > 0 else profile_slots
    if not isinstance(prefetch, int) or isinstance(prefetch, bool):
        return TaskBudget(slots, config_inbox)
    ahead = slots + prefetch
    return TaskBudget(slots, min(config_inbox, ahead) if config_inbox else ahead)


@dataclass(frozen=True)
class Effective:
    """What a policy changes in a running agent. Task concurrency and prefetch are not
    here: they apply at the next start (`task_budget`)."""

    heartbeat_interval: float
    metrics_interval: float
    log_level: str
    caps: Caps
    reporting: Reporting
    allowed_models: frozenset[str]
    rate_bytes_per_s: int
    sync_windows: list[str]
    bounds: dict[str, Bounds]
    mask_drop: list[str]
    mask_hash: list[str]


def resolve(own: AgentConfig, p: policy.Policy, sets: dict[str, Any]) -> Effective:
    """The agent's settings `own` with the fields that the policy `p` sets (`sets`, its
    document as signed) over them."""

    def pick(dotted: str, mine: Any, theirs: Any) -> Any:
        return theirs if policy.is_set(sets, dotted) else mine

    bounds = {}
    for name in STREAMS:
        mine, given = getattr(own.bounds, name), getattr(p.bounds, name)
        bounds[name] = Bounds(
            *(
                pick(f"bounds.{name}.{f}", getattr(mine, f), getattr(given, f))
                for f in ("max_records", "max_bytes", "max_age_s")
            )
        )
    return Effective(
        heartbeat_interval=pick("heartbeat_interval", own.heartbeat_interval, p.heartbeat_interval),
        metrics_interval=pick("metrics_interval", own.metrics_interval, p.metrics_interval),
        log_level=pick("log_level", own.log_level, p.log_level).upper(),
        caps=Caps(
            pick("tasks.cpu_max_percent", Caps.cpu_max_percent, p.tasks.cpu_max_percent),
            pick("tasks.temperature_max_c", Caps.temperature_max_c, p.tasks.temperature_max_c),
        ),
        reporting=Reporting(
            pick("inference.report", own.inference.report, p.inference.report),
            pick(
                "inference.confidence_below",
                own.inference.confidence_below,
                p.inference.confidence_below,
            ),
            pick(
                "inference.explain_flagged",
                own.inference.explain_flagged,
                p.inference.explain_flagged,
            ),
            pick(
                "inference.flagged_inputs",
                own.inference.flagged_inputs,
                p.inference.flagged_inputs,
            ),
        ),
        allowed_models=frozenset(p.allowed_models),
        rate_bytes_per_s=pick(
            "sync.rate_bytes_per_s", own.sync.rate_bytes_per_s, p.sync.rate_bytes_per_s
        ),
        sync_windows=pick("sync.windows", own.sync.windows, p.sync.windows),
        bounds=bounds,
        mask_drop=list(p.masking.drop),  # none unless set
        mask_hash=list(p.masking.hash),
    )
