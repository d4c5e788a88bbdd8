"""The demo's event bus (`--sinks`): a throwaway NATS server with JetStream, the hub's
sink into it, and a consumer that counts what it receives, deduplicated by event id, as
an integrator's would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from scripts.demo_parts.processes import step
from scripts.ports import free_port

STREAM = "OUTPOST"


def start_nats(data: Path, logs: Path, children: list[subprocess.Popen[bytes]]) -> str:
    """A NATS server with JetStream on a free loopback port, storing in `data`; its URL."""
    # Debian puts it in /usr/sbin, which a user's PATH may lack.
    program = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")
    if program is None:
        raise SystemExit("demo: --sinks needs nats-server (scripts/demo --sinks installs it)")
    port = free_port()
    store = data / "nats"
    store.mkdir()
    children.append(
        subprocess.Popen(
            [program, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
            stdout=(logs / "nats.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only the demo, which stops this
        )
    )
    url = f"nats://127.0.0.1:{port}"
    step(f"a NATS server with JetStream for the hub's events: {url} (log: {logs / 'nats.log'})")
    return url


def sink_settings(url: str) -> str:
    """The hub.toml lines of the demo's sink."""
    return (
        "[[hub.sinks]]\n"
        'name = "bus"\n'
        'kind = "nats"\n'
        f"url = {json.dumps(url)}\n"
        f'target = "{STREAM}"\n'
    )


class Consumer:
    """Reads every event of the stream, as an integrator's program would: counts the
    distinct ids (and repeats, which a consumer drops), and the last events' types."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ids: set[str] = set()
        self.repeats = 0
        self.types: dict[str, int] = {}

    async def run(self) -> None:
        import nats  # the hub's dependency, used here as a consumer would

        async def quiet(exc: Exception) -> None:
            """The server goes when the demo stops: no traceback for that."""

        nc = await nats.connect(self.url, max_reconnect_attempts=-1, error_cb=quiet)
        js = nc.jetstream()
        while True:  # the hub makes the stream when its sink starts
            with contextlib.suppress(Exception):
                await js.stream_info(STREAM)
                break
            await asyncio.sleep(0.5)  # waiting for the hub's sink to make the stream
        await js.subscribe("outpost.>", stream=STREAM, cb=self._on_message, ordered_consumer=True)
        await asyncio.Event().wait()

    async def _on_message(self, msg: Any) -> None:
        event_id = (msg.headers or {}).get("Nats-Msg-Id") or json.loads(msg.data)["id"]
        if event_id in self.ids:
            self.repeats += 1
            return
        self.ids.add(event_id)
        kind = json.loads(msg.data)["type"].removeprefix("org.outpost.")
        area = kind.split(".", 1)[0]
        self.types[area] = self.types.get(area, 0) + 1

    def line(self, hub: dict[str, Any] | None) -> str:
        areas = ", ".join(f"{n} {area}" for area, n in sorted(self.types.items()))
        said = (
            f"hub's sink {hub['state']}, delivered {hub['delivered']:,}, lag {hub['lag_events']:,}"
            if hub
            else "hub's sink not reporting yet"
        )
        return (
            f"events on NATS JetStream (stream {STREAM}): a consumer holds {len(self.ids):,} "
            f"distinct ({self.repeats} repeats dropped by id): {areas or 'none yet'}; {said}"
        )
