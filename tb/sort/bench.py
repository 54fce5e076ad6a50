"""cocotb module of sim/bench_sort.py: plays packets with no stalls, one at a time, records cycles."""

import os
import pickle

import cocotb
from cocotb.triggers import ClockCycles

from tb.harness import test_params
from tb.stream import TB


@cocotb.test()
async def bench(dut):
    """Each case of ``VARACCEL_STIMULUS``: ``{"inputs": {member: beats}, "outputs": {member: count}}``
    (``count`` as for tb.replay: beats or ``{"packets": n}``), sent into an idle core; cycles
    from the first input beat offered to the last output beat."""
    with open(os.environ["VARACCEL_STIMULUS"], "rb") as f:
        cases = pickle.load(f)
    params = test_params()
    tb = TB(dut)
    await tb.reset()
    results = []
    for case in cases:
        await ClockCycles(tb.clock, (1 << params["radix_bits"]) + 8)  # idle (histogram RAMs clear)
        sinks = {member: tb.sink(member) for member in case["outputs"]}
        sources = {member: tb.source(member) for member in case["inputs"]}
        first = next(iter(sinks.values()))
        start = first.cycle
        for member, beats in case["inputs"].items():
            sources[member].send(beats)
        for member, count in case["outputs"].items():
            await sinks[member].wait_for_expected(count, 200000)
        cycles = max(s.cycle for s in sinks.values()) - start
        results.append({"cycles": cycles, "outputs": {m: list(s.beats) for m, s in sinks.items()}})
        await ClockCycles(tb.clock, 4)
        for s in list(sinks.values()) + list(sources.values()):
            s._task.cancel()
            s.tvalid.value = 0 if s in sources.values() else s.tvalid.value
        for s in sinks.values():
            s.tready.value = 0
    with open(os.environ["VARACCEL_RESPONSE"], "wb") as f:
        pickle.dump(results, f)
