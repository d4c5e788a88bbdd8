"""Keep the device certificate valid: renew it at two thirds of its life, and at once when
it has already expired (a device that was offline long; the hub allows that for a grace
period), for the same key, over HTTPS verified against the fleet CA.

No client certificate is presented (an expired one would fail the handshake): the
credential is the CSR, signed with the device key, sent with the certificate it renews.
The new certificate replaces the old one atomically; the agent's next connection uses it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email.utils
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import aiohttp

from edge.identity import DevicePaths, Identity
from outpost import backoff, files, tls
from outpost.aio import wait_event

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

logger = logging.getLogger(__name__)

RENEW_FRACTION = 2 / 3
# Look at the schedule again at least this often: the wall clock of a device may be set
# (NTP, a real-time clock that was wrong) while the agent sleeps.
MAX_SLEEP_S = 3600.0
# Cap of the back-off after a renewal that failed on the way (network, hub unavailable).
RETRY_CAP_S = 600.0
# After a refusal, ask again this much later: it takes an operator (a longer grace, a
# new enrollment), and asking often changes nothing.
REFUSED_RETRY_S = 3600.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)


class RenewalError(RuntimeError):
    """The certificate was not renewed (network, hub trouble); worth trying again soon,
    but not before `retry_after_s` when the hub said how long to wait (Retry-After)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RenewalRefusedError(RenewalError):
    """The hub refused to renew the certificate; the message gives its reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def renew_at(not_before: float, not_after: float, fraction: float = RENEW_FRACTION) -> float:
    """When to renew a certificate valid from `not_before` to `not_after` (epoch seconds)."""
    return not_before + fraction * (not_after - not_before)


def cert_window(paths: DevicePaths, identity: Identity) -> tuple[float, float]:
    """The certificate's validity window (blocking: may read the certificate)."""
    if identity.cert_not_before is not None:
        return identity.cert_not_before, identity.cert_not_after
    # Enrolled before identity.json kept it: read it from the certificate, once.
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


async def renew(paths: DevicePaths, identity: Identity) -> Identity:
    """Renew the device certificate now; return the identity that records it.

    Raises `RenewalRefusedError` when the hub says no, `RenewalError` when it could not
    be asked or answered wrongly.
    """
    # Imported here: certificate handling is needed only now and then.
    from edge import enroll

    try:
        key, cert_pem, ca_pem = await asyncio.to_thread(_read, paths)
        # A CA that is none is named here (tls.TlsFileError, an OSError), not left to
        # OpenSSL's "no start line: cadata does not contain a certificate".
        context = tls.pinned_context(ca_pem, f"the CA certificate {paths.ca_cert}")
    except (OSError, ValueError, enroll.EnrollError) as exc:
        raise RenewalError(
            f"cannot read the device identity in {paths.identity_dir}: {exc}"
        ) from exc
    csr = enroll.make_csr(key, identity.device_id)
    reply = await _post(identity.hub_url, context, {"certificate": cert_pem, "csr": csr.decode()})
    new_pem = str(reply.get("certificate", "")).encode()
    try:
        cert = enroll.check_certificate(new_pem, ca_pem, key, identity.device_id)
    except enroll.EnrollError as exc:
        raise RenewalError(str(exc)) from exc
    window = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    return await asyncio.to_thread(save_certificate, paths, new_pem, window)


def _read(paths: DevicePaths) -> tuple[ec.EllipticCurvePrivateKey, str, bytes]:
    from edge import enroll

    return (
        enroll.load_device_key(paths),
        paths.cert.read_text(encoding="ascii"),
        paths.ca_cert.read_bytes(),
    )


def save_certificate(paths: DevicePaths, cert_pem: bytes, window: tuple[float, float]) -> Identity:
    # The certificate first: if we stop between the two, identity.json still holds the
    # old window and the next look at the schedule renews once more, which is harmless.
    files.replace(paths.cert, cert_pem, files.PUBLIC)
    identity = dataclasses.replace(
        Identity.load(paths), cert_not_before=window[0], cert_not_after=window[1]
    )
    identity.save(paths)
    return identity


async def _post(hub_url: str, context: ssl.SSLContext, body: dict[str, str]) -> dict[str, Any]:
    url = f"{hub_url}/api/v1/enroll/renew"
    try:
        async with (
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
            session.post(url, json=body, ssl=context) as response,
        ):
            status, reason = response.status, response.reason or ""
            # Read only for a refusal: a 200 carries the new certificate, whatever else.
            retry_after = (
                None if status == 200 else retry_after_s(response.headers.get("Retry-After"))
            )
            try:
                reply = await response.json(content_type=None)
            except ValueError:
                reply = None
    except (aiohttp.ClientError, TimeoutError) as exc:
        from edge.enroll import unreached  # loaded already: renew() imported it

        raise RenewalError(f"cannot reach the hub at {hub_url}: {unreached(exc)}") from exc
    if status == 200 and isinstance(reply, dict):
        return reply
    message = reason
    if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
        message = str(reply["error"].get("message", reason))
    if 400 <= status < 500 and status not in (408, 429):
        raise RenewalRefusedError(
            status, f"the hub refused to renew the certificate ({status}): {message}"
        )
    raise RenewalError(
        f"the hub could not renew the certificate ({status}): {message}", retry_after
    )


