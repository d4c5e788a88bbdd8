"""What became of each model release the agent was offered, kept in a small JSON file
in the model directory so that a restart neither retries a refused release nor forgets
what to report.

The broker redelivers the retained release list on every reconnect; `decide` is the rule
that makes that harmless: a release already active is skipped, one that failed (for a
reason the same release cannot overcome) is only reported again, one the model directory
says was rolled back is marked so, anything else is deployed. A release is the triple
(name, version, sha256 of the model file): the hub must give a new model a new version,
and a bad signature is kept apart from a good one of the same version (its sha256 is "",
as nothing it claims can be trusted).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from outpost import files, release, wire
from outpost.modelbundle import Manifest

logger = logging.getLogger(__name__)

FORMAT: Final = 1
# Releases remembered per model: enough to refuse a recent bad release again, few
# enough that the file stays small on a device that has seen years of roll-outs.
KEEP_PER_MODEL: Final = 8

Action = Literal["deploy", "skip", "report", "mark_rolled_back"]
Key = tuple[str, str, str]  # name, version, sha256


@dataclass(frozen=True)
class Record:
    """One release and its latest state."""

    name: str
    version: str
    sha256: str  # of the model file, from the signed manifest; "" when not verified
    state: wire.DeployState
    detail: str = ""
    # False for a failure the same release may overcome later (the policy did not allow
    # the model): it is tried again when offered again.
    final: bool = True
    previous: str = ""  # active: the version it replaced, to roll back to

    @property
    def key(self) -> Key:
        return (self.name, self.version, self.sha256)

    def message(self) -> wire.ModelState:
        return wire.ModelState(
            name=self.name[:64],
            version=self.version[:32],
            state=self.state,
            detail=self.detail[:512],
            final=self.final,
        )


class DeployStates:
    """The records, oldest first; the newest of each model is its current one."""

    def __init__(self, records: list[Record] | None = None, offer_seq: int = 0) -> None:
        self._records = list(records or [])
        # The number of the newest sealed offer taken (outpost/offerseal.py); 0: none yet.
        self.offer_seq = offer_seq

    def find(self, key: Key) -> Record | None:
        return next((r for r in self._records if r.key == key), None)

    def find_version(self, name: str, version: str) -> Record | None:
        """The newest record of `name` `version`, whatever its sha256."""
        found = [r for r in self._records if (r.name, r.version) == (name, version)]
        return found[-1] if found else None

    def serves(self, key: Key, serving: str | None) -> bool:
        """Whether `key` is recorded active and `serving` is its version: deployed."""
        record = self.find(key)
        return record is not None and record.state == "active" and serving == record.version

    def decide(self, key: Key, serving: str | None, *, rolled_back: str) -> Action:
        """What to do with an offered release, given the version that serves now and the
        one the model directory says a roll-back gave up ("" if none)."""
        record = self.find(key)
        if record is None:
            return "deploy"
        if self.serves(key, serving):
            return "skip"
        if record.state == "active":
            if record.previous and serving == record.previous and rolled_back == record.version:
                # A roll-back whose own record was lost (killed between the switch of
                # `active` and the record, or nobody listening). Deploying it again would
                # bring back a version that failed. Only on the directory's word: what it
                # replaced serves too after an operator's `models install` of it.
                return "mark_rolled_back"
            # Active once, but something else serves now (replaced by hand, or a data
            # folder from before the roll-back's word): deploy again, which costs no
            # download when the version is still installed.
            return "deploy"
        if record.state in ("failed", "rolled_back") and record.final:
            return "report"
        return "deploy"  # interrupted while downloading, or refused for a passing reason

    def put(self, record: Record) -> None:
        """Record a release's new state; it becomes its model's current one."""
        self._records = [r for r in self._records if r.key != record.key]
        if record.state == "active":
            # Only one version of a model serves: older "active" records are history,
            # and reporting them again would tell the hub they still run.
            self._records = [
                r for r in self._records if not (r.name == record.name and r.state == "active")
            ]
        self._records.append(record)
        mine = [r for r in self._records if r.name == record.name]
        for old in mine[:-KEEP_PER_MODEL]:
            self._records.remove(old)

    def latest(self) -> list[Record]:
        """The current record of each model, by name."""
        newest: dict[str, Record] = {}
        for record in self._records:
            newest[record.name] = record
        return [newest[name] for name in sorted(newest)]

    def dump(self) -> bytes:
        body = {
            "format": FORMAT,
            "releases": [asdict(r) for r in self._records],
            "offer_seq": self.offer_seq,  # an agent from before seals ignores it
        }
        return json.dumps(body, indent=1, sort_keys=True).encode()

    def save(self, path: Path) -> None:
        """Write the records atomically (blocking)."""
        write(path, self.dump())

    @classmethod
    def load(cls, path: Path) -> DeployStates:
        """The records kept at `path` (blocking); none if it is missing or damaged."""
        try:
            body = json.loads(path.read_bytes())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            # Losing the records costs at most a retry of a refused release.
            logger.error("deploy states %s unreadable, starting afresh: %s", path, exc)
            return cls()
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            logger.error("deploy states %s: unknown format, starting afresh", path)
            return cls()
        releases = body.get("releases")
        if not isinstance(releases, list):
            logger.error("deploy states %s: no list of releases, starting afresh", path)
            return cls()
        records = [r for r in map(_record, releases) if r is not None]
        offer_seq = body.get("offer_seq", 0)
        if isinstance(offer_seq, bool) or not isinstance(offer_seq, int) or offer_seq < 0:
            logger.error(
                "deploy states %s: offer_seq %r is not a number, taken as 0", path, offer_seq
            )
            offer_seq = 0
        return cls(records, offer_seq)


def write(path: Path, data: bytes) -> None:
    """Replace the file with `dump`ed records (blocking): taken on the event loop, written
    in a thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files.replace(path, data, files.PUBLIC)


