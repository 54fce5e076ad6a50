"""cocotb tests of the top-k core against golden.numerics.sort.topk / clamp_k, element by element."""

import collections
import random

import cocotb
import torch
from cocotb.triggers import ClockCycles

from golden.numerics import sort as sortnum
from hw.sort.topk import TopK
from tb.harness import STALL_SCENARIOS, test_params, test_seed
from tb.scoreboard import Scoreboard
from tb.stream import TB, pause_patterns
from tb.sort.stimulus import (PATTERNS, lengths_for, logit_keys, pattern_keys, pivot_keys, random_keys, topk_beats,
                              topk_items)


def key_beats(packets, params, rng=None):
    """The packets' key beats, ``params["lanes"]`` keys a beat; with ``rng`` the fields the core
    must ignore (count of non-last beats, lanes past count) are random."""
    return [beat for keys, _, _ in packets
            for beat in topk_beats(keys.tolist(), params["lanes"], rng, params["key_bits"])]


def expected(packets, params):
    """(data, status beats, keys per data beat) that golden says the core must emit for ``packets``.

    Keys per beat: sorted mode 1 for P = 1, and for P > 1 two (the sorter's merge), one in the
    last beat of an odd k; unordered mode the selected keys of each scanned word of G
    (``banks``) positions, P (``lanes``) a beat."""
    data, status, per_beat = [], [], []
    P = params["lanes"]
    G = TopK(params["key_bits"], params["radix_bits"], params["max_len"], P, params.get("banks", 0)).banks
    for keys, k, unordered in packets:
        kept = keys[:params["max_len"]]
        n = len(kept)
        k_eff, code = sortnum.clamp_k(k, n)
        idx = sortnum.topk(kept, k_eff, sorted=not unordered, key_bits=params["key_bits"],
                           radix_bits=params["radix_bits"]).tolist()
        data += [(int(kept[i]), i, int(j == k_eff - 1)) for j, i in enumerate(idx)]
        status.append((code, k_eff, n, int(len(keys) > n)))
        if not unordered:
            pair = 2 if P > 1 else 1
            per_beat += [pair] * (k_eff // pair) + [1] * (k_eff % pair)
        else:
            in_word = collections.Counter(i // G for i in idx)
            for word in sorted(in_word):
                per_beat += [P] * (in_word[word] // P) + ([in_word[word] % P] if in_word[word] % P else [])
    return data, status, per_beat


def timeout_for(packets, params):
    passes = -(-params["key_bits"] // params["radix_bits"])
    return sum(12 * (passes + 4) * len(keys) + 40 * (1 << params["radix_bits"]) + 300
               for keys, _, _ in packets)


async def run_topk(tb, packets, params, src="none", snk="none", rng=None):
    """Send ``packets`` [(keys, k, unordered)] with their commands; return (got, expected) of the
    data, the status and the keys per data beat, and the cycles."""
    rng = rng or random.Random(0)
    pats = pause_patterns(rng)
    s_keys, s_cmd = tb.source("i", pats[src]()), tb.source("cmd", pats[src]())
    k_o, k_st = tb.sink("o", pats[snk]()), tb.sink("status", pats[snk]())
    exp_data, exp_status, exp_per_beat = expected(packets, params)
    start = k_o.cycle
    s_keys.send(key_beats(packets, params, rng))
    s_cmd.send([{"k": k, "unordered": int(u)} for _, k, u in packets])
    timeout = timeout_for(packets, params)
    await k_st.wait_for(len(exp_status), timeout)
    # P > 1 output beats hold 1..P keys: wait for every packet's last beat, not a beat count
    await k_o.wait_for_packets(sum(last for _, _, last in exp_data), timeout)
    cycles = max(k_o.cycle, k_st.cycle) - start
    await ClockCycles(tb.clock, 30)  # nothing extra may follow
    for task in (s_keys, s_cmd, k_o, k_st):
        task._task.cancel()
    for s in (s_keys, s_cmd):
        s.tvalid.value = 0
    for s in (k_o, k_st):
        s.tready.value = 0
    data = [(b["key"], b["index"], b["last"]) for b in topk_items(k_o.beats, params["lanes"])]
    status = [(b["code"], b["k"], b["n"], b["overflow"]) for b in k_st.beats]
    per_beat = [b.get("count", 1) for b in k_o.beats]
    return (data, exp_data), (status, exp_status), (per_beat, exp_per_beat), cycles


async def check(tb, board, name, packets, params, src="none", snk="none", rng=None):
    (data, exp_data), (status, exp_status), (per_beat, exp_per_beat), cycles = await run_topk(
        tb, packets, params, src, snk, rng)
    board.check(name + " status", status, exp_status)
    board.check(name, data, exp_data)
    board.check(name + " keys per beat", per_beat, exp_per_beat)
    return cycles


def big(params):
    return params["max_len"] > 1024


def pick_k(rng, n):
    return rng.choice([1, n, max(1, n - 1), rng.randint(1, n), rng.randint(1, n), max(1, n * 900 // 4096)])


@cocotb.test()
async def random_select_under_stalls(dut):
    """Uniform keys, many lengths, random k, sorted and unordered mode, every stall scenario."""
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
        lengths = [N, 5] if big(params) else lengths_for(N, gen)
        rng.shuffle(lengths)
        packets = [(random_keys(gen, n, W), pick_k(rng, n), rng.random() < 0.5) for n in lengths]
        await check(tb, board, f"random[{src}/{snk}]", packets, params, src, snk, rng)


@cocotb.test()
async def k_edge_cases(dut):
    """k = 0 (status only), k > n (clamped, all n out), k = n, k = 1, k = 2**k_bits - 1, n = 1."""
    params = test_params()
    seed = test_seed() + 1
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tb = TB(dut)
    await tb.reset()
    W, N = params["key_bits"], params["max_len"]
    k_max = (1 << max(16, N.bit_length() + 1)) - 1
    n = min(N, 50)
    packets = []
    for unordered in (False, True):
        for k in (0, n + 1, n, 1, k_max, 0):
            packets.append((random_keys(gen, n, W), k, unordered))
        packets += [(random_keys(gen, 1, W), 0, unordered), (random_keys(gen, 1, W), 1, unordered),
                    (random_keys(gen, 1, W), 2, unordered)]
    await check(tb, Scoreboard(dut._log), "k edges", packets, params, "random_30", "random_30", rng)


@cocotb.test()
async def ties_and_extremes(dut):
    """Ties across the k-th key, constant, sorted, reverse, all-zero, all-ones packets."""
    params = test_params()
    seed = test_seed() + 2
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tb = TB(dut)
    await tb.reset()
    W, N = params["key_bits"], params["max_len"]
    n = min(N, 120)
    packets = []
    for kind in PATTERNS:
        for unordered in (False, True):
            packets.append((pattern_keys(gen, kind, n, W), rng.randint(1, n), unordered))
    await check(tb, Scoreboard(dut._log), "patterns", packets, params, "random_30", "every_4th", rng)


@cocotb.test()
async def var_logits_and_pivot_scores(dut):
    """VAR-like logits (top-900-of-4096 scaled to max_len) and FastVAR-like pivot scores."""
    params = test_params()
    seed = test_seed() + 3
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tb = TB(dut)
    await tb.reset()
    W, N = params["key_bits"], params["max_len"]
    n = min(N, 1024)
    k = max(1, n * 900 // 4096)
    packets = [(logit_keys(gen, n, W), k, False), (logit_keys(gen, n, W), k, True),
               (pivot_keys(gen, n, W), n // 2, True), (pivot_keys(gen, n - 3, W), n // 4, False)]
    await check(tb, Scoreboard(dut._log), "float scores", packets, params, "none", "random_30", rng)


@cocotb.test()
async def overlong_packet_truncated(dut):
    """A packet longer than max_len selects over its first max_len keys; status says overflow."""
    params = test_params()
    seed = test_seed() + 4
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tb = TB(dut)
    await tb.reset()
    W, N = params["key_bits"], params["max_len"]
    packets = [(random_keys(gen, N + 7, W), N // 3 + 1, False), (random_keys(gen, N + 1, W), N + 1, True),
               (random_keys(gen, 6, W), 2, True)]
    await check(tb, Scoreboard(dut._log), "overflow", packets, params, "random_30", "none", rng)


@cocotb.test()
async def reset_mid_packet(dut):
    """Resets while loading, selecting, scanning and sorting; the next packets are exact."""
    params = test_params()
    seed = test_seed() + 5
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    tb = TB(dut)
    W, N = params["key_bits"], params["max_len"]
    n = min(N, 300)
    for at in (n // 2, n + 3, n + 40, 2 * n, 3 * n):
        await tb.reset()
        pats = pause_patterns(rng)
        s_keys, s_cmd = tb.source("i"), tb.source("cmd")
        k_o, k_st = tb.sink("o", pats["random_30"]()), tb.sink("status")
        s_keys.send(key_beats([(random_keys(gen, n, W), 0, 0)] * 2, params, rng))
        s_cmd.send([{"k": n // 3, "unordered": 0}, {"k": n // 2, "unordered": 1}])
        await ClockCycles(tb.clock, at + rng.randrange(5))
        dut.rst.value = 1
        s_keys.clear()
        s_cmd.clear()
        await ClockCycles(tb.clock, 2)
        dut.rst.value = 0
        await ClockCycles(tb.clock, 2)
        for task in (s_keys, s_cmd, k_o, k_st):
            task._task.cancel()
        packets = [(random_keys(gen, n, W), rng.randint(1, n), rng.random() < 0.5),
                   (random_keys(gen, 4, W), 3, False)]
        await check(tb, Scoreboard(dut._log), f"after reset at {at}", packets, params,
                    "random_30", "random_30", rng)


@cocotb.test()
async def cycles_no_stalls(dut):
    """Logs the cycles of a max_len packet, top max_len * 900 / 4096, both modes (no stalls)."""
    params = test_params()
    gen = torch.Generator().manual_seed(test_seed() + 6)
    tb = TB(dut)
    W, N = params["key_bits"], params["max_len"]
    k = max(1, N * 900 // 4096)
    for unordered in (True, False):
        await tb.reset()
        await ClockCycles(tb.clock, (1 << params["radix_bits"]) + 2)  # histogram RAM clear
        keys = logit_keys(gen, N, W, temperature=1.0)
        cycles = await check(tb, Scoreboard(dut._log), "timing", [(keys, k, unordered)], params)
        dut._log.info("top-%d of %d (%s): %d cycles", k, N, "unordered" if unordered else "sorted", cycles)
        assert cycles < (12 if unordered else 24) * N + 64 * (1 << params["radix_bits"]), cycles
