"""The device's model directory: installed models by name and version, one active each.

    models/<name>/<version>/{model.tflite, model.json, sample.json}
    models/<name>/active        the active version (absent: the highest installed;
                                empty: none, the versions are only candidates)
    models/<name>/rolled-back   the version a roll-back gave up, while no activation
                                came since (absent: none, or a data folder from before)

A version folder is complete or absent: it is copied under a temporary name and renamed
into place, and the `active` file is replaced atomically, so a crash mid-install leaves
the previous state. Earlier versions stay, so a roll-back is a change of `active`.
Staging folders a killed install left are removed by the next install or start
(staging.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge.inference import staging
from outpost import files
from outpost.modelbundle import (
    MODEL_FILE,
    NAME_PATTERN,
    VERSION_PATTERN,
    Bundle,
    BundleError,
    check_model_file,
    read_bundle,
)

logger = logging.getLogger(__name__)

ACTIVE_FILE = "active"
ROLLED_BACK_FILE = "rolled-back"
KEEP_NEWEST = 3  # versions of a model kept beside the active one and its fallback
BUNDLE_FILES = (MODEL_FILE, "model.json", "sample.json")


@dataclass(frozen=True)
class Entry:
    """An installed model's active version: its bundle, or why it cannot be read."""

    name: str
    version: str
    folder: Path
    bundle: Bundle | None
    error: str = ""


