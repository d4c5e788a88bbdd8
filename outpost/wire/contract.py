"""What both directions of the wire contract share: its version and size limits, its
errors, and the field types of tasks."""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal, get_args

from msgspec import Meta

from outpost.schema import INT64_MAX

VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 256 * 1024
# Nesting of lists and maps a payload may have, the envelope counting as 1. The declared
# types bound it everywhere but a task's input (any nested lists): `down` tasks need 4
# plus the rank of the model's input (4 for an image batch; LiteRT models rarely go past
# 6). 16 leaves room and keeps every walk over a decoded input, and every repr of one,
# far from Python's recursion limit (msgspec refuses deeper than that limit itself).
MAX_DEPTH: Final = 16


class WireError(ValueError):
    """A message broke the wire contract; `reason` is a short code for counting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EncodeError(ValueError):
    """A message this program built breaks the wire contract: a bug in its sender."""


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, saying so when it was cut (for free-text
    fields: an exception's message, a log excerpt). `limit` is the field's `max_len`:
    `clip(text, schema.max_len(TaskUpdate, "reason"))`."""
    if len(text) <= limit:
        return text
    marker = f"…[{len(text)} chars]"
    return text[: max(0, limit - len(marker))] + marker[:limit]


MAX_TASK_BATCH: Final = 64
TASK_ID_PATTERN: Final = re.compile(r"tsk-[0-9a-f]{16,32}")
TaskId = Annotated[str, Meta(max_length=40, description="task id")]
Attempt = Annotated[int, Meta(ge=1, le=INT64_MAX, description="attempt number, the fencing token")]

# Batch encodings a device may send and a hub accept (see packing.py), preferred first:
# declared once for the wire, the agent's offer and the hub's acceptance.
Encoding = Literal["zstd-dict1", "zstd"]
ENCODINGS: Final[tuple[str, ...]] = get_args(Encoding)


def all_encodings() -> list[Encoding]:
    """Every encoding, preferred first: the settings' default offer and acceptance."""
    return list(get_args(Encoding))
