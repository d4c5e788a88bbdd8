"""What a courier bundle carries, each way: the messages the MQTT path would carry, so
both ends apply them with the same code and the same checks.

Device -> hub: every record the hub has not acknowledged, as the upload batches the
uploader would send (`wire.Records`), plus what a heartbeat would say. Hub -> device: the marks
of every stream (`wire.Ack`, as the hub answers a hello) and the device's signed policy
(`wire.SignedPolicy`, as retained on its policy topic).
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta

from outpost.courier.history import History
from outpost.wire import (
    Ack,
    Assignment,
    Heartbeat,
    ModelInfo,
    ModelReleases,
    Records,
    SignedPolicy,
)

KIND_DEVICE: Final = "device"
KIND_HUB: Final = "hub"
HUB: Final = "hub"  # the addressee of a device's bundle
MAX_BATCHES: Final = 1_000_000  # of up to 1,000 records each


class DeviceContent(msgspec.Struct, frozen=True):
    """A device's bundle for the hub."""

    batches: Annotated[list[Records], Meta(max_length=MAX_BATCHES)]
    aligned: list[str]  # streams numbered after the hub's marks (the rest: a fresh store)
    store_id: Annotated[str, Meta(max_length=64)]  # the store that numbered the records
    agent_version: Annotated[str, Meta(max_length=64)]
    # Sent empty: the agent's /v1/status was carried once, but the hub has no use for
    # it (over MQTT a status is a connection's presence, which a bundle has none of;
    # what the registry keeps of a device comes with `heartbeat` and `models`). Kept,
    # empty, because hubs of 0.1.0 and before require the field.
    status: dict[str, Any] = {}
    # What a heartbeat would say now (load, store fill, tasks, the policy it runs): the
    # registry shows it as of the bundle's making.
    heartbeat: Heartbeat | None = None
    # A CSR for the device's own key, once its certificate is in the last third of its
    # life: the hub's bundle back carries the renewed certificate.
    renewal_csr: Annotated[str, Meta(max_length=16384)] = ""
    # What it can run, as a hello says: the hub leases it tasks that fit.
    models: Annotated[list[ModelInfo], Meta(max_length=64)] = []
    task_slots: Annotated[int, Meta(ge=0, le=1024)] = 0
    # Since the hub's last ack: the period covered, load samples and restarts (read and
    # shown by the hub; older hubs ignore it).
    history: History | None = None


class HubContent(msgspec.Struct, frozen=True):
    """The hub's bundle for one device."""

    acks: list[Ack]
    policy: SignedPolicy | None = None
    # Streams whose numbering the hub took from a device store by bundle: that store
    # aligns them as they are instead of renumbering after the marks.
    numbered_by: dict[str, str] = {}
    note: str = ""  # what the hub has to say (a renewal it refused), for the device's log
    certificate: str = ""  # a renewed certificate (PEM), answering the bundle's CSR
    # Tasks leased to the device for the courier's round trip (`lease_s`), as MQTT
    # assignments are: their results come back in the device's next bundle.
    tasks: list[Assignment] = []
    lease_s: float = 0.0
    # The model releases it should run (signed, as retained on its models topic), and
    # the .tflite file of each it lacks: the deployer checks both as after a download.
    releases: ModelReleases | None = None
    model_files: list[ModelFile] = []


class ModelFile(msgspec.Struct, frozen=True):
    """A release's model file, carried instead of downloaded."""

    name: str
    version: str
    sha256: str
    data: bytes


def encode(content: DeviceContent | HubContent) -> bytes:
    return msgspec.msgpack.encode(content)


def decode_device(body: bytes) -> DeviceContent:
    return msgspec.msgpack.decode(body, type=DeviceContent)


def decode_hub(body: bytes) -> HubContent:
    return msgspec.msgpack.decode(body, type=HubContent)
