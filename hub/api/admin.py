"""Admin routes: bootstrap tokens, API keys and their revocation, the audit log; and
`whoami` for any caller."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from aiohttp import web
from msgspec import Meta

from hub.access import apitokens
from hub.access.apitokens import API_KEY_TTL_DEFAULT, Kind, Role
from hub.api import params
from hub.api.context import ApiContext
from hub.api.errors import ApiError, bad_field
from hub.api.routing import AUDIT_DETAIL, PRINCIPAL, Param, Route
from hub.fleet import bootstrap, labels
from hub.store import ApiTokenRecord, AuditEntry
from outpost import schema
from outpost.schema import FINITE, Struct


class EnrollTokenRequest(Struct, frozen=True):
    """Ask for a one-time bootstrap token."""

    ttl_s: (
        Annotated[
            float,
            Meta(
                ge=1,
                le=30 * 86400,
                description="lifetime in seconds (default: the hub's enroll_token_ttl)",
            ),
        ]
        | None
    ) = None
    labels: Annotated[
        dict[str, str], Meta(description="labels the enrolled device will carry")
    ] = {}


class EnrollTokenOut(Struct, frozen=True):
    """A bootstrap token; shown once, stored by the hub only as its id."""

    token: Annotated[str, Meta(description="the token (give it to one device)")]
    jti: Annotated[str, Meta(description="token id")]
    expires_at: Annotated[float, Meta(description="expiry, epoch seconds")]
    hub_url: Annotated[str, Meta(description="the hub URL the token names")]


class ApiKeyRequest(Struct, frozen=True):
    """Ask for a long-lived API key for automation."""

    subject: Annotated[
        str, Meta(max_length=64, description="who or what will use it, e.g. ci-deployer")
    ]
    role: Annotated[Role, Meta(description="viewer, operator or admin")]
    ttl_s: Annotated[
        float, Meta(ge=1, le=FINITE, description="lifetime in seconds (default 90 days)")
    ] = API_KEY_TTL_DEFAULT


class TokenOut(Struct, frozen=True):
    """An issued API token (its id and grant, never the token itself)."""

    jti: Annotated[str, Meta(description="token id (what `revoke` takes)")]
    subject: Annotated[str, Meta(description="who it speaks for")]
    role: Annotated[Role, Meta(description="its role")]
    kind: Annotated[Kind, Meta(description="session (short-lived) or api-key")]
    issued_at: Annotated[float, Meta(description="epoch seconds")]
    expires_at: Annotated[float, Meta(description="epoch seconds")]
    revoked_at: Annotated[float | None, Meta(description="epoch seconds, if revoked")]

    @classmethod
    def of(cls, r: ApiTokenRecord) -> TokenOut:
        row = {
            k: getattr(r, k)
            for k in ("jti", "subject", "role", "kind", "issued_at", "expires_at", "revoked_at")
        }
        return schema.load(cls, row, "api_tokens row")  # checks role and kind too


class NewToken(Struct, frozen=True):
    """A newly minted API key; the token is shown once."""

    token: Annotated[str, Meta(description="the bearer token")]
    grant: Annotated[TokenOut, Meta(description="what it grants")]


class AuditOut(Struct, frozen=True):
    """One audited request."""

    id: Annotated[int, Meta(description="entry id")]
    at: Annotated[float, Meta(description="epoch seconds")]
    subject: Annotated[str, Meta(description="who (token subject, or anonymous@address)")]
    role: Annotated[str | None, Meta(description="their role")]
    method: Annotated[str, Meta(description="HTTP method")]
    path: Annotated[str, Meta(description="request path")]
    action: Annotated[str, Meta(description="what was attempted")]
    status: Annotated[int, Meta(description="HTTP status of the answer")]
    detail: Annotated[dict[str, Any], Meta(description="what was changed (never a secret)")]

    @classmethod
    def of(cls, e: AuditEntry) -> AuditOut:
        return cls(
            e.id,
            e.at,
            e.subject,
            e.role,
            e.method,
            e.path,
            e.action,
            e.status,
            json.loads(e.detail),
        )


class WhoAmI(Struct, frozen=True):
    """The caller, as its token says."""

    subject: Annotated[str, Meta(description="token subject")]
    role: Annotated[Role, Meta(description="token role")]
    kind: Annotated[Kind, Meta(description="session or api-key")]
    jti: Annotated[str, Meta(description="token id")]
    expires_at: Annotated[float, Meta(description="epoch seconds")]


def _revoked(jti: str, what: str, outcome: str) -> web.Response:
    """The answer to a revocation: "revoked", "unknown" (404) or "already revoked" (409)."""
    if outcome == "unknown":
        raise ApiError(404, "not_found", f"no {what} {jti!r}")
    if outcome == "already revoked":
        raise ApiError(409, "conflict", f"{what} {jti!r} is already revoked")
    return web.json_response({"jti": jti, "revoked": True})


def routes(ctx: ApiContext) -> list[Route]:
    async def create_enroll_token(request: web.Request) -> web.Response:
        body = await params.json_body(request, EnrollTokenRequest)
        try:
            labels.check(body.labels, "body.labels")
        except ValueError as exc:
            raise bad_field("body.labels", str(exc)) from exc
        ttl = body.ttl_s if body.ttl_s is not None else ctx.config.enroll_token_ttl
        token, claims = bootstrap.mint(
            ctx.token_key,
            hub_url=ctx.config.hub_url,
            ca_fingerprint=ctx.ca_fingerprint,
            ttl=ttl,
            labels=body.labels,
        )
        await ctx.store.add_enroll_token(
            claims.jti, now=time.time(), expires_at=claims.expires_at, labels=body.labels
        )
        request[AUDIT_DETAIL] = {"jti": claims.jti, "labels": body.labels, "ttl_s": ttl}
        out = EnrollTokenOut(token, claims.jti, claims.expires_at, claims.hub_url)
        return params.answer(out, status=201)

    async def list_tokens(request: web.Request) -> web.Response:
        size = params.limit(request)
        found = await ctx.store.api_tokens(after=params.decode_cursor(request, int), limit=size + 1)
        page = params.page(found, size, TokenOut.of, lambda r: r.cursor)
        return params.answer(page)

    async def create_api_key(request: web.Request) -> web.Response:
        body = await params.json_body(request, ApiKeyRequest)
        try:
            token, principal = apitokens.mint(
                ctx.token_key,
                role=body.role,
                subject=body.subject,
                ttl=body.ttl_s,
                kind="api-key",
            )
        except ValueError as exc:
            raise ApiError(422, "invalid", str(exc)) from exc
        record = apitokens.grant_record(principal)
        await ctx.store.add_api_token(record)
        request[AUDIT_DETAIL] = {"jti": principal.jti, "subject": body.subject, "role": body.role}
        out = NewToken(token=token, grant=TokenOut.of(record))
        return params.answer(out, status=201)

    async def revoke_token(request: web.Request) -> web.Response:
        jti = request.match_info["jti"]
        request[AUDIT_DETAIL] = {"jti": jti}
        return _revoked(jti, "token", await ctx.tokens.revoke(jti, now=time.time()))

    async def revoke_enroll_token(request: web.Request) -> web.Response:
        jti = request.match_info["jti"]
        request[AUDIT_DETAIL] = {"jti": jti}
        outcome = await ctx.store.revoke_enroll_token(jti, now=time.time())
        return _revoked(jti, "bootstrap token", outcome)

    async def audit_log(request: web.Request) -> web.Response:
        size = params.limit(request)
        found = await ctx.store.audit_log(before=params.decode_cursor(request, int), limit=size + 1)
        page = params.page(found, size, AuditOut.of, lambda e: e.id)
        return params.answer(page)

    async def whoami(request: web.Request) -> web.Response:
        p = request[PRINCIPAL]
        return web.json_response(
            schema.dump(WhoAmI(p.subject, p.role, p.kind, p.jti, p.expires_at))
        )

    return [
        Route(
            "POST",
            "/api/v1/enroll-tokens",
            "admin",
            create_enroll_token,
            "Mint a one-time bootstrap token",
            "admin",
            action="enroll-token.create",
            body=EnrollTokenRequest,
            response=EnrollTokenOut,
            status=201,
        ),
        Route(
            "POST",
            "/api/v1/enroll-tokens/{jti}/revoke",
            "admin",
            revoke_enroll_token,
            "Revoke a bootstrap token before its time",
            "admin",
            action="enroll-token.revoke",
            params=(Param("jti", "path", "token id"),),
            errors=(404, 409),
        ),
        Route(
            "GET",
            "/api/v1/tokens",
            "admin",
            list_tokens,
            "List issued API tokens",
            "admin",
            response=params.Page[TokenOut],
        ),
        Route(
            "POST",
            "/api/v1/tokens",
            "admin",
            create_api_key,
            "Mint a long-lived API key",
            "admin",
            action="token.create",
            body=ApiKeyRequest,
            response=NewToken,
            status=201,
            errors=(422,),
        ),
        Route(
            "POST",
            "/api/v1/tokens/{jti}/revoke",
            "admin",
            revoke_token,
            "Revoke an API token",
            "admin",
            action="token.revoke",
            params=(Param("jti", "path", "token id"),),
            errors=(404, 409),
        ),
        Route(
            "GET",
            "/api/v1/audit",
            "admin",
            audit_log,
            "Read the audit log, newest first",
            "admin",
            response=params.Page[AuditOut],
        ),
        Route(
            "GET",
            "/api/v1/whoami",
            "viewer",
            whoami,
            "Who the token speaks for",
            "session",
            response=WhoAmI,
        ),
    ]
