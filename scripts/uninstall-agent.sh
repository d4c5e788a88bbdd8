#!/usr/bin/env bash
# Remove the Outpost agent from this device: scripts/install-agent.sh --uninstall.
# Stops and disables the unit, removes the venv and the systemd files, keeps the data
# folder (identity, store, models) unless --purge. Takes --root DIR and --no-systemctl.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/install-agent.sh" --uninstall "$@"
