"""Calls timed in rounds taken in turn with their raw limit's (bare, 1 caller, 4
callers, bare, ...): a figure's rate is its median round's, so someone else's burst of
work on a shared machine spoils rounds of both sides, not one side of a ratio."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence

DURATION_S = 2.0  # per figure, in ROUNDS rounds
ROUNDS = 5
ROUND_S = DURATION_S / ROUNDS

Figures = tuple[float, float, float]  # per second, p50 and p99 in microseconds
Round = tuple[list[float], float]  # latencies (s) and the round's length (s)
Call = Callable[[], Awaitable[object]]


class Rounds:
    """The rounds of one figure: its rate is the median round's, p50 and p99 are over
    every call of every round."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.latencies: list[float] = []

    def add(self, measured: Round) -> None:
        latencies, seconds = measured
        self.rates.append(len(latencies) / seconds)
        self.latencies += latencies

    def figures(self) -> Figures:
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return statistics.median(self.rates), statistics.median(ordered) * 1e6, p99 * 1e6


async def callers(count: int, call: Call) -> Round:
    """`count` callers, each making one call after another for ROUND_S."""
    latencies: list[float] = []
    start = time.perf_counter()

    async def caller() -> None:
        while time.perf_counter() - start < ROUND_S:
            t = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(caller() for _ in range(count)))
    return latencies, time.perf_counter() - start


async def alternate(calls: Sequence[Callable[[], Awaitable[Round]]]) -> list[Figures]:
    """ROUNDS rounds of each of `calls`, taken in turn; their figures in that order."""
    rounds = [Rounds() for _ in calls]
    for _ in range(ROUNDS):
        for measure, into in zip(calls, rounds, strict=True):
            into.add(await measure())
    return [r.figures() for r in rounds]
