"""Outpost's shared contract: what both the agent (`edge`) and the hub (`hub`) import.

Only small, dependency-light modules live here: the wire contract, strict loading of
typed settings, TLS contexts and file helpers. A device installs this and `edge`.
"""

__version__ = "0.1.0"
