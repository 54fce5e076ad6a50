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
from tb.sort.stimulus import PATTERNS, lengths_for, logit_keys, pattern_keys, pivot_keys, random_keys


def to_beats(packets):
    beats = []
    for keys, desc in packets:
        n = len(keys)
        for i, key in enumerate(keys.tolist()):
            beats.append({"key": key, "descending": int(desc), "last": int(i == n - 1)})
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


async def check(tb, board, name, packets, params, src="none", snk="none", rng=None):
    exp = expected(packets, params)
    out, cycles = await stream_through(tb, "i", "o", to_beats(packets), len(exp), src, snk, rng,
                                       timeout_cycles=timeout_for(packets, params))
    board.check(name, [(o["key"], o["index"], o["overflow"], o["last"]) for o in out], exp)
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
    """A reset while loading, and one while emitting, discard the packet; the next ones are exact."""
    params = test_params()
    seed = test_seed() + 4
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tb = TB(dut)
    W, N = params["key_bits"], params["max_len"]
    n = min(N, 300)
    for phase_cycles in (n // 2, 3 * n + 40, 6 * n):
        await tb.reset()
        source, sink = tb.source("i"), tb.sink("o")
        source.send(to_beats([(random_keys(gen, n, W), False), (random_keys(gen, n, W), True)]))
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
    W, R, N = params["key_bits"], params["radix_bits"], params["max_len"]
    await ClockCycles(tb.clock, (1 << R) + 2)  # histogram RAM clear after reset
    keys = random_keys(gen, N, W)
    # no pass skipped if every digit has two distinct values
    keys[0], keys[1] = 0, (1 << W) - 1
    cycles = await check(tb, Scoreboard(dut._log), "timing", [(keys, False)], params)
    dut._log.info("sort of %d keys: %d cycles (formula %d)", N, cycles, sorter_cycles(N, W, R))
    assert abs(cycles - sorter_cycles(N, W, R)) <= 2, (cycles, sorter_cycles(N, W, R))
