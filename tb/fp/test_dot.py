"""cocotb tests of the dot-product unit: realistic and extreme MX vectors under stalls, resets."""

import random

import cocotb
import torch
from cocotb.triggers import ClockCycles

from golden.numerics import fp as fpnum
from tb.harness import STALL_SCENARIOS, stream_through, test_params, test_seed
from tb.scoreboard import Scoreboard
from tb.stream import TB


def distributions(gen, count, length):
    """Activation-like vectors: Gaussian, heavy-tailed, post-GELU-like, outlier channels."""
    gauss = torch.randn(count, length, generator=gen)
    student = torch.distributions.StudentT(2.5).sample((count, length))
    gelu = torch.nn.functional.gelu(torch.randn(count, length, generator=gen) * 2)
    outlier = torch.randn(count, length, generator=gen)
    outlier[:, ::17] *= 60
    scale = torch.exp2(torch.randint(-12, 12, (4 * count, 1), generator=gen).float())
    return torch.cat([gauss, student, gelu, outlier]) * scale


def extreme_vectors(gen, count, length, fmt_a, fmt_b, block):
    """Codes and scales drawn uniformly over their whole ranges: wrap, overflow, huge shifts,
    Inf/NaN codes and NaN scales all appear."""
    ca = torch.randint(0, 1 << fmt_a.code_width, (count, length), generator=gen, dtype=torch.int64)
    cb = torch.randint(0, 1 << fmt_b.code_width, (count, length), generator=gen, dtype=torch.int64)
    nb = length // block
    # Mostly scales near 127 (so terms land inside the accumulator), some anywhere.
    sa = (127 + torch.randint(-20, 21, (count, nb), generator=gen))
    sb = (127 + torch.randint(-20, 21, (count, nb), generator=gen))
    wild = torch.rand(count, nb, generator=gen) < 0.2
    sa = torch.where(wild, torch.randint(0, 256, (count, nb), generator=gen), sa)
    return ca.to(torch.uint8), sa.to(torch.uint8), cb.to(torch.uint8), sb.to(torch.uint8)


def to_beats(ca, sa, cb, sb, lanes, block):
    beats = []
    count, length = ca.shape
    for row in range(count):
        for start in range(0, length, lanes):
            beat = {"sa": int(sa[row, start // block]), "sb": int(sb[row, start // block]),
                    "last": int(start + lanes >= length)}
            for lane in range(lanes):
                beat[f"a.{lane}"] = int(ca[row, start + lane])
                beat[f"b.{lane}"] = int(cb[row, start + lane])
            beats.append(beat)
    return beats


def golden(ca, sa, cb, sb, params, fmt_a, fmt_b):
    acc, overflow = fpnum.dot_exact(ca, sa, fmt_a, cb, sb, fmt_b, block=params["block"],
                                    acc_frac=params["acc_frac"], acc_width=params["acc_width"],
                                    nan_ok=True)
    return [(int(a), int(o)) for a, o in zip(acc, overflow)]


async def check(tb, board, name, ca, sa, cb, sb, params, fmt_a, fmt_b, src, snk, rng):
    beats = to_beats(ca, sa, cb, sb, params["lanes"], params["block"])
    out, cycles = await stream_through(tb, "i", "o", beats, ca.shape[0], src, snk, rng)
    board.check(name, [(o["acc"], o["overflow"]) for o in out], golden(ca, sa, cb, sb, params, fmt_a, fmt_b))
    return cycles


@cocotb.test()
async def realistic_vectors_under_stalls(dut):
    """MX-quantized activation-like vectors, every stall scenario, every result exact."""
    params = test_params()
    fmt_a, fmt_b = fpnum.get_format(params["fmt_a"]), fpnum.get_format(params["fmt_b"])
    seed = test_seed()
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # StudentT samples from the global generator
    tb = TB(dut)
    board = Scoreboard(dut._log)
    length = 4 * params["block"]
    for src, snk in STALL_SCENARIOS:
        await tb.reset()
        x = distributions(gen, 6, length)
        w = distributions(gen, 6, length)[torch.randperm(24, generator=gen)]
        ca, sa = fpnum.mx_quantize(x, fmt_a, params["block"])
        cb, sb = fpnum.mx_quantize(w, fmt_b, params["block"])
        await check(tb, board, f"dot[{src}/{snk}]", ca, sa, cb, sb, params, fmt_a, fmt_b, src, snk, rng)


@cocotb.test()
async def extreme_codes_and_scales(dut):
    """Uniform codes and scales: wrap-around, sticky overflow, floor shifts, Inf/NaN, NaN scale."""
    params = test_params()
    fmt_a, fmt_b = fpnum.get_format(params["fmt_a"]), fpnum.get_format(params["fmt_b"])
    seed = test_seed() + 7
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tb = TB(dut)
    await tb.reset()
    board = Scoreboard(dut._log)
    for length_blocks in (1, 3, 8):
        ca, sa, cb, sb = extreme_vectors(gen, 40, length_blocks * params["block"], fmt_a, fmt_b,
                                         params["block"])
        await check(tb, board, f"extreme[{length_blocks} blocks]", ca, sa, cb, sb, params, fmt_a, fmt_b,
                    "random_30", "random_30", rng)


@cocotb.test()
async def back_to_back_throughput(dut):
    """With no stalls the unit takes one beat per cycle: cycles = beats + pipeline latency."""
    params = test_params()
    fmt_a, fmt_b = fpnum.get_format(params["fmt_a"]), fpnum.get_format(params["fmt_b"])
    gen = torch.Generator().manual_seed(test_seed() + 3)
    tb = TB(dut)
    await tb.reset()
    x = torch.randn(16, 8 * params["block"], generator=gen)
    ca, sa = fpnum.mx_quantize(x, fmt_a, params["block"])
    cb, sb = fpnum.mx_quantize(x.flip(0), fmt_b, params["block"])
    board = Scoreboard(dut._log)
    cycles = await check(tb, board, "throughput", ca, sa, cb, sb, params, fmt_a, fmt_b, "none", "none",
                         random.Random(0))
    beats = ca.numel() // params["lanes"]
    lanes = params["lanes"]
    latency = 6 + (lanes - 1).bit_length()
    assert cycles <= beats + latency + 2, f"{cycles} cycles for {beats} beats (latency {latency})"
    dut._log.info("throughput: %d beats in %d cycles", beats, cycles)


@cocotb.test()
async def reset_mid_vector(dut):
    """A reset in the middle of a vector discards it; the next vectors are exact."""
    params = test_params()
    fmt_a, fmt_b = fpnum.get_format(params["fmt_a"]), fpnum.get_format(params["fmt_b"])
    seed = test_seed() + 11
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tb = TB(dut)
    await tb.reset()
    x = torch.randn(8, 4 * params["block"], generator=gen)
    ca, sa = fpnum.mx_quantize(x, fmt_a, params["block"])
    cb, sb = fpnum.mx_quantize(-x, fmt_b, params["block"])
    source = tb.source("i")
    sink = tb.sink("o")
    source.send(to_beats(ca, sa, cb, sb, params["lanes"], params["block"]))
    await ClockCycles(tb.clock, 5 + rng.randrange(6))
    dut.rst.value = 1
    source.clear()
    await ClockCycles(tb.clock, 2)
    dut.rst.value = 0
    await ClockCycles(tb.clock, 2)
    source._task.cancel()
    sink._task.cancel()
    await check(tb, Scoreboard(dut._log), "after reset", ca, sa, cb, sb, params, fmt_a, fmt_b,
                "random_30", "none", rng)
