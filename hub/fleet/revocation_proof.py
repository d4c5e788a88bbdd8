"""Proof that the broker refuses a revoked device, before anyone is told it does.

Reloading the broker is not proof: the reload may read a stale file, or reach another
process than the one devices connect to. The only proof is a connection presenting a
revoked certificate that the broker refuses because it is revoked. The hub holds no
device's private key, so it issues a throw-away certificate for the device's CN with a
key that lives only for the probe, records it among the device's certificates before
the CRL is written (so the CRL that lists it lists all of theirs: a broker refusing it
read that CRL), and connects with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from hub.fleet import throwaway
from hub.fleet.throwaway import ThrowawayCert
from hub.paths import HubPaths
from hub.store import HubStore

PROBE_TIMEOUT_S = 10.0


async def issue_probe(paths: HubPaths, store: HubStore, device_id: str) -> ThrowawayCert:
    """Issue a probe certificate for `device_id` and record it as one of its own."""
    return await throwaway.issue(paths, store, device_id, reason="probe")


async def refused_as_revoked(
    paths: HubPaths, host: str, port: int, probe: ThrowawayCert
) -> str | None:
    """Connect to the broker with the probe; None if it refused the certificate as
    revoked, else what happened instead (the proof failed)."""
    context = await asyncio.to_thread(throwaway.client_context, paths, probe)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host
            )
            try:
                # TLS 1.3 finishes the client's side of the handshake before the server
                # has judged the certificate: its verdict comes with the first read.
                data = await reader.read(1)
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except ssl.SSLError as exc:
        if "REVOKED" in str(exc).upper():
            return None
        return f"the broker refused the probe, but not as revoked: {exc}"
    except (OSError, TimeoutError) as exc:
        return f"could not reach the broker at {host}:{port}: {exc!s}"
    if not data:
        return "the broker closed the probe's connection without saying it was revoked"
    return "the broker accepted a revoked certificate"
