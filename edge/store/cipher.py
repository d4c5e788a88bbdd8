"""Encryption at rest of record bodies (AES-GCM), switched on by the device profile.

The key lives in a 0600 file in the data folder: it protects a store copied off the
device without the key (a pulled SD card, a backup), not one read on the device as root.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from outpost import files

NONCE_BYTES = 12


class RecordCipher:
    """Seals each body bound to its stream and sequence number (moving it breaks it)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_key_file(cls, path: Path) -> RecordCipher:
        """Load the key, creating it (0600) on first use."""
        if not path.exists():
            files.write_new(path, AESGCM.generate_key(bit_length=256), files.PRIVATE)
        return cls(path.read_bytes())

    def seal(self, stream: str, seq: int, plain: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plain, f"{stream}:{seq}".encode())

    def open(self, stream: str, seq: int, sealed: bytes) -> bytes:
        nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        return self._aead.decrypt(nonce, body, f"{stream}:{seq}".encode())
