#!/usr/bin/env bash
# Prepare this checkout on a fresh Debian or Ubuntu machine: a Python >= 3.11 venv in
# .venv with Outpost and its development tools, and Mosquitto. Safe to re-run: it only
# installs what is missing. System packages are installed with apt-get when running as
# root; otherwise it stops and prints the command to run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
# --test-tools (scripts/test passes it): also what only the tests use, a browser,
# promtool, nats-server and RabbitMQ; the demo and the benchmarks do without them.
TEST_TOOLS=0
POSTGRES=0  # --postgres (scripts/demo --replicas): PostgreSQL's server binaries too
NATS=0  # --nats (scripts/demo --sinks): nats-server too
if [ "${1:-}" = "--test-tools" ]; then TEST_TOOLS=1; POSTGRES=1; fi
if [ "${1:-}" = "--postgres" ]; then POSTGRES=1; fi
if [ "${1:-}" = "--nats" ]; then NATS=1; fi

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

# 4. promtool, which tests/integration/test_monitoring.py runs on the shipped alert rules:
#    taken out of Debian's prometheus package into the venv rather than installed (the
#    package would also enable and start a Prometheus server), so root is not needed.
#    Optional: without it that test checks the rules' structure itself, and warns.
fetch_promtool() {
    local tmp status=0
    tmp=$(mktemp -d)
    { (cd "$tmp" && apt-get download -q prometheus) >/dev/null 2>&1 \
        || { [ "$(id -u)" = 0 ] && apt-get update -q >/dev/null 2>&1 \
            && (cd "$tmp" && apt-get download -q prometheus) >/dev/null 2>&1; }; } \
        && dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb \
            | tar -xO ./usr/bin/promtool > "$VENV/bin/promtool.part" \
        && chmod 755 "$VENV/bin/promtool.part" \
        && "$VENV/bin/promtool.part" --version >/dev/null 2>&1 \
        && mv "$VENV/bin/promtool.part" "$VENV/bin/promtool" \
        || status=1
    rm -rf "$tmp" "$VENV/bin/promtool.part"
    return "$status"
}
if [ "$TEST_TOOLS" = 1 ] && ! command -v promtool >/dev/null && [ ! -x "$VENV/bin/promtool" ] \
    && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
    say "extracting promtool from Debian's prometheus package into $VENV/bin"
    fetch_promtool || say "no promtool (apt-get download prometheus failed): test_monitoring checks the rules' structure only"
fi

# 5. A real browser for tests/integration/test_dashboard.py: Debian's Chromium and its
#    chromedriver (Selenium drives them; it must not download its own), and certutil
#    (libnss3-tools) to make that Chromium trust the test hub's CA.
if [ "$TEST_TOOLS" = 1 ] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] \
    || ! command -v certutil >/dev/null; }; then
    apt_install chromium chromium-driver libnss3-tools
fi

# 6. systemd-analyze, systemd-sysusers and systemd-tmpfiles (Debian's systemd package)
#    for tests/integration/test_systemd.py, which checks the shipped units offline: no
#    running systemd is needed. A container image may lack them. The kernel's syscall
#    table (linux-libc-dev) lets tests/sandbox.py confine the agent as the unit does.
if [ "$TEST_TOOLS" = 1 ] && { ! command -v systemd-analyze >/dev/null \
    || ! command -v systemd-sysusers >/dev/null || ! command -v systemd-tmpfiles >/dev/null; }; then
    apt_install systemd
fi
if [ "$TEST_TOOLS" = 1 ] && [ "$(uname -m)" = x86_64 ] \
    && [ ! -f /usr/include/x86_64-linux-gnu/asm/unistd_64.h ]; then
    apt_install linux-libc-dev
fi

# 6b. systemd-nspawn (systemd-container) and debootstrap for
#    tests/integration/test_systemd_boot.py, which boots a minimal Debian root under a
#    real systemd and runs the shipped units in it.
if [ "$TEST_TOOLS" = 1 ] && { ! command -v systemd-nspawn >/dev/null \
    || ! command -v debootstrap >/dev/null; }; then
    apt_install systemd-container debootstrap
fi

# 6c. PostgreSQL's server binaries (initdb, pg_ctl) for the tests of the hub on
#    PostgreSQL and the replica demo: scripts/pgcluster.py makes a throwaway cluster in a
#    temporary folder on a free port; it never uses a server the machine runs. Debian's package also starts a
#    cluster of its own on install; the tests leave it alone.
if [ "$POSTGRES" = 1 ] && ! command -v initdb >/dev/null \
    && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_install postgresql
fi

# 7. libfaketime, which tests/integration/test_clock_jump.py preloads into an agent to
#    step its wall clock while it runs.
if [ "$TEST_TOOLS" = 1 ] && ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; then
    apt_install libfaketime
fi

# 8. nats-server (JetStream) and RabbitMQ for tests/integration/test_sink_nats.py,
#    test_sink_rabbitmq.py and test_sink_bus_tls.py:
#    tests/buses.py starts throwaway servers of its own, on free loopback ports in
#    temporary folders, and never uses the service a package runs. Both packages start a
#    system service when installed (RabbitMQ's takes the standard AMQP port and an epmd):
#    a policy-rc.d answering 101 ("action forbidden") for the length of the install keeps
#    them from starting, under systemd (deb-systemd-invoke honours it) and sysvinit
#    alike; they stay installed and enabled as Debian ships them. A policy-rc.d already
#    in place is the machine's own: it is left as it is, and decides.
apt_install_not_started() {
    local policy=/usr/sbin/policy-rc.d
    if [ "$(id -u)" != 0 ] || [ -e "$policy" ]; then
        apt_install "$@"
        return
    fi
    printf '#!/bin/sh\n# scripts/setup.sh: no service starts while it installs test tools\nexit 101\n' \
        > "$policy"
    chmod 755 "$policy"
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt_install "$@"
    rm -f "$policy"
    trap - EXIT
}
if [ "$TEST_TOOLS" = 1 ] || [ "$NATS" = 1 ]; then
    buses=()
    command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || buses+=(nats-server)
    [ "$TEST_TOOLS" = 0 ] || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || buses+=(rabbitmq-server)
    if [ "${#buses[@]}" -gt 0 ]; then
        apt_install_not_started "${buses[@]}"
    fi
fi
