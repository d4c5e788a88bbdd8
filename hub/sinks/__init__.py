"""Sinks: what happens in the fleet, streamed from the hub's outbox to the buses
integrators use (NATS JetStream, RabbitMQ, webhooks), at least once, in order per device."""
