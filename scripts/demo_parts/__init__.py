"""The local demo's parts; `scripts/demo.py` (run by `./scripts/demo`) is its entry."""
