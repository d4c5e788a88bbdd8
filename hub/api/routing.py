"""The route table and the guard every route passes: authentication, role, rate limit,
audit and latency, in one place, so no handler can forget one of them."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_origin

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ed25519
from prometheus_client import Histogram

from hub.access import apitokens
from hub.access.apitokens import Principal, Role
from hub.access.ratelimit import RateLimiter
from hub.access.tokenstates import TokenStates
from hub.api.errors import ApiError
from hub.api.params import Page
from hub.monitoring.metrics import HubMetrics
from hub.store import AuditEntry, HubStore
from outpost import wire

logger = logging.getLogger(__name__)

# "device": the caller presents a device certificate of this hub (mutual TLS).
# "bootstrap": no token; the body carries the credential (a bootstrap token, or a
# certificate and a CSR signed with its key), and refusals count as failed logins.
Access = Role | Literal["public", "bootstrap", "device"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Answers of an enrollment or renewal route that count as a failed login from the address.
BOOTSTRAP_REFUSALS = frozenset({401, 403, 422})
MAX_AUDITED_PATH = 512  # characters of a request's path the audit log keeps
MAX_AUDITED_TEXT = 512  # characters of each text in an audit entry's detail
MAX_AUDITED_ITEMS = 100  # items of each list in it
VERIFIED_CACHE = 1024  # tokens whose signature was checked, kept to skip re-checking
PRINCIPAL = web.RequestKey("principal", Principal)
DEVICE = web.RequestKey("device", str)  # the device id of a "device" route's caller


@dataclass(frozen=True)
class Param:
    """A path or query parameter, as the OpenAPI document describes it."""

    name: str
    where: Literal["path", "query"]
    description: str
    type: str = "string"
    repeated: bool = False


@dataclass(frozen=True)
class Route:
    """One API route: how to reach it, who may, what it takes and what it answers."""

    method: str
    path: str
    access: Access
    handler: Handler
    summary: str
    tag: str
    action: str = ""  # the audit log's name for a mutating route
    body: type[Any] | None = None
    response: type[Any] | None = None  # a `Page` of rows: the route lists, a page at a time
    status: int = 200
    params: tuple[Param, ...] = ()
    content_type: str = "application/json"
    raw_body: str = ""  # the media type of a body taken as bytes (not a `body` Struct)
    errors: tuple[int, ...] = field(default=())

    @property
    def paginated(self) -> bool:
        """Whether the route lists a page at a time (it takes `limit` and `cursor`)."""
        return get_origin(self.response) is Page


@dataclass
class Guard:
    """Authenticates, authorises, rate-limits, audits and times every request."""

    store: HubStore
    tokens: TokenStates
    metrics: HubMetrics
    token_key: ed25519.Ed25519PublicKey
    per_subject: RateLimiter
    auth_failures: RateLimiter
    _seen: dict[str, Principal] = field(default_factory=dict)

    def wrap(self, route: Route) -> Handler:
        # The latency histogram's series of this route, by status: looked up once each
        # (a labels() call validates and locks every time).
        timed: dict[int, Histogram] = {}

        async def guarded(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            request[ROUTE] = route
            try:
                _no_nul(request)
                if route.access == "device":
                    await self._authorise_device(request)
                elif route.access != "public" and route.access != "bootstrap":
                    # The handler checks a bootstrap route's credential, in its body.
                    await self._authorise(request, route.access)
                response = await route.handler(request)
                status = response.status
                return response
            except ApiError as exc:
                status = exc.status
                if route.access == "bootstrap" and status in BOOTSTRAP_REFUSALS:
                    # A refused token or proof of possession counts as a failed login. The
                    # handler checked it first: a good one from a shared address enrolls
                    # or renews, however often its neighbours fail.
                    held_off = self._failed_login(request)
                    if held_off is not None:
                        status = held_off.status
                        raise held_off from exc
                raise
            finally:
                series = timed.get(status)
                if series is None:
                    series = self.metrics.http_seconds.labels(route.method, route.path, str(status))
                    timed[status] = series
                series.observe(time.perf_counter() - started)
                # Not the answers to an address held off for failing too often: each
                # cost a row, and a client with no token could write them without end.
                if route.method in MUTATING and status != 429 and not request.get(AUDITED):
                    await self._audit(request, route, status)

        return guarded

    def _failed_login(self, request: web.Request) -> ApiError | None:
        """Count a refused credential against its address; once the address has failed
        too often of late, the 429 to answer instead of the refusal.

        Only failing credentials are held off, never the address as a whole: behind a
        NAT or the TLS-passthrough ingress, everyone shares it, and a stranger's junk
        tokens must not lock out valid ones. Guessing stays hopeless either way (tokens
        are 256-bit signed secrets); the hold-off bounds the refusals and the audit rows
        they cost.
        """
        address = f"ip:{request.remote}"
        if self.auth_failures.allow(address):
            return None
        return _too_many(self.auth_failures.retry_after(address))

    async def _authorise(self, request: web.Request, role: Role) -> None:
        """Authenticate, then check role and rate; the principal is recorded on the
        request as soon as it is known, so a refusal is audited under its name."""
        try:
            principal = await self._authenticate(request)
        except ApiError as exc:
            held_off = self._failed_login(request)
            if held_off is not None:
                raise held_off from exc
            raise
        request[PRINCIPAL] = principal
        # The rate first: refused for its role, a request still costs an audit row, and
        # a viewer's token could otherwise send admin routes 403s without end.
        subject = f"sub:{principal.subject}"
        if not self.per_subject.allow(subject):
            raise _too_many(self.per_subject.retry_after(subject))
        if not principal.may(role):
            raise ApiError(
                403,
                "forbidden",
                f"this route needs the {role} role; the token has {principal.role}",
            )

    async def _authorise_device(self, request: web.Request) -> None:
        """The caller is an enrolled, unrevoked device: the TLS layer verified its
        certificate against the fleet CA; the registry says whether it may still act."""
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(item[0] for item in (peer or {}).get("subject", ()))
        device_id = subject.get("commonName", "")
        device = await self.store.device(device_id) if device_id else None
        if device is None or device.revoked_at is not None:
            if held_off := self._failed_login(request):
                raise held_off
            if not device_id:
                raise ApiError(
                    401, "unauthenticated", "this route needs a device certificate (mutual TLS)"
                )
            why = "is revoked" if device else "is not a device of this hub"
            raise ApiError(403, "forbidden", f"{device_id} {why}")
        request[DEVICE] = device_id
        if not self.per_subject.allow(f"device:{device_id}"):
            raise _too_many(self.per_subject.retry_after(f"device:{device_id}"))

    async def _authenticate(self, request: web.Request) -> Principal:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated("missing bearer token (Authorization: Bearer <token>)")
        try:
            principal = self._verified(token.strip())
        except apitokens.ApiTokenError as exc:
            raise _unauthenticated(str(exc)) from exc
        state = await self.tokens.state(principal.jti)  # from memory: see tokenstates.py
        if state != "active":
            raise _unauthenticated(
                "token revoked" if state == "revoked" else "token not issued by this hub"
            )
        return principal

    def _verified(self, token: str) -> Principal:
        """Verify a token's signature once, then remember it until it expires.

        A signature check costs more than the rest of a small request; what it proves
        about a given token string never changes. Revocation is still checked every time
        (`TokenStates`).
        """
        principal = self._seen.get(token)
        if principal is not None and principal.expires_at > time.time():
            return principal
        principal = apitokens.verify(token, self.token_key)
        if len(self._seen) >= VERIFIED_CACHE:
            self._seen.pop(next(iter(self._seen)))  # oldest first: dicts keep insertion order
        self._seen[token] = principal
        return principal

    async def _audit(self, request: web.Request, route: Route, status: int) -> None:
        try:
            await self.store.audit(audit_entry(request, status, route))
        except Exception:  # the answer is already decided; losing it would be worse
            logger.exception(
                "could not write the audit entry for %s %s", route.method, request.path
            )


def audit_entry(request: web.Request, status: int, route: Route | None = None) -> AuditEntry:
    """The audit entry of `request` answered with `status`: a handler that commits its
    change with the entry (`AUDITED`) asks for it before the answer is made."""
    route = route or request[ROUTE]
    principal = request.get(PRINCIPAL)
    return AuditEntry(
        at=time.time(),
        subject=principal.subject
        if principal
        else (f"device:{request[DEVICE]}" if DEVICE in request else f"anonymous@{request.remote}"),
        role=principal.role if principal else None,
        method=route.method,
        path=wire.clip(request.path, MAX_AUDITED_PATH),
        action=route.action or route.summary,
        status=status,
        detail=json.dumps(_clipped(request.get(AUDIT_DETAIL, {})), sort_keys=True),
    )


def _clipped(value: Any) -> Any:
    """An audit detail with each text cut to `MAX_AUDITED_TEXT` characters and each list
    to `MAX_AUDITED_ITEMS` items: a caller's 4 MB model name is not kept whole, row by
    row (what it was is still plain)."""
    if isinstance(value, str):
        return wire.clip(value, MAX_AUDITED_TEXT)
    if isinstance(value, dict):
        return {wire.clip(str(k), MAX_AUDITED_TEXT): _clipped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        kept = [_clipped(v) for v in value[:MAX_AUDITED_ITEMS]]
        return kept + ([f"…[{len(value)} items]"] if len(value) > MAX_AUDITED_ITEMS else [])
    return value


def _no_nul(request: web.Request) -> None:
    """400 for a NUL character in the path or the query, which PostgreSQL's text cannot
    hold: a lookup with one failed there (500) and answered on SQLite."""
    if "\x00" in request.path or any(
        "\x00" in key or "\x00" in value for key, value in request.query.items()
    ):
        raise ApiError(400, "bad_request", "the path or query holds a NUL character (%00)")


# What a handler wants the audit log to keep about a mutation (never a secret).
AUDIT_DETAIL = web.RequestKey("audit_detail", dict)
# Set by a handler whose change commits with its request's audit entry (`audit_entry`):
# one durable commit where there were two, and no change without its entry. The guard
# then writes none of its own.
AUDITED = web.RequestKey("audited", bool)
ROUTE = web.RequestKey("route", Route)


def _unauthenticated(message: str) -> ApiError:
    return ApiError(
        401, "unauthenticated", message, headers={"WWW-Authenticate": 'Bearer realm="outpost"'}
    )


def _too_many(retry_after: int) -> ApiError:
    return ApiError(
        429,
        "rate_limited",
        f"too many requests; retry in {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )
