"""One installed model, loaded: its interpreters, its worker threads and its queue.

Interpreters are created once, at load, and reused; each worker thread owns one at a
time, so the event loop does not wait for an inference. Requests beyond the workers wait
in a bounded queue; past that bound a request is refused at once (`ModelBusy`) instead
of piling up until memory or latency gives way.

An input sent as the tensor's bytes (a camera frame) and no larger than
`PREPARE_HERE_VALUES` is checked and quantized on the event loop instead, before the hop:
a few numpy passes (17 µs for a 96x96x3 image on a 2-core x86 machine). On the worker
each of those passes gives up and takes back the GIL, which the event loop holds in
turn between an answer and the next request: under load that wait cost more than the
work, and the loop's quantizing of the next input overlaps the current invoke (which
runs without the GIL). Nested lists (JSON) take a millisecond or more to convert and
stay on the worker.

One exception: a model that answers faster than a round trip to a worker thread costs
runs on the event loop itself when no other request is using it (edge/inference/
inlining.py says how that is decided).

Each answer carries two timings of the same section (set_tensor + invoke + get_tensor):
its wall time (`latency_ms`, what the caller waited) and the CPU time the threads that
ran it spent on it (`cpu_ms`, what it cost; read only while a candidate is in shadow
for the model, see `count_cpu`). A shadow candidate runs at the lowest
priority, so on a busy machine its wall time grows with the wait for a CPU; its CPU time
does not, and is what a candidate is judged on (edge/inference/shadow.py).
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.inference.inlining import INLINE_BELOW_S, Inlining
from edge.inference.interpreters import MAKING, Interpreter, ModelFault, make_interpreter
from edge.inference.runtime import Runtime
from edge.inference.tensors import Prepared, check_nesting, dequantize, prepare_input
from edge.inference.workers import Workers, lowest_priority
from outpost.modelbundle import Bundle, BundleError, Manifest, check_model_file

__all__ = ["INLINE_BELOW_S", "Inference", "ModelBusy", "ModelFault", "ModelRunner"]

_WARM_UP_AT_LOAD = 5  # sample runs before timing (the first ones pack weights, fill caches)
_TIMED_AT_LOAD = 20  # sample runs timed at load
# Byte tensors of at most this many values are prepared on the event loop (see above):
# 64 Ki float32 values (256 KiB) quantize in about 40 µs here.
PREPARE_HERE_VALUES = 64 * 1024


class ModelBusy(RuntimeError):
    """The model's queue is full: back-pressure, try again shortly."""


@dataclass(frozen=True)
class Inference:
    """What one inference gave: the top label and its score, every score, and timings."""

    label: str
    confidence: float
    scores: list[float]
    raw: list[int]
    latency_ms: float  # set_tensor + invoke + get_tensor
    queued_ms: float  # waiting for a free interpreter
    clipped: int = 0  # input values outside the quantized range
    # CPU time of the same section, on every thread that ran it (see `Interpreter`);
    # None where it cannot be told apart from other threads' work.
    cpu_ms: float | None = None
    threads: int = 1  # the interpreter's num_threads
    # The int8 input it ran on: a shadow candidate with the same input spec runs on it
    # as is, rather than converting the caller's value again.
    tensor: Any = field(default=None, repr=False, compare=False)


