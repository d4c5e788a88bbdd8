"""The external brokers `outpost-hub broker-config` writes configuration for, and where
they listen by default (brokerconfig.py writes it; the command line offers these)."""

from __future__ import annotations

from typing import Final

KINDS: Final = ("mosquitto", "emqx")
DEFAULT_LISTEN: Final = "0.0.0.0:8883"