class ModelDirectory:
    def __init__(self, root: Path) -> None:
        self.root = root

    def versions(self, name: str) -> list[str]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = [
            p.name
            for p in folder.iterdir()
            if p.is_dir() and VERSION_PATTERN.fullmatch(p.name) and p.name != ACTIVE_FILE
        ]
        return sorted(found, key=version_key)

    def active(self, name: str) -> str | None:
        try:
            chosen = (self.root / name / ACTIVE_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            chosen = None
        except (OSError, UnicodeDecodeError) as exc:  # damaged: the highest serves
            logger.error("model %s: its active file is unreadable: %s", name, exc)
            chosen = None
        if chosen == "":
            return None  # only candidates installed (a shadow): nothing serves
        versions = self.versions(name)
        if chosen in versions:
            return chosen
        return versions[-1] if versions else None

    def entries(self) -> list[Entry]:
        """Every installed model's active version (manifests read, files not yet hashed)."""
        if not self.root.is_dir():
            return []
        out = []
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or not NAME_PATTERN.fullmatch(folder.name):
                continue
            version = self.active(folder.name)
            if version is not None:
                out.append(self.entry(folder.name, version))
        return out

    def entry(self, name: str, version: str) -> Entry:
        """One installed version (manifest read, file not yet hashed), or why it is not
        usable."""
        path = self.root / name / version
        try:
            bundle = read_bundle(path, verify=False)
        except BundleError as exc:
            return Entry(name, version, path, None, str(exc))
        if (bundle.manifest.name, bundle.manifest.version) != (name, version):
            error = (
                f"{path}: the manifest names {bundle.manifest.name} "
                f"{bundle.manifest.version}, not the folder's {name} {version}"
            )
            return Entry(name, version, path, None, error)
        return Entry(name, version, path, bundle)

    def installable(self, folders: list[Path]) -> list[Bundle]:
        """Every bundle folder read and its model checked against its manifest, and none
        that `install` would refuse (another model under an installed name and version,
        or under one given twice): checked before any is installed, so a typo in the last
        one leaves nothing half done. `BundleError` naming the first that fails."""
        bundles: list[Bundle] = []
        given: dict[tuple[str, str], Bundle] = {}
        for folder in folders:
            if not folder.is_dir():
                problem = "is a file" if folder.exists() else "does not exist"
                raise BundleError(f"{folder} {problem}: give a bundle folder")
            bundle = read_bundle(folder)
            name, version = bundle.manifest.name, bundle.manifest.version
            other = given.get((name, version))
            if other is None and (self.root / name / version).exists():
                installed = self.entry(name, version)
                if installed.bundle is None:  # `install` cannot compare with it either
                    raise BundleError(installed.error)
                other = installed.bundle
            if other is not None and other.manifest.sha256 != bundle.manifest.sha256:
                raise BundleError(
                    f"{folder}: {name} {version} is also {other.folder}, another model "
                    f"(sha256 {other.manifest.sha256}); give the new model a new version"
                )
            given[name, version] = bundle
            bundles.append(bundle)
        return bundles

    def install(self, source: Path, *, activate: bool = True) -> Bundle:
        """Copy a checked bundle folder in (blocking) and make it the active version
        (`activate`), or leave the active version as it is."""
        bundle = read_bundle(source)  # refuses a model that does not match its manifest
        name, version = bundle.manifest.name, bundle.manifest.version
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        staging.sweep(home)  # what an install killed before left, model-sized
        if not activate:
            self._pin_active(name)
        target = home / version
        if target.exists():
            installed = read_bundle(target, verify=False)
            if installed.manifest.sha256 != bundle.manifest.sha256:
                raise BundleError(
                    f"{name} {version} is installed with another sha256 "
                    f"({installed.manifest.sha256}); give the new model a new version"
                )
            _repair(installed, source)
        else:
            # A folder of its own: two installs at once (the agent's deploy beside
            # `outpost-agent models install`) shared one, and one deleted the other's.
            with staging.staging(home, version) as copy:
                for file_name in BUNDLE_FILES:
                    if (source / file_name).exists():
                        shutil.copyfile(source / file_name, copy / file_name)
                read_bundle(copy)  # the copy is whole before it gets its real name
                files.sync_tree(copy)
                try:
                    copy.rename(target)
                except OSError:
                    if not target.is_dir():
                        raise
                    # Another install got there first: the same model, or refused above.
                    return self.install(source, activate=activate)
            files.sync_tree(home)
            logger.info("installed model %s %s", name, version)
        if activate:
            self._activate(name, version)
        return read_bundle(target, verify=False)

    def set_active(self, name: str, version: str) -> None:
        """Make an installed version the active one (blocking)."""
        home = self.root / name
        if not home.is_dir():
            raise BundleError(f"{name} {version} is not installed")
        with _turn(home):  # checked and written in one turn: see `remove`
            if version not in self.versions(name):
                raise BundleError(f"{name} {version} is not installed")
            self._write_active(home, version)

    def roll_back(self, name: str, bad: str, fallback: str) -> None:
        """Make `fallback` active again in place of `bad`, which failed in use (blocking).

        Word of it is written first, then `active`: after a kill that loses the roll-back's
        record, the deployer must tell this from an operator's `models install` of the
        same fallback (which deploys `bad` again, as the hub still wants it).
        """
        if fallback not in self.versions(name):
            raise BundleError(f"{name} {fallback} is not installed")
        home = self.root / name
        with _turn(home):
            files.replace(home / ROLLED_BACK_FILE, f"{bad}\n".encode())
            files.replace(home / ACTIVE_FILE, f"{fallback}\n".encode())

    def rolled_back(self, name: str) -> str:
        """The version the last roll-back of `name` gave up, if no activation came since
        (blocking); "" if none."""
        try:
            return (self.root / name / ROLLED_BACK_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return ""
        except (OSError, UnicodeDecodeError) as exc:  # as if none: the release is deployed
            logger.error("model %s: its rolled-back file is unreadable: %s", name, exc)
            return ""

    def sweep(self) -> list[str]:
        """Remove what killed installs and removals left in every model's folder
        (blocking); return the folders removed, as `name/folder`."""
        if not self.root.is_dir():
            return []
        return [
            f"{home.name}/{gone}"
            for home in sorted(self.root.iterdir())
            if home.is_dir() and NAME_PATTERN.fullmatch(home.name)
            for gone in staging.sweep(home)
        ]

    def remove(self, name: str, version: str) -> None:
        """Delete an installed version that the `active` file does not name (blocking);
        a model left without versions goes entirely.

        Renamed out of sight first: a crash mid-delete leaves a hidden folder, never a
        half version that `versions` would list.
        """
        home = self.root / name
        target = home / version
        doomed = home / f".{version}.removing"
        removed = False
        if home.is_dir():
            # Checked and taken out of sight in one turn: an activation of this version
            # by another process (set_active checks in its turn) cannot land between.
            with _turn(home):
                try:
                    chosen = (home / ACTIVE_FILE).read_text(encoding="utf-8").strip()
                except FileNotFoundError:
                    chosen = ""
                if chosen == version:
                    raise BundleError(
                        f"{name} {version} is the active version; activate another first"
                    )
                if target.is_dir():
                    shutil.rmtree(doomed, ignore_errors=True)
                    target.rename(doomed)
                    removed = True
        if removed:
            shutil.rmtree(doomed, ignore_errors=True)
            logger.info("removed model %s %s", name, version)
        if home.is_dir() and not self.versions(name):
            shutil.rmtree(home, ignore_errors=True)

    def prune(self, name: str, keep: set[str], newest: int = KEEP_NEWEST) -> list[str]:
        """Remove the versions of `name` beyond those in `keep`, the active one and the
        `newest` highest (blocking): a device that has seen years of roll-outs must not
        fill its disk with them. The versions removed."""
        versions = self.versions(name)
        kept = keep | set(versions[-newest:]) | {self.active(name) or ""}
        gone = []
        for version in versions:
            if version in kept:
                continue
            try:
                self.remove(name, version)
            except (BundleError, OSError) as exc:
                logger.warning("model %s %s not pruned: %s", name, version, exc)
                continue
            gone.append(version)
        return gone

    def _activate(self, name: str, version: str) -> None:
        """Write `version` into `active`, then drop word of a roll-back: this activation,
        not a roll-back, chose it. In that order: a kill between leaves the word beside
        the new version, which the deployer only reads while the fallback serves."""
        home = self.root / name
        with _turn(home):
            self._write_active(home, version)

    @staticmethod
    def _write_active(home: Path, version: str) -> None:
        """`_activate`'s writes, in a turn the caller holds."""
        files.replace(home / ACTIVE_FILE, f"{version}\n".encode())
        marker = home / ROLLED_BACK_FILE
        if marker.exists():
            marker.unlink(missing_ok=True)
            files.sync_dir(home)

    def _pin_active(self, name: str) -> None:
        """Write down the version that is active by default (the highest), so that
        installing a higher one without activating it does not change which one runs;
        for a model with none yet, that none is (a shadow candidate must not serve after
        a restart)."""
        home = self.root / name
        with _turn(home):
            if (home / ACTIVE_FILE).exists():
                return
            current = self.active(name)
            files.replace(home / ACTIVE_FILE, f"{current or ''}\n".encode())


@contextlib.contextmanager
def _turn(home: Path) -> Iterator[None]:
    """Writers of a model's `active` and `rolled-back` files take turns, across
    processes: `outpost-agent models install` runs beside the agent's deployer, and
    both write through the same fixed temporary names (outpost/files.py keeps out
    only the threads of one process). An flock on the model's folder, held for the
    write's time; the kernel lets go of it whatever kills the holder."""
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _repair(installed: Bundle, source: Path) -> None:
    """Put the checked model file in place of an installed copy that went bad on disk
    (the same release: its manifest and sample are the same). The file is replaced
    whole, in place: the version's folder, which `active` may name, never goes away."""
    try:
        check_model_file(installed.model_path, installed.manifest)
        return
    except BundleError as exc:
        m = installed.manifest
        logger.warning("model %s %s: %s; the copy is replaced", m.name, m.version, exc)
    fresh = installed.folder / f".{MODEL_FILE}.partial"
    try:
        shutil.copyfile(source / MODEL_FILE, fresh)
        files.sync_tree(installed.folder)
        os.replace(fresh, installed.model_path)
    except BaseException:  # a full disk: the half copy must not keep it full
        fresh.unlink(missing_ok=True)
        raise
    files.sync_dir(installed.folder)


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order versions numerically where they are numbers: 1.10.0 after 1.9.0."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.+_-]", version)
    )
