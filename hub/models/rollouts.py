"""Roll-outs in motion: release a model, or an agent release, to a roll-out's devices
stage by stage, and move each roll-out on as its devices report.

What a device should run goes out retained on its `down/models` topic (every release it
has been given, one per model name), so a device that was offline finds it on connect;
each hello sends it again in case the broker lost it. The agent release a device should
run goes out the same way on `down/agent`. Reports (`model_state`; for the agent, named
`outpost.agentrelease.ROLLOUT_NAME`, and the version in its hello) move the canary stage
on to the rest, or halt it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.fleet.wanted import Wanted
from hub.store import Advanced, HubStore, Rollout, agentrollouts, rolloutprogress, shadows
from hub.store.leadership import NotLeaderError
from hub.store.offers import Offer
from hub.store.rolloutprogress import FAILED
from hub.store.rollouts import given_to
from outpost import offerseal, wire

logger = logging.getLogger(__name__)

PublishRetained = Callable[[str, bytes], Awaitable[None]]
SEND_AT_ONCE = 200  # releases in flight together
SHADOW_JUDGE_S = 2.0  # how often shadow roll-outs are looked at (cheap when none)
# How often the leader looks for roll-out moves made by other processes, and how far back
# past its last look: a move is stamped before its transaction commits, and replicas'
# clocks differ by a little.
CATCH_UP_S = 10.0
CATCH_UP_MARGIN_S = 30.0
MADE_KEPT = 100_000  # moves remembered past it are pruned as they are added


class RolloutService:
    def __init__(
        self, store: HubStore, publish: PublishRetained, key: ed25519.Ed25519PrivateKey
    ) -> None:
        self._store = store
        self._publish = publish
        self._key = key  # seals each offer (outpost/offerseal.py)
        self._wanted = Wanted()
        self._forced: set[str] = set()
        # Moves this process made and asked to send, (roll-out, device, halt) -> when:
        # the catch-up leaves them; any other move it finds, it sends.
        self._made: dict[tuple[int, str, bool], float] = {}

    async def start_rollout(
        self,
        *,
        name: str,
        version: str,
        selector: dict[str, str],
        canary_share: float,
        by: str,
        mode: str = "staged",
        criteria: dict[str, float] | None = None,
    ) -> Rollout:
        """Create it and release its canaries, or give its devices the candidate to run
        in shadow (`RolloutRefusedError` if it cannot start)."""
        rollout = await self._store.create_rollout(
            name=name,
            version=version,
            selector=selector,
            canary_share=canary_share,
            by=by,
            now=time.time(),
            mode=mode,
            criteria=criteria,
        )
        if mode == "shadow":
            shadowing = [d.device_id for d in rollout.devices]
            logger.info(
                "roll-out %d of %s %s in shadow on %d devices", rollout.id, name, version,
                len(shadowing),
            )  # fmt: skip
            self._made_here(rollout.id, shadowing, halted=False)
            self.request(shadowing)
            return rollout
        canaries = [d.device_id for d in rollout.devices if d.state == "released"]
        logger.info(
            "roll-out %d of %s %s: %d devices, canaries %s",
            rollout.id,
            name,
            version,
            len(rollout.devices),
            ", ".join(canaries),
        )
        self._made_here(rollout.id, canaries, halted=False)
        self.request(canaries)
        return rollout

    async def on_state(self, device_id: str, report: wire.ModelState) -> None:
        """A device's report on a release: record it, then move its roll-outs on."""
        moved = await self._store.record_model_state(
            device_id,
            report.name,
            report.version,
            report.state,
            report.detail,
            now=time.time(),
            final=report.final,
        )
        if report.state in FAILED and report.final:
            # The hub no longer names a release that failed on the device for good: its
            # retained offer must not either, or a restarted agent takes it up again.
            self.request([device_id], force=True)
        await self._moved(moved)

    async def on_inventory(self, inventories: list[tuple[str, list[wire.ModelInfo]]]) -> None:
        """Devices' lists of what they serve (hellos, some heartbeats): a roll-out whose
        report from one of them was lost (taken by a replica that then died) moves on."""
        serving = [
            (device_id, [(m.name, m.version) for m in models if m.state == "ready"])
            for device_id, models in inventories
        ]
        serving = [(device_id, ready) for device_id, ready in serving if ready]
        if serving:
            await self._moved(await self._store.reconcile_inventory(serving, now=time.time()))

    async def halt(self, rollout_id: int, reason: str) -> Advanced | None:
        """Halt a roll-out by hand: devices not yet given the version never get it, and
        those that were go back to what they ran before (as when a canary fails); in
        shadow, the devices drop the candidate."""
        moved = await self._store.halt_rollout(rollout_id, reason, now=time.time())
        if moved is not None:
            await self._moved([moved])
            rollout = await self._store.rollout(rollout_id)
            if moved.halted_now and rollout is not None and rollout.mode == "shadow":
                everyone = [d.device_id for d in rollout.devices]
                self._made_here(rollout_id, everyone, halted=True)
                self.request(everyone, force=True)
        return moved

    async def catch_up(self, store: HubStore, *, every_s: float = CATCH_UP_S) -> None:
        """As the leader (on its fenced `store`): send devices what roll-outs did without
        this process. A release or halt made elsewhere (`outpost-hub device revoke`
        beside the running hub moves the roll-outs its device was in; another replica's
        send lost with it) reaches connected devices here, not only at their next hello.
        Each move found is sent once (those seen are remembered for the margin); those
        this process made itself were sent when it made them. A move another replica
        made and sent is sent again: an offer given twice changes nothing."""
        seen: dict[tuple[int, str, bool], float] = {}
        since = time.time() - CATCH_UP_MARGIN_S
        while True:
            await asyncio.sleep(every_s)
            now = time.time()
            try:
                moved = await store.run(rolloutprogress.moved_since, since - CATCH_UP_MARGIN_S)
            except NotLeaderError as exc:  # the leadership loop stops this loop next
                logger.info("roll-out moves not read: %s", exc)
                continue
            except Exception:  # a database that failed now: not the hub's end
                logger.exception("roll-out moves: could not read them; trying again")
                continue
            released: list[str] = []
            halted: list[str] = []
            for rollout_id, device_id, when, is_halt in moved:
                key = (rollout_id, device_id, is_halt)
                if key not in seen and key not in self._made:
                    (halted if is_halt else released).append(device_id)
                seen[key] = when
            if released or halted:
                logger.info(
                    "roll-outs moved elsewhere: sending %d devices their releases",
                    len(released) + len(halted),
                )
                self.request(released)
                self.request(halted, force=True)
            since = now
            forgotten = since - 2 * CATCH_UP_MARGIN_S
            for key in [k for k, when in seen.items() if when < forgotten]:
                del seen[key]
            for key in [k for k, when in self._made.items() if when < forgotten]:
                del self._made[key]

    async def judge_shadows(self, store: HubStore, *, every_s: float = SHADOW_JUDGE_S) -> None:
        """As the leader (on its fenced `store`): decide the shadow roll-outs that have
        their samples, and tell their devices (their shadow goes; a promoted one's
        canaries get the version)."""
        while True:
            try:
                judged = await store.run(shadows.judge, time.time())
            except NotLeaderError as exc:  # the leadership loop stops this loop next
                logger.info("shadow roll-outs not judged: %s", exc)
                judged = []
            except Exception:  # a database that failed now (restarted, locked): not the hub's end
                logger.exception("shadow roll-outs: could not judge them; trying again")
                judged = []
            for j in judged:
                logger.info("roll-out %d: %s", j.rollout_id, j.reason)
                self._made_here(j.rollout_id, j.devices, halted=False)
                self._made_here(j.rollout_id, j.devices, halted=True)
                self.request(j.devices, force=True)
            await asyncio.sleep(every_s)

    async def device_revoked(self, device_id: str) -> None:
        """A revoked device will never report: no roll-out waits on it any more."""
        await self._moved(
            await self._store.drop_from_rollouts(device_id, "device revoked", now=time.time())
        )

    async def _moved(self, moved: list[Advanced]) -> None:
        for m in moved:
            if m.state == "halted" and m.halted_now:
                logger.warning("roll-out %d halted: %s", m.rollout_id, m.reason)
                # Its canaries go back to what they were given before (or keep what
                # they run): their retained releases must no longer name this one.
                rollout = await self._store.rollout(m.rollout_id)
                if rollout is not None:
                    released = [d.device_id for d in rollout.devices if d.released_at]
                    self._made_here(m.rollout_id, released, halted=True)
                    self.request(released, force=True)
            if m.released:
                logger.info(
                    "roll-out %d: canaries healthy, releasing %d more devices",
                    m.rollout_id,
                    len(m.released),
                )
                self._made_here(m.rollout_id, m.released, halted=False)
                self.request(m.released)

    def _made_here(self, rollout_id: int, device_ids: list[str], *, halted: bool) -> None:
        """These devices are sent what roll-out `rollout_id` did to them (a release, or
        a halt) by this process: the catch-up need not send it again."""
        now = time.time()
        self._made.update(dict.fromkeys(((rollout_id, d, halted) for d in device_ids), now))
        if len(self._made) > MADE_KEPT:  # a replica that never leads prunes them here
            forgotten = now - 2 * CATCH_UP_MARGIN_S
            self._made = {k: when for k, when in self._made.items() if when >= forgotten}

    def request(self, device_ids: list[str], *, force: bool = False) -> None:
        """Send these devices their releases soon, from `run` (callers never wait on it);
        `force`: even an empty list, to replace a retained one that named more."""
        if force:
            self._forced.update(device_ids)
        self._wanted.add(device_ids)

    async def run(self) -> None:
        while True:
            wanted = list(await self._wanted.take())
            forced, self._forced = self._forced, set()  # no await since the take: in step
            try:
                # Offers go out for these even when empty: a halt made by another process
                # (a CLI beside the running hub) is then withdrawn at the next hello.
                given = await self._store.run(given_to, wanted)
            except Exception as exc:  # their next hellos ask again
                logger.warning("roll-outs of %d devices not read: %s", len(wanted), exc)
                continue
            for first in range(0, len(wanted), SEND_AT_ONCE):
                # One store call per chunk: a ramp of hellos asks for every new device,
                # and the offers' numbers are taken in order with what they offer.
                chunk = wanted[first : first + SEND_AT_ONCE]
                try:
                    read = await self._store.offers_of(
                        chunk, now=time.time(), always=frozenset(forced)
                    )
                except Exception as exc:  # their next hellos ask again
                    logger.warning("model releases for %d devices not read: %s", len(chunk), exc)
                    continue
                due = [
                    o
                    for d, o in read.items()
                    if o.releases or o.shadows or d in forced or d in given.models
                ]
                await asyncio.gather(*(self._send(o) for o in due))
            try:
                agent = await self._store.run(agentrollouts.desired_agent_of, wanted)
            except Exception as exc:  # their next hellos ask again
                logger.warning("agent releases for %d devices not read: %s", len(wanted), exc)
                continue
            offers = [
                (d, agent.get(d)) for d in wanted if d in agent or d in forced or d in given.agent
            ]
            for first in range(0, len(offers), SEND_AT_ONCE):
                batch = offers[first : first + SEND_AT_ONCE]
                await asyncio.gather(*(self._offer_agent(d, signed) for d, signed in batch))

    async def _offer_agent(self, device_id: str, signed: tuple[bytes, bytes] | None) -> None:
        release = None if signed is None else wire.AgentRelease(*signed)
        body = wire.AgentOffer(release=release)
        try:
            await self._publish(wire.down_topic(device_id, "agent"), wire.encode("agent", body))
        except Exception as exc:  # its next hello asks again
            logger.warning("agent release for %s not sent: %s", device_id, exc)

    async def _send(self, offer: Offer) -> None:
        body = sealed_offer(self._key, offer, time.time())
        topic = wire.down_topic(offer.device_id, "models")
        payload = wire.encode("models", body)
        if len(payload) > wire.MAX_PAYLOAD_BYTES:  # the agent would refuse all of it
            logger.error(
                "model releases for %s not sent: %d bytes, over the %d a device takes "
                "(roll-outs are sized when they start; samples must be smaller)",
                offer.device_id, len(payload), wire.MAX_PAYLOAD_BYTES,
            )  # fmt: skip
            return
        try:
            await self._publish(topic, payload)
        except Exception as exc:  # its next hello asks again
            logger.warning("model releases for %s not sent: %s", offer.device_id, exc)


def sealed_offer(key: ed25519.Ed25519PrivateKey, offer: Offer, now: float) -> wire.ModelReleases:
    """The offer as sent, sealed if the device checks seals (its number is not 0)."""
    seal = None
    if offer.seq:
        signed = offerseal.sign(
            key,
            offer.device_id,
            offer.seq,
            [d for d, _ in offer.releases],
            [d for d, _ in offer.shadows],
            now,
        )
        seal = wire.OfferSeal(document=signed.document, signature=signed.signature)
    return wire.ModelReleases(
        releases=[wire.SignedRelease(document=d, signature=s) for d, s in offer.releases],
        shadows=[wire.SignedRelease(document=d, signature=s) for d, s in offer.shadows],
        seal=seal,
    )
