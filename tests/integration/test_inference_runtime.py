"""The shipped int8 models on the real interpreters: LiteRT, and tflite-runtime as the
fallback (in its own venv, where only it is installed)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.inference.directory import ModelDirectory
from edge.inference.inlining import PROBE_EVERY
from edge.inference.runner import Inference, ModelBusy, ModelFault, ModelRunner
from edge.inference.runtime import Runtime, RuntimeMissing, choose_runtime
from edge.inference.tensors import InputError, prepare_input
from outpost.modelbundle import BundleError, read_bundle
from tests.support import REPO, SHIPPED_MODELS

FALLBACK_PYTHON = REPO / ".venv-tflite" / "bin" / "python"


@pytest.fixture(scope="module")
def litert() -> Runtime:
    runtime = choose_runtime()
    assert runtime.name == "ai-edge-litert"
    return runtime


def runner_for(folder: Path, runtime: Runtime, **kwargs: int) -> ModelRunner:
    options: dict[str, Any] = {"num_threads": 1, "interpreters": 1, "queue_limit": 4, **kwargs}
    return ModelRunner(read_bundle(folder), runtime, **options)


@pytest.mark.parametrize("folder", SHIPPED_MODELS, ids=lambda p: p.parent.name)
@pytest.mark.parametrize("threads", [1, 2])
async def test_each_model_gives_its_expected_output_for_its_sample(
    folder: Path, threads: int, litert: Runtime
) -> None:
    runner = runner_for(folder, litert, num_threads=threads)
    runner.load()  # runs the sample as a self-test too
    sample = read_bundle(folder).sample
    assert sample is not None
    try:
        got = await runner.infer(sample.input, "int8")
    finally:
        runner.close()

    assert got.label == sample.expected.label
    assert np.abs(np.array(got.raw) - sample.expected.output).max() <= sample.tolerance
    assert got.confidence == max(got.scores)
    assert got.latency_ms > 0


@pytest.mark.parametrize("folder", SHIPPED_MODELS, ids=lambda p: p.parent.name)
async def test_real_valued_input_is_quantized_to_the_same_answer(
    folder: Path, litert: Runtime
) -> None:
    bundle = read_bundle(folder)
    assert bundle.sample is not None
    spec = bundle.manifest.input
    real = (np.array(bundle.sample.input, np.float32) - spec.zero_point) * spec.scale
    runner = runner_for(folder, litert)
    runner.load()
    try:
        got = await runner.infer(real[0].tolist(), "float32")  # without the batch dimension
    finally:
        runner.close()

    assert got.label == bundle.sample.expected.label
    assert np.abs(np.array(got.raw) - bundle.sample.expected.output).max() <= 1
    assert got.clipped == 0


async def test_requests_beyond_the_queue_are_refused_not_piled_up(litert: Runtime) -> None:
    runner = runner_for(SHIPPED_MODELS[1], litert, interpreters=1, queue_limit=2)
    runner.inline_below_s = 0.0  # every call through the queue, none run inline
    runner.load()
    sample = runner.bundle.sample
    assert sample is not None
    try:
        outcomes = await asyncio.gather(
            *(runner.infer(sample.input, "int8") for _ in range(20)), return_exceptions=True
        )
    finally:
        runner.close()

    busy = [o for o in outcomes if isinstance(o, ModelBusy)]
    served = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(served) == 3  # one running, two waiting
    assert len(busy) == 17
    assert "limit 3" in str(busy[0])
    assert runner.outstanding == 0


async def test_inference_runs_on_worker_threads(litert: Runtime) -> None:
    runner = runner_for(SHIPPED_MODELS[0], litert, interpreters=2)
    runner.inline_below_s = 0.0  # as for a model slower than a hop to a worker
    runner.load()
    sample = runner.bundle.sample
    assert sample is not None
    seen: list[str] = []
    original = runner.run_blocking

    def spy(*args: object) -> object:
        seen.append(threading.current_thread().name)
        return original(*args)  # type: ignore[arg-type]

    runner.run_blocking = spy  # type: ignore[method-assign,assignment]
    try:
        await asyncio.gather(*(runner.infer(sample.input, "int8") for _ in range(4)))
    finally:
        runner.close()

    assert len(seen) == 4
    assert all(name.startswith("infer-vibration-anomaly") for name in seen)


async def test_a_byte_tensor_is_prepared_before_the_hop_and_nested_lists_after(
    litert: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A camera frame's bytes are quantized on the event loop (a few numpy passes that,
    on a worker, would each wait for the GIL the loop holds); nested lists, slow to
    convert, on the worker. Either way the same answer."""
    runner = runner_for(SHIPPED_MODELS[1], litert)
    runner.inline_below_s = 0.0  # as for a model slower than a hop to a worker
    runner.load()
    bundle = runner.bundle
    assert bundle.sample is not None
    spec = bundle.manifest.input
    real = (np.array(bundle.sample.input, np.float32) - spec.zero_point) * spec.scale
    prepared_on: list[str] = []

    def spy(*args: Any) -> Any:
        prepared_on.append(threading.current_thread().name)
        return prepare_input(*args)

    monkeypatch.setattr("edge.inference.runner.prepare_input", spy)
    try:
        from_bytes = await runner.infer(real.astype("<f4").tobytes(), "float32")
        from_lists = await runner.infer(real.tolist(), "float32")
        with pytest.raises(InputError, match="bytes"):
            await runner.infer(b"\x00" * 12, "float32")
    finally:
        runner.close()

    assert prepared_on[0] == prepared_on[2] == threading.current_thread().name
    assert prepared_on[1].startswith("infer-")
    assert from_bytes.raw == from_lists.raw
    assert from_bytes.label == bundle.sample.expected.label
    assert runner.outstanding == 0


