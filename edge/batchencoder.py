"""Turn a batch read from the store into the message that carries it: plain `records`,
or `packed` once the hub has accepted an encoding on the connection of the moment and
packing makes the batch smaller. Counts what went, for the agent's status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import msgspec

from outpost import schema, wire
from outpost.wire import packing

logger = logging.getLogger(__name__)

Row = tuple[int, float, bytes]  # (seq, ts, body) as the store hands them out


@dataclass(frozen=True)
class Encoded:
    """One batch, ready to publish."""

    topic: str
    payload: bytes
    to_seq: int
    rows: int  # records carried (those the hub would refuse are left out)
    body_bytes: int  # the records' bodies, plain: what the batch budget counts
    plain_bytes: int  # the same batch as a plain message
    packed: bool


class BatchEncoder:
    """One per agent; its packing contexts and counters outlive connections."""

    def __init__(self, device_id: str) -> None:
        self._topic = wire.up_topic(device_id, "records")
        self._packed_topic = wire.up_topic(device_id, "packed")
        self._packers: dict[str, packing.Packer] = {}  # one context per encoding, kept
        self._packer: packing.Packer | None = None  # None: plain batches
        self.unsendable = 0  # stored records the hub would refuse, left out of batches
        self.bytes_sent = 0
        self.plain_bytes = 0  # what the same batches would have been, plain
        self.records_sent = 0
        self.packed_batches = 0
        # A plain message's size beyond its body (to a byte or two: message ids grow).
        empty = wire.Records(stream="results", from_seq=1, to_seq=1, seqs=[], ts=[], bodies=[])
        self._envelope_bytes = len(wire.encode("records", empty)) - len(
            msgspec.msgpack.encode(empty)
        )

    @property
    def encoding(self) -> str | None:
        """The encoding batches go in on this connection (None: plain)."""
        return self._packer.encoding if self._packer is not None else None

    def compress_with(self, encoding: str | None) -> None:
        """Pack batches with `encoding` from now on (None: send them plain). Set to None
        before each hello: a connection starts plain until the hub accepts one."""
        if encoding is None:
            self._packer = None
            return
        if (packer := self._packers.get(encoding)) is None:
            packer = self._packers[encoding] = packing.Packer(encoding)
        self._packer = packer

    def encode(self, stream: wire.Stream, after: int, rows: list[Row]) -> Encoded:
        """The message for `rows`, the records of `stream` numbered after `after`."""
        to_seq = rows[-1][0]
        if any(len(r[2]) > wire.MAX_RECORD_BYTES for r in rows):
            rows = self._sendable(stream, rows)
        try:
            body = _records(stream, after, to_seq, rows)  # checks every body, as the hub will
        except schema.SchemaError:
            rows = self._sendable(stream, rows)
            body = _records(stream, after, to_seq, rows)
        topic, packed = self._topic, False
        if self._packer is None:
            payload = wire.encode("records", body)
            plain = len(payload)
        else:
            # On the event loop: a full batch packs in well under a millisecond, less than
            # a hop to a worker thread and back would take. Not encoded plain first (that
            # checked the batch as the hub will, the costliest step of a send): making
            # `body` checked the records (order, each body a map), and the rest holds by
            # construction (numbers from the store, at most `batch_records` of them).
            smaller = self._packer.pack(body)
            plain = len(msgspec.msgpack.encode(body)) + self._envelope_bytes
            if packed := len(smaller) < plain:
                topic, payload = self._packed_topic, smaller
            else:
                payload = wire.encode("records", body)
                plain = len(payload)
        body_bytes = sum(len(r[2]) for r in rows)
        return Encoded(topic, payload, to_seq, len(rows), body_bytes, plain, packed)

    def count(self, sent: Encoded) -> None:
        """Count a batch that went (one that was encoded and then not sent is not)."""
        self.bytes_sent += len(sent.payload)
        self.plain_bytes += sent.plain_bytes
        self.records_sent += sent.rows
        self.packed_batches += sent.packed

    def _sendable(self, stream: wire.Stream, rows: list[Row]) -> list[Row]:
        """The rows the hub can take. A record it would refuse (stored before the local
        API checked records, or by hand) is left out of the batch, which still covers its
        number: sent, it would fail the whole batch, and the stream would never move."""
        kept = []
        for row in rows:
            problem = wire.record_problem(row[2])
            if problem is None:
                kept.append(row)
            else:
                self.unsendable += 1
                logger.error("%s %d can never be sent (%s): left out", stream, row[0], problem)
        return kept


def _records(stream: wire.Stream, after: int, to_seq: int, rows: list[Row]) -> wire.Records:
    return wire.Records(
        stream=stream,
        from_seq=after + 1,
        to_seq=to_seq,
        seqs=[r[0] for r in rows],
        ts=[r[1] for r in rows],
        bodies=[r[2] for r in rows],
    )
