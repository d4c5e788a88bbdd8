"""Encryption at rest of record bodies (AES-GCM), switched on by the device profile.

The key lives in a 0600 file in the data folder: it protects a store copied off the
device without the key (a pulled SD card, a backup), not one read on the device as root.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag

from outpost import files

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
TAG_BYTES = 16


class RecordCipher:
    """Seals each body bound to its stream and sequence number (moving it breaks it)."""

    def __init__(self, key: bytes) -> None:
        # Imported here: a device without encryption at rest need not load it (memory).
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead: AESGCM = AESGCM(key)

    @classmethod
    def from_key_file(cls, path: Path) -> RecordCipher:
        """Load the key, creating it (0600) on first use (the store checks it opens what
        it holds: see `sealing`; the agent makes a key only for a store that takes it,
        see `keyfile`)."""
        if not path.exists():
            files.write_new(path, new_key(), files.PRIVATE)
        return cls(path.read_bytes())

    def seal(self, stream: str, seq: int, plain: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plain, f"{stream}:{seq}".encode())

    def open(self, stream: str, seq: int, sealed: bytes) -> bytes:
        """The plain body; `InvalidTag` if it was not sealed so under this key."""
        if len(sealed) < NONCE_BYTES + TAG_BYTES:
            # Too short to be sealed (AESGCM would raise ValueError for the nonce): damage
            # like any other, not an error that holds its stream up for good.
            raise InvalidTag(f"{stream} {seq}: {len(sealed)} bytes, too short to be sealed")
        nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        return self._aead.decrypt(nonce, body, f"{stream}:{seq}".encode())


def new_key() -> bytes:
    return os.urandom(32)  # an AES-256 key
