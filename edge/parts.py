"""What exists only while the agent runs: made whole by `Agent.run`, then handed to the
session, the telemetry and the status, which use them."""

from __future__ import annotations

from dataclasses import dataclass

from edge.agentupdate import AgentUpdater
from edge.deploy import Deployer
from edge.inference.service import InferenceService
from edge.policy import PolicyKeeper
from edge.store import AgentStore
from edge.tasks import TaskRunner
from edge.uploader import Uploader


@dataclass(frozen=True)
class AgentParts:
    """The running agent's parts, each made whole before the agent is ready."""

    store: AgentStore
    inference: InferenceService
    uploader: Uploader
    tasks: TaskRunner
    deployer: Deployer
    policy: PolicyKeeper
    updater: AgentUpdater
