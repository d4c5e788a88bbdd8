"""The agent's side of policy: verify what the hub sends, keep the newest valid one on
disk, apply it, and say in heartbeats which version runs (or what was refused, and why).

A policy is applied only if its signature verifies against the hub key from enrollment,
it names this device, it validates, and its version is newer than the one held; the
same version with the same content (the broker redelivers the retained message on every
reconnect) is a no-op, the same version with other content is refused. Applying is
atomic: the signed bytes are written to `policy.signed` (replace), then the settings
change; after a restart the file is verified again and applied before anything runs.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from outpost import files, policy, signing, wire

logger = logging.getLogger(__name__)

# Called with the checked policy and the document as sent (the fields it sets).
Apply = Callable[[policy.Policy, dict[str, Any]], None]


class PolicyKeeper:
    def __init__(self, device_id: str, public_key_pem: Path, stored: Path, apply: Apply) -> None:
        self._key = signing.load_public_pem(public_key_pem.read_bytes(), str(public_key_pem))
        self._device_id = device_id
        self._stored = stored
        self._apply = apply
        self.current: policy.Issued | None = None
        self._digest = ""
        self.rejected_version = 0
        self.reason = ""
        # One policy at a time: MQTT and a courier bundle hand them over from their own
        # threads, and two at once both passed the version check, then both were kept and
        # applied in either order (an older one last, kept for the next start).
        self._receiving = threading.Lock()

    def load(self) -> None:
        """Apply the policy kept on disk, if any (blocking: call from a thread at start)."""
        found = self.kept()
        if found is None:
            return
        issued, signed = found
        self._use(issued, signed)
        logger.info("policy version %d applied (from %s)", issued.version, self._stored)

    def kept(self) -> tuple[policy.Issued, policy.Signed] | None:
        """The policy kept on disk, checked but not applied; None if there is none, or it
        is refused (blocking). What applies only at a start reads it before `load`."""
        if not self._stored.exists():
            return None
        try:
            kept = msgspec.msgpack.decode(self._stored.read_bytes())
            signed = policy.Signed(kept["document"], kept["signature"])
            issued = policy.verify(self._key, signed, self._device_id)
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            # Not ours, damaged or tampered with: run on the settings file until the hub
            # sends a valid one (it does on connect: the policy is retained).
            logger.error("stored policy %s refused: %s", self._stored, exc)
            return None
        return issued, signed

    def receive(self, body: wire.SignedPolicy) -> bool:
        """Handle a policy from the hub; True if it was applied."""
        with self._receiving:
            return self._receive(body)

    def _receive(self, body: wire.SignedPolicy) -> bool:
        signed = policy.Signed(body.document, body.signature)
        try:
            issued = policy.verify(self._key, signed, self._device_id)
        except policy.PolicyError as exc:
            return self._refuse(_version_of(body.document), str(exc))
        digest = hashlib.sha256(body.document).hexdigest()
        held = self.current.version if self.current else 0
        if issued.version == held:
            if self._digest_of(issued) == self._digest:
                return False  # the retained copy again, after a reconnect
            return self._refuse(issued.version, f"version {held} is applied with other content")
        if issued.version < held:
            return self._refuse(issued.version, f"older than the applied version {held}")
        try:
            files.replace(
                self._stored,
                msgspec.msgpack.encode({"document": body.document, "signature": body.signature}),
                files.PRIVATE,
            )
        except OSError as exc:
            # Applied only once kept, so a restart cannot go back on it; a full disk
            # refuses it (reported), and the retained copy comes again at the next
            # connect, when it is tried anew.
            why = exc.strerror or str(exc)
            return self._refuse(issued.version, f"could not keep it on disk: {why}")
        self._use(issued, signed)
        logger.info("policy version %d applied (sha256 %s...)", issued.version, digest[:12])
        return True

    def report(self) -> wire.PolicyReport:
        return wire.PolicyReport(
            version=self.current.version if self.current else 0,
            rejected_version=self.rejected_version,
            reason=self.reason[:256],
        )

    def _use(self, issued: policy.Issued, signed: policy.Signed) -> None:
        self._apply(issued.policy, issued.raw)
        self.current = issued
        self._digest = self._digest_of(issued)

    @staticmethod
    def _digest_of(issued: policy.Issued) -> str:
        return policy.digest(issued.raw)

    def _refuse(self, version: int, reason: str) -> bool:
        self.rejected_version = version
        self.reason = reason
        logger.warning("policy version %d refused: %s", version, reason)
        return False


def _version_of(document: bytes) -> int:
    """The version a refused document claims, for the report (0 if it cannot say)."""
    try:
        body: Any = msgspec.msgpack.decode(document)
        version = body.get("version") if isinstance(body, dict) else None
        return version if isinstance(version, int) and version > 0 else 0
    except (ValueError, RecursionError):
        return 0
