"""Run every benchmark and print Outpost's figures next to the raw limits: `scripts/bench`."""

from __future__ import annotations

import logging
import platform
import tempfile
from pathlib import Path

import psutil

from tests.bench import (
    bench_api,
    bench_codec,
    bench_drain,
    bench_footprint,
    bench_inference,
    bench_ingest,
    bench_monitoring,
    bench_rollout,
    bench_startup,
    bench_store,
    bench_tasks,
)
from tests.bench.common import HEADER


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    print(f"# {platform.machine()}, {psutil.cpu_count()} cores, Python {platform.python_version()}")
    print(HEADER)
    with tempfile.TemporaryDirectory(prefix="outpost-bench-") as tmp:
        root = Path(tmp)
        for result in [
            *bench_codec.run(),
            *bench_store.run(root / "store"),
            *bench_drain.run(root / "drain"),
            *bench_ingest.run(root / "ingest"),
            *bench_api.run(root / "api"),
            *bench_footprint.run(root / "footprint"),
            *bench_startup.run(root / "startup"),
            *bench_inference.run(root / "inference"),
            *bench_tasks.run(root / "tasks"),
            *bench_rollout.run(root / "rollout"),
            *bench_monitoring.run(root / "monitoring"),
        ]:
            print(result.line(), flush=True)


if __name__ == "__main__":
    main()
