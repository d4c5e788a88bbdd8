"""Admin routes: bootstrap tokens, API keys and their revocation, the audit log; and
`whoami` for any caller."""

from __future__ import annotations

import time

from aiohttp import web

from hub import apitokens, bootstrap, labels
from hub.api import params
from hub.api.context import ApiContext
from hub.api.errors import ApiError, bad_field
from hub.api.models import (
    ApiKeyRequest,
    AuditOut,
    EnrollTokenOut,
    EnrollTokenRequest,
    NewToken,
    TokenOut,
    WhoAmI,
)
from hub.api.routing import AUDIT_DETAIL, PRINCIPAL, Param, Route
from outpost import schema


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
        return web.json_response(schema.dump(out), status=201)

    async def list_tokens(request: web.Request) -> web.Response:
        size = params.limit(request)
        found = await ctx.store.api_tokens(after=params.decode_cursor(request, int), limit=size + 1)
        page = params.page(found, size, lambda r: schema.dump(TokenOut.of(r)), lambda r: r.cursor)
        return web.json_response(page)

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
        return web.json_response(schema.dump(out), status=201)

    async def revoke_token(request: web.Request) -> web.Response:
        jti = request.match_info["jti"]
        request[AUDIT_DETAIL] = {"jti": jti}
        outcome = await ctx.store.revoke_api_token(jti, now=time.time())
        if outcome == "unknown":
            raise ApiError(404, "not_found", f"no token {jti!r}")
        if outcome == "already revoked":
            raise ApiError(409, "conflict", f"token {jti!r} is already revoked")
        return web.json_response({"jti": jti, "revoked": True})

    async def audit_log(request: web.Request) -> web.Response:
        size = params.limit(request)
        found = await ctx.store.audit_log(before=params.decode_cursor(request, int), limit=size + 1)
        page = params.page(found, size, lambda e: schema.dump(AuditOut.of(e)), lambda e: e.id)
        return web.json_response(page)

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
            "GET",
            "/api/v1/tokens",
            "admin",
            list_tokens,
            "List issued API tokens",
            "admin",
            response=TokenOut,
            paginated=True,
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
            response=AuditOut,
            paginated=True,
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
