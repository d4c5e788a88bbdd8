"""Courier bundles: a site with no link syncs by files carried between it and the hub.

`sealing` signs and encrypts a bundle's content; `parts` splits it into files of a
bounded size that each verify on their own; `content` is what each direction carries.
"""

import time

# The largest hub bundle (sealed) a device takes: its agent holds it in memory, through
# its local API. The hub makes none larger (hub/courier/exporter.py).
MAX_HUB_BUNDLE_BYTES = 256 << 20


def utc(at: float) -> str:
    """A time as the courier's messages to the operator show it."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
