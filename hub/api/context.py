"""What the route handlers share: the store, settings, keys and metrics of one hub."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.broker import BrokerSupervisor
from hub.certificates import Renewals
from hub.config import HubConfig
from hub.dispatcher import Dispatcher
from hub.enrollment import Enrollment
from hub.holds import FloodHolds
from hub.intake import DeviceIntake
from hub.metrics import HubMetrics
from hub.policies import PolicyPublisher
from hub.releases import ModelShelf
from hub.revocation import Revoker
from hub.rollouts import RolloutService
from hub.store import HubStore


@dataclass(frozen=True)
class ApiContext:
    """Everything a handler may use; built once by the hub at start."""

    store: HubStore
    config: HubConfig
    enrollment: Enrollment
    token_key: ed25519.Ed25519PrivateKey
    ca_fingerprint: str
    metrics: HubMetrics
    broker: BrokerSupervisor | None
    dispatcher: Dispatcher
    policies: PolicyPublisher
    models: ModelShelf
    rollouts: RolloutService | None
    renewals: Renewals
    revoker: Revoker
    intake: DeviceIntake  # what devices send, before the ingest: who is throttled
    holds: FloodHolds  # devices held off for flooding
