"""cocotb tests of the LSD radix sorter against golden.numerics.sort.sort, element by element."""

import random

import cocotb
import torch
from cocotb.triggers import ClockCycles

from golden.numerics import sort as sortnum
from hw.sort.radix import sorter_cycles
from tb.harness import STALL_SCENARIOS, stream_through, test_params, test_seed
from tb.scoreboard import Scoreboard
from tb.stream import TB
from tb.sort.stimulus import (PATTERNS, lengths_for, logit_keys, packet_beats, pattern_keys, pivot_keys, random_keys,
                               sort_items)


def to_beats(packets, params, rng=None):
    """Input beats of ``packets``; for P > 1 with ``rng``, what the core must ignore is random
    (see :func:`tb.sort.stimulus.packet_beats`)."""
    beats = []
    for keys, desc in packets:
        beats += packet_beats(keys.tolist(), desc, params.get("lanes", 1), rng, params["key_bits"])
    return beats


def expected(packets, params):
    out = []
    n_max = params["max_len"]
    for keys, desc in packets:
        kept = keys[:n_max]
        ovf = int(len(keys) > n_max)
        order = sortnum.sort(kept, descending=bool(desc), key_bits=params["key_bits"],
                             radix_bits=params["radix_bits"]).tolist()
        out += [(int(kept[i]), i, ovf, int(j == len(order) - 1)) for j, i in enumerate(order)]
    return out


