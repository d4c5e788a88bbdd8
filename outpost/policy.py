"""Policy: the settings the hub sets for its devices, as a validated, signed document.

The hub merges layers (fleet default, then groups chosen by label selector, then the
device's own override; see `merge`) into one effective policy per device, gives it a
version that only grows, signs it with its Ed25519 key and delivers it retained on the
device's `down/policy` topic. The agent applies it only if the signature verifies against
the key it received at enrollment, the document names it, and the version is newer than
the one it holds.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Annotated, Any, Final

import msgspec
from cryptography.hazmat.primitives.asymmetric import ed25519
from msgspec import Meta

from outpost import schema, signing, wire
from outpost.schema import INT64_MAX, Struct
from outpost.signing import Signed as Signed  # re-exported: part of this API
from outpost.tunables import Tunables


class PolicyError(ValueError):
    """A policy document or its envelope is refused; the message says why."""


class TasksPolicy(Struct, frozen=True):
    """How much work a device takes."""

    concurrency: Annotated[
        int, Meta(ge=0, le=64, description="tasks run at once (0: the device profile's budget)")
    ] = 0
    prefetch: Annotated[
        int,
        Meta(
            ge=0, le=1000, description="tasks given to a device beyond those it runs (work ahead)"
        ),
    ] = 2
    cpu_max_percent: Annotated[
        float,
        Meta(
            ge=1,
            le=100,
            description="above this CPU use the device accepts no new task (100: no cap)",
        ),
    ] = 100.0
    temperature_max_c: Annotated[
        float,
        Meta(ge=20, le=150, description="above this temperature the device accepts no new task"),
    ] = 85.0


class MaskingPolicy(Struct, frozen=True):
    """Record fields masked before they leave the device."""

    drop: Annotated[
        list[str],
        Meta(max_length=64, description="record fields removed before upload and from logs"),
    ] = []
    hash: Annotated[
        list[str],
        Meta(
            max_length=64,
            description="record fields replaced by a keyed hash before upload and in logs",
        ),
    ] = []


class ShadowPolicy(Struct, frozen=True):
    """How a device runs a shadow roll-out's candidate beside the live version."""

    sample_share: Annotated[
        float,
        Meta(ge=0, le=1, description="share of live answers the candidate also runs on"),
    ] = 0.1
    cpu_max_percent: Annotated[
        float,
        Meta(ge=1, le=100, description="above this CPU use the candidate is skipped"),
    ] = 80.0
    disagreements: Annotated[
        int,
        Meta(
            ge=0,
            le=64,
            description="inputs the candidate and live version disagreed on, uploaded per "
            "roll-up as events (a uniform sample; 0: inputs never leave the device)",
        ),
    ] = 0


class Policy(Tunables, frozen=True):
    """The effective policy of one device: every field has a value (the fields an agent's
    own settings carry too are declared in `Tunables`)."""

    tasks: Annotated[TasksPolicy, Meta(description="task limits")] = TasksPolicy()
    masking: Annotated[MaskingPolicy, Meta(description="fields masked before upload")] = (
        MaskingPolicy()
    )
    allowed_models: Annotated[
        list[str], Meta(max_length=256, description="models the device may run (empty: any)")
    ] = []
    shadow: Annotated[ShadowPolicy, Meta(description="shadow roll-outs on the device")] = (
        ShadowPolicy()
    )


DEFAULTS: dict[str, Any] = schema.dump(Policy())


def merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Layers applied in order onto the defaults: a later layer's value wins; maps merge
    key by key; lists are replaced whole."""
    merged = copy.deepcopy(DEFAULTS)
    for layer in layers:
        _merge_into(merged, layer)
    return merged


def overlay(*layers: dict[str, Any]) -> dict[str, Any]:
    """The same merge without the defaults: only the fields some layer sets. This is what
    a device receives: what no layer sets stays as the device's own settings say."""
    merged: dict[str, Any] = {}
    for layer in layers:
        _merge_into(merged, layer)
    return merged


def is_set(document: dict[str, Any], dotted: str) -> bool:
    """Whether a (sparse) policy document sets the field `a.b.c`."""
    node: Any = document
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check_layer(layer: dict[str, Any], where: str) -> dict[str, Any]:
    """The layer as it is to be stored and signed: the fields it sets, each value as
    declared (an integer in a float field becomes a float: JSON has integers beyond the
    64 bits msgpack encodes, and one such, stored, failed every later refresh of the
    fleet's policies). Refuse a layer with an unknown field or a bad value, naming it."""
    declared = _as_declared(layer, schema.dump(load(merge(layer), where)))
    if problem := _encoding_problem(declared):
        raise PolicyError(f"{where}: {problem}")
    return declared


