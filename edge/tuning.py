"""The settings a policy may change while the agent runs, and where each one lands.

`edge.effective` resolves a policy over the agent's own settings (pure); `Tuning.apply`
is the one step that hands the result to the running parts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from edge import effective
from edge.config import AgentConfig
from edge.inference.service import InferenceService
from edge.masking import Masker
from edge.store import AgentStore
from edge.tasks import TaskRunner
from edge.uploader import Uploader
from outpost import policy


class Tuning:
    """The agent's settings of the moment: its own, then each verified policy's over them."""

    def __init__(
        self,
        config: AgentConfig,
        masker: Masker,
        *,
        store: AgentStore,
        inference: InferenceService,
        tasks: TaskRunner,
        uploader: Uploader,
    ) -> None:
        self._config = config
        self._masker = masker
        self._store = store
        self._inference = inference
        self._tasks = tasks
        self._uploader = uploader
        # Read at each turn of the telemetry loops, so a new policy applies at the next.
        self.heartbeat_interval = config.heartbeat_interval
        self.metrics_interval = config.metrics_interval
        self.caps = effective.Caps()  # no cap until a policy says
        self.shadow_cpu_max_percent = 80.0  # policy shadow.cpu_max_percent
        # Told when the models the policy allows change (edge/deploy.py: a release the
        # policy held back is tried again at once, not at the next hello).
        self.on_allowed_models: Callable[[], None] | None = None

    def apply(self, p: policy.Policy, sets: dict[str, Any]) -> None:
        """Run on a verified policy's fields over the agent's own settings."""
        e = effective.resolve(self._config, p, sets)
        self.heartbeat_interval = e.heartbeat_interval
        self.metrics_interval = e.metrics_interval
        logging.getLogger().setLevel(e.log_level)
        self._masker.set_rules(e.mask_drop, e.mask_hash)
        self.caps = e.caps
        self._inference.reporting = e.reporting
        changed = e.allowed_models != self._inference.allowed_models
        self._inference.allowed_models = e.allowed_models
        self._tasks.allowed_models = e.allowed_models
        if changed and self.on_allowed_models is not None:
            self.on_allowed_models()
        self._uploader.set_pacing(e.rate_bytes_per_s, e.sync_windows)
        self._store.set_bounds(e.bounds)
        self._inference.shadows.sample_share = p.shadow.sample_share
        self._inference.shadows.reservoir_size = p.shadow.disagreements
        self.shadow_cpu_max_percent = p.shadow.cpu_max_percent
