"""Webhook sink: each event POSTed as CloudEvents JSON to an HTTPS endpoint, in order,
signed with the sink's secret.

Headers: `Content-Type: application/cloudevents+json`, `ce-id` (the dedupe key), `ce-type`,
`ce-source`, `ce-subject`, and `X-Outpost-Signature: sha256=<hex>`, the HMAC-SHA256 of
the body's bytes under the secret (docs/sinks.md shows how a receiver checks it).

A 2xx answer delivers the event. 408, 429, 5xx, a timeout or a refused connection mean
"later": the drain retries with back-off. 401, 403, 404, 405, 407 and 410 turn the hub
itself away (a secret or URL out of date), not this event: the sink fails, retried at the
slowest pace, and its events wait for it. So does a redirect (3xx), never followed: a
301/302/303 would turn the POST into a GET whose 200 looks like a delivery, and a 307/308
would send the signed body wherever the receiver says, plain http included. Any other 4xx
refuses that event for good: it goes to the dead-letter table and the next one is sent.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from collections.abc import Sequence
from urllib.parse import urljoin, urlsplit

import aiohttp

from hub.sinks.base import CONTENT_TYPE, Event, EventRefusedError, SinkError
from hub.sinks.config import SinkConfig, plain_only, read_secret, shown, tls_context

RETRY_LATER = frozenset({408, 429})
# Answers about the receiver's door, not the event: were they dead letters, a receiver
# whose secret was rotated would have every event the hub sends thrown away.
REFUSES_THE_HUB = frozenset({401, 403, 404, 405, 407, 410})
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
# Bytes of an error answer read for the sink's error: enough for a reason, and a receiver
# answering megabytes (or never ending its body) costs no more.
ANSWER_BYTES = 1024
ANSWER_CHARS = 200  # of it shown


def signature(secret: bytes, body: bytes) -> str:
    """The `X-Outpost-Signature` value of `body`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSink:
    """POSTs events to one URL."""

    def __init__(self, config: SinkConfig) -> None:
        parts = urlsplit(config.url)
        # Events carry the fleet's data: plain HTTP only to this machine itself.
        if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in LOOPBACK):
            raise ValueError(
                f"sink {config.name}: url must be https:// (http:// only to a loopback "
                f"address), got {shown(config.url)!r}"
            )
        if not config.credentials_file:
            raise ValueError(
                f"sink {config.name}: a webhook needs credentials_file, the file holding "
                "its HMAC secret"
            )
        self.name = config.name
        self._url = config.url
        self._shown = shown(config.url)  # in messages: no user, password or query in it
        self._secret = read_secret(config.credentials_file, f"sink {config.name}").encode()
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool = True  # http: unused (loopback only)
        if parts.scheme == "https":
            self._ssl = tls_context(config)
        else:
            plain_only(config)

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def publish(self, events: Sequence[Event]) -> None:
        assert self._session is not None, "start() first"
        for event in events:
            body = event.body()
            headers = {
                "Content-Type": CONTENT_TYPE,
                "ce-id": event.id,
                "ce-type": event.type,
                "ce-source": event.source,
                "ce-specversion": "1.0",
                "X-Outpost-Signature": signature(self._secret, body),
            }
            if event.subject:
                headers["ce-subject"] = event.subject
            try:
                async with self._session.post(
                    self._url, data=body, headers=headers, ssl=self._ssl, allow_redirects=False
                ) as response:
                    status = response.status
                    location = response.headers.get("Location", "")
                    text = await answer_text(response) if status >= 300 else ""
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise SinkError(
                    f"POST {self._shown} failed: {str(exc) or type(exc).__name__}"
                ) from exc
            if 200 <= status < 300:
                continue
            if 300 <= status < 400:
                # Where it points is shown without credentials or query: it may carry a
                # token of the receiver's (a sign-in page's state).
                where = shown(urljoin(self._url, location)) if location else "nowhere"
                raise SinkError(
                    f"POST {self._shown} answered {status}, a redirect to {where}: the "
                    "receiver turns the hub away (redirects are not followed: set the "
                    "sink's url to where events go); its events wait",
                    permanent=True,
                )
            if status in RETRY_LATER or status >= 500:
                raise SinkError(f"POST {self._shown} answered {status}: {text}")
            if status in REFUSES_THE_HUB:
                raise SinkError(
                    f"POST {self._shown} answered {status}: the receiver turns the hub away "
                    f"(check the sink's url and secret); its events wait: {text}",
                    permanent=True,
                )
            raise EventRefusedError(event, f"answered {status}: {text}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def answer_text(response: aiohttp.ClientResponse) -> str:
    """The start of an error answer's body as text, whatever its bytes: a receiver's
    Latin-1 page or unknown charset must not fail the sink instead of this answer."""
    body = b""
    while len(body) < ANSWER_BYTES:
        chunk = await response.content.read(ANSWER_BYTES - len(body))
        if not chunk:
            break
        body += chunk
    try:
        text = body.decode(response.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        text = body.decode("utf-8", errors="replace")
    return " ".join(text.split())[:ANSWER_CHARS]
