"""One LiteRT interpreter as the runner uses it: its tensors checked against the model's
manifest and looked up once, and the CPU time each run costs on every thread it ran on
(what a shadow candidate is judged on, edge/inference/shadow.py)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from edge.inference.runtime import Runtime
from outpost.modelbundle import Manifest, TensorSpec


class ModelFault(RuntimeError):
    """The model failed to load, or its interpreter failed on a request (imported from
    edge.inference.runner by its users)."""


# How LiteRT runs an interpreter of `num_threads` threads (ai-edge-litert 2.3, measured
# here on 2 cores): with num_threads=1 everything runs on the calling thread and no thread
# is made; with N > 1, allocate_tensors starts N - 1 threads of its own (XNNPACK's
# pthreadpool) that share each invoke with the caller and spin a while between parallel
# sections. So the calling thread's CPU time (`time.thread_time`) is the whole cost only
# at one thread: at 2 and 3 threads surface-defect's caller spent 145 and 130 µs of
# 290 and 310 µs in all. The process's CPU clock is no use either: it counts the event
# loop and every other model. What counts is the CPU clock of each thread that works for
# this interpreter: the caller's, plus those of the threads that appeared while it was
# made (interpreters are made one at a time, under `MAKING`, to tell them apart).
#
# Even then N threads cost more CPU than one for the same work (their synchronisation
# and spinning: surface-defect 290-340 µs at 2-3 threads against 245 µs at 1, more on a
# loaded machine), so CPU times compare like with like only at equal thread counts: a
# shadow candidate runs on one thread (service.py), and its comparison records each
# side's thread count (edge/rollup.py) so the hub can say what it compared.
MAKING = threading.Lock()
_THREAD_CPU_CLOCK = 6  # Linux: CPUCLOCK_PERTHREAD_MASK | CPUCLOCK_SCHED, for any tid


def native_threads() -> set[int]:
    """The ids of this process's threads (Linux; empty elsewhere)."""
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def pool_threads(before: set[int], num_threads: int) -> tuple[int, ...] | None:
    """The threads an interpreter of `num_threads` started (made after `before` was
    taken), or None when they cannot be told apart (not N - 1 of them, not Linux)."""
    if num_threads == 1:
        return ()
    python = {t.native_id for t in threading.enumerate()}
    new = tuple(sorted(native_threads() - before - python))
    return new if len(new) == num_threads - 1 else None


def thread_cpu_s(tid: int) -> float:
    """The CPU time of thread `tid` of this process (its clock id, as glibc's
    pthread_getcpuclockid makes it from a tid: ~tid << 3 | CPUCLOCK flags)."""
    return time.clock_gettime((~tid << 3) | _THREAD_CPU_CLOCK)


class Interpreter:
    """An interpreter with its tensor indexes looked up once, and its own threads."""

    def __init__(
        self,
        interpreter: Any,
        input_index: int,
        output_index: int,
        pool: tuple[int, ...] | None = (),
    ) -> None:
        self._interpreter = interpreter
        self._input = input_index
        self._output = output_index
        self._pool = pool  # the interpreter's threads beside the caller (None: unknown)

    def run(self, tensor: np.ndarray, count_cpu: bool = True) -> tuple[np.ndarray, float | None]:
        """Its raw output, and the CPU seconds that took on every thread it ran on (None
        when not `count_cpu`, or unknown)."""
        before = self._cpu_s() if count_cpu else None
        self._interpreter.set_tensor(self._input, tensor)
        self._interpreter.invoke()
        out: np.ndarray = self._interpreter.get_tensor(self._output)
        after = self._cpu_s() if before is not None else None
        cpu = None if before is None or after is None else max(0.0, after - before)
        return out.reshape(-1), cpu

    def _cpu_s(self) -> float | None:
        if self._pool is None:
            return None
        try:
            return time.thread_time() + sum(thread_cpu_s(tid) for tid in self._pool)
        except OSError:  # a thread of its pool is gone
            return None


def check_tensor(which: str, detail: dict[str, Any], spec: TensorSpec) -> None:
    """The model's tensor must be the one its manifest describes."""
    shape = [int(d) for d in detail["shape"]]
    dtype = np.dtype(detail["dtype"]).name
    scale, zero_point = detail["quantization"]
    if shape != spec.shape or dtype != spec.dtype:
        raise ModelFault(
            f"the model's {which} is {dtype} {shape}; the manifest says {spec.dtype} {spec.shape}"
        )
    if not np.isclose(scale, spec.scale, rtol=1e-5) or zero_point != spec.zero_point:
        raise ModelFault(
            f"the model's {which} quantization is scale {scale}, zero point {zero_point}; "
            f"the manifest says {spec.scale}, {spec.zero_point}"
        )


def make_interpreter(
    runtime: Runtime, path: str, num_threads: int, manifest: Manifest
) -> Interpreter:
    """An interpreter of the model at `path` with its own threads told apart, its
    tensors checked against `manifest` (`ModelFault` when they differ)."""
    with MAKING:
        before = native_threads()
        interpreter = runtime.interpreter(path, num_threads)
        pool = pool_threads(before, num_threads)
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    check_tensor("input", inp, manifest.input)
    check_tensor("output", out, manifest.output)
    return Interpreter(interpreter, inp["index"], out["index"], pool)
