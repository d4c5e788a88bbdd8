"""The presence a device's message stands for, as the registry records it (hello seen,
heartbeat seen, connection lost), from the message as the wire contract decodes it."""

from __future__ import annotations

from typing import Any

from hub.store import ConnectionLost, HeartbeatSeen, HelloSeen, PresenceEvent
from outpost import schema, wire


def presence_event(
    device_id: str, envelope: wire.Envelope[Any], now: float
) -> PresenceEvent | None:
    """What a device's message says of its presence: a hello, a heartbeat, or a will
    (offline status) become the registry's events; anything else none."""
    body = envelope.body
    if isinstance(body, wire.Hello):
        return HelloSeen(
            device_id=device_id,
            conn=body.conn,
            now=now,
            profile=body.profile,
            agent_version=body.agent_version,
            heartbeat_interval=body.heartbeat_interval,
            capabilities=schema.dump(body.capabilities),
            runtime=body.runtime,
            models=[schema.dump(m) for m in body.models],
            task_slots=body.task_slots,
            task_inbox=body.task_inbox,
            sealed_offers=body.sealed_offers,
        )
    if isinstance(body, wire.Heartbeat):
        return HeartbeatSeen(
            device_id=device_id,
            conn=body.conn,
            now=now,
            heartbeat_interval=body.heartbeat_interval,
            load={
                **schema.dump(body.load),
                **(
                    {"tasks_queued": body.tasks.queued, "tasks_running": body.tasks.running}
                    if body.tasks
                    else {}
                ),
            },
            store=schema.dump(body.store) if body.store else None,
            models=[schema.dump(m) for m in body.models] if body.models is not None else None,
            policy=schema.dump(body.policy) if body.policy else None,
        )
    if isinstance(body, wire.Status) and not body.online:
        return ConnectionLost(device_id=device_id, conn=body.conn, now=now)
    return None