def timeout_for(packets, params):
    passes = -(-params["key_bits"] // params["radix_bits"])
    return sum(12 * (passes + 3) * len(k) + 8 * (1 << params["radix_bits"]) + 200 for k, _ in packets)


def out_beats(packets, params):
    """Output beats of ``packets``: one per key, or with ``out_lanes`` = 2 one per two keys."""
    ol = params.get("out_lanes", 1)
    return sum(-(-min(len(keys), params["max_len"]) // ol) for keys, _ in packets)


async def check(tb, board, name, packets, params, src="none", snk="none", rng=None):
    exp = expected(packets, params)
    out, cycles = await stream_through(tb, "i", "o", to_beats(packets, params, rng), out_beats(packets, params),
                                       src, snk, rng, timeout_cycles=timeout_for(packets, params))
    items = sort_items(out, params.get("out_lanes", 1))
    board.check(name, [(o["key"], o["index"], o["overflow"], o["last"]) for o in items], exp)
    return cycles


def big(params):
    return params["max_len"] > 1024


@cocotb.test()
async def random_packets_under_stalls(dut):
    """Uniform keys, lengths 1, 2, small, odd, random, max_len - 1, max_len; both directions;
    every stall scenario; packets back to back (double buffering under backpressure)."""
    params = test_params()
    seed = test_seed()
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tb = TB(dut)
    board = Scoreboard(dut._log)
    W, N = params["key_bits"], params["max_len"]
    scenarios = STALL_SCENARIOS[:2] if big(params) else STALL_SCENARIOS
    for src, snk in scenarios:
        await tb.reset()
        lengths = [N, 7] if big(params) else lengths_for(N, gen)
        rng.shuffle(lengths)
        packets = [(random_keys(gen, n, W), rng.random() < 0.5) for n in lengths]
        await check(tb, board, f"random[{src}/{snk}]", packets, params, src, snk, rng)


@cocotb.test()
async def ties_and_extremes(dut):
    """Ties, constant, sorted, reverse-sorted, all-zero, all-ones packets, ascending and descending."""
    params = test_params()
    seed = test_seed() + 1
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tb = TB(dut)
    await tb.reset()
    board = Scoreboard(dut._log)
    W, N = params["key_bits"], params["max_len"]
    n = min(N, 200)
    packets = []
    for kind in PATTERNS:
        for desc in (False, True):
            packets.append((pattern_keys(gen, kind, n if kind != "ties" else N if not big(params) else n, W), desc))
    packets.append((pattern_keys(gen, "constant", 1, W), True))
    await check(tb, board, "patterns", packets, params, "random_30", "random_30", rng)


@cocotb.test()
async def var_logits_and_pivot_scores(dut):
    """float32 VAR-like logits (Gaussian, temperature) and FastVAR-like chi-square pivot scores,
    mapped with float_to_key and truncated to key_bits, sorted both ways."""
    params = test_params()
    seed = test_seed() + 2
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tb = TB(dut)
    await tb.reset()
    board = Scoreboard(dut._log)
    W, N = params["key_bits"], params["max_len"]
    n = min(N, 1024)
    packets = [(logit_keys(gen, n, W), True), (pivot_keys(gen, n, W), True),
               (logit_keys(gen, n - 1, W), False), (pivot_keys(gen, 33, W), False)]
    await check(tb, board, "float scores", packets, params, "every_4th", "random_30", rng)


@cocotb.test()
async def overlong_packet_truncated(dut):
    """A packet longer than max_len: the first max_len keys come out sorted with overflow set;
    the next packet is unaffected."""
    params = test_params()
    seed = test_seed() + 3
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tb = TB(dut)
    await tb.reset()
    W, N = params["key_bits"], params["max_len"]
    packets = [(random_keys(gen, N + 5, W), True), (random_keys(gen, 9, W), False)]
    await check(tb, Scoreboard(dut._log), "overflow", packets, params, "random_30", "none", rng)


@cocotb.test()
async def reset_mid_packet(dut):
    """A reset while loading, while sorting, and while emitting discards the packet; the next
    ones are exact."""
    params = test_params()
    seed = test_seed() + 4
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tb = TB(dut)
    W, N, P = params["key_bits"], params["max_len"], params.get("lanes", 1)
    n = min(N, 300)
    beats = -(-n // P)  # load cycles of a packet (= n for P = 1)
    for phase_cycles in (beats // 2, 3 * beats + 40, 6 * beats):
        await tb.reset()
        source, sink = tb.source("i"), tb.sink("o")
        source.send(to_beats([(random_keys(gen, n, W), False), (random_keys(gen, n, W), True)], params, rng))
        await ClockCycles(tb.clock, phase_cycles + rng.randrange(5))
        dut.rst.value = 1
        source.clear()
        await ClockCycles(tb.clock, 2)
        dut.rst.value = 0
        await ClockCycles(tb.clock, 2)
        source._task.cancel()
        sink._task.cancel()
        packets = [(random_keys(gen, n, W), rng.random() < 0.5), (random_keys(gen, 3, W), True)]
        await check(tb, Scoreboard(dut._log), f"after reset at {phase_cycles}", packets, params,
                    "random_30", "random_30", rng)


@cocotb.test()
async def cycles_no_stalls(dut):
    """One max_len packet with no stalls takes exactly sorter_cycles(...) cycles."""
    params = test_params()
    gen = torch.Generator().manual_seed(test_seed() + 5)
    tb = TB(dut)
    await tb.reset()
    W, R, N, P = params["key_bits"], params["radix_bits"], params["max_len"], params.get("lanes", 1)
    await ClockCycles(tb.clock, (1 << R) + 2)  # histogram RAM clear after reset
    keys = random_keys(gen, N, W)
    # no pass skipped if every digit has two distinct values (in lane 0 for P > 1)
    keys[0], keys[P] = 0, (1 << W) - 1
    cycles = await check(tb, Scoreboard(dut._log), "timing", [(keys, False)], params)
    want = sorter_cycles(N, W, R, lanes=P, out_lanes=params.get("out_lanes", 1))
    dut._log.info("sort of %d keys, P = %d: %d cycles (formula %d)", N, P, cycles, want)
    assert abs(cycles - want) <= 2, (cycles, want)


async def timed_packet(tb, dut, params, name, keys, desc=False):
    """Cycles of one packet sent into an idle, freshly reset core with no stalls (checked)."""
    await tb.reset()
    await ClockCycles(tb.clock, (1 << params["radix_bits"]) + 2)  # histogram RAM clear after reset
    return await check(tb, Scoreboard(dut._log), name, [(keys, desc)], params)


@cocotb.test()
async def cycles_one_lane_wins(dut):
    """Keys that make one bank win the merge for a whole stripe before the next does (lane l
    holds the l-th quarter of the key range): the emission must not bubble when the same lane
    wins every cycle, so the packet takes the sorter_cycles(...) of any other packet."""
    params = test_params()
    gen = torch.Generator().manual_seed(test_seed() + 6)
    tb = TB(dut)
    W, R, N, P = params["key_bits"], params["radix_bits"], params["max_len"], params.get("lanes", 1)
    lane = torch.arange(N) % P
    span = (1 << W) // P
    keys = lane * span + torch.randint(0, span, (N,), generator=gen)
    keys[0], keys[P] = 0, (1 << W) - 1  # no pass skipped (lane 0 has every digit 0 and all-ones)
    for desc in (False, True):
        cycles = await timed_packet(tb, dut, params, f"lane-major desc={desc}", keys, desc)
        want = sorter_cycles(N, W, R, lanes=P, out_lanes=params.get("out_lanes", 1))
        dut._log.info("lane-major packet, descending=%s: %d cycles (formula %d)", desc, cycles, want)
        assert abs(cycles - want) <= 2, (cycles, want)


@cocotb.test()
async def cycles_skipped_passes(dut):
    """A pass whose digit is the same for every key (in every lane) costs one cycle: constant
    keys skip all passes, keys below 2**(W - width of the top digit) skip the top one."""
    params = test_params()
    gen = torch.Generator().manual_seed(test_seed() + 7)
    tb = TB(dut)
    W, R, N, P = params["key_bits"], params["radix_bits"], params["max_len"], params.get("lanes", 1)
    D = -(-W // R)
    top_lo = (D - 1) * R
    low = random_keys(gen, N, top_lo)
    low[0], low[P] = 0, (1 << top_lo) - 1  # lane 0 has two values in every digit but the top
    for name, keys, skipped in (("constant", pattern_keys(gen, "constant", N, W), D),
                                ("top digit zero", low, 1)):
        cycles = await timed_packet(tb, dut, params, name, keys)
        want = sorter_cycles(N, W, R, skipped=skipped, lanes=P, out_lanes=params.get("out_lanes", 1))
        dut._log.info("%s packet: %d cycles (formula %d, %d passes skipped)", name, cycles, want, skipped)
        assert abs(cycles - want) <= 2, (name, cycles, want)
