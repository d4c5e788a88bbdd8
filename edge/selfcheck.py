"""`outpost-agent selfcheck`: whether this install of the agent can run on this device's
data folder, checked without touching it. A new version runs it before it is switched
to (agent self-update), and an operator may run it any time, with the agent running:

- imports: the agent's own modules and the inference runtime load;
- identity, device key, certificate, profile: each loads as `run` loads it (the
  certificate with the key and the CA, into a TLS client context), so a damaged file
  fails here, named, rather than at the agent's start;
- store: the store is copied (SQLite's online backup: consistent while the daemon
  writes) and this version's migrations are applied to the copy; a store already
  migrated by a newer agent (names this version does not know) is reported, as this
  version would run on a schema it was not written for;
- models: every installed model's active version loads on the runtime and gives its
  sample's expected answer.

Each check says what it found; any failure makes the command exit 1.
"""

from __future__ import annotations

import contextlib
import importlib
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge.identity import DevicePaths, Identity
from outpost.sqlite import Database

MODULES = ("edge.agent", "edge.localapi", "edge.session", "edge.store", "edge.courier")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def run_checks(paths: DevicePaths, runtime: str = "auto") -> list[Check]:
    return [
        check_imports(),
        check_identity(paths),
        check_device_key(paths),
        check_certificate(paths),
        check_profile(paths.profile),
        check_store(paths.store),
        *check_models(paths.models, runtime),
    ]


def check_imports() -> Check:
    failed = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any import-time failure is what this looks for
            failed.append(f"{name} ({type(exc).__name__}: {exc})")
    if failed:
        return Check("imports", False, "cannot import " + "; ".join(failed))
    return Check("imports", True, f"{len(MODULES)} modules of the agent load")


def check_identity(paths: DevicePaths) -> Check:
    """identity.json read as `run` reads it."""
    try:
        identity = Identity.load(paths)  # its errors name the file
    except OSError as exc:  # NotEnrolledError is one; so is a file it may not read
        return Check("identity", False, _named(exc, paths.identity))
    return Check("identity", True, f"{identity.name or identity.device_id} ({paths.identity})")


def check_device_key(paths: DevicePaths) -> Check:
    """The device key loaded as a renewal loads it to sign its request."""
    from edge.enroll import EnrollError, load_device_key

    try:
        load_device_key(paths)
    except (OSError, ValueError, TypeError, EnrollError) as exc:
        # cryptography: ValueError for a damaged key, TypeError for one with a password.
        return Check("device key", False, _named(exc, paths.key))
    return Check("device key", True, f"an EC key ({paths.key})")


def check_certificate(paths: DevicePaths) -> Check:
    """The certificate, its key and the fleet CA made into the TLS client context the
    agent connects with."""
    from outpost import tls

    try:
        tls.client_context(paths.ca_cert, paths.cert, paths.key)
    except OSError as exc:  # ssl.SSLError is one: a damaged file, or a key not its own
        files = (paths.cert, paths.key, paths.ca_cert)
        return Check("certificate", False, _named(exc, *files))
    return Check("certificate", True, f"a TLS client context loads ({paths.cert})")


def check_profile(path: Path) -> Check:
    """profile.toml read and validated as `run` reads it."""
    from edge.profile import ProfileError, load_profile

    try:
        profile = load_profile(path)
    except ProfileError as exc:  # its message names the file
        return Check("profile", False, str(exc))
    return Check("profile", True, f"{profile.name} ({path})")


def _named(exc: Exception, *paths: Path) -> str:
    """`exc`'s message, which may or may not name the file (OpenSSL's "PEM lib" does
    not), prefixed with `paths` unless it names one of them already."""
    text = str(exc) or type(exc).__name__
    if any(str(path) in text for path in paths):
        return text
    return f"{', '.join(map(str, paths))}: {text}"


def check_store(path: Path) -> Check:
    """This version's migrations applied to a copy of the store."""
    from edge.store.migrations import MIGRATIONS
    from outpost.sqlite import migrate

    if not path.exists():
        return Check("store", True, f"no store yet at {path}: this version makes one")
    known = [name for name, _ in MIGRATIONS]
    with tempfile.TemporaryDirectory(prefix="outpost-selfcheck-") as folder:
        copy = Path(folder) / "store.db"
        try:
            with (
                contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as src,
                contextlib.closing(sqlite3.connect(copy)) as dst,
            ):
                src.backup(dst)
            with contextlib.closing(sqlite3.connect(copy, isolation_level=None)) as conn:
                db = Database(conn)
                before = _applied(conn)
                newer = sorted(before - set(known))
                if newer:
                    return Check(
                        "store",
                        False,
                        f"migrated by a newer agent ({', '.join(newer)}): this version knows "
                        f"up to {known[-1]} and must not run on it",
                    )
                applied = migrate(db, MIGRATIONS)
                (verdict,) = conn.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            return Check("store", False, f"{path}: cannot be read or migrated: {exc}")
    if verdict != "ok":
        return Check("store", False, f"{path}: after migrating a copy, quick_check: {verdict}")
    what = f"would apply {', '.join(applied)}" if applied else "already at this version's schema"
    return Check("store", True, f"a copy migrates cleanly ({what})")


def check_models(root: Path, runtime: str) -> list[Check]:
    from edge.inference.directory import ModelDirectory
    from edge.inference.runner import ModelFault, ModelRunner
    from edge.inference.runtime import RuntimeMissing, choose_runtime

    entries = ModelDirectory(root).entries()
    if not entries:
        return [Check("models", True, "none installed")]
    try:
        chosen = choose_runtime(runtime)  # type: ignore[arg-type]
    except RuntimeMissing as exc:
        return [Check("models", False, f"no inference runtime: {exc}")]
    checks = []
    for entry in entries:
        name = f"model {entry.name} {entry.version}"
        if entry.bundle is None:
            checks.append(Check(name, False, entry.error or "unreadable"))
            continue
        runner = ModelRunner(entry.bundle, chosen, num_threads=1, interpreters=1, queue_limit=1)
        try:
            runner.load()  # the file against its manifest, then the sample
        except ModelFault as exc:
            checks.append(Check(name, False, str(exc)))
            continue
        finally:
            runner.close()
        checks.append(Check(name, True, "loads and gives its sample's answer"))
    return checks


def _applied(conn: sqlite3.Connection) -> set[str]:
    try:
        return {row[0] for row in conn.execute("SELECT name FROM _migrations")}
    except sqlite3.OperationalError:  # no table: never migrated
        return set()
