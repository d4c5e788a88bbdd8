"""What a webhook receiver answers beyond yes and no (docs/sinks.md, "Webhooks"): a
redirect is never followed (a 302 to a sign-in page would turn the POST into a GET whose
200 looks like a delivery; a 307 would send the signed body anywhere, plain http
included), it turns the hub away and the events wait; and an error answer whose body is
not UTF-8 is judged by its status like any other. On both back-ends, against real HTTP
receivers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from hub.sinks import drain
from hub.sinks.base import Event
from hub.sinks.config import SinkConfig
from hub.sinks.drain import Bounds, Drain
from hub.sinks.service import make_sink
from hub.store import HubStore, outbox
from tests.databases import BACKENDS, database
from tests.integration.test_sink_bounds import webhook
from tests.integration.test_sink_dead_letters import cursor, draining, letters, write
from tests.support import eventually, free_port


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubStore]:
    found = HubStore(database(request, tmp_path))
    found.publish_events()
    yield found
    found.close()


@dataclass
class Site:
    """An HTTP server's requests, by method and path."""

    url: str
    seen: list[tuple[str, str, bytes]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def serving(
    host: str, answer: Callable[[web.Request], web.Response] | None
) -> AsyncIterator[Site]:
    """A server at `host` answering what `answer` makes of each request (None: 204)."""
    port = free_port()
    site = Site(f"http://{host}:{port}")

    async def handle(request: web.Request) -> web.StreamResponse:
        site.seen.append((request.method, request.path, await request.read()))
        if answer is not None:
            return answer(request)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield site
    finally:
        await runner.cleanup()


def redirect(status: int, location: str) -> Callable[[web.Request], web.Response]:
    """POST /events redirected to `location`; anything else (a sign-in page) 200."""

    def answer(request: web.Request) -> web.Response:
        if request.path == "/events":
            return web.Response(status=status, headers={"Location": location})
        return web.Response(status=200, text="<html>please sign in</html>")

    return answer


async def settled(store: HubStore) -> outbox.SinkCursor:
    """The sink's cursor once it failed, or once it moved (what the fix prevents)."""

    async def probe() -> outbox.SinkCursor | None:
        found = await cursor(store)
        return found if found.state == "failed" or found.position > 0 else None

    found = await eventually(probe, timeout=30, what="the sink failed or moved")
    assert found is not None
    return found


async def test_a_redirect_to_a_sign_in_page_keeps_the_events_waiting(
    store: HubStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(drain, "FAILED_RETRY_S", 0.2)  # the slowest pace, made quick
    ids = await write(store, 5)
    sign_in = redirect(302, "/login?state=RECEIVER-TOKEN")
    async with (
        serving("127.0.0.1", sign_in) as front,
        draining(store, tmp_path, f"{front.url}/events"),
    ):
        failed = await settled(store)
        assert (failed.position, failed.delivered, failed.dead_lettered) == (0, 0, 0)
        assert f"answered 302, a redirect to {front.url}/login:" in failed.error
        assert "turns the hub away" in failed.error
        assert "RECEIVER-TOKEN" not in failed.error
        asked = {(method, path) for method, path, _ in front.seen}
        assert asked == {("POST", "/events")}  # the sign-in page was never asked
        assert await letters(store, "hook") == []

    # The receiver's door fixed (here: the same URL now takes events): none was lost.
    async with (
        serving("127.0.0.1", None) as fixed,
        draining(store, tmp_path, f"{fixed.url}/events"),
    ):

        async def delivered() -> bool:
            found = await cursor(store)
            return found.position == ids[-1] and found.delivered == len(ids)

        await eventually(delivered, timeout=30, what="the waiting events delivered")
    assert len(fixed.seen) == len(ids)


async def test_a_307_does_not_carry_the_signed_body_elsewhere(
    store: HubStore, tmp_path: Path
) -> None:
    await write(store, 3)
    # 127.0.0.2 over plain http: an address the sink's own url may not name.
    async with serving("127.0.0.2", None) as elsewhere:
        to_elsewhere = redirect(307, f"{elsewhere.url}/internal")
        async with (
            serving("127.0.0.1", to_elsewhere) as front,
            draining(store, tmp_path, f"{front.url}/events"),
        ):
            failed = await settled(store)
    assert elsewhere.seen == []
    assert failed.position == 0
    assert f"answered 307, a redirect to {elsewhere.url}/internal:" in failed.error


async def test_a_422_whose_body_is_not_utf8_is_a_dead_letter(
    store: HubStore, tmp_path: Path
) -> None:
    ids = await write(store, 2)

    def refusal(_: web.Request) -> web.Response:
        # No charset: read as UTF-8, which these Latin-1 bytes are not.
        return web.Response(
            status=422, body=b"\xe9v\xe9nement refus\xe9", content_type="text/plain"
        )

    async with (
        serving("127.0.0.1", refusal) as receiver,
        draining(store, tmp_path, f"{receiver.url}/events"),
    ):

        async def gone_on() -> outbox.SinkCursor | None:
            now = await cursor(store)
            return now if now.position == ids[-1] or now.state == "failed" else None

        found = await eventually(gone_on, timeout=30, what="every event dead-lettered")
        assert found is not None
    assert found.state != "failed", found.error
    assert found.dead_lettered == len(ids)
    reasons = [row[6] for row in await letters(store, "hook")]
    assert reasons == ["answered 422: \ufffdv\ufffdnement refus\ufffd"] * len(ids)


async def test_a_503_whose_body_is_latin1_is_retried_with_back_off(
    store: HubStore, tmp_path: Path
) -> None:
    await write(store, 2)

    def busy(_: web.Request) -> web.Response:
        answer = web.Response(status=503, body="maintenance prévue".encode("latin-1"))
        # A charset Python does not know: read as UTF-8, which these bytes are not.
        answer.headers["Content-Type"] = "text/html; charset=x-mac-unheard-of"
        return answer

    async with (
        serving("127.0.0.1", busy) as receiver,
        draining(store, tmp_path, f"{receiver.url}/events"),
    ):

        async def retried() -> outbox.SinkCursor | None:
            now = await cursor(store)
            return now if now.retried >= 2 or now.state == "failed" else None

        found = await eventually(retried, timeout=30, what="the 503 retried")
        assert found is not None
    assert found.state == "failing", found.error
    assert "answered 503: maintenance pr\ufffdvue" in found.error
    assert found.position == 0


class Stumbling:
    """A real webhook sink whose first publish raises a ValueError, as an unforeseen
    fault inside a sink's publish would: not a configuration the sink cannot start with."""

    def __init__(self, config: SinkConfig) -> None:
        self._sink = make_sink(config)
        self.name = config.name
        self.stumbled = False

    async def start(self) -> None:
        await self._sink.start()

    async def publish(self, events: Sequence[Event]) -> None:
        if not self.stumbled:
            self.stumbled = True
            raise UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte")
        await self._sink.publish(events)

    async def close(self) -> None:
        await self._sink.close()


async def test_a_value_error_from_publish_is_retried_not_taken_for_a_configuration(
    store: HubStore, tmp_path: Path
) -> None:
    async with serving("127.0.0.1", None) as receiver:
        config = webhook(tmp_path, f"{receiver.url}/events")
        await store.run(outbox.open_cursor, config.name, time.time())
        ids = await write(store, 2)
        task = asyncio.create_task(
            Drain(
                config, store, Stumbling, source="https://hub.test", bounds=Bounds(10**9, 1e9)
            ).run()
        )
        try:

            async def delivered_or_failed() -> outbox.SinkCursor | None:
                now = await cursor(store)
                return now if now.position == ids[-1] or now.state == "failed" else None

            # Within the back-off's first waits, not FAILED_RETRY_S (5 minutes).
            found = await eventually(delivered_or_failed, timeout=30, what="a retry")
            assert found is not None
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert found.state != "failed", found.error
    assert found.delivered == len(ids)