def test_the_timing_at_load_runs_the_sample_as_the_tensor_bytes(
    litert: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a model runs inline is decided on its own work: its sample's nested lists
    took 1.1-1.7 ms to convert against a 35 µs invoke, which kept every model off."""
    runner = runner_for(SHIPPED_MODELS[1], litert)
    timed: list[type] = []

    def spy(value: Any, *args: Any) -> Any:
        timed.append(type(value))
        return prepare_input(value, *args)

    monkeypatch.setattr("edge.inference.runner.prepare_input", spy)
    runner.load()
    runner.close()

    assert timed.count(list) == 1  # the self-test, on the sample as shipped (one thread)
    assert timed.count(bytes) >= 20  # every timed run


async def test_a_fast_model_stays_inline_through_answers_held_up_by_the_scheduler(
    litert: Runtime,
) -> None:
    runner = runner_for(SHIPPED_MODELS[0], litert)
    runner.load()
    sample = runner.bundle.sample
    assert sample is not None
    tensor = np.asarray(sample.input, np.int8).tobytes()  # as a camera frame comes
    # A fixed line, and the model's answers fixed well under it: each answer's work also
    # counts its real preparing, and on a slower machine a cold one can cross a line
    # drawn from the model's reading at load (three times it).
    runner.inline_below_s = 0.002
    usual_ms = 0.1
    # One answer in twenty as a busy machine's scheduler makes it: counted whole, one
    # carries the average over the line (50 ms at a weight of 0.05); capped at twice the
    # line, not.
    stall_ms = 50.0
    original = runner.run_blocking
    calls = 0

    def stalled_now_and_then(*args: Any) -> Inference:
        nonlocal calls
        calls += 1
        done = original(*args)
        return dataclasses.replace(done, latency_ms=stall_ms if calls % 20 == 0 else usual_ms)

    runner.run_blocking = stalled_now_and_then  # type: ignore[method-assign,assignment]
    try:
        for _ in range(200):
            await runner.infer(tensor, "int8")
            assert runner.inline, (
                f"on the workers after {calls} answers ({runner.inlining.work_s} s)"
            )
    finally:
        runner.close()

    # A model that is slow on every answer still leaves the event loop.
    slow = runner_for(SHIPPED_MODELS[0], litert)
    slow.load()
    slow.inline_below_s = 0.002
    slower_ms = 4000 * slow.inline_below_s  # four times the line, on every answer
    original = slow.run_blocking
    slow.run_blocking = lambda *a: dataclasses.replace(original(*a), latency_ms=slower_ms)  # type: ignore[method-assign]
    try:
        for _ in range(100):
            await slow.infer(tensor, "int8")
        assert not slow.inline
    finally:
        slow.close()


async def test_a_shadow_candidate_slow_on_its_tensors_leaves_the_event_loop(
    litert: Runtime,
) -> None:
    """A shadow candidate runs the live model's prepared tensor (`infer_tensor`): its
    answers count towards its inline choice as `infer`'s do. Uncounted, a candidate
    timed fast at load stayed on the event loop however slow it ran there."""
    runner = runner_for(SHIPPED_MODELS[0], litert)
    runner.load()
    sample = runner.bundle.sample
    assert sample is not None
    tensor = np.asarray(sample.input, np.int8).reshape(runner.manifest.input.shape)
    runner.inline_below_s = 0.002
    runner.inlining.loaded(0.0001)  # fast at load
    assert runner.inlining.inline(outstanding=0)
    ran_on: list[str] = []
    original = runner.run_blocking

    def slow(*args: Any) -> Inference:
        ran_on.append(threading.current_thread().name)
        return dataclasses.replace(original(*args), latency_ms=4000 * runner.inline_below_s)

    runner.run_blocking = slow  # type: ignore[method-assign,assignment]
    try:
        for _ in range(100):
            assert (await runner.infer_tensor(tensor)).label == sample.expected.label
    finally:
        runner.close()

    assert not runner.inline, f"still inline after 100 slow answers ({runner.inlining.work_s} s)"
    assert ran_on[0] == threading.main_thread().name
    assert ran_on[-1].startswith("infer-")


async def test_a_fast_model_read_slow_inline_is_tried_there_again(litert: Runtime) -> None:
    """A few slow inline answers (a busy machine) put a fast model on its workers. What
    its answers take there, beside a busy event loop, is mostly their wait for the GIL
    (milliseconds for a 20 µs model): counted, they kept it there for good, where each
    hop cost more than the model. Not counted, its probes bring it back."""
    runner = runner_for(SHIPPED_MODELS[0], litert)
    runner.load()
    sample = runner.bundle.sample
    assert sample is not None
    tensor = np.asarray(sample.input, np.int8).tobytes()
    # The line between what a worker's answer takes beside the busy loop below (it waits
    # for the GIL for Python's switch interval, 5 ms, whatever the machine) and what an
    # inline one does, even with its caches gone cold on a slow machine (0.2 ms): a line
    # drawn from the model's own reading (ten times it) was crossed by cold inline answers
    # on a slower machine than this one.
    runner.inline_below_s = 0.002
    runner.inlining.work_s = 2 * runner.inline_below_s  # as after slow answers
    ran_on: list[str] = []
    original = runner.run_blocking

    def spy(*args: Any) -> Inference:
        ran_on.append(threading.current_thread().name)
        return original(*args)

    runner.run_blocking = spy  # type: ignore[method-assign,assignment]
    try:
        calls = 0
        while not runner.inline and calls < 60 * PROBE_EVERY:
            answer = asyncio.create_task(runner.infer(tensor, "int8"))
            await asyncio.sleep(0)  # handed to a worker (or run here, as a probe)
            # The loop busy, holding the GIL past Python's switch interval (5 ms):
            # the worker, given the GIL in the middle, waits for it again after its invoke.
            busy_until = time.perf_counter() + 0.01
            while time.perf_counter() < busy_until:
                pass
            assert (await answer).label == sample.expected.label
            calls += 1
    finally:
        runner.close()

    main = threading.main_thread().name
    assert runner.inline, f"never back inline in {calls} calls ({runner.inlining.work_s} s)"
    here = [n for n, name in enumerate(ran_on, 1) if name == main]
    assert here[-1] == len(ran_on)  # the probe that brought it back
    assert len(here) > 1  # one fast probe is not enough
    assert all(name.startswith("infer-") for name in ran_on if name != main)


async def test_a_fast_model_runs_inline_unless_a_request_holds_an_interpreter(
    litert: Runtime,
) -> None:
    runner = runner_for(SHIPPED_MODELS[0], litert, interpreters=2)
    runner.inline_below_s = 1.0  # any model is fast enough
    runner.load()
    sample = runner.bundle.sample
    assert sample is not None
    seen: list[str] = []
    holding, release = threading.Event(), threading.Event()
    original = runner.run_blocking

    def spy(*args: object) -> object:
        seen.append(threading.current_thread().name)
        if len(seen) == 2:  # the first worker request holds its interpreter
            holding.set()
            release.wait(30)
        return original(*args)  # type: ignore[arg-type]

    runner.run_blocking = spy  # type: ignore[method-assign,assignment]
    try:
        alone = await runner.infer(sample.input, "int8")  # nobody else: on the loop
        runner.inline_below_s = 0.0
        held = asyncio.create_task(runner.infer(sample.input, "int8"))  # to a worker
        assert await asyncio.to_thread(holding.wait, 30)
        runner.inline_below_s = 1.0
        assert not runner.inline, "an interpreter is held: no inline run"
        beside = await asyncio.wait_for(runner.infer(sample.input, "int8"), 30)
        release.set()
        await held
        after = await runner.infer(sample.input, "int8")
    finally:
        release.set()
        runner.close()

    main = threading.main_thread().name
    assert seen[0] == main
    assert seen[1].startswith("infer-")
    assert seen[2].startswith("infer-")
    assert seen[3] == main
    assert alone.label == beside.label == after.label == sample.expected.label


@pytest.mark.parametrize("inline_below_s", [1.0, 0.0], ids=["inline", "on-workers"])
def test_a_model_that_runs_inline_gets_one_thread(litert: Runtime, inline_below_s: float) -> None:
    # Inline, its few microseconds of work would wait on a wake-up of the pool each call.
    runner = runner_for(SHIPPED_MODELS[0], litert, num_threads=2)
    runner.inline_below_s = inline_below_s
    runner.load()  # runs the sample again as a self-test on the new interpreter
    try:
        assert runner.num_threads == (1 if inline_below_s else 2)
        assert runner.inline == bool(inline_below_s)
    finally:
        runner.close()


def corrupt_copy(tmp_path: Path, keep: int) -> Path:
    """A copy of a bundle whose model file is cut to `keep` bytes, manifest updated to
    match (so the runtime, not the sha256 check, meets the damage)."""
    import hashlib

    folder = Path(shutil.copytree(SHIPPED_MODELS[0], tmp_path / "corrupt"))
    data = (folder / "model.tflite").read_bytes()[:keep]
    (folder / "model.tflite").write_bytes(data)
    manifest = json.loads((folder / "model.json").read_text())
    manifest.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("keep", [16, 4000])
def test_a_corrupt_model_file_fails_to_load_with_a_clear_error(
    tmp_path: Path, keep: int, litert: Runtime
) -> None:
    runner = runner_for(corrupt_copy(tmp_path, keep), litert)

    with pytest.raises(ModelFault, match="the runtime cannot load it"):
        runner.load()


def test_a_model_changed_on_disk_after_install_is_refused_at_load(
    tmp_path: Path, litert: Runtime
) -> None:
    directory = ModelDirectory(tmp_path / "models")
    directory.install(SHIPPED_MODELS[0])
    (entry,) = directory.entries()
    assert entry.bundle is not None
    model = entry.bundle.model_path
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])

    with pytest.raises(ModelFault, match="truncated or replaced"):
        ModelRunner(entry.bundle, litert, num_threads=1, interpreters=1, queue_limit=1).load()


def test_the_model_directory_keeps_versions_and_one_active(tmp_path: Path) -> None:
    directory = ModelDirectory(tmp_path / "models")
    for folder in SHIPPED_MODELS:
        directory.install(folder)
    newer = Path(shutil.copytree(SHIPPED_MODELS[0], tmp_path / "v2"))
    manifest = json.loads((newer / "model.json").read_text())
    (newer / "model.json").write_text(json.dumps({**manifest, "version": "1.10.0"}))

    directory.install(newer, activate=False)
    assert directory.active("vibration-anomaly") == "1.0.0"
    assert directory.versions("vibration-anomaly") == ["1.0.0", "1.10.0"]

    directory.install(newer)
    assert directory.active("vibration-anomaly") == "1.10.0"
    assert sorted((e.name, e.version) for e in directory.entries()) == [
        ("surface-defect", "1.0.0"),
        ("vibration-anomaly", "1.10.0"),
    ]


def test_a_version_cannot_be_reinstalled_with_other_bytes(tmp_path: Path) -> None:
    directory = ModelDirectory(tmp_path / "models")
    directory.install(SHIPPED_MODELS[0])
    other = corrupt_copy(tmp_path, 4000)

    with pytest.raises(BundleError, match="installed with another sha256"):
        directory.install(other)
    assert read_bundle(directory.root / "vibration-anomaly" / "1.0.0").manifest.size > 4000


def test_a_missing_runtime_is_named() -> None:
    # This venv has LiteRT only; asking for tflite-runtime alone must say what to install.
    with pytest.raises(RuntimeMissing, match="install tflite-runtime"):
        choose_runtime("tflite-runtime")


FALLBACK_CHECK = """
import asyncio, json, sys
from pathlib import Path
from edge.inference.runtime import choose_runtime
from edge.inference.runner import ModelRunner
from outpost.modelbundle import read_bundle

runtime = choose_runtime("auto")
out = {"runtime": runtime.label, "models": {}}
for folder in sys.argv[1:]:
    bundle = read_bundle(Path(folder))
    runner = ModelRunner(bundle, runtime, num_threads=1, interpreters=1, queue_limit=1)
    runner.load()
    got = asyncio.run(runner.infer(bundle.sample.input, "int8"))
    runner.close()
    out["models"][bundle.manifest.name] = {"label": got.label, "raw": got.raw}
print(json.dumps(out))
"""


def test_the_fallback_runtime_runs_the_shipped_models() -> None:
    """Where only tflite-runtime is installed, `auto` picks it and the models agree."""
    assert FALLBACK_PYTHON.exists(), "run scripts/setup-fallback-runtime.sh (the test command does)"
    done = subprocess.run(
        [str(FALLBACK_PYTHON), "-c", FALLBACK_CHECK, *map(str, SHIPPED_MODELS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert report["runtime"].startswith("tflite-runtime 2.14")
    for folder in SHIPPED_MODELS:
        sample = read_bundle(folder).sample
        assert sample is not None
        got = report["models"][folder.parent.name]
        assert got["label"] == sample.expected.label
        assert np.abs(np.array(got["raw"]) - sample.expected.output).max() <= sample.tolerance
