"""paho's MQTT 5 `Properties`, made cheap to create and to clear.

paho makes a `Properties` for every PUBLISH it reads (MQTT 5) and for every PUBACK of
a QoS 1 publish it sent (callback API 2), and each one built its own copies of three
constant tables through its checking `__setattr__` (18.8 us on a slow two-core
machine), and `unpack` then cleared 27 names one by one: reading a heartbeat's PUBLISH
took 34.8 us there, 14.5 us with this. The hub pays it for every message of every
device, and for the ack of each policy, release and assignment it sends.

`lighten()` gives every instance the same tables (paho only reads them) and clears
only the attributes an instance holds. It checks first that paho's `Properties` is
still the shape this was written for (paho 2.x); otherwise it leaves it alone.
"""

from __future__ import annotations

import logging

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

logger = logging.getLogger(__name__)

# The attributes paho's own `__init__` sets: the packet type and the three tables.
_OWN = frozenset({"packetType", "types", "names", "properties"})
_original_init = Properties.__init__  # kept for the tests that compare
_lightened = False


def lighten() -> bool:
    """Patch `Properties` once (idempotent); whether it is patched."""
    global _lightened
    if _lightened:
        return True
    template = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if set(vars(template)) != _OWN:
        logger.debug("paho's Properties is not the shape expected; left as it is")
        return False
    types, names, properties = template.types, template.names, template.properties

    def __init__(self: Properties, packetType: int) -> None:
        object.__setattr__(self, "packetType", packetType)
        object.__setattr__(self, "types", types)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "properties", properties)

    def clear(self: Properties) -> None:
        # Every other attribute is a property (paho's `__setattr__` refuses any other
        # name), so this deletes what paho's loop over all 27 names deleted.
        for name in [name for name in vars(self) if name not in _OWN]:
            delattr(self, name)

    setattr(Properties, "__init__", __init__)  # noqa: B010 - a method, replaced on purpose
    setattr(Properties, "clear", clear)  # noqa: B010
    _lightened = True
    return True