class ModelRunner:
    """Runs one model on `interpreters` worker threads with a queue of `queue_limit`."""

    def __init__(
        self,
        bundle: Bundle,
        runtime: Runtime,
        *,
        num_threads: int,
        interpreters: int,
        queue_limit: int,
        inline_below_s: float = INLINE_BELOW_S,
        background: bool = False,
    ) -> None:
        """`background`: work only on CPU the rest leaves idle (a shadow candidate): its
        worker threads at the lowest priority (a model so small it runs inline still
        does: a thread hop would cost the live path more than its few microseconds)."""
        self.bundle = bundle
        self.background = background
        self.inlining = Inlining(inline_below_s)
        self.manifest: Manifest = bundle.manifest
        self._runtime = runtime
        self.num_threads = num_threads  # may drop to 1 at load: see `load`
        self._count = interpreters
        self._queue_limit = queue_limit
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._workers: Workers | None = None
        self._outstanding = 0  # running + waiting; touched only on the event loop
        self._decoding = 0  # requests whose body is still being decoded (`hold_place`)
        self.served = 0
        self.failed = 0
        # Whether each answer reads the CPU time its threads spent (`cpu_ms`): a system
        # call per thread before and after, about 2 µs of a small model's 21 µs runner
        # call. Only a shadow comparison reads it, so the service turns it off for a live
        # model with no candidate in shadow (`InferenceService.runner`).
        self.count_cpu = True

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def load(self) -> None:
        """Check the file against its manifest, create the interpreters, run the sample.

        Blocking: call it from a thread. Raises `ModelFault` naming what is wrong.
        """
        try:
            check_model_file(self.bundle.model_path, self.manifest)
            self._make_interpreters()
        except BundleError as exc:
            raise ModelFault(str(exc)) from exc
        except ModelFault:
            raise
        except (ValueError, RuntimeError) as exc:  # what the interpreter raises on a bad file
            raise ModelFault(
                f"{self.bundle.model_path}: the runtime cannot load it: {exc}"
            ) from exc
        self.self_test()
        self.inlining.loaded(self._time_sample())
        if self.inlining.fast_at_load and self.num_threads > 1:
            # It will run inline, and its work is a few microseconds: a pool of threads
            # for it would only add a wake-up of the pool to every call (tens of
            # microseconds when the pool has gone to sleep between calls). One thread.
            self.num_threads = 1
            self._make_interpreters()
            self.self_test()
            self.inlining.loaded(self._time_sample())
        self._workers = Workers(
            self._count,
            f"infer-{self.manifest.name}",
            initializer=lowest_priority if self.background else None,
        )

    def _make_interpreters(self) -> None:
        """(Re)create the interpreters, with `num_threads` threads each."""
        made = [self._make_interpreter() for _ in range(self._count)]
        while not self._idle.empty():
            self._idle.get()
        for interpreter in made:
            self._idle.put(interpreter)

    def _make_interpreter(self) -> Interpreter:
        return make_interpreter(
            self._runtime, str(self.bundle.model_path), self.num_threads, self.manifest
        )

    def self_test(self) -> None:
        """Run the bundle's sample and compare with its expected output (blocking)."""
        sample = self.bundle.sample
        if sample is None:
            return
        prepared = prepare_input(sample.input, "int8", self.manifest.input)
        got = self.run_blocking(prepared, time.perf_counter())
        worst = max(abs(a - b) for a, b in zip(got.raw, sample.expected.output, strict=True))
        if got.label != sample.expected.label or worst > sample.tolerance:
            raise ModelFault(
                f"{self.manifest.name} {self.manifest.version}: the sample gave {got.label} "
                f"{got.raw}, expected {sample.expected.label} {sample.expected.output}"
            )

    def _time_sample(self) -> float:
        """The median time of a whole inference on the sample sent as the tensor's bytes
        (or inf without a sample).

        Bytes, not the sample's nested lists: turning lists into an array is the
        caller's choice of format, and took 1.1-1.7 ms of `surface-defect`'s 32x32 input
        against its 35 µs invoke, so every model looked too slow to run inline and kept
        its pool of threads. A caller that does send lists is counted by the running
        average of the answers that follow (of a model that may be fast, its inline
        answers only: edge/inference/inlining.py)."""
        sample = self.bundle.sample
        if sample is None:
            return float("inf")
        tensor = np.asarray(sample.input, np.int8).tobytes()
        for _ in range(_WARM_UP_AT_LOAD):
            self._prepare_and_run(tensor, "int8", time.perf_counter())
        times = []
        for _ in range(_TIMED_AT_LOAD):
            started = time.perf_counter()
            self._prepare_and_run(tensor, "int8", started)
            times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2]

    def _check_room(self) -> None:
        """Raise `ModelBusy` when the requests running, waiting and being decoded fill the
        workers and the queue."""
        held = self._outstanding + self._decoding
        if held >= self._count + self._queue_limit:
            raise ModelBusy(
                f"{self.manifest.name} has {held} requests in progress or waiting "
                f"(limit {self._count + self._queue_limit}); retry shortly"
            )

    def hold_place(self) -> None:
        """Count a request whose body is being decoded against the queue's bound, or raise
        `ModelBusy`: a burst is refused before its bodies become Python objects. Give the
        place back (`release_place`) before calling `infer`."""
        self._check_room()
        self._decoding += 1

    def release_place(self) -> None:
        self._decoding -= 1

    @property
    def inline_below_s(self) -> float:
        return self.inlining.below_s

    @inline_below_s.setter
    def inline_below_s(self, seconds: float) -> None:
        self.inlining.below_s = seconds

    @property
    def inline(self) -> bool:
        """Whether the next request, arriving now, would run on the event loop (a probe
        aside: `Inlining.runs_here`)."""
        return self.inlining.inline(self._outstanding)

    async def infer(self, value: Any, dtype: str = "float32") -> Inference:
        """Check and quantize `value`, and run it, on a worker thread.

        Raises `InputError` for a bad input, `ModelBusy` when the queue is full and
        `ModelFault` when the interpreter fails.
        """
        if self._workers is None:
            raise ModelFault(f"{self.manifest.name} is not loaded")
        self._check_room()
        here, probe = self.inlining.runs_here(self._outstanding)
        if here:  # no one holds an interpreter: one is free, without waiting
            done = self._prepare_and_run(value, dtype, time.perf_counter(), probe=probe)
            self.served += 1
            return done
        self._outstanding += 1
        try:
            if self._prepare_here(value):
                began = time.perf_counter()
                prepared = prepare_input(value, dtype, self.manifest.input)
                preparing = time.perf_counter() - began
                done = await self._workers.submit(
                    self._run_timed, prepared, preparing, time.perf_counter()
                )
            else:
                # A wrong nesting is refused here, not after its wait in the queue: a few
                # microseconds, along the first elements only (see `check_nesting`).
                check_nesting(value, self.manifest.input)
                done = await self._workers.submit(
                    self._prepare_and_run, value, dtype, time.perf_counter()
                )
        finally:
            self._outstanding -= 1
        self.served += 1
        return done

    def _prepare_here(self, value: Any) -> bool:
        """Whether `value` is a byte tensor small enough to prepare on the event loop."""
        if not isinstance(value, bytes | bytearray | memoryview):
            return False
        return len(value) <= PREPARE_HERE_VALUES * 4  # float32, the widest accepted

    async def infer_tensor(self, tensor: Any) -> Inference:
        """Run an input another runner prepared for the same input spec, on a worker
        thread (`ModelBusy` when the queue is full, `ModelFault` if it fails)."""
        if self._workers is None:
            raise ModelFault(f"{self.manifest.name} is not loaded")
        self._check_room()
        # Chosen and counted as `infer`'s answers are: a shadow candidate judged fast at
        # load but slow since must leave the event loop, and one that came back, return.
        prepared = Prepared(tensor, 0)
        here, probe = self.inlining.runs_here(self._outstanding)
        if here:
            done = self._run_timed(prepared, 0.0, time.perf_counter(), probe=probe)
            self.served += 1
            return done
        self._outstanding += 1
        try:
            done = await self._workers.submit(self._run_timed, prepared, 0.0, time.perf_counter())
        finally:
            self._outstanding -= 1
        self.served += 1
        return done

    def _prepare_and_run(
        self, value: Any, dtype: str, submitted: float, *, probe: bool | None = None
    ) -> Inference:
        """`probe`: None on a worker; on the event loop, whether as a probe."""
        # Turning a large nested list into a tensor takes a millisecond or more: it is
        # done here, on the worker (unless the model runs inline), not on the event loop.
        began = time.perf_counter()
        prepared = prepare_input(value, dtype, self.manifest.input)
        return self._run_timed(prepared, time.perf_counter() - began, submitted, probe=probe)

    def _run_timed(
        self, prepared: Prepared, preparing: float, submitted: float, *, probe: bool | None = None
    ) -> Inference:
        """Run `prepared`, and count its work (`preparing` it took, wherever, and the
        interpreter's) towards the choice to run the model inline (`probe` as above)."""
        inference = self.run_blocking(prepared, submitted)
        work = preparing + inference.latency_ms / 1000
        if probe:
            self.inlining.probed(work)
        else:
            self.inlining.count(work, here=probe is not None)
        return inference

    def run_blocking(self, prepared: Prepared, submitted: float) -> Inference:
        """One inference on a free interpreter (in a worker thread)."""
        interpreter = self._idle.get()
        started = time.perf_counter()
        try:
            raw, cpu = interpreter.run(prepared.tensor, self.count_cpu)
        except (ValueError, RuntimeError) as exc:
            self.failed += 1
            raise ModelFault(f"{self.manifest.name}: the interpreter failed: {exc}") from exc
        finally:
            self._idle.put(interpreter)
        latency = time.perf_counter() - started
        scores = dequantize(raw, self.manifest.output)
        top = int(np.argmax(raw))
        return Inference(
            label=self.manifest.labels[top],
            confidence=scores[top],
            scores=scores,
            raw=raw.tolist(),
            latency_ms=latency * 1000,
            queued_ms=(started - submitted) * 1000,
            clipped=prepared.clipped,
            cpu_ms=None if cpu is None else cpu * 1000,
            threads=self.num_threads,
            tensor=prepared.tensor,
        )

    @contextlib.contextmanager
    def batches(self, size: int) -> Iterator[Callable[[np.ndarray], np.ndarray]]:
        """A function from int8 inputs [n, *shape] to raw outputs [n, classes] on an
        interpreter of its own, made here and dropped after (blocking: a worker thread).

        For explanations, hundreds of inputs each: `size` per invoke where the model's
        batch dimension is free (-1), else one per invoke. The live interpreters stay
        free for live requests, and nothing is held between explanations (the 96x96
        model at 16 per invoke: +1.6 MiB while it lasts). Raises `ModelFault`.
        """
        try:
            with MAKING:  # its threads must not pass for a live interpreter's (see there)
                interpreter = self._runtime.interpreter(
                    str(self.bundle.model_path), self.num_threads
                )
            (inp,) = interpreter.get_input_details()
            (out,) = interpreter.get_output_details()
            if size > 1 and int(inp.get("shape_signature", inp["shape"])[0]) == -1:
                interpreter.resize_tensor_input(
                    inp["index"], [size, *self.manifest.input.shape[1:]]
                )
                interpreter.allocate_tensors()
            else:
                size = 1
        except (ValueError, RuntimeError) as exc:  # the file went with a swap, or odd
            raise ModelFault(f"{self.manifest.name}: no interpreter for batches: {exc}") from exc

        def run(tensors: np.ndarray) -> np.ndarray:
            outs = []
            for start in range(0, len(tensors), size):
                chunk = tensors[start : start + size]
                if len(chunk) < size:  # the batch is fixed once allocated: pad the last
                    pad = np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)
                    chunk = np.concatenate([chunk, pad])
                try:
                    interpreter.set_tensor(inp["index"], chunk)
                    interpreter.invoke()
                    raw = interpreter.get_tensor(out["index"]).reshape(size, -1)
                except (ValueError, RuntimeError) as exc:
                    raise ModelFault(
                        f"{self.manifest.name}: the interpreter failed: {exc}"
                    ) from exc
                outs.append(raw[: min(size, len(tensors) - start)])
            return np.concatenate(outs)

        yield run

    def close(self) -> None:
        if self._workers is not None:
            self._workers.shutdown()
            self._workers = None
