"""Which offers of model releases the agent takes, by their seal (outpost/offerseal.py).

An offer is taken only if its seal is the hub's, names this device and exactly the
releases and shadows offered, and is numbered no lower than the last offer taken (the
same number again is the broker redelivering the retained offer). An unsealed offer is
taken only until a sealed one was: it comes from a hub that seals none; after that it
is a replay, or a hub gone back to a version without seals. The number taken is kept
with the deploy states (edge/deploystate.py), written before the offer is acted on.
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric import ed25519

from edge.deploystate import DeployStates
from outpost import offerseal, wire
from outpost.signing import Signed

logger = logging.getLogger(__name__)


def judge(
    offer: wire.ModelReleases,
    states: DeployStates,
    key: ed25519.Ed25519PublicKey,
    device_id: str,
) -> tuple[bool, bool]:
    """(take it, its number is newer than the last taken: `states` holds it now, and
    must be saved before the offer is acted on)."""
    if offer.seal is None:
        if states.offer_seq:
            logger.warning(
                "model releases ignored: the offer is not sealed, and this device took "
                "sealed ones (up to number %d): replayed, or from a hub that seals none",
                states.offer_seq,
            )
            return False, False
        return True, False
    try:
        seal = offerseal.verify(
            key,
            Signed(offer.seal.document, offer.seal.signature),
            device_id,
            [r.document for r in offer.releases],
            [r.document for r in offer.shadows],
        )
    except offerseal.SealError as exc:
        logger.warning("model releases ignored: %s", exc)
        return False, False
    if seal.seq < states.offer_seq:
        logger.warning(
            "model releases ignored: offer %d is older than offer %d, taken already "
            "(replayed, or overtaken on its way)",
            seal.seq,
            states.offer_seq,
        )
        return False, False
    if seal.seq == states.offer_seq:
        return True, False
    states.offer_seq = seal.seq
    return True, True
