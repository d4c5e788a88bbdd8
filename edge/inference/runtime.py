"""The interpreter adapter: LiteRT (`ai-edge-litert`) by default, `tflite-runtime` where
only it is installed. Chosen once, when the first model loads; its name and version go
into `hello`.

Both packages expose the same `Interpreter` class (the one TensorFlow Lite always had),
so the adapter is only the choice of module; everything that runs a model talks to
that shared interface.
"""

from __future__ import annotations

import asyncio
import importlib
from dataclasses import dataclass
from typing import Any, Literal

from edge.inference.runtime_log import runtime_lines_to_log

RuntimeName = Literal["ai-edge-litert", "tflite-runtime"]
Preference = Literal["auto", "ai-edge-litert", "tflite-runtime"]

# Preference order, each with the module that holds its Interpreter.
RUNTIMES: dict[RuntimeName, str] = {
    "ai-edge-litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
}


class RuntimeMissing(RuntimeError):
    """No usable inference runtime is installed."""


@dataclass(frozen=True)
class Runtime:
    """A chosen runtime: its distribution name and version, and its Interpreter class."""

    name: RuntimeName
    version: str
    interpreter_class: Any

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    def interpreter(self, model_path: str, num_threads: int) -> Any:
        """A ready interpreter of the model: made, and its tensors allocated (blocking).

        Both steps run with the runtime's stderr lines captured into the log
        (runtime_log.py): LiteRT prints one when the first interpreter applies XNNPACK.
        """
        with runtime_lines_to_log():
            interpreter = self.interpreter_class(model_path=model_path, num_threads=num_threads)
            interpreter.allocate_tensors()
        return interpreter


def choose_runtime(preference: Preference = "auto") -> Runtime:
    """Import the preferred runtime (or, on `auto`, the first that imports)."""
    names: list[RuntimeName] = list(RUNTIMES) if preference == "auto" else [preference]
    failures = []
    for name in names:
        try:
            module = importlib.import_module(RUNTIMES[name])
        except ImportError as exc:
            # A wheel built against another numpy fails here with an ImportError too.
            failures.append(f"{name}: {exc}")
            continue
        return Runtime(name, _version(name, RUNTIMES[name]), module.Interpreter)
    wanted = " or ".join(names)
    raise RuntimeMissing(
        f"no inference runtime: install {wanted} (pip install {names[0]}); " + "; ".join(failures)
    )


def _version(name: str, module: str) -> str:
    """The runtime's version: its package's `__version__` (both set one), else its
    distribution's metadata, imported only then (importlib.metadata and the zipfile it
    brings hold ~0.5 MiB an agent on a small device should not carry for one string)."""
    version = getattr(importlib.import_module(module.partition(".")[0]), "__version__", None)
    if isinstance(version, str):
        return version
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


class RuntimeChoice:
    """The runtime of a preference, chosen when a model first needs one.

    Not at construction: importing a runtime imports numpy, and an agent without models
    should not pay their memory. Until then, and after a failed choice (tried again at
    the next need), there is none: that is what `label` "none" says in `hello`.
    """

    def __init__(self, preference: Preference = "auto") -> None:
        self._preference = preference
        self._chosen: Runtime | None = None  # None: no model needed one yet, or none imports

    @property
    def label(self) -> str:
        """Name the chosen runtime and its version, or "none"."""
        return self._chosen.label if self._chosen is not None else "none"

    async def get(self) -> Runtime:
        """Return the runtime, choosing it now if needed; raise `RuntimeMissing` if none imports."""
        if self._chosen is None:
            self._chosen = await asyncio.to_thread(choose_runtime, self._preference)
        return self._chosen
