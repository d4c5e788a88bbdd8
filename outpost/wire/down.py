"""What the hub sends a device (`down/{kind}`): acknowledgements, tasks and their
cancellation, the signed policy, model releases and the agent release to run."""

from __future__ import annotations

from itertools import chain
from typing import Annotated, Any, Final, Literal

from msgspec import Meta

from outpost import schema
from outpost.schema import FINITE, INT64_MAX, Struct
from outpost.wire.contract import MAX_DEPTH, MAX_TASK_BATCH, Attempt, TaskId
from outpost.wire.up import MAX_ENCODINGS, ConnId, EncodingName, Stream

Signature = Annotated[bytes, Meta(max_length=64, description="Ed25519 signature of document")]


class SignedPolicy(Struct, frozen=True):
    """The device's effective policy, signed by the hub (retained on `down/policy`)."""

    document: Annotated[
        bytes, Meta(max_length=65536, description="msgpack: device_id, version, issued_at, policy")
    ]
    signature: Signature


class Ack(Struct, frozen=True, omit_defaults=True):
    """The hub's cumulative acknowledgement: it holds every number up to `hwm`.

    With `gap` set the hub refused a batch that started beyond `hwm` + 1: the device
    must send again from `hwm` + 1. Encoded without the fields left at their default,
    so an agent from before `numbered_by` reads every ack it can be sent.
    """

    stream: Annotated[Stream, Meta(description="results, events or metrics")]
    hwm: Annotated[
        int, Meta(ge=0, le=INT64_MAX, description="highest sequence number the hub has stored")
    ]
    gap: Annotated[bool, Meta(description="a batch was refused: resend from hwm + 1")] = False
    numbered_by: Annotated[
        str,
        Meta(
            max_length=64,
            description="in the answer to a hello that named its store: that store, when "
            "the hub numbers this stream as that store did (it took the store's records "
            "by courier bundle); the device then keeps its numbers instead of moving them "
            "after `hwm`",
        ),
    ] = ""


class Welcome(Struct, frozen=True):
    """The hub's answer to a hello that offered batch encodings: those of the offer it
    accepts on connection `conn`. The device compresses batches only once this arrives
    for its current connection; each new connection starts plain until told again."""

    conn: ConnId
    compression: Annotated[
        list[EncodingName],
        Meta(
            max_length=MAX_ENCODINGS,
            description="encodings of the device's offer that the hub accepts (empty: none)",
        ),
    ]


# Levels of nested lists a task's input may have: the envelope, the body, its list of
# tasks and the assignment take 4 of the payload's `MAX_DEPTH`.
MAX_INPUT_DEPTH: Final = MAX_DEPTH - 4


class Assignment(Struct, frozen=True):
    """A task given to a device. `attempt` is the fencing token: a result must carry it,
    and a result of an older attempt never replaces the current one's."""

    task_id: TaskId
    attempt: Attempt
    model: Annotated[str, Meta(max_length=64, description="model name")]
    input: Annotated[Any, Meta(description="the model input: nested lists, or the tensor's bytes")]
    priority: Annotated[int, Meta(ge=0, le=9, description="higher runs first")]
    deadline_in_s: Annotated[
        float, Meta(ge=0, le=FINITE, description="seconds left until the task expires")
    ]
    lease_s: Annotated[
        float, Meta(ge=0, le=FINITE, description="seconds the device has to finish it")
    ]
    version: Annotated[
        str, Meta(max_length=32, description="model version, empty: the active one")
    ] = ""
    dtype: Annotated[Literal["float32", "int8"], Meta(description="what input holds")] = "float32"

    def __post_init__(self) -> None:
        if type(self.input) in (list, dict) and _deeper_than(self.input, MAX_INPUT_DEPTH):
            raise schema.SchemaError("input", f"nests deeper than {MAX_INPUT_DEPTH} levels")


class Tasks(Struct, frozen=True):
    """One or more assignments for the device (several when it is given work ahead)."""

    tasks: Annotated[
        list[Assignment], Meta(max_length=MAX_TASK_BATCH, description="the assignments")
    ]


class Cancel(Struct, frozen=True):
    """The hub cancelled a task: drop it if it has not started."""

    task_id: TaskId
    attempt: Annotated[int, Meta(ge=1, le=INT64_MAX, description="the attempt cancelled")]


MAX_RELEASES: Final = 32


class SignedRelease(Struct, frozen=True):
    """A model release signed by the hub (see `outpost/release.py`)."""

    document: Annotated[
        bytes, Meta(max_length=192 * 1024, description="msgpack: manifest, sample, issued_at")
    ]
    signature: Signature


class OfferSeal(Struct, frozen=True):
    """The hub's seal on one offer of releases (see `outpost/offerseal.py`)."""

    document: Annotated[
        bytes,
        Meta(
            max_length=8192,
            description="msgpack: device_id, seq, issued_at, and the sha256 of each "
            "release and shadow document offered, in order",
        ),
    ]
    signature: Signature


class ModelReleases(Struct, frozen=True, omit_defaults=True):
    """The models the hub wants the device to run, one release per model name (retained on
    `down/models`): the device installs and activates each it does not run yet. Models
    not named are left as they are. Encoded without the fields left at their default, so
    an agent from before `seal` reads every offer a hub makes it (it gets no seal)."""

    releases: Annotated[
        list[SignedRelease], Meta(max_length=MAX_RELEASES, description="the releases")
    ]
    shadows: Annotated[
        list[SignedRelease],
        Meta(
            max_length=MAX_RELEASES,
            description="candidates to run in shadow beside the live version (installed, "
            "never serving), one per model name",
        ),
    ] = []
    seal: Annotated[
        OfferSeal | None,
        Meta(
            description="the hub's seal, for a device whose hello said `sealed_offers`: "
            "this offer, for this device, and its place in the order of offers"
        ),
    ] = None


class AgentRelease(Struct, frozen=True):
    """An agent release signed by the hub: its manifest (see `outpost/agentrelease.py`)."""

    document: Annotated[
        bytes, Meta(max_length=256 * 1024, description="msgpack: agent_release, issued_at")
    ]
    signature: Signature


class AgentOffer(Struct, frozen=True):
    """The agent version the hub wants the device to run (retained on `down/agent`): the
    device downloads, checks, installs it beside the running one and restarts into it,
    if it is newer than what runs. None: keep the version it runs."""

    release: Annotated[AgentRelease | None, Meta(description="the release, or none")] = None


_CONTAINERS: Final = frozenset((list, dict))


def _deeper_than(value: list[Any] | dict[str, Any], limit: int) -> bool:
    """Whether lists and maps nest more than `limit` levels in `value` (itself level 1).

    Level by level, without recursion: each level's items are gathered in one C-level
    pass (`chain`) and their types told in another, rather than a set of types made per
    container (a 128x3 input: 20 against 48 µs on a 2-core x86 machine; it is checked
    at every encode and decode of an assignment). Items that are not containers are
    dropped only when a level mixes them with containers.
    """
    level: list[Any] = [value]
    kinds: set[type] = {type(value)}  # of the containers in `level`
    for _ in range(limit):
        if dict in kinds:
            flat = list(chain(*(c.values() if type(c) is dict else c for c in level)))
        elif len(level) == 1:
            flat = level[0]
        else:
            flat = list(chain.from_iterable(level))
        kinds = set(map(type, flat))
        if list not in kinds and dict not in kinds:
            return False
        if not kinds <= _CONTAINERS:
            flat = [v for v in flat if type(v) is list or type(v) is dict]
            kinds &= _CONTAINERS
        level = flat
    return True
