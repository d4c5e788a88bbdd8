"""Run one benchmark in this process and write its results as JSON: the child that
`python -m tests.bench` starts for each benchmark (`python -m tests.bench.one NAME OUT
WORKDIR`). The results are written once the benchmark returns; one killed on its
deadline leaves no file."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import logging
import sys
from pathlib import Path

from outpost import heap


def main() -> None:
    name, out, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    logging.basicConfig(level=logging.WARNING)
    module = importlib.import_module(f"tests.bench.bench_{name}")
    work.mkdir(parents=True, exist_ok=True)
    # As the daemons do once started (outpost/heap.py): what the hub's and the agent's
    # code measured here runs with the collector they run with, and so do the raw limits.
    heap.settle()
    # Most take a folder to work in; the in-process ones (codec) take nothing.
    results = module.run(work) if inspect.signature(module.run).parameters else module.run()
    out.write_text(json.dumps([dataclasses.asdict(r) for r in results]), encoding="utf-8")


if __name__ == "__main__":
    main()
