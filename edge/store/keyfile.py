"""Open the agent's store with the key in `store.key`, as the device profile asks.

A store that takes a new key (one holding no sealed records: a new device) gets one
made silently, written once the store took it; a store holding records sealed under a
key that is not there (a lost or replaced `store.key`) is not opened, and no key is
written over the question (`StoreKeyError`, see `sealing`).
"""

from __future__ import annotations

from pathlib import Path

from edge.store import AgentStore, Bounds, RecordCipher, StoreKeyError
from edge.store.cipher import new_key
from outpost import files

KEY_SIZES = (16, 24, 32)  # AES-128, -192, -256


def open_keyed(
    path: Path, bounds: dict[str, Bounds], key_file: Path, *, encrypt: bool
) -> AgentStore:
    """The store at `path`, its records sealed under `key_file`'s key if `encrypt`; with
    encryption off, that key (if any) opens records sealed before it was switched off."""
    key = key_file.read_bytes() if key_file.exists() else None
    if key is not None and len(key) not in KEY_SIZES:
        raise StoreKeyError(
            f"{key_file} holds {len(key)} bytes, not an AES key (16, 24 or 32 bytes): restore "
            f"the store.key that sealed {path}'s records, or delete it if {path} holds none"
        )
    if not encrypt:
        return AgentStore(path, bounds, None, former=RecordCipher(key) if key else None)
    made = key is None
    if key is None:
        key = new_key()
        # Written first: a store that takes the key seals records under it at once, so
        # it must be on the disk before any is. Taken back if the store refuses it.
        files.write_new(key_file, key, files.PRIVATE)
    try:
        return AgentStore(path, bounds, RecordCipher(key))
    except StoreKeyError:
        if made:
            key_file.unlink(missing_ok=True)
        raise
