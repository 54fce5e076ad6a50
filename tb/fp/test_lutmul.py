"""cocotb tests of the LUT multiplier: exhaustive code pairs under stalls, and reset mid-stream."""

import random

import cocotb
import torch
from cocotb.triggers import ClockCycles

from golden.numerics import fp as fpnum
from tb.harness import STALL_SCENARIOS, stream_through, test_params, test_seed
from tb.scoreboard import Scoreboard
from tb.stream import TB


def all_pairs(fmt_a, fmt_b):
    """Every (code a, code b) pair of the two formats, as two flat int64 tensors."""
    a = torch.arange(1 << fmt_a.code_width)
    b = torch.arange(1 << fmt_b.code_width)
    grid_a, grid_b = torch.meshgrid(a, b, indexing="ij")
    return grid_a.reshape(-1), grid_b.reshape(-1)


def is_special(codes, fmt):
    """Inf/NaN codes: the hardware zeroes those lanes and raises ``invalid``."""
    exp = (codes >> fmt.mbits) & ((1 << fmt.ebits) - 1)
    man = codes & ((1 << fmt.mbits) - 1)
    if fmt.has_inf:
        return exp == (1 << fmt.ebits) - 1
    if fmt.has_nan:
        return (exp == (1 << fmt.ebits) - 1) & (man == (1 << fmt.mbits) - 1)
    return torch.zeros_like(codes, dtype=torch.bool)


def golden_products(codes_a, codes_b, fmt_a, fmt_b, signmag):
    """What every lane must output, from golden.numerics.fp (special lanes: 0)."""
    special = is_special(codes_a, fmt_a) | is_special(codes_b, fmt_b)
    safe_a = torch.where(special, 0, codes_a).to(torch.uint8)
    safe_b = torch.where(special, 0, codes_b).to(torch.uint8)
    product = fpnum.lut_product(safe_a, fmt_a, safe_b, fmt_b)
    product = torch.where(special, 0, product)
    if signmag:
        neg = ((codes_a >> (fmt_a.code_width - 1)) ^ (codes_b >> (fmt_b.code_width - 1))) & 1
        return [(int(p.abs()), int(n)) for p, n in zip(product, neg)], special
    return [int(p) for p in product], special


def to_beats(codes_a, codes_b, lanes):
    beats = []
    for start in range(0, len(codes_a), lanes):
        beat = {}
        for lane in range(lanes):
            index = min(start + lane, len(codes_a) - 1)  # pad the tail by repeating
            beat[f"a.{lane}"] = int(codes_a[index])
            beat[f"b.{lane}"] = int(codes_b[index])
        beat["last"] = int(start + lanes >= len(codes_a))
        beats.append(beat)
    return beats


def from_beats(beats, lanes, count, signmag):
    values = []
    for beat in beats:
        for lane in range(lanes):
            if signmag:
                values.append((beat[f"p.{lane}.mag"], beat[f"p.{lane}.neg"]))
            else:
                values.append(beat[f"p.{lane}"])
    return values[:count]


@cocotb.test()
async def exhaustive_pairs_under_stalls(dut):
    """Every code pair once per stall scenario; products, invalid flags and last bit for bit."""
    params = test_params()
    fmt_a, fmt_b = fpnum.get_format(params["fmt_a"]), fpnum.get_format(params["fmt_b"])
    lanes, signmag = params["lanes"], params["signmag"]
    rng = random.Random(test_seed())
    tb = TB(dut)
    board = Scoreboard(dut._log)
    codes_a, codes_b = all_pairs(fmt_a, fmt_b)
    for index, (src, snk) in enumerate(STALL_SCENARIOS):
        await tb.reset()
        # The exhaustive set in the first scenario, random subsets (shuffled) in the others.
        order = torch.randperm(len(codes_a), generator=torch.Generator().manual_seed(rng.getrandbits(31)))
        if index:
            order = order[: min(len(order), 4096)]
        a, b = codes_a[order], codes_b[order]
        beats = to_beats(a, b, lanes)
        out, _ = await stream_through(tb, "i", "o", beats, len(beats), src, snk, rng)
        expected, special = golden_products(a, b, fmt_a, fmt_b, signmag)
        board.check(f"products[{src}/{snk}]", from_beats(out, lanes, len(a), signmag), expected)
        beat_special = [bool(special[i:i + lanes].any()) for i in range(0, len(a), lanes)]
        board.check(f"invalid[{src}/{snk}]", [bool(o["invalid"]) for o in out], beat_special)
        board.check(f"last[{src}/{snk}]", [o["last"] for o in out], [b_["last"] for b_ in beats])


@cocotb.test()
async def reset_mid_stream(dut):
    """A reset with beats in flight drops them; the next stream comes out complete and right."""
    params = test_params()
    fmt_a, fmt_b = fpnum.get_format(params["fmt_a"]), fpnum.get_format(params["fmt_b"])
    lanes, signmag = params["lanes"], params["signmag"]
    rng = random.Random(test_seed() + 1)
    tb = TB(dut)
    await tb.reset()
    codes_a, codes_b = all_pairs(fmt_a, fmt_b)
    source = tb.source("i")
    sink = tb.sink("o", iter(lambda: rng.random() < 0.5, None))
    source.send(to_beats(codes_a[:64], codes_b[:64], lanes))
    await ClockCycles(tb.clock, 7)
    dut.rst.value = 1
    source.clear()
    await ClockCycles(tb.clock, 3)
    dut.rst.value = 0
    await ClockCycles(tb.clock, 2)
    sink.clear()
    source._task.cancel()
    sink._task.cancel()
    a, b = codes_a[-256:], codes_b[-256:]
    beats = to_beats(a, b, lanes)
    out, _ = await stream_through(tb, "i", "o", beats, len(beats), "random_30", "random_30", rng)
    expected, _ = golden_products(a, b, fmt_a, fmt_b, signmag)
    Scoreboard(dut._log).check("after reset", from_beats(out, lanes, len(a), signmag), expected)
