# amaranth: UnusedElaboratable=no
"""RTL regression of the LSD radix sorter against golden.numerics.sort.sort."""

import pytest

from hw.emit import parse_params
from rtl_util import rtl, run_tb

CONFIGS = [
    {"key_bits": 16, "radix_bits": 4, "max_len": 256},
    {"key_bits": 16, "radix_bits": 8, "max_len": 128},
    # short top digit (7 = 3 + 3 + 1), tiny RAMs
    {"key_bits": 7, "radix_bits": 3, "max_len": 40},
    # the full-size core: fewer, longer packets
    {"key_bits": 16, "radix_bits": 4, "max_len": 4096},
    # P = 2 and 4 lanes, R = 4 and 8; N not a multiple of P (banks of unequal capacity)
    {"key_bits": 16, "radix_bits": 4, "max_len": 256, "lanes": 2},
    {"key_bits": 16, "radix_bits": 8, "max_len": 131, "lanes": 2},
    {"key_bits": 16, "radix_bits": 4, "max_len": 250, "lanes": 4},
    {"key_bits": 16, "radix_bits": 8, "max_len": 128, "lanes": 4},
    {"key_bits": 7, "radix_bits": 3, "max_len": 41, "lanes": 4},
    {"key_bits": 16, "radix_bits": 4, "max_len": 4096, "lanes": 4},
    # two keys per output beat (the top-k core's sorted mode): odd N, a bank depth that is odd
    {"key_bits": 16, "radix_bits": 8, "max_len": 131, "lanes": 2, "out_lanes": 2},
    {"key_bits": 7, "radix_bits": 3, "max_len": 41, "lanes": 4, "out_lanes": 2},
]


@rtl
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_sort(config, seed):
    run_tb("sort", parse_params("sort", config), "tb.sort.test_sort", seed)


@rtl
@pytest.mark.parametrize("seed", [1479094243], indirect=True)
def test_sort_two_out_pinned(seed):
    """Two keys a beat, the seed that once made the merge emit a key-less beat at a packet's end
    (a bank's last pair of one entry taken with its previous pair's last entry)."""
    config = {"key_bits": 16, "radix_bits": 8, "max_len": 131, "lanes": 2, "out_lanes": 2}
    run_tb("sort", parse_params("sort", config), "tb.sort.test_sort", seed)


