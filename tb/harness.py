"""Scenario helpers shared by the core testbenches: stall sweeps and mid-stream resets."""

import json
import os
import random

from cocotb.triggers import ClockCycles

from .stream import TB, pause_patterns

__all__ = ["test_params", "test_seed", "stream_through", "STALL_SCENARIOS"]

# (source pause, sink pause) pairs every stream test runs through.
STALL_SCENARIOS = [
    ("none", "none"),
    ("random_30", "random_30"),
    ("none", "random_70"),
    ("random_70", "none"),
    ("every_4th", "half"),
]


def test_params():
    """Core parameters of the model under test, passed by the pytest entry as JSON."""
    return json.loads(os.environ.get("VARACCEL_PARAMS", "{}"))


def test_seed():
    """Seed of the stimulus, passed by the pytest entry (fresh per run, printed there)."""
    return int(os.environ.get("VARACCEL_SEED", "1"))


async def stream_through(tb: TB, in_member, out_member, beats, expected_count, src_pause="none",
                         sink_pause="none", rng=None, timeout_cycles=None):
    """Send ``beats`` into ``in_member`` and collect ``expected_count`` beats from ``out_member``.

    Returns ``(output beats, cycles from first send to last output)``. Fails instead of
    hanging when the outputs do not come, and checks that no extra beat follows.
    """
    rng = rng or random.Random(0)
    patterns = pause_patterns(rng)
    source = tb.source(in_member, patterns[src_pause]())
    sink = tb.sink(out_member, patterns[sink_pause]())
    start = sink.cycle
    source.send(beats)
    timeout = timeout_cycles or (20 * len(beats) + 200)
    await sink.wait_for(expected_count, timeout)
    cycles = sink.cycle - start
    await ClockCycles(tb.clock, 20)
    source._task.cancel()
    sink._task.cancel()
    source.tvalid.value = 0
    sink.tready.value = 0
    return list(sink.beats), cycles