def load(document: dict[str, Any], where: str = "policy") -> Policy:
    try:
        return schema.load(Policy, document, where)
    except schema.SchemaError as exc:
        raise PolicyError(str(exc)) from exc


def digest(document: dict[str, Any]) -> str:
    return hashlib.sha256(signing.canonical(document)).hexdigest()


def _max_length(cls: type[msgspec.Struct], field: str) -> int:
    """The bound on a bytes field of a declaration (a bug of this module if none)."""
    info = msgspec.inspect.type_info(cls)
    declared = (
        [f.type for f in info.fields if f.name == field]
        if isinstance(info, msgspec.inspect.StructType)
        else []
    )
    found = declared[0] if declared else None
    if isinstance(found, msgspec.inspect.Metadata):  # a description beside the bound
        found = found.type
    if not isinstance(found, msgspec.inspect.BytesType) or found.max_length is None:
        raise TypeError(f"{cls.__name__}.{field} is not declared as bounded bytes")
    return found.max_length


# The signed document a device reads at most (`SignedPolicy.document`, declared in
# outpost/wire/down.py): read off the declaration, so the two cannot differ.
MAX_SIGNED_BYTES: Final = _max_length(wire.SignedPolicy, "document")


def undeliverable(device_id: str, document: dict[str, Any]) -> str:
    """Why `device_id` could not receive `document` signed ("" when it can): the signed
    body must encode, and fit in what a device reads, whatever version and issue time it
    carries (measured with the largest of each; msgpack gives them a fixed width)."""
    if problem := _encoding_problem(document):
        return problem
    size = signed_size(device_id, document)
    if size > MAX_SIGNED_BYTES:
        return f"signed, it is {size} bytes, over the {MAX_SIGNED_BYTES} a device reads"
    return ""


def signed_size(device_id: str, document: dict[str, Any]) -> int:
    """Bytes of the signed body carrying `document` to `device_id` at the largest
    version and issue time."""
    body = {"device_id": device_id, "version": INT64_MAX, "issued_at": 0.0, "policy": document}
    return len(signing.canonical(body))


def _encoding_problem(document: dict[str, Any]) -> str:
    try:
        signing.canonical(document)
    except OverflowError as exc:  # msgpack: "can't serialize ints < -2**63 or > 2**64 - 1"
        return f"cannot be signed: {exc}"
    return ""


# ------------------------------------------------------------------ signed envelope


@dataclass(frozen=True)
class Issued:
    device_id: str
    version: int
    issued_at: float
    policy: Policy
    raw: dict[str, Any]


def sign(
    key: ed25519.Ed25519PrivateKey,
    device_id: str,
    version: int,
    issued_at: float,
    document: dict[str, Any],
) -> Signed:
    body = {"device_id": device_id, "version": version, "issued_at": issued_at, "policy": document}
    return signing.sign(key, body)


def verify(public: ed25519.Ed25519PublicKey, signed: Signed, device_id: str) -> Issued:
    """The issued policy, or `PolicyError` saying why it is refused (checked in this
    order: signature, shape, addressee, content)."""
    try:
        body = signing.open_signed(public, signed, "policy")
    except signing.SignatureError as exc:
        raise PolicyError(str(exc).removeprefix("policy: ")) from exc
    if set(body) != {"device_id", "version", "issued_at", "policy"}:
        raise PolicyError("signed document lacks device_id, version, issued_at or policy")
    if body["device_id"] != device_id:
        raise PolicyError(f"policy is for {body['device_id']!r}, not this device")
    if not isinstance(body["version"], int) or body["version"] < 1:
        raise PolicyError("version must be a positive integer")
    issued_at = body["issued_at"]
    if isinstance(issued_at, bool) or not isinstance(issued_at, (int, float)):
        raise PolicyError("issued_at must be a number")
    if not isinstance(body["policy"], dict):
        raise PolicyError("policy must be a map")
    # The document sets some fields; checked as a whole on top of the defaults.
    checked = load(merge(body["policy"]))
    return Issued(device_id, body["version"], float(issued_at), checked, body["policy"])


def _as_declared(layer: dict[str, Any], checked: dict[str, Any]) -> dict[str, Any]:
    """The fields `layer` sets, with their values from `checked` (the layer loaded as
    declared, over the defaults)."""
    out: dict[str, Any] = {}
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(checked[key], dict):
            out[key] = _as_declared(value, checked[key])
        else:
            out[key] = checked[key]
    return out


def _merge_into(target: dict[str, Any], layer: dict[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
