"""Device names' rules, and why a queued task waits, worked out from the planner's view."""

from __future__ import annotations

import pytest

from hub.store import Task
from hub.store.candidates import Candidate
from hub.store.leases import Known
from hub.tasks import waiting
from outpost import devicenames


@pytest.mark.parametrize("name", ["pump-station", "a", "line2.press_7", "x" * 63])
def test_valid_names(name: str) -> None:
    assert devicenames.check(name) == name


@pytest.mark.parametrize(
    "name", ["", "Pump", "pump station", "-pump", "pump-", "x" * 64, "dev-0123456789ab", "ü"]
)
def test_refused_names_say_the_rule(name: str) -> None:
    with pytest.raises(ValueError, match="lower-case letters, digits") as refused:
        devicenames.check(name, "--name")
    assert str(refused.value).startswith("--name: ")


def test_names_from_host_names_and_numbered_candidates() -> None:
    assert devicenames.from_hostname("Pump_Station.plant.local") == "pump_station"
    assert devicenames.from_hostname("my host!") == "my-host"
    assert devicenames.from_hostname("...") == ""
    assert devicenames.from_hostname("dev-0123456789ab") == ""
    assert devicenames.numbered("pump", 2) == "pump-2"
    assert devicenames.numbered("p" * 63, 12) == "p" * 60 + "-12"


def task(**changes: object) -> Task:
    fields: dict[str, object] = {
        "task_id": "tsk-1", "state": "queued", "model": "vib", "version": "", "dtype": "float32",
        "priority": 5, "deadline": 0.0, "lease_s": 30.0, "target": {}, "created_at": 0.0,
        "updated_at": 0.0, "attempt": 0, "device_id": None, "lease_expires": None,
        "excluded": [], "result": None, "error": "", "finished_at": None,
        "submitted_by": "t", "seq": 1, "input_bytes": 1,
    }  # fmt: skip
    fields.update(changes)
    return Task(**fields)  # type: ignore[arg-type]


def online(device_id: str, *, held: int = 0, slots: int = 2, site: str = "north") -> Candidate:
    models = frozenset({("vib", "1.0.0")})
    return Candidate(device_id, {"site": site}, models, slots, 1, held, 10.0, None, None)


def known(
    *ids: str, online_ids: tuple[str, ...] = (), revoked: tuple[str, ...] = ()
) -> dict[str, Known]:
    return {i: Known(i in online_ids, i in revoked, frozenset({("vib", "1.0.0")})) for i in ids}


def test_why_a_task_waits() -> None:
    a, b = online("dev-a"), online("dev-b", held=2)
    both = known("dev-a", "dev-b", online_ids=("dev-a", "dev-b"))
    assert waiting.explain(task(state="running"), [a], both) == ""
    assert waiting.explain(task(model="other"), [a, b], both) == "no device has the model other"
    assert (
        waiting.explain(task(), [], known("dev-a", "dev-b"))
        == "no online device has the model vib (offline: dev-a, dev-b)"
    )
    assert waiting.explain(task(excluded=["dev-a", "dev-b"]), [a, b], both) == (
        "excluded after rejection by dev-a, dev-b"
    )
    assert waiting.explain(task(excluded=["dev-a"]), [a, b], both) == (
        "all eligible devices are full (1 devices, 2 slots taken)"
    )
    assert waiting.explain(task(), [a, b], both) == waiting.ALLOCATION_DUE
    south = task(target={"selector": {"site": "south"}})
    assert waiting.explain(south, [a], both) == (
        "no online device matching site=south has the model vib ready"
    )


def test_why_a_task_for_one_device_waits() -> None:
    on_b = task(target={"device": "dev-b"})
    assert waiting.explain(on_b, [], known("dev-b")) == "device dev-b is offline"
    assert (
        waiting.explain(on_b, [], known("dev-b", revoked=("dev-b",))) == "device dev-b is revoked"
    )
    assert waiting.explain(on_b, [], {}) == "device dev-b is no longer in the registry"
    full = online("dev-b", held=2)
    assert waiting.explain(on_b, [full], known("dev-b", online_ids=("dev-b",))) == (
        "device dev-b is full (2 of 2 slots taken)"
    )
