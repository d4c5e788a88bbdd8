"""The MQTT 5 shared subscription group replicas split device messages through.

Mosquitto's ACL file checks what it delivers, not what a client subscribes to: a device
that subscribed to the replicas' group by its name became a member, and the broker then
dropped the share of every device's messages it chose for that device (its ACL denies
the device reading them). So the name is a secret of the fleet. Derived from the hub's
signing key, which every replica holds and no device does, it is the same on each
replica and in `broker-config`'s files, with nothing to configure.
"""

from __future__ import annotations

import hashlib
import hmac

from hub.fleet.enrollment import load_signing_key
from hub.paths import HubPaths

GROUP_PREFIX = "outpost-hub-"
_LABEL = b"outpost: the replicas' shared subscription group, v1"


def share_group(paths: HubPaths) -> str:
    """The group's name: the prefix and 96 bits no one without the signing key can guess."""
    secret = load_signing_key(paths).private_bytes_raw()
    return GROUP_PREFIX + hmac.new(secret, _LABEL, hashlib.sha256).hexdigest()[:24]


def shared_topic(paths: HubPaths, topic: str) -> str:
    return f"$share/{share_group(paths)}/{topic}"
