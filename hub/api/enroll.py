"""Enrollment routes: the only route that takes a bootstrap token instead of a bearer
token, the public CA certificate a device pins before trusting anything else, and
certificate renewal, where a CSR signed with the device's key is the credential."""

from __future__ import annotations

import logging
import math
from typing import Annotated

from aiohttp import web
from msgspec import Meta

from hub.access.ratelimit import RateLimiter
from hub.api import params
from hub.api.context import ApiContext
from hub.api.errors import ApiError
from hub.api.routing import AUDIT_DETAIL, Route
from hub.fleet.certificates import RenewalRefusedError
from hub.fleet.enrollment import BadTokenError, EnrollmentRefusedError
from outpost import devicenames as names
from outpost.schema import Struct

logger = logging.getLogger(__name__)
# Refusals said in the log, per address: a failing address's requests still reach the
# handler (only its failures are held off, by the guard), so junk from one address must
# not fill the log. Every refusal is still answered.
_SAID = RateLimiter(rate=0.2, burst=5)


def _say_refused(request: web.Request, what: str, exc: Exception) -> None:
    if _SAID.allow(f"ip:{request.remote}"):
        logger.warning("%s refused: %s", what, exc)
    else:
        logger.debug("%s refused: %s", what, exc)


class Health(Struct, frozen=True):
    """The hub answers."""

    status: Annotated[str, Meta(description="always ok")]
    broker_link: Annotated[
        str,
        Meta(
            description="the hub's link to the broker: starting, connected, disconnected, "
            "or unlisted (a replica the broker's ACL does not name takes no device "
            "messages; see docs/scale-out.md)"
        ),
    ]


class EnrollRequest(Struct, frozen=True):
    """A device asks for its certificate."""

    token: Annotated[str, Meta(max_length=4096, description="one-time bootstrap token")]
    csr: Annotated[str, Meta(max_length=16384, description="PEM certificate signing request")]
    profile: Annotated[
        str,
        Meta(
            max_length=64,
            pattern=r"^[^\x00-\x1f\x7f]*$",  # kept, logged and shown: no control characters
            description="name of the device's profile",
        ),
    ]
    name: Annotated[
        str,
        Meta(
            max_length=names.MAX_LENGTH,
            description="the name it asks for (default: its id); a taken name gets a -2, -3, "
            "... suffix",
        ),
    ] = ""


class Enrolled(Struct, frozen=True):
    """A new device identity."""

    device_id: Annotated[str, Meta(description="id the hub assigned (the certificate's CN)")]
    certificate: Annotated[str, Meta(description="the device certificate, PEM")]
    ca: Annotated[str, Meta(description="the fleet CA certificate, PEM")]
    signing_public_key: Annotated[str, Meta(description="the hub's Ed25519 signing key, PEM")]
    broker_url: Annotated[str, Meta(description="where the device connects, mqtts://HOST:PORT")]
    not_after: Annotated[float, Meta(description="certificate expiry, seconds since the epoch")]
    name: Annotated[str, Meta(description="the name it got")] = ""
    bundle_public_key: Annotated[
        str, Meta(description="the hub's P-256 key that courier bundles are encrypted to, PEM")
    ] = ""


class RenewRequest(Struct, frozen=True):
    """A device asks for a new certificate for the key it holds (no token needed)."""

    certificate: Annotated[
        str,
        Meta(
            max_length=16384,
            description="a certificate the device holds (PEM), expired ones within the grace "
            "period too",
        ),
    ]
    csr: Annotated[
        str,
        Meta(
            max_length=16384,
            description="PEM certificate signing request signed with that certificate's key",
        ),
    ]


class RenewedOut(Struct, frozen=True):
    """A renewed device certificate."""

    certificate: Annotated[str, Meta(description="the new device certificate, PEM")]
    not_after: Annotated[float, Meta(description="its expiry, seconds since the epoch")]


def routes(ctx: ApiContext) -> list[Route]:
    async def health(request: web.Request) -> web.Response:
        return params.answer(Health("ok", ctx.broker_link()))

    async def ca(request: web.Request) -> web.Response:
        return web.Response(body=ctx.enrollment.ca_pem, content_type="application/x-pem-file")

    async def enroll(request: web.Request) -> web.Response:
        body = await params.json_body(request, EnrollRequest)
        if body.name:
            try:
                names.check(body.name, "body.name")
            except ValueError as exc:
                raise ApiError(422, "bad_name", str(exc), field="body.name") from exc
        try:
            enrolled = await ctx.enrollment.enroll(
                token=body.token, csr_pem=body.csr.encode(), profile=body.profile, name=body.name
            )
        except EnrollmentRefusedError as exc:
            _say_refused(request, "enrollment", exc)
            request[AUDIT_DETAIL] = {"refused": str(exc)}
            status = 401 if isinstance(exc, BadTokenError) else 422
            raise ApiError(status, "enrollment_refused", str(exc)) from exc
        request[AUDIT_DETAIL] = {
            "device": enrolled.device_id,
            "name": enrolled.name,
            "profile": body.profile,
        }
        out = Enrolled(
            device_id=enrolled.device_id,
            certificate=enrolled.certificate_pem.decode(),
            ca=enrolled.ca_pem.decode(),
            signing_public_key=enrolled.signing_public_pem.decode(),
            bundle_public_key=enrolled.bundle_public_pem.decode(),
            broker_url=enrolled.broker_url,
            not_after=enrolled.not_after,
            name=enrolled.name,
        )
        return params.answer(out, status=201)

    async def renew(request: web.Request) -> web.Response:
        # Public on purpose: an expired certificate would fail the TLS handshake, so the
        # device proves itself in the body (a CSR signed with its certificate's key).
        body = await params.json_body(request, RenewRequest)
        try:
            renewed = await ctx.renewals.renew(
                certificate_pem=body.certificate.encode(), csr_pem=body.csr.encode()
            )
        except RenewalRefusedError as exc:
            _say_refused(request, "renewal", exc)
            request[AUDIT_DETAIL] = {"device": exc.device_id, "refused": str(exc)}
            headers = {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after else None
            raise ApiError(exc.status, "renewal_refused", str(exc), headers=headers) from exc
        request[AUDIT_DETAIL] = {
            "device": renewed.device_id,
            "serial": renewed.serial,
            "previous_serial": renewed.previous_serial,
        }
        out = RenewedOut(certificate=renewed.certificate_pem.decode(), not_after=renewed.not_after)
        return params.answer(out)

    return [
        Route(
            "GET", "/api/v1/health", "public", health, "Liveness check", "public", response=Health
        ),
        Route(
            "GET",
            "/api/v1/enroll/ca",
            "public",
            ca,
            "The fleet CA certificate (PEM)",
            "enrollment",
            content_type="application/x-pem-file",
        ),
        Route(
            "POST",
            "/api/v1/enroll",
            "bootstrap",
            enroll,
            "Exchange a bootstrap token and a CSR for a device certificate",
            "enrollment",
            action="device.enroll",
            body=EnrollRequest,
            response=Enrolled,
            status=201,
            errors=(401, 422),
        ),
        Route(
            "POST",
            "/api/v1/enroll/renew",
            "bootstrap",  # the proof is in the body: the certificate and a CSR signed by its key
            renew,
            "Renew a device certificate: a certificate it holds (expired within the grace "
            "period too) and a CSR signed with its key",
            "enrollment",
            action="device.renew",
            body=RenewRequest,
            response=RenewedOut,
            errors=(403, 422),
        ),
    ]
