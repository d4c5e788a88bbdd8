"""The records a demo device writes, made without running the demo: what the link
benchmark drains and what the ``zstd-dict1`` dictionary was trained on.

Each simulated second of one device (`scripts/demo_site.py`, `scripts/demo_parts/`):
the producer posts 5 readings to the results stream; the sensor program asks the
device's model about 2 readings (8 in 10 normal) and the agent records the flagged
answers (`edge/inference/reporting.py`, the demo's policy: confidence below 0.7); about
3 tasks from the hub's feeder run and their results are recorded as `edge/tasks.py`
writes them. Every minute a metrics roll-up (`edge/rollup.py`). The answers come from
the shipped models themselves, run on readings from the generators they were trained on.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge import rollup
from edge.inference.reporting import Reporting, result_record
from edge.inference.runner import Inference, ModelRunner
from edge.inference.runtime import choose_runtime
from edge.inference.tensors import prepare_input
from outpost import wire
from outpost.modelbundle import read_bundle
from scripts.model_data import surface_images, vibration_windows

REPO = Path(__file__).resolve().parents[1]
GENERATORS = {"vibration-anomaly": vibration_windows, "surface-defect": surface_images}
DEMO_RULES = Reporting("flagged", 0.7)  # the demo's fleet policy: confidence_below 0.7

Row = tuple[float, dict[str, Any]]  # (write time, record)


class DemoDevice:
    """One demo device's records, in the order it writes them (deterministic per seed)."""

    def __init__(self, name: str, sensor_model: str, seed: int) -> None:
        self._name = name
        self._sensor = sensor_model
        self._rng = np.random.default_rng(seed)
        self._random = random.Random(seed)  # noqa: S311 - made-up readings
        runtime = choose_runtime("auto")
        self._runners: dict[str, ModelRunner] = {}
        for model in GENERATORS:
            bundle = read_bundle(REPO / "models" / model / "1.0.0")
            runner = ModelRunner(bundle, runtime, num_threads=1, interpreters=1, queue_limit=1)
            runner.load()
            self._runners[model] = runner

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()

    def records(self, *, start: float = 1.78e9, producer: bool = True) -> Iterator[Row]:
        """Endless (write time, record) rows; `producer=False` leaves out the producer's
        readings (the demo's own shape, not Outpost's)."""
        rng, rand = self._rng, self._random
        now, n = start, 0
        while True:
            now += 1.0
            if producer:
                for _ in range(5):
                    reading = round(rand.gauss(1, 0.2), 3)
                    yield now, {"source": self._name, "n": n, "vibration_rms": reading}
                    n += 1
            for k in range(2):
                answer = self._infer(self._sensor, rng.random() < 0.8)
                manifest = self._runners[self._sensor].manifest
                flag = DEMO_RULES.reason(manifest.normal_label, answer)
                if flag is not None:
                    record = result_record(manifest.name, manifest.version, manifest.labels, answer)
                    record.update(ts=now + k * 0.5, flag=flag, context={})
                    yield now + k * 0.5, record
            for _ in range(3):
                model = "vibration-anomaly" if rand.random() < 0.8 else "surface-defect"
                started = now + rand.random()
                yield started, self._task_result(model, started, rand.getrandbits(64))
            if int(now) % 60 == 0:
                yield now, self._rollup(rand)

    def _infer(self, model: str, normal: bool) -> Inference:
        make = GENERATORS[model]
        runner = self._runners[model]
        while True:
            x, y = make(1, self._rng)
            if (y[0] == 0) == normal:
                prepared = prepare_input(
                    x[0].astype("<f4").tobytes(), "float32", runner.manifest.input
                )
                return runner.run_blocking(prepared, time.perf_counter())

    def _task_result(self, model: str, started: float, token: int) -> dict[str, Any]:
        answer = self._infer(model, self._rng.random() < 0.8)
        manifest = self._runners[model].manifest
        return {
            "kind": "task",
            "task_id": f"tsk-{token:016x}",
            "attempt": 1,
            "model": model,
            "started_at": started,
            "status": "succeeded",
            "version": manifest.version,
            "label": answer.label,
            "confidence": round(answer.confidence, 6),
            "scores": {
                label: round(s, 6) for label, s in zip(manifest.labels, answer.scores, strict=True)
            },
            "latency_ms": round(answer.latency_ms, 3),
            "finished_at": started + answer.latency_ms / 1000,
        }

    def _rollup(self, rand: random.Random) -> dict[str, Any]:
        load = wire.Load(
            cpu_percent=round(rand.uniform(5, 60), 1),
            memory_percent=round(rand.uniform(30, 60), 1),
            disk_percent=round(rand.uniform(20, 70), 1),
            rss_bytes=rand.randrange(60, 90) << 20,
            temperature_c=round(rand.uniform(40, 70), 1),
        )
        streams = {
            name: {
                "records": rand.randrange(0, 50),
                "bytes": rand.randrange(0, 20_000),
                "fill": 0.0,
            }
            for name in wire.STREAMS
        }
        count = rand.randrange(100, 140)
        models = {
            "vibration-anomaly@1.0.0": {
                "count": count,
                "latency_ms": {"0.1": count},
                "latency_sum_ms": round(count * 0.04, 3),
                "confidence": [0, 0, 0, 0, 0, 1, 2, 4, 10, count - 17],
                "confidence_sum": round(count * 0.93, 4),
                "labels": {"normal": count - 20, "bearing_fault": 12, "imbalance": 8},
            }
        }
        tasks = {"done": rand.randrange(150, 200), "failed": 0, "queued": 0, "running": 0}
        return rollup.record(
            period_s=60.0,
            load=load,
            store={"streams": streams},
            tasks=tasks,
            models=models,
            errors={},
        )


def demo_rows(count: int, *, seed: int = 1, producer: bool = True) -> list[Row]:
    """`count` rows of the demo's pump station (vibration sensor, tasks of both models)."""
    device = DemoDevice("pump-station", "vibration-anomaly", seed)
    try:
        rows = device.records(producer=producer)
        return [next(rows) for _ in range(count)]
    finally:
        device.close()


def records_batch(rows: list[Row], first_seq: int, stream: wire.Stream = "results") -> wire.Records:
    """`rows` as the batch the agent sends, numbered from `first_seq`."""
    numbered = [(first_seq + i, ts, body) for i, (ts, body) in enumerate(rows)]
    return wire.Records.pack(stream, first_seq, first_seq + len(rows) - 1, numbered)
