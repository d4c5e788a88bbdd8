#!/usr/bin/env bash
# Install the Outpost agent on this device (or into a root folder, for an image), or
# remove it again. Run it from an Outpost checkout or unpacked release tarball:
#
#   sudo scripts/install-agent.sh --profile raspberry-pi-4 --token-file /run/outpost/bootstrap.token
#   sudo scripts/install-agent.sh --uninstall [--purge]
#
# The layout: one venv per version side by side, started by a launcher that goes back to
# the previous version when a new one keeps failing to come up (agent self-update):
#   /opt/outpost/releases/<version>/venv    a version's venv; <version>/.complete once whole
#   /opt/outpost/current -> releases/<version>     what the service starts
#   /opt/outpost/previous -> releases/<older>      what a rollback goes back to
#   /usr/lib/outpost/outpost-launch         the launcher (systemd/outpost-launch), root's
# The unit runs the launcher, which runs current's outpost-agent. /opt/outpost, its
# releases/ and the links belong to `outpost`: the agent installs updates there and moves
# `current` itself. That is acceptable: the agent can only change code that runs as
# itself, under the same sandbox; the launcher, which decides a rollback, and the unit
# are root's, outside what the agent may write. A release this script builds stays
# root's; as root it never builds into, or writes through, what the agent made.
#
# What it does, in order (each step is skipped when already done, so it is safe to re-run):
#   1. the release of this checkout's version (outpost.__version__): a venv in
#      /opt/outpost/releases/<version>/venv holding the outpost package, built from this
#      checkout (its dependencies come from the package index pip is set up to use), its
#      .complete marker, then /opt/outpost/current pointed at it, atomically (`previous`
#      keeps what it named), unless it names a newer version the agent updated itself to;
#   2. the launcher into /usr/lib/outpost (root's, 0755); the unit, sysusers.d and
#      tmpfiles.d files from systemd/ into /etc/systemd/system, /usr/lib/sysusers.d and
#      /usr/lib/tmpfiles.d;
#   3. systemd-sysusers (the `outpost` user), then the data folder /var/lib/outpost-agent
#      (mode 0750) and enrollment with the hub named in the token (the token is read from
#      its file by the agent and never printed); the folder, /opt/outpost (0755) and its
#      releases/ are then owned by `outpost`;
#   4. a drop-in with the profile's budgets (MemoryMax=, CPUQuota=), then systemctl
#      daemon-reload, systemd-tmpfiles --create, systemctl enable --now;
#   5. an earlier install's /opt/outpost/venv (the layout before releases) is removed,
#      unless outpost-hub.service is installed (a hub runs from that venv).
#
# Options:
#   --profile NAME      device profile, a name from firmware-configs/ (needed to enroll)
#   --token-file FILE   bootstrap token from `outpost-hub enroll-token` (needed to enroll;
#                       not needed again once the data folder holds an enrollment)
#   --root DIR          install under DIR instead of / (an image, a test); the venv's
#                       scripts then name /opt/outpost/releases/<version>/venv, where they
#                       will be at run time
#   --no-systemctl      call none of systemctl, systemd-sysusers, systemd-tmpfiles
#   --python PATH       the Python (>= 3.11) to build the venv from (default: python3.x on PATH)
#   --uninstall         stop and disable the unit, remove /opt/outpost (the releases, the
#                       links), the launcher and the systemd files; the data folder
#                       (identity, store) is kept unless --purge
#   --purge             with --uninstall: also remove the data folder
#
# Under --root DIR the systemd calls are their offline forms (systemd-sysusers --root,
# systemd-tmpfiles --root, systemctl --root enable): nothing is started. Ownership: when
# the `outpost` user cannot be resolved (not root, or no such user yet in DIR/etc/passwd)
# the chown is not done; it is printed and written to /opt/outpost/chown.pending, and the
# unit's StateDirectory= hands the data folder to its user when the service first starts
# (/opt/outpost stays root's until the noted chown is done: until then the agent cannot
# update itself, and says so).
set -euo pipefail
# What is installed (the venv, the launcher, the unit files) must be readable by the
# `outpost` user and by systemd whatever umask the admin's shell has (hardened hosts use
# 027 or 077); the data folder and the enrollment set their own modes.
umask 022

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=install-agent
USER_NAME=outpost
UNIT=outpost-agent.service
OPT_REL=/opt/outpost
LAUNCHER_REL=/usr/lib/outpost/outpost-launch
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
OPT=$PREFIX$OPT_REL
RELEASES=$OPT/releases
OLD_VENV=$OPT/venv  # the layout before releases
LAUNCHER=$PREFIX$LAUNCHER_REL
DATA=$PREFIX$DATA_REL
UNIT_DIR=$PREFIX/etc/systemd/system
DROPIN_DIR=$UNIT_DIR/$UNIT.d
SYSUSERS=$PREFIX/usr/lib/sysusers.d/outpost.conf
TMPFILES=$PREFIX/usr/lib/tmpfiles.d/outpost.conf
PENDING=$OPT/chown.pending

