"""Whether a model runs inline (edge/inference/inlining.py), on made-up timings."""

from __future__ import annotations

from edge.inference.inlining import PROBE_EVERY, PROBE_EVERY_MAX, Inlining

LINE = 100e-6


def loaded(work_s: float) -> Inlining:
    choice = Inlining(LINE)
    choice.loaded(work_s)
    return choice


def requests_to_a_probe(choice: Inlining) -> int:
    """Requests arriving with nothing outstanding until one runs here as a probe."""
    for n in range(1, 10 * PROBE_EVERY_MAX):
        here, probe = choice.runs_here(0)
        assert not here or probe, "inline without a probe"
        if probe:
            return n
    raise AssertionError("no probe")


def test_a_fast_model_runs_inline_only_with_nothing_outstanding() -> None:
    choice = loaded(20e-6)

    assert choice.runs_here(0) == (True, False)
    assert choice.runs_here(1) == (False, False)


def test_answers_on_workers_do_not_move_a_model_fast_at_load() -> None:
    """What an answer takes on a worker is mostly waits (the GIL), not its work."""
    fast = loaded(20e-6)
    for _ in range(100):
        fast.count(5e-3, here=False)
    assert fast.inline(0)

    # One slow at load (a busy moment, or really slow) is judged by its answers, wherever.
    slow_at_load = loaded(300e-6)
    for _ in range(100):
        slow_at_load.count(20e-6, here=False)
    assert slow_at_load.inline(0)


def test_slow_inline_answers_move_a_fast_model_off_and_probes_bring_it_back() -> None:
    choice = loaded(20e-6)
    for _ in range(100):
        choice.count(5e-3, here=True)  # each counts for twice the line at most
    assert not choice.inline(0)

    assert requests_to_a_probe(choice) == PROBE_EVERY
    choice.probed(250e-6)  # slow still: the next probe waits twice as long
    assert requests_to_a_probe(choice) == 2 * PROBE_EVERY
    for _ in range(20):
        requests_to_a_probe(choice)
        choice.probed(250e-6)
    assert requests_to_a_probe(choice) == PROBE_EVERY_MAX  # and no longer
    choice.probed(20e-6)  # fast again: inline, and the next probe comes soon after
    assert choice.inline(0)
    choice.count(5e-3, here=True)
    choice.work_s = LINE  # slow again
    assert requests_to_a_probe(choice) == PROBE_EVERY


def test_no_probe_for_a_model_slow_at_load_or_a_request_waiting() -> None:
    slow = loaded(300e-6)
    assert all(slow.runs_here(0) == (False, False) for _ in range(10 * PROBE_EVERY_MAX))

    busy = loaded(20e-6)
    busy.work_s = 2 * LINE
    assert all(busy.runs_here(1) == (False, False) for _ in range(10 * PROBE_EVERY_MAX))

    # A line of 0 (every request on the workers) makes every model slow at load.
    never = loaded(20e-6)
    never.below_s = 0.0
    assert all(never.runs_here(0) == (False, False) for _ in range(10 * PROBE_EVERY_MAX))
