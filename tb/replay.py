"""Generic cocotb replay test: drives packed beats from a file, records output beats and cycles.

Used by ``varaccel rtl`` and the end-to-end runs: the Python side (sim/rtl.py) packs user
tensors into beats with the ports description, this test plays them through the emitted
Verilog with no stalls (to measure cycles) and writes what came out.
"""

import os
import pickle

import cocotb
from cocotb.triggers import ClockCycles, RisingEdge

from tb.stream import TB


@cocotb.test()
async def replay(dut):
    """Play ``VARACCEL_STIMULUS`` (a pickle) and write ``VARACCEL_RESPONSE``.

    Stimulus: ``{"inputs": {member: [beat dict, ...]}, "outputs": {member: count},
    "timeout": cycles}``; ``count`` is a number of beats, or ``{"packets": n}``: n beats with
    last (streams whose beats hold a variable number of elements). Response:
    ``{"outputs": {member: [beat dict, ...]}, "cycles": cycles from reset release to the last
    expected output beat}``.
    """
    with open(os.environ["VARACCEL_STIMULUS"], "rb") as f:
        stimulus = pickle.load(f)
    tb = TB(dut)
    await tb.reset()
    sinks = {member: tb.sink(member) for member in stimulus["outputs"]}
    sources = {member: tb.source(member) for member in stimulus["inputs"]}
    start = next(iter(sinks.values())).cycle
    for member, beats in stimulus["inputs"].items():
        sources[member].send(beats)
    timeout = stimulus.get("timeout", 100000)
    for member, count in stimulus["outputs"].items():
        await sinks[member].wait_for_expected(count, timeout)
    cycles = max(s.cycle for s in sinks.values()) - start
    await ClockCycles(tb.clock, 4)
    await RisingEdge(tb.clock)
    with open(os.environ["VARACCEL_RESPONSE"], "wb") as f:
        pickle.dump({"outputs": {m: s.beats for m, s in sinks.items()}, "cycles": cycles}, f)
