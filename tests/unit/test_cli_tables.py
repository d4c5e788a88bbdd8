"""Times in the CLI's tables: one past what the platform's clock can show (a deadline a
thousand years out, stored before deadlines had a bound) failed the whole listing."""

from __future__ import annotations

import time

import pytest

from hub.cli.tables import when


def test_a_time_is_shown_as_a_local_date() -> None:
    at = time.mktime((2026, 12, 6, 23, 30, 0, 0, 0, -1))
    assert when(at) == "2026-12-06 23:30:00"
    assert when(None) == "-"


@pytest.mark.parametrize("at", [1e300, 1e17, -1e300])
def test_a_time_past_the_platforms_clock_is_shown_as_a_number(at: float) -> None:
    assert when(at) == f"{at:.0f} (epoch s)"
