"""Where the hub keeps its files inside its data folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HUB_CLIENT_CN = "outpost-hub"
# The hub's own MQTT link: a certificate minted at each start, its key only in memory.
# The broker names each client by its CN, so the link's session is its alone: a tool
# beside the hub using the hub's certificate on disk (CN outpost-hub) cannot end it.
HUB_LINK_CN = "outpost-hub-link"
# Replicas share a broker: each links under a CN of its own, `outpost-hub-link-<id>`.
REPLICA_LINK_PREFIX = f"{HUB_LINK_CN}-"


def link_cn(replica_id: str) -> str:
    """The CN (and so the broker's client id) of the hub's link: one per replica."""
    return f"{REPLICA_LINK_PREFIX}{replica_id}" if replica_id else HUB_LINK_CN


@dataclass(frozen=True)
class HubPaths:
    """The layout of a hub data folder."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca_key(self) -> Path:
        return self.pki / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def server_key(self) -> Path:
        """Key of the TLS server certificate used by the broker and the web endpoint."""
        return self.pki / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.pki / "server.crt"

    @property
    def client_key(self) -> Path:
        """Key of the hub's own MQTT client certificate (CN = outpost-hub)."""
        return self.pki / "hub-client.key"

    @property
    def client_cert(self) -> Path:
        return self.pki / "hub-client.crt"

    @property
    def signing_key(self) -> Path:
        """Ed25519 key that signs policy and model manifests (its public half goes to devices)."""
        return self.pki / "signing.key"

    @property
    def signing_pub(self) -> Path:
        return self.pki / "signing.pub"

    @property
    def bundle_key(self) -> Path:
        """P-256 key that courier bundles from devices are encrypted to (hub/courier)."""
        return self.pki / "bundle.key"

    @property
    def bundle_pub(self) -> Path:
        return self.pki / "bundle.pub"

    @property
    def token_key(self) -> Path:
        """Ed25519 key that signs tokens (bootstrap tokens now, API tokens later)."""
        return self.pki / "token.key"

    @property
    def database(self) -> Path:
        return self.root / "hub.db"

    @property
    def config(self) -> Path:
        return self.root / "hub.toml"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def models(self) -> Path:
        """Uploaded models: models/<name>/<version>/{model.tflite, model.json, sample.json}."""
        return self.root / "models"

    @property
    def agent_releases(self) -> Path:
        """Agent releases taken: agent-releases/<version>/<wheel files>."""
        return self.root / "agent-releases"
