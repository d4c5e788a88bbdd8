"""A task refused for a runtime failure whose text is 10 KB: the update the agent sends is
valid on the wire (its reason cut where it is made), and the hub's decoder accepts it.

Issue 15 item 2: the whole reason went into `TaskUpdate.reason`; the hub refused the
message, the acceptances in it included, and those tasks waited out their accept timeout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from edge.inference.service import InferenceService, ModelUnavailable
from edge.store import AgentStore
from edge.tasks import REASON_LIMIT, TaskRunner
from outpost import wire

FAILURE = "interpreter failed: " + "tensor arena exhausted; " * 420  # about 10 KB


class _Tally:
    def error(self, reason: str) -> None:
        pass


class _BrokenModel:
    """The inference service's view of a model whose runtime fails with a long text."""

    tally = _Tally()

    def runner(self, name: str) -> Any:
        raise ModelUnavailable(f"model {name!r} is installed but not usable: {FAILURE}")


def _assignment(task_id: str) -> wire.Assignment:
    return wire.Assignment(
        task_id=task_id,
        attempt=1,
        model="vibration-anomaly",
        version="",
        input=[1, 2, 3],
        dtype="int8",
        priority=0,
        deadline_in_s=60,
        lease_s=30,
    )


async def test_a_10kb_runtime_failure_is_sent_as_a_valid_clipped_reason(tmp_path: Path) -> None:
    assert len(FAILURE) > 10_000
    sent: list[bytes] = []

    async def notify(updates: list[wire.TaskUpdate]) -> None:
        sent.append(wire.encode("task_state", wire.TaskState(updates=updates)))

    store = AgentStore(tmp_path / "store.db", {})
    await store.start()
    try:
        runner = TaskRunner(
            store,
            cast(InferenceService, _BrokenModel()),
            slots=1,
            inbox_capacity=10,
            notify=notify,
        )
        await runner.assign(wire.Tasks(tasks=[_assignment("t-1"), _assignment("t-2")]))
    finally:
        await store.close()

    (payload,) = sent
    envelope = wire.decode(payload, kinds=wire.UP_KINDS, expected_kind="task_state")
    assert isinstance(envelope.body, wire.TaskState)
    updates = envelope.body.updates
    assert [(u.task_id, u.state) for u in updates] == [("t-1", "rejected"), ("t-2", "rejected")]
    for update in updates:
        assert len(update.reason) <= REASON_LIMIT
        assert update.reason.startswith("model_unavailable: model 'vibration-anomaly'")
        assert "chars]" in update.reason  # says that it was cut


def test_an_update_breaking_the_contract_fails_at_the_sender_naming_the_field() -> None:
    long = wire.TaskUpdate(task_id="t-1", attempt=1, state="rejected", reason=FAILURE)
    with pytest.raises(wire.EncodeError, match=r"task_state.*reason"):
        wire.encode("task_state", wire.TaskState(updates=[long]))


def test_clip_keeps_short_text_and_marks_cut_text() -> None:
    assert wire.clip("short", 256) == "short"
    cut = wire.clip("x" * 1000, 256)
    assert len(cut) == 256
    assert cut.endswith("…[1000 chars]")