_STATES: Final = frozenset({"downloading", "active", "failed", "rolled_back"})
_FIELDS: Final = frozenset(f.name for f in fields(Record))


def _record(item: Any) -> Record | None:
    """A record as stored, or None (logged) if it is not one."""
    if not (
        isinstance(item, dict)
        and set(item) == _FIELDS
        and isinstance(item["state"], str)
        and item["state"] in _STATES
        and all(isinstance(item[k], str) for k in _FIELDS if k != "final")
        and isinstance(item["final"], bool)
    ):
        logger.warning("deploy states: dropped a damaged record: %r", item)
        return None
    return Record(**item)


def record_of(
    m: Manifest,
    state: wire.DeployState,
    detail: str = "",
    *,
    final: bool = True,
    previous: str = "",
) -> Record:
    """A release's record, from its signed manifest."""
    return Record(m.name, m.version, m.sha256, state, detail, final, previous)


def key_of(m: Manifest) -> Key:
    return (m.name, m.version, m.sha256)


def names(offered: dict[str, release.Release] | None, key: Key) -> bool:
    """Whether an offer's releases by name (None: no offer taken yet, all wanted) name
    the release `key`."""
    if offered is None:
        return True
    named = offered.get(key[0])
    return named is not None and key_of(named.manifest) == key


def claimed(document: bytes) -> tuple[str, str]:
    """The name and version an unverified release claims, for the report only."""
    try:
        body = msgspec.msgpack.decode(document)
        manifest = body.get("manifest") if isinstance(body, dict) else None
        name = manifest.get("name") if isinstance(manifest, dict) else None
        version = manifest.get("version") if isinstance(manifest, dict) else None
    except (ValueError, TypeError, RecursionError):
        return "", ""
    return (
        name[:64] if isinstance(name, str) else "",
        version[:32] if isinstance(version, str) else "",
    )
