"""A command run on the hub's data folder (a courier bundle imported with `outpost-hub
bundle import`, a device revoked from the CLI) writes its events for the sinks, as the
running hub does: they reach the sinks once the hub drains its outbox. It wrote none,
and what it stored never reached them."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from hub.cli.datafolder import load_config, open_store
from hub.initialise import initialise
from hub.paths import HubPaths
from hub.store import Upload, outbox
from outpost import wire


def _records() -> wire.Records:
    body = msgspec.msgpack.encode({"label": "x"})
    return wire.Records(
        stream="results", from_seq=1, to_seq=2, seqs=[1, 2], ts=[1.0, 2.0], bodies=[body, body]
    )


async def _events_after_storing(paths: HubPaths) -> int:
    with open_store(paths) as store:
        outcome = await store.apply_uploads(
            [Upload.of("dev-aaaaaaaaaaaa", _records())], now=time.time()
        )
        assert outcome.applied[0].stored == 2
        return len(await store.run(outbox.after, 0, 100))


async def test_a_command_writes_events_for_the_sinks_when_the_hub_has_some(
    tmp_path: Path,
) -> None:
    without, with_sink = HubPaths(tmp_path / "plain"), HubPaths(tmp_path / "sinks")
    for paths in (without, with_sink):
        initialise(paths, server_names=[])
    secret = tmp_path / "hook.secret"
    secret.write_text("s")
    with_sink.config.write_text(
        "[hub]\n[[hub.sinks]]\n"
        'name = "hook"\nkind = "webhook"\nurl = "https://example.invalid/events"\n'
        f'credentials_file = "{secret}"\n'
    )
    assert [s.name for s in load_config(with_sink.root).sinks] == ["hook"]

    assert await _events_after_storing(without) == 0  # no sink: no events kept for one
    assert await _events_after_storing(with_sink) == 2
