"""The RabbitMQ sink against a real, throwaway node: events arrive in order with their
ids, bodies and routing keys, persistent and stamped with their time; publishing them
again keeps their ids; a relay in front of the node that goes silent or refuses every
connection is a SinkError within timeout_s, and publishing works again once it is back;
a node of its own, really stopped and started, keeps every event it confirmed; an event
larger than a node's max_message_size is refused alone; refused
credentials, or an exchange of another kind, are a permanent SinkError that says so; an
unreachable URL is a SinkError naming it; a mistaken URL is refused at once. (Over TLS:
test_sink_bus_tls.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import aio_pika
import pytest

from hub.sinks.base import CONTENT_TYPE, EventRefusedError, SinkError
from hub.sinks.config import SinkConfig
from hub.sinks.rabbitmq import RabbitSink
from tests.buses import AmqpCollector, ThrowawayRabbit, once_each
from tests.integration.sink_bus_support import (
    SLACK_S,
    TIMEOUT_S,
    exchange_of,
    make_events,
    rabbit_config,
)
from tests.linkproxy import LinkProxy
from tests.support import free_port


async def test_rabbitmq_events_arrive_in_order_with_ids_bodies_and_routing_keys(
    rabbitmq_server: ThrowawayRabbit, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    exchange = exchange_of(request)
    events = make_events(40)
    async with AmqpCollector(rabbitmq_server.url(), exchange) as collector:
        sink = RabbitSink(rabbit_config(rabbitmq_server, tmp_path, exchange))
        await sink.start()
        try:
            await sink.publish(events[:25])
            await sink.publish(events[25:])
        finally:
            await sink.close()
            await sink.close()
        got = await collector.wait_for(40)
    assert [(m.topic, m.id, m.body) for m in got] == [(e.topic(), e.id, e.body()) for e in events]
    first = got[0].headers
    assert first["content_type"] == CONTENT_TYPE
    assert first["delivery_mode"] == aio_pika.DeliveryMode.PERSISTENT
    assert first["timestamp"] is not None
    assert first["timestamp"].timestamp() == pytest.approx(1735787041, abs=1)  # evt-1's time


async def test_rabbitmq_events_published_again_keep_their_ids(
    rabbitmq_server: ThrowawayRabbit, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    exchange = exchange_of(request)
    events = make_events(30)
    config = rabbit_config(rabbitmq_server, tmp_path, exchange)
    async with AmqpCollector(rabbitmq_server.url(), exchange) as collector:
        sink = RabbitSink(config)
        await sink.start()
        await sink.publish(events)
        await sink.close()
        # The hub died before its cursor moved: a new sink sends the last 20 again, then on.
        again = RabbitSink(config)
        await again.start()
        await again.publish(events[10:] + make_events(5, first=31))
        await again.close()
        got = await collector.wait_for(55)
    assert len(got) == 55
    expected = [(e.topic(), e.id, e.body()) for e in events + make_events(5, first=31)]
    assert [(m.topic, m.id, m.body) for m in once_each(got)] == expected


async def test_rabbitmq_down_or_silent_fails_within_timeout_then_recovers(
    rabbitmq_server: ThrowawayRabbit, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The shared node stays up; a relay in front of it goes silent, then refuses every
    connection (to the sink, a stopped server), then comes back."""
    exchange = exchange_of(request)
    proxy = LinkProxy(rabbitmq_server.port)
    await proxy.start()
    config = rabbit_config(
        rabbitmq_server,
        tmp_path,
        exchange,
        url=f"amqp://127.0.0.1:{proxy.port}/",
        timeout_s=TIMEOUT_S,
    )
    try:
        async with AmqpCollector(rabbitmq_server.url(), exchange) as collector:
            sink = RabbitSink(config)
            await sink.start()
            await sink.publish(make_events(5))

            proxy.pause()
            started = time.monotonic()
            with pytest.raises(SinkError, match="not confirmed within 2 s"):
                await sink.publish(make_events(5, first=6))
            assert time.monotonic() - started < TIMEOUT_S + SLACK_S

            proxy.down()
            proxy.resume()
            started = time.monotonic()
            with pytest.raises(SinkError) as lost:
                await sink.publish(make_events(5, first=6))
            assert time.monotonic() - started < TIMEOUT_S + SLACK_S
            assert not lost.value.permanent
            await sink.close()
            with pytest.raises(SinkError, match=f"RabbitMQ at amqp://127.0.0.1:{proxy.port}/"):
                await RabbitSink(config).start()

            proxy.up()
            sink = RabbitSink(config)
            await sink.start()
            await sink.publish(make_events(10, first=6))
            await sink.close()
            got = await collector.wait_for_id("evt-15")
    finally:
        await proxy.close()
    # Events held by the silent link may have reached the broker: the same ids, again.
    assert [m.id for m in once_each(got)][:5] == [f"evt-{n}" for n in range(1, 6)]
    assert sorted({m.id for m in got}, key=lambda i: int(i[4:])) == [
        f"evt-{n}" for n in range(1, 16)
    ]
    assert [m.id for m in got][-10:] == [f"evt-{n}" for n in range(6, 16)]