enrolled() { [ -f "$DATA/identity/identity.json" ]; }
# A hub on this machine runs from the venv of the layout before releases.
hub_installed() { [ -f "$UNIT_DIR/outpost-hub.service" ]; }

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
    say "removing $OPT_REL/releases, its links and $LAUNCHER_REL"
    rm -rf "$RELEASES"
    rm -f "$OPT/current" "$OPT/previous" "$OPT"/current.* "$OPT"/previous.* "$PENDING" \
        "$LAUNCHER"
    rmdir "$(dirname "$LAUNCHER")" 2>/dev/null || true
    if [ -e "$OLD_VENV" ]; then
        if hub_installed; then
            say "kept $OPT_REL/venv: outpost-hub.service runs from it"
        else
            rm -rf "$OLD_VENV"
        fi
    fi
    rmdir "$OPT" 2>/dev/null || true
    # What others keep in it (a hub's venv, an unpacked release) is root's folder again.
    if [ -d "$OPT" ] && [ "$(id -u)" = 0 ]; then chown 0:0 "$OPT"; fi
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
for f in outpost-agent.service outpost-launch outpost.sysusers.conf outpost.tmpfiles.conf; do
    [ -f "$SRC/systemd/$f" ] || refuse "this checkout has no systemd/$f"
done
if [ -z "$PYTHON" ]; then
    PYTHON=$(find_python) || refuse "no Python 3.11 or newer found (install python3 and python3-venv, or pass --python)"
fi
"$PYTHON" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || refuse "$PYTHON is not a Python 3.11 or newer with the venv module"
# The launcher runs on the system's python3 (`#!/usr/bin/env python3`), not in a venv.
if [ -z "$PREFIX" ]; then
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' 2>/dev/null \
        || refuse "the launcher needs python3 (3.8 or newer) on PATH"
fi
# This checkout's version names its release folder: read from outpost/__init__.py
# without importing anything, and only a name that is safe as a folder's.
VERSION=$("$PYTHON" - "$SRC/outpost/__init__.py" <<'EOF'
import ast, re, sys
try:
    tree = ast.parse(open(sys.argv[1], encoding="utf-8").read())
except (OSError, SyntaxError, ValueError):
    sys.exit(1)
for node in tree.body:
    if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == [
        "__version__"
    ]:
        value = getattr(node.value, "value", None)
        if isinstance(value, str) and re.fullmatch(r"[0-9][0-9A-Za-z.+_-]*", value):
            print(value)
            sys.exit(0)
sys.exit(1)
EOF
) || refuse "cannot read a version (__version__ = \"1.2.3\") from $SRC/outpost/__init__.py"
RELEASE_REL=$OPT_REL/releases/$VERSION
RELEASE=$PREFIX$RELEASE_REL
VENV_REL=$RELEASE_REL/venv
VENV=$PREFIX$VENV_REL
if [ "$SYSTEMCTL" = 1 ]; then
    for tool in systemctl systemd-sysusers systemd-tmpfiles; do
        command -v "$tool" >/dev/null || refuse "$tool not found (use --no-systemctl to skip it)"
    done
fi

# --- 1. the release: its venv, then `current` ---------------------------------------
# The package is built from a copy of this checkout's sources (pyproject.toml, README.md
# and the packages), so the build leaves nothing in the checkout; a stamp of those
# sources skips the build when nothing changed.
SOURCES=(pyproject.toml README.md edge hub outpost)
stamp=$( (cd "$SRC" && find "${SOURCES[@]}" -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1)
CHANGED=0
BUILT=0
case "$SRC/" in
    "$OPT/"*)
        say "note: this tree is inside $OPT_REL, which the agent may write:" \
            "keep what root runs elsewhere" ;;
esac

# $1 -> $2 in /opt/outpost, replaced atomically: a new link renamed over the old one.
relink() {
    ln -sfn "$2" "$OPT/$1.install"
    mv -T "$OPT/$1.install" "$OPT/$1"
}
# Whether version $1 is newer than $2 as PEP 440 orders them (0.1.0+site1 after 0.1.0,
# 1.0.0rc1 before 1.0.0), as edge/selfupdate.py and the hub do. Run by the release's own
# venv, built above, which has `packaging` (an outpost dependency). A version it cannot
# read is not newer: the agent never updated itself to one (the hub refuses it).
newer() {
    "$VENV/bin/python" - "$1" "$2" <<'EOF'
import sys
from packaging.version import InvalidVersion, Version
try:
    sys.exit(not Version(sys.argv[1]) > Version(sys.argv[2]))
except InvalidVersion:
    sys.exit(1)
EOF
}

