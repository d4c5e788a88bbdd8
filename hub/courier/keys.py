"""The hub's bundle key: devices encrypt their bundles to its public half, which they
receive at enrollment (`bundle_public_key`). P-256, kept beside the hub's other keys."""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric import ec

from hub.fleet import keyfiles, pki
from hub.paths import HubPaths
from outpost import files
from outpost.courier.sealing import public_pem

logger = logging.getLogger(__name__)


def ensure_bundle_key(paths: HubPaths, *, announce: bool = True) -> bool:
    """Make the bundle key if this data folder has none (made before bundles existed);
    whether there is one. A folder that cannot be written (a read-only Secret that
    predates bundles) runs without: courier bundles are refused, saying why."""
    if paths.bundle_key.exists():
        return True
    key = pki.new_ec_key()
    try:
        files.write_new(paths.bundle_key, pki.key_pem(key))
        files.write_new(paths.bundle_pub, public_pem(key.public_key()), files.PUBLIC)
    except OSError as exc:
        logger.warning(
            "no bundle key in %s and none can be made there (%s): courier bundles are "
            "refused until %s is provided (outpost-hub init makes one)",
            paths.pki,
            exc.strerror or exc,
            paths.bundle_key.name,
        )
        return False
    if announce:  # a folder made before bundles: news; `outpost-hub init`: one of many keys
        logger.info("made the hub's bundle key (%s)", paths.bundle_key)
    return True


def load_bundle_key(paths: HubPaths) -> ec.EllipticCurvePrivateKey:
    return keyfiles.ec_key(paths.bundle_key)
