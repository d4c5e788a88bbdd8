#!/usr/bin/env bash
# Install the Outpost agent on this device (or into a root folder, for an image), or
# remove it again. Run it from an Outpost checkout or unpacked release tarball:
#
#   sudo scripts/install-agent.sh --profile raspberry-pi-4 --token-file /run/outpost/bootstrap.token
#   sudo scripts/install-agent.sh --uninstall [--purge]
#
# What it does, in order (each step is skipped when already done, so it is safe to re-run):
#   1. a venv in /opt/outpost/venv holding the outpost package, built from this checkout
#      (its dependencies come from the package index pip is set up to use);
#   2. the unit, sysusers.d and tmpfiles.d files from systemd/ into /etc/systemd/system,
#      /usr/lib/sysusers.d and /usr/lib/tmpfiles.d;
#   3. systemd-sysusers (the `outpost` user), then the data folder /var/lib/outpost-agent
#      (mode 0750) and enrollment with the hub named in the token (the token is read from
#      its file by the agent and never printed); the folder is then owned by `outpost`;
#   4. a drop-in with the profile's budgets (MemoryMax=, CPUQuota=), then systemctl
#      daemon-reload, systemd-tmpfiles --create, systemctl enable --now.
#
# Options:
#   --profile NAME      device profile, a name from firmware-configs/ (needed to enroll)
#   --token-file FILE   bootstrap token from `outpost-hub enroll-token` (needed to enroll;
#                       not needed again once the data folder holds an enrollment)
#   --root DIR          install under DIR instead of / (an image, a test); the venv's
#                       scripts then name /opt/outpost/venv, where they will be at run time
#   --no-systemctl      call none of systemctl, systemd-sysusers, systemd-tmpfiles
#   --python PATH       the Python (>= 3.11) to build the venv from (default: python3.x on PATH)
#   --uninstall         stop and disable the unit, remove the venv and the systemd files;
#                       the data folder (identity, store) is kept unless --purge
#   --purge             with --uninstall: also remove the data folder
#
# Under --root DIR the systemd calls are their offline forms (systemd-sysusers --root,
# systemd-tmpfiles --root, systemctl --root enable): nothing is started. Ownership: when
# the `outpost` user cannot be resolved (not root, or no such user yet in DIR/etc/passwd)
# the chown is not done; it is printed and written to /opt/outpost/chown.pending, and the
# unit's StateDirectory= hands the folder to its user when the service first starts.
set -euo pipefail
# What is installed (the venv, the unit files) must be readable by the `outpost` user and
# by systemd whatever umask the admin's shell has (hardened hosts use 027 or 077); the
# data folder and the enrollment set their own modes.
umask 022

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=install-agent
USER_NAME=outpost
UNIT=outpost-agent.service
VENV_REL=/opt/outpost/venv
DATA_REL=/var/lib/outpost-agent

say() { printf '==> %s\n' "$*"; }
# Bad input: a named error, exit status 2, nothing changed.
refuse() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 2; }
# A step that failed part-way: exit status 1.
die() { printf '%s: failed: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

ROOT=/
PROFILE=
TOKEN_FILE=
SYSTEMCTL=1
PYTHON=
ACTION=install
PURGE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || refuse "--root needs a folder"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#*=}; shift ;;
        --profile) [ $# -ge 2 ] || refuse "--profile needs a name"; PROFILE=$2; shift 2 ;;
        --profile=*) PROFILE=${1#*=}; shift ;;
        --token-file) [ $# -ge 2 ] || refuse "--token-file needs a file"; TOKEN_FILE=$2; shift 2 ;;
        --token-file=*) TOKEN_FILE=${1#*=}; shift ;;
        --python) [ $# -ge 2 ] || refuse "--python needs a path"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#*=}; shift ;;
        --no-systemctl) SYSTEMCTL=0; shift ;;
        --uninstall) ACTION=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) refuse "unknown option: $1 (see --help)" ;;
    esac
done

# --- checks: all of them before anything is changed ---------------------------------
[ -d "$ROOT" ] || refuse "root folder $ROOT does not exist"
ROOT=$(cd "$ROOT" && pwd)
if [ "$ROOT" = / ]; then PREFIX=; else PREFIX=$ROOT; fi
if [ -z "$PREFIX" ] && [ "$(id -u)" != 0 ]; then
    refuse "installing on this system needs root (run it with sudo), or pass --root DIR"
fi
[ "$PURGE" = 0 ] || [ "$ACTION" = uninstall ] || refuse "--purge goes with --uninstall"
VENV=$PREFIX$VENV_REL
DATA=$PREFIX$DATA_REL
UNIT_DIR=$PREFIX/etc/systemd/system
DROPIN_DIR=$UNIT_DIR/$UNIT.d
SYSUSERS=$PREFIX/usr/lib/sysusers.d/outpost.conf
TMPFILES=$PREFIX/usr/lib/tmpfiles.d/outpost.conf
PENDING=$PREFIX/opt/outpost/chown.pending

