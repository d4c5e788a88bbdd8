"""The hub's courier desk, made from its data folder: the importer and the exporter
with the keys they need."""

from __future__ import annotations

from dataclasses import dataclass

from hub.config import HubConfig
from hub.courier.exporter import HubBundles
from hub.courier.importer import BundleImporter, Tally
from hub.courier.keys import ensure_bundle_key, load_bundle_key
from hub.courier.signer import SignerCheck
from hub.fleet import keyfiles
from hub.fleet.certificates import Renewals
from hub.fleet.enrollment import load_signing_key
from hub.models.releases import ModelShelf
from hub.paths import HubPaths
from hub.store import HubStore
from outpost import tls
from outpost.courier.sealing import BundleError


@dataclass(frozen=True)
class CourierDesk:
    importer: BundleImporter
    exporter: HubBundles


def open_desk(
    paths: HubPaths, store: HubStore, config: HubConfig, tally: Tally | None = None
) -> CourierDesk:
    """Blocking (reads keys): call off the event loop. `BundleError` if the data folder
    has no bundle key and none can be made. On the running hub, `tally` is its metrics'
    counters of what was stored (none on the command line)."""
    if not ensure_bundle_key(paths):
        raise BundleError(
            f"this hub has no bundle key ({paths.bundle_key}) and cannot make one there: "
            "courier bundles need it"
        )
    ca_cert = keyfiles.certificate(paths.ca_cert)
    fleet = tls.fingerprint_of(ca_cert)
    signing_key = load_signing_key(paths)
    shelf = ModelShelf(paths.models, store, signing_key)
    exporter = HubBundles(store, signing_key=signing_key, fleet=fleet, shelf=shelf)
    importer = BundleImporter(
        store,
        bundle_key=load_bundle_key(paths),
        signer=SignerCheck(store, ca_cert, config.device_cert_grace_days),
        fleet=fleet,
        exporter=exporter,
        renewals=Renewals.load(paths, config, store),
        max_attempts=config.task_max_attempts,
        tally=tally,
    )
    return CourierDesk(importer, exporter)
