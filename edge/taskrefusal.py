"""Why a device refuses an assignment from the hub, in the words the hub records: each
reason starts with its kind (`expired`, `not_allowed`, `full`, `unknown_model`,
`model_unavailable`, `version_mismatch`). The hub asks a `full` device again later, and
gives a task the others refused to another device (hub/store/tasks.py)."""

from __future__ import annotations

from edge.inference.service import InferenceService, ModelUnavailable, UnknownModel
from outpost import wire


def refusal(
    a: wire.Assignment,
    inference: InferenceService,
    allowed_models: frozenset[str],
    busy: str | None,
) -> str | None:
    """Why `a` is refused, or None when it is taken. `allowed_models`: the policy's
    (empty: any); `busy`: why new work is refused now (CPU or temperature), or None."""
    if a.deadline_in_s <= 0:
        return "expired: its deadline has passed"
    if allowed_models and a.model not in allowed_models:
        return f"not_allowed: policy does not allow {a.model}"
    if busy:
        return f"full: {busy}"  # momentary: the hub asks again later
    try:
        runner = inference.runner(a.model)
    except UnknownModel:
        return f"unknown_model: {a.model} is not installed"
    except ModelUnavailable as exc:
        return f"model_unavailable: {exc}"
    if a.version and a.version != runner.manifest.version:
        return f"version_mismatch: {a.model} is at {runner.manifest.version}, not {a.version}"
    return None