enrolled() { [ -f "$DATA/identity/identity.json" ]; }

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

# systemctl and friends, in their offline forms under a root prefix.
run_systemd() {
    [ "$SYSTEMCTL" = 1 ] || return 0
    local tool=$1
    shift
    if [ -n "$PREFIX" ]; then
        "$tool" --root="$ROOT" "$@"
    else
        "$tool" "$@"
    fi
}

uninstall() {
    if [ "$SYSTEMCTL" = 1 ] && [ -f "$UNIT_DIR/$UNIT" ]; then
        if [ -n "$PREFIX" ]; then
            systemctl --root="$ROOT" disable "$UNIT" || true
        else
            say "stopping and disabling $UNIT"
            systemctl disable --now "$UNIT" || true
        fi
    fi
    # What `systemctl enable` made, in case it was installed with systemctl and is being
    # removed without it.
    find "$UNIT_DIR" -path "*.wants/$UNIT" -type l -delete 2>/dev/null || true
    rm -f "$UNIT_DIR/$UNIT" "$DROPIN_DIR/profile.conf"
    rmdir "$DROPIN_DIR" 2>/dev/null || true
    # The sysusers and tmpfiles files are the hub's too: kept while its unit is installed.
    if [ ! -f "$UNIT_DIR/outpost-hub.service" ]; then
        rm -f "$SYSUSERS" "$TMPFILES"
    fi
    if [ -z "$PREFIX" ] && [ "$SYSTEMCTL" = 1 ]; then systemctl daemon-reload; fi
    say "removing $VENV"
    rm -rf "$VENV" "$PENDING"
    rmdir "$PREFIX/opt/outpost" 2>/dev/null || true
    if [ "$PURGE" = 1 ]; then
        say "removing the data folder $DATA (identity, store, models)"
        rm -rf "$DATA"
    elif [ -d "$DATA" ]; then
        say "kept the data folder $DATA (remove it with --uninstall --purge)"
    fi
    # The `outpost` user stays, as systemd-sysusers users do: files may still name it.
    say "uninstalled"
}

if [ "$ACTION" = uninstall ]; then
    uninstall
    exit 0
fi

if ! enrolled; then
    [ -n "$PROFILE" ] || refuse "--profile NAME is needed to enroll this device"
    [ -n "$TOKEN_FILE" ] || refuse "--token-file FILE is needed to enroll this device"
fi
if [ -n "$PROFILE" ]; then
    case "$PROFILE" in
        *[!a-z0-9-]*|"") refuse "unknown profile: $PROFILE" ;;
    esac
    PROFILE_FILE=$SRC/firmware-configs/$PROFILE.toml
    if [ ! -f "$PROFILE_FILE" ]; then
        known=$(cd "$SRC/firmware-configs" && for f in *.toml; do printf '%s ' "${f%.toml}"; done)
        refuse "unknown profile: $PROFILE (known: ${known% })"
    fi
fi
if [ -n "$TOKEN_FILE" ] && ! enrolled; then
    [ -f "$TOKEN_FILE" ] || refuse "token file $TOKEN_FILE: no such file"
    [ -r "$TOKEN_FILE" ] || refuse "token file $TOKEN_FILE: not readable"
    [ -s "$TOKEN_FILE" ] || refuse "token file $TOKEN_FILE is empty"
fi
for f in outpost-agent.service outpost.sysusers.conf outpost.tmpfiles.conf; do
    [ -f "$SRC/systemd/$f" ] || refuse "this checkout has no systemd/$f"
done
if [ -z "$PYTHON" ]; then
    PYTHON=$(find_python) || refuse "no Python 3.11 or newer found (install python3 and python3-venv, or pass --python)"
fi
"$PYTHON" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || refuse "$PYTHON is not a Python 3.11 or newer with the venv module"
if [ "$SYSTEMCTL" = 1 ]; then
    for tool in systemctl systemd-sysusers systemd-tmpfiles; do
        command -v "$tool" >/dev/null || refuse "$tool not found (use --no-systemctl to skip it)"
    done
fi

# --- 1. the venv -------------------------------------------------------------------
# The package is built from a copy of this checkout's sources (pyproject.toml, README.md
# and the packages), so the build leaves nothing in the checkout; a stamp of those
# sources skips the build when nothing changed.
SOURCES=(pyproject.toml README.md edge hub outpost)
stamp=$( (cd "$SRC" && find "${SOURCES[@]}" -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1)
CHANGED=0
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $("$PYTHON" --version)"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.outpost-sources" 2>/dev/null)" != "$stamp" ]; then
    say "installing outpost from $SRC into $VENV"
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    (cd "$SRC" && cp -r "${SOURCES[@]}" "$build/")
    find "$build" -name __pycache__ -type d -prune -exec rm -rf {} +
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$build" \
        || die "pip could not install outpost into $VENV"
    # The same version number may already be there from an older checkout: this code wins.
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
        --force-reinstall "$build" >/dev/null || die "pip could not reinstall outpost"
    if [ -n "$PREFIX" ]; then
        # Scripts name their interpreter by absolute path: the one it will have at run time.
        grep -lIr -- "$VENV" "$VENV/bin" | while read -r f; do
            sed -i "s|$VENV|$VENV_REL|g" "$f"
        done
    fi
    echo "$stamp" > "$VENV/.outpost-sources"
    CHANGED=1
