"""Validate every message a device sends and apply it to the store, in batches.

A payload that breaks the wire contract is logged with its reason, counted and dropped.
Presence messages of one batch are applied in one store call (a thread hop costs more
than the SQL); if that call fails, each is retried on its own so that one bad message
cannot sink its neighbours. Record uploads of the batch are stored in one more call, in
one durable transaction, and only then acknowledged; hellos are answered with the
device's marks, and those that offer batch encodings with the ones this hub accepts
(`welcome`). A `packed` batch is decompressed within the size its frame declares (what
the intake charged for it: hub/mqtt/charge.py) and then handled as a `records` one.
Nothing a device sends stops the next message.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from hub.mqtt import charge
from hub.mqtt.acks import AckSet, Downlinks, Publish
from hub.mqtt.presence import presence_event
from hub.mqtt.rejections import RejectionLog
from hub.store import (
    ConnectionLost,
    HubStore,
    PresenceEvent,
    Upload,
    courier,
    database_failed,
)
from hub.store.modelstats import Folded
from hub.tasks.dispatcher import Dispatcher
from outpost import wire
from outpost.agentrelease import ROLLOUT_NAME as AGENT
from outpost.wire import packing

logger = logging.getLogger(__name__)


class Ingest:
    """Routes `up` messages from devices to the registry."""

    def __init__(
        self,
        store: HubStore,
        *,
        max_payload_bytes: int,
        compression: Collection[str] = (),
        outcomes: collections.Counter[tuple[str, str]] | None = None,
        stored: collections.Counter[str] | None = None,
        acks: collections.Counter[str] | None = None,
        observe_batch: Callable[[float], None] = lambda seconds: None,
        publish: Publish | None = None,
        dispatcher: Dispatcher | None = None,
        task_results: collections.Counter[str] | None = None,
        on_hello: Callable[[list[str]], Awaitable[object]] | None = None,
        on_model_state: Callable[[str, wire.ModelState], Awaitable[None]] | None = None,
        on_inventory: Callable[[list[tuple[str, list[wire.ModelInfo]]]], Awaitable[None]]
        | None = None,
        on_rollups: Callable[[Folded], None] | None = None,
    ) -> None:
        self._store = store
        self._max_payload_bytes = max_payload_bytes
        self._compression = frozenset(compression)  # batch encodings accepted
        self._observe_batch = observe_batch
        self._dispatcher = dispatcher
        self._on_hello = on_hello
        self._on_model_state = on_model_state
        self._on_inventory = on_inventory
        self._on_rollups = on_rollups  # what newly stored metric roll-ups counted
        self._freed = False
        # Task results found in uploads, by outcome: accepted, late, unknown, malformed.
        self.task_results = task_results if task_results is not None else collections.Counter()
        # Counts by (kind, outcome), exported as a Prometheus counter. Kinds outside the
        # wire contract count as "other", so a device cannot mint new series.
        self.outcomes = outcomes if outcomes is not None else collections.Counter()
        # Records newly stored, by stream; acks by outcome (sent, dropped, failed).
        self.stored = stored if stored is not None else collections.Counter()
        self.acks = acks if acks is not None else collections.Counter()
        self.downlinks = Downlinks(publish, self.acks)
        self._rejections = RejectionLog(logger)

    async def handle(self, topic: str, payload: bytes) -> None:
        """Validate and apply one message; never raises."""
        await self.handle_batch([(topic, payload)])

    async def handle_batch(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Validate and apply messages in arrival order; never raises."""
        started = time.perf_counter()
        try:
            await self._handle_batch(messages)
        except Exception:  # a bug met by this batch: the next one must still be handled
            self.outcomes[("other", "error")] += len(messages)
            logger.exception("handling a batch of %d messages failed", len(messages))
        finally:
            self._observe_batch(time.perf_counter() - started)

    async def _handle_batch(self, messages: Sequence[tuple[str, bytes]]) -> None:
        now = time.time()
        events: list[tuple[str, PresenceEvent | None]] = []
        uploads: list[tuple[str, wire.Records, str]] = []  # device, batch, kind it came as
        greeted: list[str] = []  # devices whose hello asks where their streams stand
        stores: dict[str, str] = {}  # the store a greeting device named (see wire.Ack)
        offers: list[tuple[str, wire.Hello]] = []  # hellos that offer batch encodings
        updates: list[tuple[str, wire.TaskState]] = []
        reports: list[tuple[str, wire.ModelState]] = []
        inventories: list[tuple[str, list[wire.ModelInfo]]] = []
        for topic, payload in messages:
            envelope, device_id = self._validate(topic, payload)
            if envelope is None:
                continue
            if isinstance(envelope.body, wire.Records):
                uploads.append((device_id, envelope.body, "records"))
                continue
            if isinstance(envelope.body, wire.Packed):
                if (unpacked := self._unpack(topic, envelope.body)) is not None:
                    uploads.append((device_id, unpacked, "packed"))
                continue
            if isinstance(envelope.body, wire.TaskState):
                updates.append((device_id, envelope.body))
                continue
            if isinstance(envelope.body, wire.ModelState):
                reports.append((device_id, envelope.body))
                continue
            if isinstance(envelope.body, wire.Hello):
                greeted.append(device_id)
                if envelope.body.store:
                    stores[device_id] = envelope.body.store
                if envelope.body.compression:
                    offers.append((device_id, envelope.body))
            if isinstance(envelope.body, wire.Hello):
                # The version a hello names is what an agent roll-out waits for: a
                # device that restarted into its release reports it this way.
                agent = wire.ModelInfo(AGENT, envelope.body.agent_version, "", "ready")
                inventories.append((device_id, [*envelope.body.models, agent]))
            elif isinstance(envelope.body, wire.Heartbeat) and envelope.body.models:
                inventories.append((device_id, envelope.body.models))
            events.append((envelope.kind, presence_event(device_id, envelope, now)))
        await self._apply_presence(events)
        if updates:
            await self._apply_task_updates(updates, now)
        for device_id, report in reports:
            await self._apply_model_state(device_id, report)
        await self._apply_inventories(inventories)
        acks = AckSet()
        if uploads:
            await self._store_uploads(uploads, now, acks)
        if greeted:
            await self._answer_hellos(greeted, stores, acks)
            if self._on_hello is not None:
                try:  # their policy: new devices get theirs, unsent ones go out again
                    await self._on_hello(greeted)
                except Exception:
                    logger.exception("refreshing the policy of %d devices failed", len(greeted))
        # Welcomes first: a fresh store sends its first batch once its marks arrive.
        if downlinks := [*self._welcomes(offers), *acks.messages()]:
            await self.downlinks.send(downlinks)
        # A rejection frees its slot (and may send its task elsewhere); an accepted or
        # running changes no device's room, and a pass per report was a write
        # transaction on the database's thread for each of a task's two reports.
        rejected = any(u.state == "rejected" for _, body in updates for u in body.updates)
        if self._dispatcher is not None and (greeted or rejected or self._freed):
            self._freed = False
            self._dispatcher.wake()  # capacity may have appeared: allocate now

    async def _apply_task_updates(
        self, updates: list[tuple[str, wire.TaskState]], now: float
    ) -> None:
        if self._dispatcher is None:
            self.outcomes[("task_state", "ignored")] += len(updates)
            return
        if not updates:
            return
        try:
            applied = await self._store.task_updates_many(
                [(device_id, body.updates) for device_id, body in updates],
                now=now,
                settings=self._dispatcher.settings,
            )
        except Exception as exc:
            if len(updates) > 1 and not database_failed(exc):  # as for uploads: apart
                logger.exception("applying task updates of %d devices failed", len(updates))
                for one in updates:
                    await self._apply_task_updates([one], now)
                return
            self.outcomes[("task_state", "error")] += len(updates)
            logger.exception("applying task updates from %d devices failed", len(updates))
            return
        self.outcomes[("task_state", "accepted")] += len(updates)
        for (device_id, body), results in zip(updates, applied, strict=True):
            for (task_id, outcome), update in zip(results, body.updates, strict=True):
                if outcome == "stale":
                    logger.info(
                        "%s: stale %s of %s attempt %d (ignored)",
                        device_id,
                        update.state,
                        task_id,
                        update.attempt,
                    )

    async def _apply_model_state(self, device_id: str, report: wire.ModelState) -> None:
        if self._on_model_state is None:
            self.outcomes[("model_state", "ignored")] += 1
            return
        try:
            await self._on_model_state(device_id, report)
        except Exception:
            self.outcomes[("model_state", "error")] += 1
            logger.exception("applying a model report from %s failed", device_id)
            return
        self.outcomes[("model_state", "accepted")] += 1

    async def _apply_inventories(self, inventories: list[tuple[str, list[wire.ModelInfo]]]) -> None:
        if self._on_inventory is None or not inventories:
            return
        try:
            await self._on_inventory(inventories)
        except Exception:
            logger.exception(
                "matching the models of %d devices with roll-outs failed", len(inventories)
            )

    async def _apply_presence(self, events: list[tuple[str, PresenceEvent | None]]) -> None:
        presence = [(kind, event) for kind, event in events if event is not None]
        for kind, event in events:
            if event is None:  # nothing to store (an "online" status: hello says it all)
                self.outcomes[(kind, "accepted")] += 1
        if not presence:
            return
        try:
            changed = await self._store.record_presence([e for _, e in presence])
        except Exception as exc:
            if len(presence) > 1 and not database_failed(exc):  # as for uploads: apart
                logger.exception(
                    "storing a batch of %d messages failed; retrying one by one", len(presence)
                )
                await self._one_by_one(presence)
                return
            # The database itself (locked, down): each alone would fail alike, as slowly.
            for kind, _ in presence:
                self.outcomes[(kind, "error")] += 1
            logger.exception("storing a batch of %d messages failed", len(presence))
            return
        for (kind, event), flipped in zip(presence, changed, strict=True):
            self._accepted(kind, event, flipped)

    async def _store_uploads(
        self, uploads: list[tuple[str, wire.Records, str]], now: float, acks: AckSet
    ) -> None:
        """Store every upload of the batch in one transaction; ack only what it holds.

        Should the values of one device's upload fail the SQL (the store checks what it
        binds, but a device sends what it likes), each device's uploads are stored apart,
        so the others' are acked. Not when the database itself failed (locked, read-only,
        full): every retry would meet that again. The devices resend what was not acked.
        """
        try:
            outcome = await self._store.apply_uploads(
                [Upload.of(device_id, body) for device_id, body, _ in uploads], now=now
            )
        except Exception as exc:
            devices = list(dict.fromkeys(device_id for device_id, _, _ in uploads))
            if len(devices) > 1 and not database_failed(exc):
                logger.exception(
                    "storing %d record batches failed; storing each device's apart", len(uploads)
                )
                for device in devices:
                    mine = [u for u in uploads if u[0] == device]
                    await self._store_uploads(mine, now, acks)
                return
            for _, _, kind in uploads:
                self.outcomes[(kind, "error")] += 1
            logger.exception("storing %d record batches failed; acking none of them", len(uploads))
            return
        for name, count in outcome.task_results.items():
            self.task_results[name] += count
        if outcome.rollups.rollups and self._on_rollups is not None:
            self._on_rollups(outcome.rollups)
        if outcome.task_results.get("accepted"):
            self._freed = True  # a finished task frees a slot on its device
        if outcome.task_results.get("late"):
            logger.info("%d late task results recorded", outcome.task_results["late"])
        for (device_id, body, kind), result in zip(uploads, outcome.applied, strict=True):
            if result.gap:
                self.outcomes[(kind, "gap")] += 1
                logger.info(
                    "%s sent %s from %d but the hub holds up to %d: asked to resend",
                    device_id,
                    body.stream,
                    body.from_seq,
                    result.hwm,
                )
                acks.add(device_id, body.stream, result.hwm, refused_to=body.to_seq)
                continue
            self.outcomes[(kind, "accepted")] += 1
            self.stored[body.stream] += result.stored
            acks.add(device_id, body.stream, result.hwm)

    async def _answer_hellos(
        self, device_ids: list[str], stores: dict[str, str], acks: AckSet
    ) -> None:
        """Tell each greeting device the mark of every stream (0 for none yet): a fresh
        agent store numbers its records after them and sends nothing until told. To a
        device that named its store, say which streams the hub numbers as that store
        did (it took the store's records by courier bundle before any mark reached it):
        those keep their numbers."""
        try:
            marks = await self._store.stream_marks(device_ids)
            numbered = {
                device_id: await self._store.run(courier.numbering, device_id)
                for device_id in stores
            }
        except Exception:
            logger.exception("reading the marks of %d devices failed", len(device_ids))
            return
        for device_id in device_ids:
            store = stores.get(device_id, "")
            took = numbered.get(device_id, {})
            for stream in wire.STREAMS:
                by = store if store and took.get(stream) == store else ""
                acks.add(device_id, stream, marks.get((device_id, stream), 0), numbered_by=by)

    def _unpack(self, topic: str, body: wire.Packed) -> wire.Records | None:
        """The batch a `packed` message holds, or None once refused and counted (the
        device sends it again after its ack timeout: nothing is lost)."""
        # No more than the intake charged: a frame that holds more than it declares is
        # refused once past that, not decompressed to the payload limit.
        limit = charge.unpacked_size(body.data, self._max_payload_bytes)
        try:
            return packing.unpack(body, accepts=self._compression, max_bytes=limit)
        except wire.WireError as exc:
            self._refused(topic, "packed", exc.reason, str(exc))
            return None

    def _welcomes(self, offers: list[tuple[str, wire.Hello]]) -> list[tuple[str, bytes]]:
        """Each offering hello's answer: the encodings of its offer this hub accepts, for
        its connection (empty when none: the device then knows to send plain batches)."""
        return [
            (
                wire.down_topic(device_id, "welcome"),
                wire.encode(
                    "welcome",
                    wire.Welcome(
                        conn=hello.conn,
                        compression=packing.accepted(hello.compression, self._compression),
                    ),
                ),
            )
            for device_id, hello in offers
        ]

    async def _one_by_one(self, presence: list[tuple[str, PresenceEvent]]) -> None:
        for kind, event in presence:
            try:
                (flipped,) = await self._store.record_presence([event])
            except Exception:
                self.outcomes[(kind, "error")] += 1
                logger.exception("storing %s from %s failed", kind, event.device_id)
                continue
            self._accepted(kind, event, flipped)

    def _validate(self, topic: str, payload: bytes) -> tuple[wire.Envelope[Any] | None, str]:
        kind = "?"
        try:
            device_id, direction, kind = wire.parse_topic(topic)
            if direction != "up":
                raise wire.WireError("topic", "hub received a down topic")
            if kind not in wire.UP_KINDS:  # refuse before spending time on the payload
                raise wire.WireError("kind", "unknown message kind in topic")
            envelope = wire.decode(
                payload,
                kinds=wire.UP_KINDS,
                expected_kind=kind,
                max_bytes=self._max_payload_bytes,
            )
        except wire.WireError as exc:
            self._refused(topic, kind, exc.reason, str(exc))
            return None, ""
        except Exception as exc:  # whatever a device sends, only this message is lost
            self._refused(topic, kind, "error", f"{type(exc).__name__}: {exc}")
            return None, ""
        return envelope, device_id

    def _refused(self, topic: str, kind: str, reason: str, text: str) -> None:
        label = kind if kind in wire.UP_KINDS else "other"
        self.outcomes[(label, f"rejected:{reason}")] += 1
        device = topic.split("/", 4)[3] if topic.count("/") >= 4 else "?"
        self._rejections.refused(device, topic, reason, text)

    def _accepted(self, kind: str, event: PresenceEvent, flipped: bool) -> None:
        self.outcomes[(kind, "accepted")] += 1
        if not flipped:
            return
        if isinstance(event, ConnectionLost):
            logger.info("%s offline (connection lost)", event.device_id)
        else:
            logger.info("%s online", event.device_id)