@pytest.mark.slow
@pytest.mark.timeout(300)  # two boots of a node of its own: ~20 s here, 5x on a slow machine
async def test_rabbitmq_stopped_and_restarted_keeps_what_it_confirmed(tmp_path: Path) -> None:
    """A node of its own, really stopped and started again: the publish that meets the
    stop fails, a sink made afterwards works, and the durable queue bound beforehand
    holds every event confirmed on either side of the restart."""
    with ThrowawayRabbit() as node:
        config = rabbit_config(node, tmp_path, "outpost", timeout_s=TIMEOUT_S)
        connection = await aio_pika.connect(node.url())
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                "outpost", aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue("kept", durable=True)
            await queue.bind(exchange, "outpost.#")
        sink = RabbitSink(config)
        await sink.start()
        await sink.publish(make_events(5))

        node.stop()
        started = time.monotonic()
        with pytest.raises(SinkError) as lost:
            await sink.publish(make_events(5, first=6))
        assert time.monotonic() - started < TIMEOUT_S + SLACK_S
        assert not lost.value.permanent
        await sink.close()

        node.start()  # the same port, database and user
        sink = RabbitSink(config)
        await sink.start()
        await sink.publish(make_events(5, first=6))
        await sink.close()

        connection = await aio_pika.connect(node.url())
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue("kept")
            ids = []
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                ids.append(message.message_id)
    assert ids == [f"evt-{n}" for n in range(1, 11)]


async def test_rabbitmq_event_larger_than_the_node_takes_is_refused_alone(
    tmp_path: Path,
) -> None:
    """A node whose max_message_size is below one event closes the channel on it, every
    time: that event is refused for good (the drain dead-letters it), and the events
    around it go through the same sink, on a new channel."""
    with ThrowawayRabbit(config="max_message_size = 4096\n") as node:
        async with AmqpCollector(node.url(), "outpost") as collector:
            sink = RabbitSink(rabbit_config(node, tmp_path, "outpost"))
            await sink.start()
            try:
                big = make_events(1, first=4, size=8000)
                with pytest.raises(EventRefusedError) as refused:
                    await sink.publish(make_events(3) + big + make_events(1, first=5))
                # The drain goes on from the next event, on the same sink.
                await sink.publish(make_events(2, first=5))
            finally:
                await sink.close()
            got = await collector.wait_for(5)
    assert refused.value.event.id == "evt-4"
    assert "larger than the broker takes" in refused.value.reason
    assert "max size 4096" in refused.value.reason  # the broker's own words
    assert [m.id for m in got] == ["evt-1", "evt-2", "evt-3", "evt-5", "evt-6"]


async def test_rabbitmq_refused_credentials_are_a_permanent_error(
    rabbitmq_server: ThrowawayRabbit, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    exchange = exchange_of(request)
    wrong = RabbitSink(rabbit_config(rabbitmq_server, tmp_path, exchange, password="not-it"))
    started = time.monotonic()
    with pytest.raises(SinkError) as refused:
        await wrong.start()
    assert time.monotonic() - started < SLACK_S
    await wrong.close()
    assert refused.value.permanent
    assert str(refused.value).startswith(
        f"RabbitMQ at {rabbitmq_server.address} refused the credentials (user 'outpost'): "
        "check credentials_file"
    )
    assert rabbitmq_server.password not in str(refused.value)

    right = RabbitSink(rabbit_config(rabbitmq_server, tmp_path, exchange))
    await right.start()
    await right.publish(make_events(1))
    await right.close()


async def test_rabbitmq_exchange_of_another_kind_is_a_permanent_error(
    rabbitmq_server: ThrowawayRabbit, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    exchange = exchange_of(request)
    connection = await aio_pika.connect(rabbitmq_server.url())
    async with connection:
        channel = await connection.channel()
        fanout = await channel.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT)
        sink = RabbitSink(rabbit_config(rabbitmq_server, tmp_path, exchange))
        with pytest.raises(SinkError, match="not a durable topic exchange") as refused:
            await sink.start()
        await sink.close()
        assert refused.value.permanent
        await fanout.delete()


async def test_rabbitmq_unreachable_url_is_an_error_naming_it(tmp_path: Path) -> None:
    url = f"amqp://127.0.0.1:{free_port()}/"  # nothing listens there
    sink = RabbitSink(SinkConfig(name="rabbit", kind="rabbitmq", url=url, timeout_s=TIMEOUT_S))
    started = time.monotonic()
    with pytest.raises(SinkError, match=f"RabbitMQ at {url}: cannot connect") as failed:
        await sink.start()
    assert time.monotonic() - started < TIMEOUT_S + SLACK_S
    assert not failed.value.permanent
    await sink.close()


def test_rabbitmq_configuration_mistakes_are_refused_at_once() -> None:
    for url, said in [
        ("http://127.0.0.1:5672/", "url must be amqp://HOST:PORT/VHOST"),
        ("amqp://me:secret@127.0.0.1:5672/", "put USER:PASSWORD in credentials_file"),
    ]:
        with pytest.raises(ValueError, match=said) as refused:
            RabbitSink(SinkConfig(name="rabbit", kind="rabbitmq", url=url))
        assert "secret" not in str(refused.value)
