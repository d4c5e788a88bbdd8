#!/usr/bin/env bash
# Prepare this checkout on a fresh Debian or Ubuntu machine: a Python >= 3.11 venv in
# .venv with Outpost and its development tools, and Mosquitto. Safe to re-run: it only
# installs what is missing. System packages are installed with apt-get when running as
# root; otherwise it stops and prints the command to run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        die "missing system packages: $*
       install them with:  sudo apt-get install -y $*
       then run this command again."
    fi
    say "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "$@" >/dev/null; } \
        || die "apt-get could not install $*"
}

find_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# 1. Python >= 3.11 with venv support.
if [ ! -x "$VENV/bin/python" ]; then
    PYTHON=$(find_python) || { apt_install python3 python3-venv; PYTHON=$(find_python) \
        || { apt_install python3.11 python3.11-venv; PYTHON=$(find_python); } \
        || die "no Python 3.11 or newer found"; }
    say "creating $VENV with $("$PYTHON" --version)"
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        apt_install "python${version}-venv"
        "$PYTHON" -m venv "$VENV"
    fi
fi

# 2. The package and its development tools, again whenever pyproject.toml changes.
stamp="$VENV/.outpost-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing outpost and its development tools into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    echo "$want" > "$stamp"
fi

# 3. Mosquitto: the hub runs it as its child; the tests start their own.
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    apt_install mosquitto
fi
