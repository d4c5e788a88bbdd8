"""When the broker will not have this device: its certificate was revoked, or it expired
and cannot be renewed any more (past the hub's grace period).

Retrying every few seconds changes nothing then; only a person can (a new enrollment).
So the agent says once, plainly, what happened and what to run, shows it in
`/v1/status` and the systemd status line, and tries again only every
`refused_retry_s`. Everything else goes on: local inference, the local API and the store,
which keeps every record (a new enrollment is a new data folder; this one stays as is).

How the refusal shows: the broker answers the client certificate with a TLS alert
(`SSLV3_ALERT_CERTIFICATE_REVOKED`, `..._EXPIRED`). With TLS 1.2 it ends the handshake,
and the connect raises it. With TLS 1.3 the client's side of the handshake is already
done when the broker checks its certificate, so the alert arrives at the first read,
inside paho: paho logs it (as an error, on the logger the agent gives aiomqtt) and drops
the socket, and aiomqtt waits for a CONNACK until its 10 s timeout. So the agent watches
that logger: the alert is classified there, the attempt ends at once (`Client`), and
paho's line, repeated each attempt, becomes a debug line under the one plain line here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final, Self

import aiomqtt

from edge.identity import DevicePaths, Identity
from edge.renewal import RenewalRefusedError, cert_window
from outpost.aio import cancel_until_done, wait_event
from outpost.mqtt import LinkState

REVOKED: Final = "revoked"
EXPIRED: Final = "expired"  # the hub may still renew it (within its grace period)
PAST_GRACE: Final = "expired-past-grace"  # the hub refused to renew it
REFUSED_STATES: Final = (REVOKED, EXPIRED, PAST_GRACE)

# Alerts the broker sends about *our* certificate. Not "certificate verify failed:
# certificate has expired", which is this side refusing the broker's certificate.
_ALERTS: Final = (
    (REVOKED, ("ALERT_CERTIFICATE_REVOKED", "ALERT CERTIFICATE REVOKED")),
    (EXPIRED, ("ALERT_CERTIFICATE_EXPIRED", "ALERT CERTIFICATE EXPIRED")),
)

ENROLL_ACTION: Final = "needs outpost-agent enroll with a new bootstrap token"
RENEW_ACTION: Final = "renewing the certificate"
SUMMARIES: Final = {
    REVOKED: "revoked: needs outpost-agent enroll",
    EXPIRED: "expired: renewing the certificate",
    PAST_GRACE: "expired past the grace period: needs outpost-agent enroll",
}


def classify(error: BaseException | str) -> str | None:
    """REVOKED or EXPIRED when `error` is the broker refusing our certificate as such,
    else None (a passing error: network, broker restarting, a timeout)."""
    upper = str(error).upper()  # an SSLError's text carries its reason: "[SSL: REASON] ..."
    for kind, marks in _ALERTS:
        if any(mark in upper for mark in marks):
            return kind
    return None


class Client(aiomqtt.Client):
    """An aiomqtt client whose connect gives up as soon as `refused` is set (the broker
    refused the certificate after the handshake) rather than at aiomqtt's timeout."""

    def __init__(self, *args: Any, refused: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = refused

    async def __aenter__(self) -> Self:
        connecting = asyncio.ensure_future(super().__aenter__())
        refused = asyncio.ensure_future(self._refused.wait())
        try:
            await asyncio.wait({connecting, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            refused.cancel()
            # The client is thrown away after a failed attempt (the link makes a new
            # one each time), so a connect cut short leaves nothing to tidy.
            await cancel_until_done(connecting)
        if connecting.cancelled():
            raise aiomqtt.MqttError("the broker refused this device's certificate")
        return connecting.result()


class Refusals:
    """The agent's `outpost.mqtt.Refusals`: recognises a refusal for good, says so once,
    keeps the link's state, and waits `retry_s` between attempts (less when the
    certificate is renewed meanwhile)."""

    def __init__(self, link: LinkState, paths: DevicePaths, retry_s: float) -> None:
        self._link = link
        self._paths = paths
        self._retry_s = retry_s
        self._seen: str | None = None  # what paho logged during this attempt
        self._attempt_refused = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set by a renewal: ends the slow wait, since the new certificate may be let in.
        self._renewed = asyncio.Event()
        self._renewal_refusal: str | None = None  # the hub's reason, until a renewal
        self._message = ""
        self._retry_at: float | None = None
        self.on_expired: Callable[[], None] | None = None  # CertRenewer.urge

    # ------------------------------------------------------------ the link's hooks

    def new_attempt(self) -> asyncio.Event:
        """Called as each client is made: the event its connect gives up on."""
        self._loop = asyncio.get_running_loop()
        self._seen = None
        self._attempt_refused = asyncio.Event()
        # Only a renewal after this attempt took its certificate may cut the next wait.
        self._renewed.clear()
        return self._attempt_refused

    def watch_log(self, record: logging.LogRecord) -> bool:
        """A filter on the logger aiomqtt and paho log to: spots the broker's alert."""
        if record.levelno < logging.WARNING:  # the hot path: paho's per-packet debug lines
            return True
        kind = classify(record.getMessage())  # paho: "failed to receive on socket: [SSL: ...]"
        if kind is None:
            return True
        self._seen = kind
        if self._loop is not None:  # paho may log from the executor thread that connects
            self._loop.call_soon_threadsafe(self._attempt_refused.set)
        # The plain line says it; paho's, repeated each attempt, is a debug line.
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)

    async def after_failure(self, error: aiomqtt.MqttError) -> bool:
        kind = self._seen or classify(error)
        self._seen = None
        expired_at = await asyncio.to_thread(self._expired_at)
        if kind is None and expired_at is not None:
            # A broker may word it otherwise ("bad certificate"); our clock says why.
            kind = EXPIRED
        if kind is None:
            return False
        if kind == EXPIRED and self._renewal_refusal is not None:
            kind = PAST_GRACE
        if kind == EXPIRED and self.on_expired is not None:
            self.on_expired()  # the renewer renews now, whatever this device's clock says
        self._retry_at = time.time() + self._retry_s
        self._enter(kind, expired_at)
        await wait_event(self._renewed, self._retry_s)
        self._retry_at = None
        return True

    # --------------------------------------------------------- the renewer's hooks

    async def renewed(self, _identity: Identity) -> None:
        self._renewal_refusal = None
        self._renewed.set()

    async def renewal_refused(self, error: RenewalRefusedError) -> None:
        self._renewal_refusal = str(error)
        if self._link.state == EXPIRED:  # the link waits on a renewal that will not come
            # The hub names a revocation in its reason: an expired certificate hides it
            # from the broker's alert (which reports the expiry first).
            kind = REVOKED if "revoked" in str(error) else PAST_GRACE
            self._enter(kind, await asyncio.to_thread(self._expired_at))

    # ------------------------------------------------------------------- reports

    def report(self) -> dict[str, Any]:
        """The link for `/v1/status`: its state, since when, and what it needs."""
        state = self._link.state
        refused = state in REFUSED_STATES
        return {
            "state": state,
            "since": self._link.since,
            "action": (RENEW_ACTION if state == EXPIRED else ENROLL_ACTION) if refused else None,
            "detail": self._message if refused else None,
            "retry_at": self._retry_at if refused else None,
        }

    def summary(self) -> str:
        """The link for the systemd status line."""
        return SUMMARIES.get(self._link.state, self._link.state)

    # -------------------------------------------------------------------- inside

    def _enter(self, kind: str, expired_at: float | None) -> None:
        when = _when(expired_at) if expired_at is not None else "some time ago"
        every = f"tries the broker again every {self._retry_s:g} s"
        retry = f"the agent {every}"
        enroll = (
            "It needs a new enrollment: get a new bootstrap token (`outpost-hub "
            "enroll-token`), then run `outpost-agent enroll --token NEW_TOKEN --data "
            f"NEW_FOLDER --profile {self._paths.profile}` (a fresh data folder; the device "
            "becomes a new one). Until then local inference and the local API go on, the "
            f"store keeps every record, and {retry}"
        )
        if kind == REVOKED:
            message = (
                f"this device's certificate was revoked by the hub. {enroll} (A hub also "
                "refuses a device this way while it holds it off for flooding the hub; "
                "the agent then connects again at a try after the hold.)"
            )
        elif kind == PAST_GRACE:
            message = (
                f"this device's certificate expired ({when}); {self._renewal_refusal}. {enroll}"
            )
        else:
            message = (
                f"this device's certificate expired ({when}); renewing it (the hub allows "
                f"that within its grace period); the agent reconnects once it is renewed, "
                f"or else {every}"
            )
        self._message = message
        # Logged once per state entered; a repeat is a debug line (LinkState).
        self._link.set(kind, message, level=logging.WARNING if kind == EXPIRED else logging.ERROR)

    def _expired_at(self) -> float | None:
        """When our certificate expired, if it has (by this device's clock); blocking."""
        try:
            _, not_after = cert_window(self._paths, Identity.load(self._paths))
        except (OSError, ValueError, TypeError):  # unreadable: the renewer says so
            return None
        return not_after if not_after <= time.time() else None


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
