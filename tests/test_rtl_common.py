"""Shared stream blocks of hw/common (Amaranth simulator): the registered-flag FIFO and the skid
buffer (its two-entry case)."""

import random

import pytest
from amaranth.sim import Simulator

from hw.common.fifo import RegisteredFlagFifo, SkidBuffer


@pytest.mark.parametrize("depth", [2, 8])
@pytest.mark.parametrize("p_valid, p_ready", [(0.5, 0.5), (0.9, 0.2), (0.2, 0.9), (1.0, 1.0)])
def test_fifo_passes_every_beat_in_order_under_stalls(seed, depth, p_valid, p_ready):
    """Random valid gaps on the input and random ready on the output: every beat comes out once,
    in order; with both sides always willing, one beat per cycle after one cycle of latency."""
    rng = random.Random(seed)
    dut = SkidBuffer(16) if depth == 2 else RegisteredFlagFifo(16, depth)
    beats = [rng.randrange(1 << 16) for _ in range(400)]
    got, first_out = [], []

    async def source(ctx):
        for beat in beats:
            while rng.random() >= p_valid:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.payload, beat)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        cycle = 0
        while len(got) < len(beats) and cycle < 20000:
            ready = rng.random() < p_ready
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid and ready:
                got.append(payload)
                first_out.append(cycle)
            cycle += 1
        ctx.set(dut.o.ready, 1)
        for _ in range(20):
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            assert not valid, "a beat after the last one"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.run()
    assert got == beats
    if p_valid == p_ready == 1.0:
        assert first_out == list(range(1, len(beats) + 1))


@pytest.mark.parametrize("depth", [2, 4])
def test_fifo_outputs_do_not_follow_inputs_within_a_cycle(depth):
    """o.valid, o.payload and i.ready come from registers (and a read at a register pointer):
    they do not follow i.valid, i.payload or o.ready within a cycle."""
    dut = RegisteredFlagFifo(8, depth)
    seen = []

    async def bench(ctx):
        ctx.set(dut.i.payload, 0x5A)
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.o.ready, 0)
        for _ in range(depth):
            await ctx.tick()   # every entry holds 0x5A: full, i.ready low
        for i_valid in (0, 1):
            for o_ready in (0, 1):
                for payload in (0x00, 0xFF):
                    ctx.set(dut.i.valid, i_valid)
                    ctx.set(dut.o.ready, o_ready)
                    ctx.set(dut.i.payload, payload)
                    seen.append((ctx.get(dut.o.valid), ctx.get(dut.o.payload), ctx.get(dut.i.ready)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [(1, 0x5A, 0)] * 8


@pytest.mark.parametrize("depth", [0, 1, 3, 6, 2.0, True])
def test_fifo_bad_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        RegisteredFlagFifo(8, depth)
