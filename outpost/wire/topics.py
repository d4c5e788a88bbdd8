"""Topics: ``outpost/v1/dev/{device_id}/up/{kind}`` (device to hub) and
``outpost/v1/dev/{device_id}/down/{kind}`` (hub to device). The broker's ACL lets a
device write only its own ``up/#`` and read only its own ``down/#``."""

from __future__ import annotations

import re
from typing import Final

from outpost import schema
from outpost.wire.contract import WireError

TOPIC_PREFIX: Final = "outpost/v1/dev"
UP_WILDCARD: Final = f"{TOPIC_PREFIX}/+/up/#"
# Device ids are assigned by the hub; the pattern keeps them safe as a topic level and
# as a certificate CN (no MQTT wildcards, no separators).
DEVICE_ID_PATTERN: Final = re.compile(r"^dev-[a-z0-9]{6,32}$")
_KIND_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def up_topic(device_id: str, kind: str) -> str:
    """Return the topic on which `device_id` sends messages of `kind` to the hub."""
    return f"{TOPIC_PREFIX}/{device_id}/up/{kind}"


def down_topic(device_id: str, kind: str) -> str:
    """Return the topic on which the hub sends messages of `kind` to `device_id`."""
    return f"{TOPIC_PREFIX}/{device_id}/down/{kind}"


def parse_topic(topic: str) -> tuple[str, str, str]:
    """Split a device topic into (device_id, direction, kind), refusing anything else."""
    prefix = TOPIC_PREFIX + "/"
    parts = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
    if len(parts) != 3 or parts[1] not in ("up", "down"):
        raise WireError("topic", f"not a device topic: {schema.quote(topic)}")
    device_id, direction, kind = parts
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise WireError("topic", f"bad device id in topic: {schema.quote(device_id)}")
    if not _KIND_PATTERN.fullmatch(kind):
        raise WireError("topic", f"bad kind in topic: {schema.quote(kind)}")
    return device_id, direction, kind
