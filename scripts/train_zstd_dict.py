"""Train the ``zstd-dict1`` batch dictionary (`outpost/wire/packing.py`), once.

    .venv/bin/python -m scripts.train_zstd_dict [--out FILE]

Samples are the bodies of `records` messages of 1 to 5 records (what a `packed` message
compresses), the batches an online device
sends, made of Outpost's own records only (inference and task results of the shipped
models, roll-ups, events; `scripts/demo_records.py` with the producer's readings left
out), so that it fits any fleet's records rather than the demo's. The shipped file is
part of the wire contract: training again makes a different one, which would be a new
encoding name (``zstd-dict2``), not a replacement.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

import msgspec

from outpost.wire import packing
from scripts.demo_records import REPO, Row, demo_rows, records_batch

SIZE = 8 * 1024  # measured: 4 KiB gave 1-2 % more bytes on 1-10 records, 16 KiB 1-3 % fewer
SAMPLES = 4000  # records to cut into sample batches
EVENTS: list[dict[str, Any]] = [
    {"event": "link.connected"},
    {"event": "agent.started", "version": "0.1.0"},
    {"event": "policy.applied", "version": 3},
]


def samples(seed: int) -> list[bytes]:
    rows: list[Row] = demo_rows(SAMPLES, seed=seed, producer=False)
    rand = random.Random(seed)  # noqa: S311 - sample sizes
    out, i = [], 0
    while i < len(rows):
        size = rand.choice([1, 1, 1, 2, 3, 5])
        out.append(msgspec.msgpack.encode(records_batch(rows[i : i + size], 1000 + i)))
        if rand.random() < 0.05:
            event = rand.choice(EVENTS)
            batch = records_batch([(rows[i][0], event)], 10 + i, "events")
            out.append(msgspec.msgpack.encode(batch))
        i += size
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=REPO / "outpost" / "wire" / packing.DICTIONARY_FILE
    )
    args = parser.parse_args()
    made = packing.zstd.train_dict(samples(seed=101) + samples(seed=202), SIZE)
    args.out.write_bytes(made.dict_content)
    print(f"{args.out}: {len(made.dict_content)} bytes, dictionary id {made.dict_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
