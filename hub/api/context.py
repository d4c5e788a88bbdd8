"""What the route handlers share: the store, settings, keys and metrics of one hub."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.access.tokenstates import TokenStates
from hub.broker.managed import BrokerSupervisor
from hub.config import HubConfig
from hub.courier.desk import CourierDesk
from hub.fleet.agentreleases import AgentShelf
from hub.fleet.certificates import Renewals
from hub.fleet.enrollment import Enrollment
from hub.fleet.policies import PolicyPublisher
from hub.fleet.revocation import Revoker
from hub.models.releases import ModelShelf
from hub.models.rollouts import RolloutService
from hub.monitoring.metrics import HubMetrics
from hub.mqtt.holds import FloodHolds
from hub.mqtt.intake import DeviceIntake
from hub.store import HubStore
from hub.tasks.dispatcher import Dispatcher
from hub.tasks.fleetmodels import FleetModels
from hub.tasks.inputshapes import InputShapes
from hub.tasks.waiting import Explainer
from outpost.courier.sealing import BundleError


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
    agents: AgentShelf  # agent releases
    rollouts: RolloutService | None
    renewals: Renewals
    revoker: Revoker
    intake: DeviceIntake  # what devices send, before the ingest: who is throttled
    holds: FloodHolds  # devices held off for flooding
    courier: CourierDesk | BundleError  # imports courier bundles; or why it cannot
    broker_link: Callable[[], str]  # the state of the hub's link to the broker

    @functools.cached_property
    def tokens(self) -> TokenStates:
        """The states of API tokens, kept in memory: one for the whole API, so that a
        revocation through any route is refused by every route at once."""
        return TokenStates(self.store)

    @functools.cached_property
    def fleet_models(self) -> FleetModels:
        """The models the fleet has, kept in memory: a task for one no device has is
        refused."""
        return FleetModels(self.store)

    @functools.cached_property
    def input_shapes(self) -> InputShapes:
        """The input shapes of the models the hub holds: a task whose input fits none
        it could run on is refused."""
        return InputShapes(self.store, self.fleet_models)

    @functools.cached_property
    def waiting(self) -> Explainer:
        """Why queued tasks wait, from a view of the fleet at most a second old."""
        return Explainer(self.store, self.dispatcher.settings)
