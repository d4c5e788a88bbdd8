"""Masking, set by policy: record fields dropped or replaced by a keyed hash before
they are stored for upload, so they never reach the hub (nor the agent's own files).

Fields are matched by name at any depth of a record. A hashed value becomes
`hmac:<16 hex>`, keyed per device (`mask.key`, 0600), so equal values stay comparable at
the hub without being readable or guessable from a list of candidates.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from pathlib import Path
from typing import Any

from outpost import files

logger = logging.getLogger(__name__)
KEY_BYTES = 32


class Masker:
    def __init__(self, key_path: Path) -> None:
        self._key_path = key_path
        self._key: bytes | None = None
        self.drop: frozenset[str] = frozenset()
        self.hash: frozenset[str] = frozenset()

    def set_rules(self, drop: list[str], hash_: list[str]) -> None:
        if hash_ and self._key is None:
            try:
                self._key = _key(self._key_path)
            except (OSError, ValueError) as exc:
                # No key, no hash: the fields are dropped instead, never kept in clear.
                # The key is tried again with the next policy or start.
                logger.error(
                    "mask key %s unusable (%s): fields to hash are dropped", self._key_path, exc
                )
                drop, hash_ = [*drop, *hash_], []
        self.drop, self.hash = frozenset(drop), frozenset(hash_)

    @property
    def active(self) -> bool:
        return bool(self.drop or self.hash)

    def mask(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: self._hashed(v) if k in self.hash else self.mask(v)
                for k, v in value.items()
                if k not in self.drop
            }
        if isinstance(value, list):
            return [self.mask(v) for v in value]
        return value

    def _hashed(self, value: Any) -> str:
        assert self._key is not None
        digest = hmac.new(self._key, repr(value).encode(), hashlib.sha256).hexdigest()
        return f"hmac:{digest[:16]}"


def _key(path: Path) -> bytes:
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(KEY_BYTES)
        files.write_new(path, key)
        return key
    if len(key) != KEY_BYTES:  # a write cut short (a full disk, a power cut)
        raise ValueError(f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte key")
    return key
