"""Hypothesis settings for the fuzz suite, and a count of the cases it ran.

`OUTPOST_FUZZ_EXAMPLES` sets the examples per property (the default keeps the suite
under a minute on two cores; CI's slow run and a local hunt raise it). The test command
runs the same cases every time (derandomized), so a red run means a change broke
something, not that this run drew an unlucky input; `OUTPOST_FUZZ_HUNT=1` draws new
cases each run, to hunt for bugs no change introduced.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("OUTPOST_FUZZ_EXAMPLES", "150"))
HUNT = os.environ.get("OUTPOST_FUZZ_HUNT", "") not in ("", "0")

# No example database: runs are reproducible from the seed hypothesis prints on failure,
# and the tree stays clean.
settings.register_profile(
    "outpost-fuzz",
    max_examples=EXAMPLES,
    deadline=None,  # each property checks its own time bound instead (a hang is a failure)
    database=None,
    derandomize=not HUNT,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("outpost-fuzz")

T = TypeVar("T")
CASES: Counter[str] = Counter()


def count(target: str, n: int = 1) -> None:
    """Record `n` cases run against `target` (printed at the end of the session)."""
    CASES[target] += n


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not CASES:
        return
    terminalreporter.section("fuzz cases")
    for target, n in sorted(CASES.items()):
        terminalreporter.write_line(f"{target:40} {n:8}")
    terminalreporter.write_line(f"{'total':40} {sum(CASES.values()):8}")


def on_loop(
    loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T], timeout: float
) -> T:
    """Run `coroutine` on `loop` from a hypothesis thread; a timeout is a hang.

    Hypothesis has no asyncio runner: an async test runs its `@given` function in a
    thread (`asyncio.to_thread`), whose examples reach the servers under test here.
    """
    future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise AssertionError(f"no answer within {timeout} s (hang)") from None
