"""Run every benchmark and print Outpost's figures next to the raw limits: `scripts/bench`.

`scripts/bench capacity tasks` runs only the benchmarks named (module names without
`bench_`)."""

from __future__ import annotations

import logging
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import psutil

from tests.bench import (
    bench_api,
    bench_capacity,
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
from tests.bench.common import HEADER, Result


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    benches: dict[str, Callable[[Path], list[Result]]] = {
        "codec": lambda _: bench_codec.run(),
        "store": bench_store.run,
        "drain": bench_drain.run,
        "ingest": bench_ingest.run,
        "api": bench_api.run,
        "footprint": bench_footprint.run,
        "startup": bench_startup.run,
        "inference": bench_inference.run,
        "tasks": bench_tasks.run,
        "rollout": bench_rollout.run,
        "monitoring": bench_monitoring.run,
        "capacity": bench_capacity.run,
    }
    chosen = sys.argv[1:] or list(benches)
    if unknown := [name for name in chosen if name not in benches]:
        sys.exit(
            f"bench: no benchmark named {', '.join(unknown)}; choose from {', '.join(benches)}"
        )
    print(f"# {platform.machine()}, {psutil.cpu_count()} cores, Python {platform.python_version()}")
    print(HEADER)
    with tempfile.TemporaryDirectory(prefix="outpost-bench-") as tmp:
        root = Path(tmp)
        for name in chosen:
            for result in benches[name](root / name):
                print(result.line(), flush=True)


if __name__ == "__main__":
    main()
