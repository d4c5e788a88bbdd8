"""The NATS JetStream and RabbitMQ sinks over mutual TLS, against real, throwaway servers
that ask for a client certificate from their own CA: the sink with the CA and the hub's
certificate publishes; one without a certificate, or trusting another CA, is refused,
and says so. TLS files given for a plain URL, missing, unpaired or not PEM are refused
at once."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from hub.sinks.base import SinkError
from hub.sinks.config import SinkConfig
from hub.sinks.nats import NatsSink
from hub.sinks.rabbitmq import RabbitSink
from tests.buses import AmqpCollector, ThrowawayNats, ThrowawayRabbit
from tests.integration.sink_bus_support import (
    TIMEOUT_S,
    exchange_of,
    make_events,
    rabbit_config,
)
from tests.tlsfiles import make_tls_files

# Under TLS 1.3 the server refuses a missing client certificate after the client's side
# of the handshake is done: the client reads the alert, or finds the socket closed first.
NO_CLIENT_CERTIFICATE = (
    r"cannot connect: .*(bad certificate|certificate required|Broken pipe|reset|closed)"
)


def nats_tls_config(server: ThrowawayNats, **files: str) -> SinkConfig:
    plain = SinkConfig(
        name="jetstream", kind="nats", url=f"tls://127.0.0.1:{server.port}", timeout_s=TIMEOUT_S
    )
    return msgspec.structs.replace(plain, **files)


async def test_nats_over_mutual_tls_publishes_and_refuses_a_wrong_peer(tmp_path: Path) -> None:
    """A server that asks for a client certificate from its own CA: the sink with the
    CA and the hub's certificate publishes; one without a certificate, or trusting
    another CA, is refused, and says so."""
    files = make_tls_files(tmp_path / "tls")
    tls = (
        "tls {\n"
        f'  cert_file: "{files.server_cert}"\n  key_file: "{files.server_key}"\n'
        f'  ca_file: "{files.ca}"\n  verify: true\n  timeout: 5\n'
        "}\n"
    )
    with ThrowawayNats(config=tls) as server:
        mutual = {
            "ca_file": str(files.ca),
            "cert_file": str(files.client_cert),
            "key_file": str(files.client_key),
        }
        sink = NatsSink(nats_tls_config(server, **mutual))
        await sink.start()
        await sink.publish(make_events(3))  # acknowledged by the stream: stored
        await sink.close()

        no_cert = NatsSink(nats_tls_config(server, ca_file=str(files.ca)))
        with pytest.raises(SinkError, match=NO_CLIENT_CERTIFICATE) as refused:
            await no_cert.start()
        await no_cert.close()
        print("no client certificate:", refused.value)

        stranger = NatsSink(nats_tls_config(server, **(mutual | {"ca_file": str(files.other_ca)})))
        with pytest.raises(SinkError, match="certificate verify failed") as untrusted:
            await stranger.start()
        await stranger.close()
        print("untrusted server:", untrusted.value)

        # Plain NATS to a TLS-only server is refused by the server.
        plain = NatsSink(SinkConfig(name="jetstream", kind="nats", url=server.url, timeout_s=2))
        with pytest.raises(SinkError):
            await plain.start()
        await plain.close()


def test_tls_files_without_tls_or_unreadable_are_refused_at_once(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path / "tls")
    with pytest.raises(
        ValueError, match=re.escape("ca_file given, but 'nats://127.0.0.1:4222' does not")
    ):
        NatsSink(
            SinkConfig(name="n", kind="nats", url="nats://127.0.0.1:4222", ca_file=str(files.ca))
        )
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        RabbitSink(
            SinkConfig(name="r", kind="rabbitmq", url="amqps://127.0.0.1/", cert_file=str(files.ca))
        )
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(ValueError, match=f"ca_file {missing}: No such file"):
        NatsSink(SinkConfig(name="n", kind="nats", url="tls://127.0.0.1:1", ca_file=str(missing)))
    with pytest.raises(ValueError, match="not a usable PEM"):
        NatsSink(
            SinkConfig(
                name="n",
                kind="nats",
                url="tls://127.0.0.1:1",
                cert_file=str(files.ca),  # a certificate without its key
                key_file=str(files.client_key),
            )
        )
    NatsSink(  # the same files, rightly paired, are taken
        SinkConfig(
            name="n",
            kind="nats",
            url="tls://127.0.0.1:1",
            ca_file=str(files.ca),
            cert_file=str(files.client_cert),
            key_file=str(files.client_key),
        )
    )


async def test_rabbitmq_over_mutual_tls_publishes_and_refuses_a_wrong_peer(
    rabbitmq_server: ThrowawayRabbit, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The node's amqps:// listener asks for a client certificate from its own CA: the
    sink with the CA and the hub's certificate publishes, confirmed; one without a
    certificate, or trusting another CA, is refused, and says so."""
    files = rabbitmq_server.tls
    exchange = exchange_of(request)
    mutual = {
        "ca_file": str(files.ca),
        "cert_file": str(files.client_cert),
        "key_file": str(files.client_key),
    }

    def config(**tls: str) -> SinkConfig:
        plain = rabbit_config(
            rabbitmq_server, tmp_path, exchange, url=rabbitmq_server.tls_address, timeout_s=5
        )
        return msgspec.structs.replace(plain, **tls)

    events = make_events(5)
    async with AmqpCollector(rabbitmq_server.url(), exchange) as collector:
        sink = RabbitSink(config(**mutual))
        await sink.start()
        await sink.publish(events)  # every one confirmed by the broker
        await sink.close()
        got = await collector.wait_for(5)
    assert [m.id for m in got] == [e.id for e in events]

    for tls, said in [
        ({"ca_file": str(files.ca)}, NO_CLIENT_CERTIFICATE),
        (mutual | {"ca_file": str(files.other_ca)}, "certificate verify failed"),
    ]:
        refused = RabbitSink(config(**tls))
        with pytest.raises(SinkError, match=said) as failed:
            await refused.start()
        await refused.close()
        assert rabbitmq_server.password not in str(failed.value)
        print(f"{sorted(tls)}: {failed.value}")