else
    say "outpost in $VENV is up to date"
fi

# --- 2. the systemd files ------------------------------------------------------------
install -d -m 0755 "$UNIT_DIR" "$(dirname "$SYSUSERS")" "$(dirname "$TMPFILES")"
install -m 0644 "$SRC/systemd/outpost-agent.service" "$UNIT_DIR/$UNIT"
install -m 0644 "$SRC/systemd/outpost.sysusers.conf" "$SYSUSERS"
install -m 0644 "$SRC/systemd/outpost.tmpfiles.conf" "$TMPFILES"
say "installed $UNIT_DIR/$UNIT, $SYSUSERS, $TMPFILES"

# --- 3. user, data folder, enrollment ----------------------------------------------
run_systemd systemd-sysusers "$SYSUSERS"
# 0750, as the unit's StateDirectoryMode= makes it at every start: programs of group
# outpost may reach the local API's socket; keys and the store in it are 0600.
install -d -m 0750 "$DATA"
chmod 0750 "$DATA"
if enrolled; then
    say "already enrolled: $DATA/identity/identity.json (uninstall with --purge to start over)"
else
    say "enrolling with the hub named in the token (profile $PROFILE)"
    # The agent reads the token from its file: it is never on a command line or printed.
    (umask 077 && "$VENV/bin/python" -m edge.cli enroll --data "$DATA" \
        --profile "$PROFILE_FILE" --token-file "$TOKEN_FILE") || die "enrollment failed (see above)"
fi

# The uid and gid of `outpost` as the installed system sees them.
owner() {
    local entry
    if [ -z "$PREFIX" ]; then
        entry=$(getent passwd "$USER_NAME") || return 1
        gid=$(getent group "$USER_NAME" | cut -d: -f3) || return 1
    else
        entry=$(grep "^$USER_NAME:" "$PREFIX/etc/passwd" 2>/dev/null) || return 1
        gid=$(grep "^$USER_NAME:" "$PREFIX/etc/group" 2>/dev/null | cut -d: -f3) || return 1
    fi
    uid=$(echo "$entry" | cut -d: -f3)
    [ -n "$uid" ] && [ -n "$gid" ]
}
if [ "$(id -u)" = 0 ] && owner; then
    chown -R "$uid:$gid" "$DATA"
    rm -f "$PENDING"
    say "$DATA_REL owned by $USER_NAME ($uid:$gid)"
else
    mkdir -p "$(dirname "$PENDING")"
    echo "$USER_NAME:$USER_NAME $DATA_REL recursive" > "$PENDING"
    if [ "$(id -u)" != 0 ]; then why="not running as root"; else why="no $USER_NAME user yet"; fi
    say "would chown -R $USER_NAME:$USER_NAME $DATA_REL ($why): noted in ${PENDING#"$PREFIX"}"
fi

# The profile's budgets as the unit's limits (the unit's own suit a Raspberry Pi 4).
budgets=$("$VENV/bin/python" -c '
import sys, tomllib
budgets = tomllib.load(open(sys.argv[1], "rb"))["budgets"]
print("MemoryMax=%dM" % budgets["memory_max_mb"])
print("CPUQuota=%d%%" % budgets["cpu_quota_percent"])
' "$DATA/profile.toml") || die "cannot read the budgets of $DATA/profile.toml"
install -d -m 0755 "$DROPIN_DIR"
printf '%s\n' "# Written by scripts/install-agent.sh from the device profile's [budgets]" \
    "# ($DATA_REL/profile.toml); rewritten at each install." "[Service]" "$budgets" \
    > "$DROPIN_DIR/profile.conf"
chmod 0644 "$DROPIN_DIR/profile.conf"
say "limits from the profile: $(echo "$budgets" | tr '\n' ' ')"

# --- 4. systemd --------------------------------------------------------------------
if [ "$SYSTEMCTL" = 0 ]; then
    say "installed; --no-systemctl: the unit is neither enabled nor started"
elif [ -n "$PREFIX" ]; then
    run_systemd systemd-tmpfiles --create "$TMPFILES"
    run_systemd systemctl enable "$UNIT"
    say "installed into $ROOT; $UNIT is enabled and starts when that system boots"
else
    systemctl daemon-reload
    systemd-tmpfiles --create "$TMPFILES"
    active=0
    systemctl is-active --quiet "$UNIT" && active=1
    systemctl enable --now "$UNIT"
    # New code in the venv: a running agent picks it up only when it restarts.
    if [ "$active" = 1 ] && [ "$CHANGED" = 1 ]; then systemctl try-restart "$UNIT"; fi
    say "installed; $UNIT is enabled and running (systemctl status $UNIT)"
fi