def retry_after_s(value: str | None) -> float | None:
    """A Retry-After header's wait in seconds (delay-seconds or an HTTP date), at most
    `MAX_SLEEP_S`; None if absent or unreadable (the back-off decides then)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "²", which isdigit() takes too
        return min(float(value), MAX_SLEEP_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # an HTTP date is GMT; a naive one is read so too
            when = when.replace(tzinfo=dt.UTC)
        wait = when.timestamp() - time.time()
    # OverflowError: a zone offset of many digits. From a proxy or a broken hub: the
    # renewer must go on (its loop ends at anything else).
    except (TypeError, ValueError, OverflowError):
        return None
    return min(max(0.0, wait), MAX_SLEEP_S)


class CertRenewer:
    """Renews the certificate while the agent runs; `on_renewed` hears of each renewal,
    `on_refused` of each refusal by the hub."""

    def __init__(
        self,
        paths: DevicePaths,
        *,
        on_renewed: Callable[[Identity], Awaitable[None]] | None = None,
        on_refused: Callable[[RenewalRefusedError], Awaitable[None]] | None = None,
        retry_cap: float = RETRY_CAP_S,
        refused_retry: float = REFUSED_RETRY_S,
    ) -> None:
        self._paths = paths
        self._on_renewed = on_renewed
        self._on_refused = on_refused
        self._retry_cap = retry_cap
        self._refused_retry = refused_retry
        self._announced: tuple[float, float] | None = None
        self._urged = asyncio.Event()  # the broker says the certificate expired: renew now
        self.renewals = 0
        self.looks = 0  # times it judged whether to renew

    def urge(self) -> None:
        """The broker refused the certificate as expired: renew at once, whatever this
        device's clock says (one that runs behind thinks it is not due yet, and would
        wait out the hub's grace period, then be locked out). The hub judges expiry by
        its own clock, so an early request is harmless."""
        self._urged.set()

    async def run(self) -> NoReturn:
        attempt = 0
        while True:
            try:
                wait = await self._step()
            except RenewalRefusedError as exc:
                logger.error("%s; asking again in %.0f s", exc, self._refused_retry)
                wait = self._refused_retry
                if self._on_refused is not None:
                    await self._on_refused(exc)
            except (RenewalError, OSError, ValueError, TypeError) as exc:
                # ValueError, TypeError: identity.json or the certificate unreadable or
                # damaged; a failing disk must not end the agent either.
                wait = backoff.delay(attempt, cap=self._retry_cap)
                if isinstance(exc, RenewalError) and exc.retry_after_s is not None:
                    # The hub's rate limit, or a hold for flooding: asking sooner is
                    # refused again (and logged again, here and at the hub).
                    wait = max(wait, exc.retry_after_s)
                attempt += 1
                logger.warning("certificate renewal failed: %s; retrying in %.1f s", exc, wait)
            else:
                attempt = 0
            if wait > 0:
                await wait_event(self._urged, wait)  # a sleep, cut short by `urge`

    async def _step(self) -> float:
        """Renew if due (or urged); return how long to sleep before looking again (0:
        look now)."""
        self.looks += 1
        urged = self._urged.is_set()
        self._urged.clear()
        identity = await asyncio.to_thread(Identity.load, self._paths)
        window = await asyncio.to_thread(cert_window, self._paths, identity)
        now = time.time()
        due = renew_at(*window)
        if urged and due > now:
            logger.warning(
                "the broker says the certificate expired, this device's clock says not until "
                "%s: is the clock behind? renewing now",
                _when(window[1]),
            )
        elif due > now:
            if window != self._announced:
                self._announced = window
                logger.info(
                    "certificate valid until %s; renewing from %s", _when(window[1]), _when(due)
                )
            return min(due - now, MAX_SLEEP_S)
        if window[1] <= now:
            logger.warning(
                "certificate expired at %s; renewing (the hub allows it for a grace period)",
                _when(window[1]),
            )
        renewed = await renew(self._paths, identity)
        self.renewals += 1
        logger.info("certificate renewed; valid until %s", _when(renewed.cert_not_after))
        if self._on_renewed is not None:
            await self._on_renewed(renewed)
        if renew_at(*await asyncio.to_thread(cert_window, self._paths, renewed)) <= time.time():
            # Never renew in a loop: a clock far ahead makes every new one look due.
            logger.warning(
                "the new certificate (valid until %s) is due for renewal already: is this "
                "device's clock right?",
                _when(renewed.cert_not_after),
            )
            return self._refused_retry
        return 0.0


class ClientTls:
    """The agent's TLS client context, rebuilt when the certificate file changes (a
    renewal, by the agent or by `outpost-agent renew`), so the next connection uses it."""

    def __init__(self, paths: DevicePaths) -> None:
        self._paths = paths
        self._stamp: tuple[int, int, int] | None = None
        self._context: ssl.SSLContext | None = None

    async def load(self) -> ssl.SSLContext:
        """Build the context now (reads files: in a thread)."""
        return await asyncio.to_thread(self.current)

    def current(self) -> ssl.SSLContext:
        """The context for the certificate on disk. A `stat` per call; the files are read
        again only after they changed (a few hundred bytes, once per renewal)."""
        try:
            stamp = _stamp(self._paths.cert)
            if self._context is not None and stamp == self._stamp:
                return self._context
            context = tls.client_context(self._paths.ca_cert, self._paths.cert, self._paths.key)
        except OSError as exc:  # ssl.SSLError too: say, a certificate for another key
            if self._context is None:
                raise
            logger.error("kept the previous certificate: cannot load %s: %s", self._paths.cert, exc)
            return self._context
        self._context, self._stamp = context, stamp
        logger.debug("TLS context loaded from %s", self._paths.cert)
        return context


def _stamp(path: Path) -> tuple[int, int, int]:
    # The inode too: a renewal replaces the file (a new inode) even within one mtime tick.
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
