"""A model release: the manifest and sample of one model version, signed by the hub.

The hub checks an uploaded model (it loads, and the sample gives the expected output),
then signs `{manifest, sample, issued_at}` once; every device that is given the model
receives the same signed bytes, downloads the `.tflite` separately, and accepts it only
if its size and sha256 are the ones the signed manifest names. A release names no
device: which devices run it is the roll-out's business, not the signature's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from outpost import schema, signing
from outpost.modelbundle import Manifest, Sample
from outpost.signing import Signed


class ReleaseError(ValueError):
    """A release is refused; the message says why."""


@dataclass(frozen=True)
class Release:
    manifest: Manifest
    sample: Sample
    issued_at: float

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version


def sign(
    key: ed25519.Ed25519PrivateKey, manifest: Manifest, sample: Sample, issued_at: float
) -> Signed:
    body = {"manifest": manifest.to_dict(), "sample": schema.dump(sample), "issued_at": issued_at}
    return signing.sign(key, body)


def verify(public: ed25519.Ed25519PublicKey, signed: Signed) -> Release:
    """The release, or `ReleaseError` naming what is wrong (signature first)."""
    try:
        body = signing.open_signed(public, signed, "model release")
    except signing.SignatureError as exc:
        raise ReleaseError(str(exc)) from exc
    if set(body) != {"manifest", "sample", "issued_at"}:
        raise ReleaseError("model release: signed document lacks manifest, sample or issued_at")
    try:
        manifest = schema.load(Manifest, _map(body["manifest"]), "manifest")
        sample = schema.load(Sample, _map(body["sample"]), "sample")
    except schema.SchemaError as exc:
        raise ReleaseError(f"model release: {exc}") from exc
    if not isinstance(body["issued_at"], (int, float)):
        raise ReleaseError("model release: issued_at must be a number")
    return Release(manifest, sample, float(body["issued_at"]))


def _map(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ReleaseError("model release: manifest and sample must be maps")
    return value
