"""cocotb tests of the quantizer: element casts (every float16 pattern, ties, extremes) and MX
blocks (activation-like, zero, tiny, NaN/Inf), under stalls, plus a reset mid-stream."""

import math
import random

import cocotb
import torch
from cocotb.triggers import ClockCycles, RisingEdge

from golden.numerics import fp as fpnum
from tb.harness import STALL_SCENARIOS, stream_through, test_params, test_seed
from tb.scoreboard import Scoreboard
from tb.stream import TB

# in_format -> (float dtype, same-width int dtype, width)
DTYPES = {"f32": (torch.float32, torch.int32, 32), "f16": (torch.float16, torch.int16, 16),
          "bf16": (torch.bfloat16, torch.int16, 16)}
# in_format -> (exponent bits, mantissa bits)
FIELDS = {"f32": (8, 23), "f16": (5, 10), "bf16": (8, 7)}


# ------------------------------------------------------------------------------------------
# Bits <-> floats
# ------------------------------------------------------------------------------------------


def bits_to_float(bits, in_format):
    """Raw IEEE bits (int64 tensor, unsigned) -> tensor of the input dtype, bit for bit."""
    dtype, itype, width = DTYPES[in_format]
    bits = bits.to(torch.int64) & ((1 << width) - 1)
    signed = torch.where(bits >= (1 << (width - 1)), bits - (1 << width), bits)
    return signed.to(itype).view(dtype)


def float_to_bits(x, in_format):
    """Tensor of the input dtype -> raw IEEE bits as an unsigned int64 tensor."""
    _, itype, width = DTYPES[in_format]
    return x.contiguous().view(itype).to(torch.int64) & ((1 << width) - 1)


def from_float64(values, in_format):
    """float64 values -> input bits (cast with the dtype's own RNE; may overflow to Inf)."""
    return float_to_bits(values.to(DTYPES[in_format][0]), in_format)


def randbits(gen, count, in_format, exp_lo=None, exp_hi=None):
    """Random bits; with exp_lo/exp_hi the biased exponent field is uniform in that range."""
    ie, im = FIELDS[in_format]
    width = 1 + ie + im
    if exp_lo is None:
        return torch.randint(0, 1 << width, (count,), generator=gen, dtype=torch.int64)
    exp = torch.randint(max(exp_lo, 0), min(exp_hi, (1 << ie) - 1) + 1, (count,), generator=gen)
    man = torch.randint(0, 1 << im, (count,), generator=gen)
    sign = torch.randint(0, 2, (count,), generator=gen)
    return (sign << (ie + im)) | (exp << im) | man


# ------------------------------------------------------------------------------------------
# Element-mode stimulus
# ------------------------------------------------------------------------------------------


def anchor_bits(fmt, in_format):
    """Exact ties and boundary values of ``fmt`` in the input format, with bit neighbours.

    Every target value, every midpoint between consecutive target magnitudes (an exact tie),
    max_finite, the midpoint above it, 2 * max_finite; each +-1 and +-2 input ulps, both signs.
    """
    mags = torch.arange(fmt.max_code + 1, dtype=torch.int64)
    values = fpnum.decode(mags.to(torch.uint8), fmt).to(torch.float64)
    ulp_top = values[-1] - values[-2]
    mids = (values[1:] + values[:-1]) / 2
    extra = torch.tensor([values[-1] + ulp_top / 2, values[-1] + ulp_top, 2 * values[-1],
                          values[1] / 4, values[1] * 0.75], dtype=torch.float64)
    base = from_float64(torch.cat([values, mids, extra]), in_format)
    near = torch.cat([base + d for d in (-2, -1, 0, 1, 2)])
    ie, im = FIELDS[in_format]
    near = near.clamp(0, (1 << (ie + im)) - 1)  # stay on the positive magnitudes
    return torch.cat([near, near | (1 << (ie + im))])


def special_bits(in_format):
    """+-0, +-Inf, quiet/signalling NaNs of both signs, smallest/largest subnormal and normal."""
    ie, im = FIELDS[in_format]
    sign = 1 << (ie + im)
    inf = ((1 << ie) - 1) << im
    mags = [0, inf, inf | 1, inf | (1 << (im - 1)), inf | ((1 << im) - 1), 1, (1 << im) - 1,
            1 << im, inf - 1]
    return torch.tensor(mags + [m | sign for m in mags], dtype=torch.int64)


