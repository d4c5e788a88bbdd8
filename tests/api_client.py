"""A small HTTPS client for the hub's API in tests, and token minting for each role."""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from hub.access import apitokens
from hub.access.apitokens import Kind, Role
from hub.app import Hub
from hub.fleet.enrollment import load_token_key


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = self.body["error"]
        return error


class ApiClient:
    """Calls the hub's API over HTTPS, verifying its certificate against the fleet CA."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.url = hub.config.hub_url
        self._context = ssl.create_default_context(cafile=str(hub.paths.ca_cert))
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        raw: bytes | None = None,
        params: Any = None,
        content_type: str | None = None,
    ) -> Reply:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self._session.request(
            method,
            self.url + path,
            headers=headers,
            data=data,
            params=params,
            ssl=self._context,
        ) as response:
            text = await response.text()
            try:
                parsed: Any = json.loads(text)
            except json.JSONDecodeError:
                parsed = text
            return Reply(response.status, parsed, dict(response.headers))

    async def token(
        self,
        role: Role,
        *,
        subject: str = "tester",
        ttl: float = 600,
        kind: Kind = "session",
        now: float | None = None,
    ) -> str:
        """Mint and record a token, as `outpost-hub token create` does."""
        token, principal = apitokens.mint(
            load_token_key(self.hub.paths),
            role=role,
            subject=subject,
            ttl=ttl,
            kind=kind,
            now=now if now is not None else time.time(),
        )
        await self.hub.parts.store.add_api_token(apitokens.grant_record(principal))
        return token
