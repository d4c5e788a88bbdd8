"""Whether a model runs inline (edge/inference/inlining.py), on made-up timings."""

from __future__ import annotations

from edge.inference.inlining import PROBE_BELOW_LINES, PROBE_EVERY, PROBE_EVERY_MAX, Inlining

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


def test_answers_on_workers_do_not_move_a_model_that_may_be_fast() -> None:
    """What an answer takes on a worker is mostly waits (the GIL), not its work."""
    fast = loaded(20e-6)
    for _ in range(100):
        fast.count(5e-3, here=False)
    assert fast.inline(0)

    # Read slow at load (a busy moment): judged on its inline answers, so on its probes.
    slowed_at_load = loaded(300e-6)
    assert slowed_at_load.work_s == 2 * LINE  # capped as an answer is: forgotten as fast
    for _ in range(100):
        slowed_at_load.count(5e-3, here=False)
    probes = 0
    while not slowed_at_load.inline(0):
        requests_to_a_probe(slowed_at_load)
        slowed_at_load.probed(20e-6)
        probes += 1
    assert 1 < probes < 60  # many fast probes, not one

    # Slower at load than probing is worth: judged on its answers, wherever they ran.
    slow = loaded(PROBE_BELOW_LINES * LINE)
    for _ in range(100):
        slow.count(20e-6, here=False)
    assert slow.inline(0)


def test_probes_bring_a_model_back_and_back_off_while_it_stays_slow() -> None:
    choice = loaded(20e-6)
    for _ in range(100):
        choice.count(5e-3, here=True)  # each counts for twice the line at most
    assert not choice.inline(0)

    assert requests_to_a_probe(choice) == PROBE_EVERY
    choice.probed(250e-6)  # slow still: the next probe waits twice as long
    assert requests_to_a_probe(choice) == 2 * PROBE_EVERY
    for _ in range(20):
        choice.probed(250e-6)
        requests_to_a_probe(choice)
    choice.probed(250e-6)
    assert requests_to_a_probe(choice) == PROBE_EVERY_MAX  # and no longer
    # One cheap request among costly ones does not bring it back; fast ones do.
    choice.probed(20e-6)
    assert not choice.inline(0)
    assert requests_to_a_probe(choice) == PROBE_EVERY
    while not choice.inline(0):
        choice.probed(20e-6)
    assert choice.work_s < LINE


def test_no_probe_for_a_slow_model_or_while_a_request_waits() -> None:
    slow = loaded(PROBE_BELOW_LINES * LINE)
    assert all(slow.runs_here(0) == (False, False) for _ in range(10 * PROBE_EVERY_MAX))

    busy = loaded(20e-6)
    busy.work_s = 2 * LINE
    assert all(busy.runs_here(1) == (False, False) for _ in range(10 * PROBE_EVERY_MAX))

    # A line of 0 (every request on the workers) makes every model slow.
    never = loaded(20e-6)
    never.below_s = 0.0
    assert all(never.runs_here(0) == (False, False) for _ in range(10 * PROBE_EVERY_MAX))
