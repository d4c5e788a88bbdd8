"""A webhook's URL may carry a user, a password or a token in its query; none of them
appears in what the hub logs, stores as the sink's error or shows in its API."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.sinks.base import Event, SinkError
from hub.sinks.config import SinkConfig, shown
from hub.sinks.webhook import WebhookSink
from tests.support import free_port

SECRETS = ("alice", "hunter2", "TOPSECRET")


def _config(tmp_path: Path, url: str) -> SinkConfig:
    secret = tmp_path / "hook.secret"
    secret.write_text("s")
    return SinkConfig(name="hook", kind="webhook", url=url, credentials_file=str(secret))


async def test_a_failed_post_names_the_webhook_without_its_credentials(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: the POST fails
    url = f"http://alice:hunter2@127.0.0.1:{port}/events?token=TOPSECRET"
    sink = WebhookSink(_config(tmp_path, url))
    await sink.start()
    event = Event("evt-1", "org.outpost.test", "https://hub", "", "2026-12-06T00:00:00Z", {})
    try:
        with pytest.raises(SinkError) as failed:
            await sink.publish([event])
    finally:
        await sink.close()
    assert f"127.0.0.1:{port}/events" in str(failed.value)
    assert not any(s in str(failed.value) for s in SECRETS), failed.value
    assert shown(url) == f"http://127.0.0.1:{port}/events"


def test_a_refused_webhook_url_is_quoted_without_its_credentials(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="https://") as refused:
        WebhookSink(_config(tmp_path, "http://alice:hunter2@example.com/x?token=TOPSECRET"))
    assert "example.com/x" in str(refused.value)
    assert not any(s in str(refused.value) for s in SECRETS), refused.value