# /opt/outpost and releases/ may be the agent's (step 3): root builds only into a release
# folder it made itself, never into one the agent made or put in its place (it could
# hold links that send root's writes elsewhere). Such a folder is removed, without
# following its links, and built anew; if it is what runs, the agent stops meanwhile.
install -d -m 0755 "$OPT"
if [ -L "$RELEASES" ] || { [ -e "$RELEASES" ] && [ ! -d "$RELEASES" ]; }; then rm -f "$RELEASES"; fi
install -d -m 0755 "$RELEASES"
if [ -L "$RELEASE" ] || { [ -e "$RELEASE" ] && { [ ! -d "$RELEASE" ] \
    || [ -n "$(find "$RELEASE" ! -uid "$(id -u)" -print -quit)" ]; }; }; then
    if [ -z "$PREFIX" ] && [ "$SYSTEMCTL" = 1 ] \
        && [ "$(readlink "$OPT/current" || true)" = "releases/$VERSION" ] \
        && systemctl is-active --quiet "$UNIT"; then
        say "stopping $UNIT while its release is built anew"
        systemctl stop "$UNIT"
    fi
    say "removing $RELEASE_REL: this installer did not make it (the agent's own install?)"
    rm -rf "$RELEASE"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $("$PYTHON" --version)"
    install -d -m 0755 "$RELEASE"
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.outpost-sources" 2>/dev/null)" != "$stamp" ] \
    || [ ! -f "$RELEASE/.complete" ]; then
    rm -f "$RELEASE/.complete"  # whole again only once built
    say "installing outpost $VERSION from $SRC into $VENV"
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
    # As edge/selfupdate.py marks a release it installed whole.
    echo "$VERSION" > "$RELEASE/.complete"
    BUILT=1
else
    say "outpost $VERSION in $VENV is up to date"
fi

# `current` names this release, unless it names a newer one the agent updated itself to
# (this runs again from the older checkout, by hand or from configuration management).
running=$(readlink "$OPT/current" || true)
if [ "$running" = "releases/$VERSION" ]; then
    CHANGED=$BUILT
elif [ -n "$running" ] && [ -f "$OPT/current/.complete" ] \
    && newer "${running##*/}" "$VERSION"; then
    say "kept $OPT_REL/current -> $running: the agent updated itself to" \
        "${running##*/}, newer than $VERSION here"
else
    if [ -n "$running" ]; then relink previous "$running"; fi
    relink current "releases/$VERSION"
    CHANGED=1
    say "$OPT_REL/current -> releases/$VERSION${running:+ (previous -> $running)}"
fi

# --- 2. the launcher and the systemd files --------------------------------------------
# Root's, outside /opt/outpost: the agent cannot change what decides its rollback.
install -d -m 0755 "$(dirname "$LAUNCHER")"
install -m 0755 "$SRC/systemd/outpost-launch" "$LAUNCHER"
say "installed the launcher $LAUNCHER"
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
# /opt/outpost and releases/ too (not the release built above, which stays root's): the
# agent installs updates there and moves `current` (renaming a link needs only the folder).
if [ "$(id -u)" = 0 ] && owner; then
    chown -R "$uid:$gid" "$DATA"
    chown "$uid:$gid" "$OPT" "$RELEASES"
    for link in current previous; do
        if [ -L "$OPT/$link" ]; then chown -h "$uid:$gid" "$OPT/$link"; fi
    done
    rm -f "$PENDING"
    say "$DATA_REL, $OPT_REL and $OPT_REL/releases owned by $USER_NAME ($uid:$gid)"
else
    # Written beside, then renamed into place: never through a file that is there.
    note=$(mktemp "$OPT/.chown.pending.XXXXXX")
    printf '%s\n' "$USER_NAME:$USER_NAME $DATA_REL recursive" "$USER_NAME:$USER_NAME $OPT_REL" \
        "$USER_NAME:$USER_NAME $OPT_REL/releases" > "$note"
    chmod 0644 "$note"
    mv -T "$note" "$PENDING"
    if [ "$(id -u)" != 0 ]; then why="not running as root"; else why="no $USER_NAME user yet"; fi
    say "would chown -R $USER_NAME:$USER_NAME $DATA_REL and chown $USER_NAME:$USER_NAME" \
        "$OPT_REL $OPT_REL/releases ($why): noted in ${PENDING#"$PREFIX"}"
fi

# The profile's budgets as the unit's limits (the unit's own suit a Raspberry Pi 4), read
# as the agent reads them: a profile may leave [budgets] out, for its defaults.
budgets=$("$VENV/bin/python" -c '
import sys
from pathlib import Path
from edge.profile import load_profile
budgets = load_profile(Path(sys.argv[1])).budgets
print("MemoryMax=%dM" % budgets.memory_max_mb)
print("CPUQuota=%d%%" % budgets.cpu_quota_percent)
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
    # New code in the release `current` names: a running agent takes it when it restarts.
    if [ "$active" = 1 ] && [ "$CHANGED" = 1 ]; then systemctl try-restart "$UNIT"; fi
    say "installed; $UNIT is enabled and running (systemctl status $UNIT)"
fi

# --- 5. the layout before releases ------------------------------------------------
# Last, once the service runs from the release: the old venv ran the agent until then.
if [ -e "$OLD_VENV" ]; then
    if hub_installed; then
        say "kept $OPT_REL/venv (the layout before releases): outpost-hub.service runs from it"
    else
        say "removing $OPT_REL/venv, the layout before releases"
        rm -rf "$OLD_VENV"
    fi
fi
