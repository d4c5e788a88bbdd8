"""The device's identity in its data folder: key, certificate, CA and hub signing key."""

from __future__ import annotations

import json
from dataclasses import MISSING, Field, asdict, dataclass, fields
from pathlib import Path

from outpost import files


class NotEnrolledError(FileNotFoundError):
    """The data folder holds no completed enrollment."""


@dataclass(frozen=True)
class DevicePaths:
    """The layout of an agent data folder."""

    root: Path

    @property
    def identity_dir(self) -> Path:
        return self.root / "identity"

    @property
    def key(self) -> Path:
        return self.identity_dir / "device.key"

    @property
    def cert(self) -> Path:
        return self.identity_dir / "device.crt"

    @property
    def ca_cert(self) -> Path:
        return self.identity_dir / "ca.crt"

    @property
    def hub_signing_pub(self) -> Path:
        return self.identity_dir / "hub-signing.pub"

    @property
    def hub_bundle_pub(self) -> Path:
        """The hub's P-256 key that courier bundles are encrypted to (edge/courier.py)."""
        return self.identity_dir / "hub-bundle.pub"

    @property
    def courier_log(self) -> Path:
        """The hub bundles imported here, by id: a replay is refused."""
        return self.root / "courier.json"

    @property
    def identity(self) -> Path:
        """Written last at enrollment: its presence means the enrollment completed."""
        return self.identity_dir / "identity.json"

    @property
    def profile(self) -> Path:
        return self.root / "profile.toml"

    @property
    def config(self) -> Path:
        return self.root / "agent.toml"

    @property
    def store(self) -> Path:
        return self.root / "store.db"

    @property
    def store_key(self) -> Path:
        """AES-GCM key of the store, when the profile asks for encryption at rest."""
        return self.root / "store.key"

    @property
    def policy(self) -> Path:
        """The newest valid signed policy, as the hub sent it."""
        return self.root / "policy.signed"

    @property
    def mask_key(self) -> Path:
        return self.root / "mask.key"

    @property
    def metrics_window(self) -> Path:
        """Start of the metric roll-up window being counted (see edge.metrics_window)."""
        return self.root / "metrics-window.json"

    @property
    def models(self) -> Path:
        """The model directory: installed models by name and version."""
        return self.root / "models"

    @property
    def socket(self) -> Path:
        """The local API's Unix socket."""
        return self.root / "agent.sock"


@dataclass(frozen=True)
class Identity:
    """Who this device is and where its hub and broker are."""

    device_id: str
    broker_url: str
    hub_url: str
    enrolled_at: float
    cert_not_after: float
    # Start of the certificate's validity; None in folders enrolled before renewals
    # (the renewer then reads it from the certificate).
    cert_not_before: float | None = None
    name: str = ""  # the name the hub gave it at enrollment (empty before names existed)

    def save(self, paths: DevicePaths) -> None:
        data = json.dumps(asdict(self), indent=2, sort_keys=True).encode()
        files.replace(paths.identity, data, files.PRIVATE)

    @classmethod
    def load(cls, paths: DevicePaths) -> Identity:
        try:
            data = json.loads(paths.identity.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise NotEnrolledError(
                f"{paths.root} holds no enrollment: run `outpost-agent enroll` first"
            ) from exc
        except NotADirectoryError as exc:  # else "[Errno 20] Not a directory: '.../identity.json'"
            if not paths.root.is_dir():
                raise NotEnrolledError(
                    f"{paths.root} is a file, not a folder: give --data the agent's data "
                    "folder (where `outpost-agent enroll` was run)"
                ) from exc
            raise NotEnrolledError(
                f"{paths.identity_dir} is a file, not a folder: {paths.root} holds no enrollment"
            ) from exc
        except ValueError as exc:  # not JSON, or not UTF-8 (UnicodeDecodeError is one)
            raise NotEnrolledError(
                f"{paths.identity} is damaged ({exc}): restore it from a backup, or enroll "
                "this device again with a new bootstrap token"
            ) from exc
        # Keys a later version wrote are left alone: an agent rolled back to this version
        # still reads its identity.
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not {f.name for f in fields(cls) if _required(f)} <= set(
            data
        ):
            raise NotEnrolledError(
                f"{paths.identity} is damaged (not the map of an enrollment): restore it "
                "from a backup, or enroll this device again with a new bootstrap token"
            )
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise NotEnrolledError(f"{paths.identity} is damaged ({exc})") from exc


def _required(f: Field[object]) -> bool:
    """A dataclass field without a default."""
    return bool(f.default is MISSING and f.default_factory is MISSING)
