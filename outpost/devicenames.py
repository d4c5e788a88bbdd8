"""Device names: what an operator calls a device (`pump-station`), beside the id the hub
gave it (`dev-0123456789ab`). A name is unique in the fleet and can stand wherever an id
can, so it must never look like an id."""

from __future__ import annotations

import re
from typing import Final

MAX_LENGTH: Final = 63
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?")
_ID = re.compile(r"dev-[0-9a-f]{12}")
RULE: Final = (
    "1 to 63 characters: lower-case letters, digits, '.', '_' and '-', starting and ending "
    "with a letter or digit, and not shaped like a device id (dev- and 12 hex digits)"
)


def is_device_id(text: str) -> bool:
    """Whether `text` has the shape of an id the hub assigns."""
    return _ID.fullmatch(text) is not None


def check(name: str, field: str = "name") -> str:
    """`name` if it is a valid device name; ValueError naming `field` and the rule if not."""
    if not _NAME.fullmatch(name) or is_device_id(name):
        raise ValueError(f"{field}: {name!r} is not a device name ({RULE})")
    return name


def from_hostname(hostname: str) -> str:
    """A valid name made from a host name (`Pump_Station.local` -> `pump_station`), or ""
    when nothing usable is left."""
    first = hostname.split(".", 1)[0].lower()
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", first).strip("._-")[:MAX_LENGTH].strip("._-")
    return cleaned if cleaned and not is_device_id(cleaned) else ""


def numbered(base: str, n: int) -> str:
    """The `n`th candidate for a name whose base is taken: `pump-2`, `pump-3`, ... cut so
    that it stays within the length limit."""
    suffix = f"-{n}"
    return base[: MAX_LENGTH - len(suffix)].rstrip("._-") + suffix