def element_stimulus(gen, fmt, in_format, count):
    """``count`` input bit patterns mixing every category, shuffled."""
    ie, im = FIELDS[in_format]
    bias = (1 << (ie - 1)) - 1
    parts = [special_bits(in_format), anchor_bits(fmt, in_format)]
    n = max(count - sum(len(p) for p in parts), 0)
    lo = bias + (1 - fmt.bias) - fmt.mbits - 4  # a few binades below the smallest subnormal
    hi = bias + fmt.emax + 2  # a couple of binades above max_finite
    parts += [
        randbits(gen, n // 2, in_format, lo, hi),  # the interesting range of the target
        randbits(gen, n // 4, in_format, 0, 0),  # input subnormals
        randbits(gen, n - n // 2 - n // 4, in_format),  # anything
    ]
    bits = torch.cat(parts)
    return bits[torch.randperm(len(bits), generator=gen)][:count]


def element_beats(bits, lanes, rng):
    """Beats of ``lanes`` elements, packets of random length (``last`` on the final beat)."""
    beats = []
    nbeats = len(bits) // lanes
    until_last = rng.randint(1, 40)
    for b in range(nbeats):
        beat = {f"x.{n}": int(bits[b * lanes + n]) for n in range(lanes)}
        until_last -= 1
        beat["last"] = int(until_last == 0 or b == nbeats - 1)
        if until_last == 0:
            until_last = rng.randint(1, 40)
        beats.append(beat)
    return beats


def beat_nans(x, lanes):
    return [int(v) for v in torch.isnan(x.to(torch.float32)).reshape(-1, lanes).any(dim=1)]


def codes_of(out, lanes):
    return [beat[f"codes.{n}"] for beat in out for n in range(lanes)]


async def check_nan_seen(dut, board, name, expected):
    await RisingEdge(dut.clk)
    board.check(name, [int(dut.nan_seen.value)], [int(expected)])


async def run_elements(tb, board, params, rng, gen):
    fmt, in_format, lanes = fpnum.get_format(params["fmt"]), params["in_format"], params["lanes"]
    for index, (src, snk) in enumerate(STALL_SCENARIOS):
        await tb.reset()
        await check_nan_seen(tb.dut, board, f"nan_seen after reset[{src}/{snk}]", 0)
        if index == 0:
            if in_format == "f16":  # every float16 bit pattern, shuffled
                bits = torch.randperm(1 << 16, generator=gen).to(torch.int64)
            else:
                bits = element_stimulus(gen, fmt, in_format, 8192)
        else:
            bits = element_stimulus(gen, fmt, in_format, 1024)
        if index % 2:  # odd scenarios without NaN: nan_seen must stay low
            keep = ~torch.isnan(bits_to_float(bits, in_format).to(torch.float32))
            bits = bits[keep]
        bits = bits[: len(bits) // lanes * lanes]
        x = bits_to_float(bits, in_format)
        beats = element_beats(bits, lanes, rng)
        out, cycles = await stream_through(tb, "i", "o", beats, len(beats), src, snk, rng)
        tb.dut._log.info("%s/%s: %d beats in %d cycles", src, snk, len(beats), cycles)
        expected = [int(c) for c in fpnum.quantize_codes(x, fmt)]
        board.check(f"codes[{src}/{snk}]", codes_of(out, lanes), expected)
        board.check(f"nan[{src}/{snk}]", [o["nan"] for o in out], beat_nans(x, lanes))
        board.check(f"last[{src}/{snk}]", [o["last"] for o in out], [b["last"] for b in beats])
        await check_nan_seen(tb.dut, board, f"nan_seen[{src}/{snk}]",
                             bool(torch.isnan(x.to(torch.float32)).any()))


# ------------------------------------------------------------------------------------------
# MX-mode stimulus
# ------------------------------------------------------------------------------------------


def mx_block_values(gen, fmt, in_format, block, kind):
    """One block (``block`` values of the input dtype) of the given kind."""
    dtype = DTYPES[in_format][0]
    small = in_format == "f16"
    scale = 2.0 ** int(torch.randint(-8 if small else -40, 6 if small else 40, (1,), generator=gen))
    if kind == "gauss":
        v = torch.randn(block, generator=gen, dtype=torch.float64) * scale
    elif kind == "student":
        u = torch.rand(block, generator=gen, dtype=torch.float64)
        chi = torch.randn(block, 3, generator=gen, dtype=torch.float64).pow(2).sum(1) / 3
        v = torch.randn(block, generator=gen, dtype=torch.float64) / chi.sqrt() * scale
        v = torch.where(u < 0.05, v * 50, v)  # heavier tail still
    elif kind == "gelu":
        v = torch.nn.functional.gelu(torch.randn(block, generator=gen, dtype=torch.float64) * 3) * scale
    elif kind == "zero":
        signs = torch.randint(0, 2, (block,), generator=gen).to(torch.float64) * 2 - 1
        return (signs * 0.0).to(dtype)
    elif kind == "tiny":  # input subnormals (and some zeros)
        return bits_to_float(randbits(gen, block, in_format, 0, 0), in_format)
    elif kind == "bits":  # any finite bit pattern
        ie, _ = FIELDS[in_format]
        return bits_to_float(randbits(gen, block, in_format, 0, (1 << ie) - 2), in_format)
    elif kind == "outlier":  # one large element: the others land in the element subnormal range
        v = torch.randn(block, generator=gen, dtype=torch.float64) * scale
        v[int(torch.randint(0, block, (1,), generator=gen))] *= 2.0 ** 12
    elif kind == "ties":  # exact midpoints between codes after scaling by the block scale
        span = (-6, 4) if small else (-60, 60)
        X = int(torch.randint(*span, (1,), generator=gen))
        mags = fpnum.decode(torch.arange(fmt.max_code + 1, dtype=torch.uint8), fmt).to(torch.float64)
        mids = (mags[1:] + mags[:-1]) / 2
        pick = torch.randint(0, len(mids), (block,), generator=gen)
        signs = torch.randint(0, 2, (block,), generator=gen).to(torch.float64) * 2 - 1
        v = mids[pick] * signs * 2.0 ** X
        v[0] = mags[-1] * 2.0 ** X  # fixes kmax = emax + X
        exact = v.to(dtype).to(torch.float64) == v
        return torch.where(exact, v, torch.zeros_like(v)).to(dtype)
    elif kind in ("nan", "inf"):
        v = torch.randn(block, generator=gen, dtype=torch.float64) * scale
        hits = torch.randint(0, block, (int(torch.randint(1, 3, (1,), generator=gen)),), generator=gen)
        v[hits] = math.nan if kind == "nan" else (math.inf if int(hits[0]) % 2 else -math.inf)
    elif kind == "huge":  # near the top of the input range
        v = torch.randn(block, generator=gen, dtype=torch.float64) * float(torch.finfo(dtype).max) / 4
    else:
        raise ValueError(kind)
    return v.to(dtype)


MX_KINDS = ["gauss", "student", "gelu", "zero", "tiny", "bits", "outlier", "ties", "nan", "inf",
            "huge"]


def mx_stimulus(gen, rng, fmt, in_format, lanes, block, nblocks, partial):
    """(beats, expected outputs, input elements) for ``nblocks`` blocks of mixed kinds.

    Packets are 1..3 blocks long and end on a block end; with ``partial`` a few packets end
    mid-block (the quantizer closes the block there: golden = the block padded with zeros).
    """
    dtype = DTYPES[in_format][0]
    per_block = block // lanes
    kinds = [MX_KINDS[i % len(MX_KINDS)] for i in range(nblocks)]
    rng.shuffle(kinds)
    values = torch.stack([mx_block_values(gen, fmt, in_format, block, k) for k in kinds])
    counts = [per_block] * nblocks  # beats actually sent per block
    lasts = [False] * nblocks
    b = 0
    while b < nblocks:
        b += rng.randint(1, 3)
        lasts[min(b, nblocks) - 1] = True
    if partial and per_block > 1:
        for b in rng.sample(range(nblocks), max(1, nblocks // 8)):
            counts[b] = rng.randint(1, per_block - 1)
            lasts[b] = True
    padded = values.clone()
    for b in range(nblocks):
        padded[b, counts[b] * lanes:] = 0
    codes, scales = fpnum.mx_quantize(padded, fmt, block)
    beats, expected, sent = [], [], []
    for b in range(nblocks):
        for j in range(counts[b]):
            x = padded[b, j * lanes:(j + 1) * lanes]
            sent.append(x)
            last = int(lasts[b] and j == counts[b] - 1)
            beat = {f"x.{n}": v for n, v in enumerate(float_to_bits(x, in_format).tolist())}
            beat["last"] = last
            beats.append(beat)
            out = {f"codes.{n}": int(c) for n, c in enumerate(codes[b, j * lanes:(j + 1) * lanes])}
            out.update(scale=int(scales[b]), nan=int(torch.isnan(x.to(torch.float32)).any()), last=last)
            expected.append(out)
    assert padded.dtype == dtype
    return beats, expected, torch.cat(sent)


async def run_mx(tb, board, params, rng, gen):
    fmt, in_format = fpnum.get_format(params["fmt"]), params["in_format"]
    lanes, block = params["lanes"], params["block"]
    budget = 4096 if lanes * 2 <= block else 2048  # elements per stalled scenario
    for index, (src, snk) in enumerate(STALL_SCENARIOS):
        await tb.reset()
        await check_nan_seen(tb.dut, board, f"nan_seen after reset[{src}/{snk}]", 0)
        nblocks = max(len(MX_KINDS), (3 if index == 0 else 1) * budget // block)
        beats, expected, x = mx_stimulus(gen, rng, fmt, in_format, lanes, block, nblocks,
                                         partial=index in (1, 2))
        out, cycles = await stream_through(tb, "i", "o", beats, len(beats), src, snk, rng)
        tb.dut._log.info("%s/%s: %d beats in %d cycles", src, snk, len(beats), cycles)
        board.check(f"mx beats[{src}/{snk}]", out, expected)
        await check_nan_seen(tb.dut, board, f"nan_seen[{src}/{snk}]",
                             bool(torch.isnan(x.to(torch.float32)).any()))


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------


@cocotb.test()
async def casts_under_stalls(dut):
    """Every stall scenario: codes (and scales), nan flags, last bits and nan_seen bit for bit."""
    params = test_params()
    seed = test_seed()
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tb = TB(dut)
    board = Scoreboard(dut._log)
    if params["mx"]:
        await run_mx(tb, board, params, rng, gen)
    else:
        await run_elements(tb, board, params, rng, gen)
    dut._log.info("scoreboard: %s", board.summary())


@cocotb.test()
async def reset_mid_stream(dut):
    """A reset with beats in flight (mid-block in MX mode) drops them and clears nan_seen; the
    next stream comes out complete and right."""
    params = test_params()
    fmt, in_format, lanes = fpnum.get_format(params["fmt"]), params["in_format"], params["lanes"]
    seed = test_seed() + 1
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tb = TB(dut)
    board = Scoreboard(dut._log)
    await tb.reset()
    ie, im = FIELDS[in_format]
    nan_bits = torch.full((lanes,), (((1 << ie) - 1) << im) | 1, dtype=torch.int64)
    junk = torch.cat([nan_bits, randbits(gen, 64 * lanes, in_format)])
    source = tb.source("i")
    sink = tb.sink("o", iter(lambda: rng.random() < 0.5, None))
    source.send(element_beats(junk, lanes, rng))
    await ClockCycles(tb.clock, 7 + params["block"] // lanes // 2)
    board.check("nan_seen before reset", [int(dut.nan_seen.value)], [1])
    dut.rst.value = 1
    source.clear()
    await ClockCycles(tb.clock, 3)
    dut.rst.value = 0
    await ClockCycles(tb.clock, 2)
    board.check("nan_seen after reset", [int(dut.nan_seen.value)], [0])
    sink.clear()
    source._task.cancel()
    sink._task.cancel()
    if params["mx"]:
        beats, expected, _ = mx_stimulus(gen, rng, fmt, in_format, lanes, params["block"],
                                         max(8, 512 // params["block"]), partial=False)
        out, _ = await stream_through(tb, "i", "o", beats, len(beats), "random_30", "random_30", rng)
        board.check("after reset", out, expected)
    else:
        bits = element_stimulus(gen, fmt, in_format, 256 * lanes)
        beats = element_beats(bits, lanes, rng)
        out, _ = await stream_through(tb, "i", "o", beats, len(beats), "random_30", "random_30", rng)
        board.check("after reset", codes_of(out, lanes),
                    [int(c) for c in fpnum.quantize_codes(bits_to_float(bits, in_format), fmt)])
