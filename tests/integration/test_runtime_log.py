"""LiteRT's own stderr line (`INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`)
becomes a debug record of the log, in a fresh process making real interpreters; what
else reaches descriptor 2 meanwhile still reaches stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.support import REPO, SHIPPED_MODELS

RAW_LINE = "INFO: Created TensorFlow Lite XNNPACK delegate"

MAKE_INTERPRETERS = """
import sys
from edge.inference.runtime import choose_runtime
from outpost import logs

logs.configure(sys.argv[1], fmt="json")
runtime = choose_runtime("ai-edge-litert")
for folder in sys.argv[2:]:
    for threads in (1, 2):
        runtime.interpreter(folder + "/model.tflite", threads)
print("made")
"""

AROUND_A_FAILURE = """
import os, threading
from edge.inference.runtime_log import runtime_lines_to_log
from outpost import logs

logs.configure("info", fmt="json")
try:
    with runtime_lines_to_log():
        os.write(2, b"WARNING: a warning of the runtime\\n")
        writer = threading.Thread(target=os.write, args=(2, b"another thread's line\\n"))
        writer.start()
        writer.join()
        raise ValueError("the model did not load")
except ValueError as exc:
    print(exc)
"""


def run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=True,
    )


def records(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line as a JSON record (fails on a line that is not one)."""
    return [json.loads(line) for line in stderr.splitlines()]


def test_the_delegate_line_is_a_debug_record_not_a_raw_line() -> None:
    folders = [str(folder) for folder in SHIPPED_MODELS]
    done = run(MAKE_INTERPRETERS, "debug", *folders)

    assert done.stdout == "made\n"
    assert RAW_LINE not in done.stderr
    said = [r for r in records(done.stderr) if "XNNPACK" in r["msg"]]
    assert [(r["level"], r["logger"]) for r in said] == [("debug", "edge.inference.runtime_log")]
    assert said[0]["msg"] == "runtime: Created TensorFlow Lite XNNPACK delegate for CPU."


def test_at_the_default_level_making_interpreters_prints_nothing() -> None:
    done = run(MAKE_INTERPRETERS, "info", *(str(folder) for folder in SHIPPED_MODELS))

    assert (done.stdout, done.stderr) == ("made\n", "")


def test_a_failed_load_still_logs_the_runtime_and_passes_other_writes_on() -> None:
    done = run(AROUND_A_FAILURE)

    assert done.stdout == "the model did not load\n"
    lines = done.stderr.splitlines()
    assert "another thread's line" in lines
    lines.remove("another thread's line")
    assert [(r["level"], r["msg"]) for r in records("\n".join(lines))] == [
        ("warning", "runtime: a warning of the runtime")
    ]