@rtl
@pytest.mark.parametrize("config", [c for c in CONFIGS if c.get("lanes", 1) > 1][:2]
                         + [c for c in CONFIGS if c.get("out_lanes", 1) == 2][:1],
                         ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_rtl_sort_host_lanes(config, seed):
    """``varaccel rtl sort --param lanes=P``: float rows (ties, a constant row, a length that P
    does not divide) packed into P-key beats come back in the golden order, both directions
    (also with ``--param out_lanes=2``: two keys a beat, an odd row length)."""
    import numpy as np
    from golden.numerics import sort as sortnum
    from sim.rtl import rtl_sort
    from tb.sort.host import float_keys

    rng = np.random.default_rng(seed)
    n = config["max_len"] - 1 if config["max_len"] % config["lanes"] == 0 else config["max_len"]
    assert n % config["lanes"]
    x = rng.standard_normal((3, n)).astype(np.float32)
    x[0, : n // 2] = x[0, n // 2: 2 * (n // 2)]  # every key of the first half tied with one later
    x[1] = 0.25
    for descending in (False, True):
        res = rtl_sort(x, descending=descending, **config)
        want = sortnum.sort(float_keys(x, config["key_bits"]), descending=descending,
                            key_bits=config["key_bits"], radix_bits=config["radix_bits"]).numpy()
        np.testing.assert_array_equal(res.outputs["indices"], want)


@pytest.mark.parametrize("bad", [0, 3, 5, 8, True, "2"])
def test_lanes_checked(bad):
    """lanes outside (1, 2, 4) raise ValueError naming the parameter."""
    from hw.sort.radix import RadixSorter
    with pytest.raises(ValueError, match="lanes"):
        RadixSorter(16, 4, 64, bad)


@pytest.mark.parametrize("lanes, out_lanes", [(1, 2), (2, 3), (4, 0), (2, True)])
def test_out_lanes_checked(lanes, out_lanes):
    """out_lanes other than 1, or 2 with lanes > 1, raise ValueError naming the parameter (the
    sorter and its cycle model)."""
    from hw.sort.radix import RadixSorter, sorter_cycles
    with pytest.raises(ValueError, match="out_lanes"):
        RadixSorter(16, 4, 64, lanes, out_lanes=out_lanes)
    with pytest.raises(ValueError, match="out_lanes"):
        sorter_cycles(64, 16, 4, lanes=lanes, out_lanes=out_lanes)


@pytest.mark.parametrize("out_lanes", [1, 2], ids=["one_out", "two_out"])
@pytest.mark.parametrize("partial", [False, True], ids=["full_beats", "partial_beats"])
@pytest.mark.parametrize("lanes", [2, 4])
def test_index_in_lanes_pysim(lanes, partial, out_lanes, seed):
    """``index_in`` with P > 1 (no emitted top has it, so Amaranth's simulator runs the core):
    the given indices (increasing with arrival, with gaps) are stored and emitted, ties go to
    the lower index, random valid/ready stalls on both streams, two packets back to back.
    ``partial_beats`` (how the top-k core feeds its selection): every beat carries a random
    1..P keys; packets longer than N are cut at N. ``out_lanes`` = 2 (the top-k core's sorted
    mode): two keys a beat, every beat but a packet's last one full. No beat follows the last."""
    import random

    import torch
    from amaranth.sim import Simulator

    from golden.numerics import sort as sortnum
    from hw.sort.radix import RadixSorter

    W, R, N = 8, 4, 300  # banks long enough to win one entry, then two, many times over
    rng = random.Random(seed)
    dut = RadixSorter(W, R, N, lanes, index_in=True, partial_beats=partial, out_lanes=out_lanes)
    packets = []
    for n in (N + 3 if partial else N, rng.randint(1, N)):
        keys = [rng.randrange(4) if rng.random() < 0.5 else rng.randrange(1 << W) for _ in range(n)]
        index = sorted(rng.sample(range(1 << dut.index_bits), n))
        packets.append((keys, index, rng.random() < 0.5))
    expected, expected_counts = [], []
    for keys, index, desc in packets:
        order = sortnum.sort(torch.tensor(keys[:N]), descending=desc, key_bits=W, radix_bits=R).tolist()
        expected += [(keys[i], index[i], int(j == len(order) - 1)) for j, i in enumerate(order)]
        expected_counts += [out_lanes] * (len(order) // out_lanes) + [1] * (len(order) % out_lanes)
    got, counts, extra = [], [], []

    async def source(ctx):
        for keys, index, desc in packets:
            start = 0
            while start < len(keys):
                while rng.random() < 0.3:
                    ctx.set(dut.i.valid, 0)
                    await ctx.tick()
                valid = min(rng.randint(1, lanes) if partial else lanes, len(keys) - start)
                for lane in range(lanes):
                    ctx.set(dut.i.payload.key[lane], keys[start + lane] if lane < valid else rng.randrange(1 << W))
                    ctx.set(dut.i.payload.index[lane], index[start + lane] if lane < valid else 0)
                ctx.set(dut.i.payload.count, valid)
                ctx.set(dut.i.payload.descending, int(desc))
                ctx.set(dut.i.payload.last, int(start + valid >= len(keys)))
                ctx.set(dut.i.valid, 1)
                await ctx.tick().until(dut.i.ready)
                start += valid
        ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        while len(got) < len(expected):
            ready = rng.random() < 0.7
            ctx.set(dut.o.ready, ready)
            if out_lanes == 1:
                _, _, valid, key, index, last = await ctx.tick().sample(
                    dut.o.valid, dut.o.payload.key, dut.o.payload.index, dut.o.payload.last)
                if valid and ready:
                    got.append((key, index, last))
                    counts.append(1)
                continue
            _, _, valid, key, index, count, last = await ctx.tick().sample(
                dut.o.valid, dut.o.payload.key, dut.o.payload.index, dut.o.payload.count, dut.o.payload.last)
            if valid and ready:
                got.extend((key[t], index[t], int(last and t == count - 1)) for t in range(min(count, 2)))
                counts.append(count)
        ctx.set(dut.o.ready, 1)
        for _ in range(50):  # nothing may follow the last packet's last beat
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            if valid:
                extra.append(1)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.run_until(1e-8 * 60000)
    assert got == expected
    assert counts == expected_counts
    assert not extra, "beats after the last packet's last beat"


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.get("lanes", 1) > 1],
                         ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_lanes_lint_clean(config, tmp_path):
    """The P > 1 sorters are Verilator ``--lint-only -Wall`` clean (tests/test_lint.py covers
    the default P = 1 only)."""
    import subprocess

    from hw.emit import emit_core
    from sim.runner import setup_verilator

    root = setup_verilator()
    emitted = emit_core("sort", parse_params("sort", config), tmp_path)
    proc = subprocess.run([str(root / "bin" / "verilator"), "--lint-only", "-Wall", str(emitted.verilog)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "%Warning" not in proc.stderr, proc.stderr[-3000:]


def test_sorter_cycles_lanes_checked():
    from hw.sort.radix import sorter_cycles
    assert sorter_cycles(4096, 16, 4, lanes=4) == 9245
    with pytest.raises(ValueError, match="lanes"):
        sorter_cycles(4096, 16, 4, lanes=3)


@pytest.mark.parametrize("lanes,bad", [(1, True), (2, "yes"), (4, 2)])
def test_partial_beats_checked(lanes, bad):
    """partial_beats is a bool, and only means something with P > 1: ValueError naming it."""
    from hw.sort.radix import RadixSorter
    with pytest.raises(ValueError, match="partial_beats"):
        RadixSorter(16, 4, 64, lanes, partial_beats=bad)
