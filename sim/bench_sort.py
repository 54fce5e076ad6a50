# amaranth: UnusedElaboratable=no
"""Cycle benchmark of the radix sort / top-k core (hw/sort) on the emitted RTL, no stalls.

Cycles are counted by the cocotb sink from the first input beat offered to the last output beat
accepted, with an idle core (load included). Cases: sort 4096 uniform 16-bit keys, P keys per
input beat (for P > 1 also two keys per output beat; next to its model, ``sorter_cycles``);
top-900 of 4096 keys (VAR-like logits, float32 -> float_to_key -> top 16 bits, and uniform
keys), in sorted (descending) and unordered (ascending index) mode, for P keys per input beat
and G top-k banks. Every output is checked against golden.numerics.sort. Goals from issue 4:
sorted top-900-of-4096 <= 3 * 4096 / P + 64, unordered <= 2 * 4096 / P + 64.
Run: ``python -m sim.bench_sort [--lanes 1 2 4] [--radix 4 8] [--n 4096]``.
"""

import argparse
import json
import os
import pickle
import tempfile

import torch

from golden.numerics import sort as sortnum
from hw.emit import parse_params
from hw.sort.radix import SUPPORTED_LANES, sorter_cycles
from hw.sort.topk import LANES as TOPK_LANES, TopK
from sim.runner import REPO_ROOT, run_cocotb
from tb.sort.stimulus import logit_keys, packet_beats, random_keys, sort_items, topk_beats, topk_items

__all__ = ["main", "measure", "topk_k_sweep"]


def _run(core, params, cases):
    workdir = REPO_ROOT / "build" / "bench_sort"
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        stim, resp = os.path.join(tmp, "stimulus.pkl"), os.path.join(tmp, "response.pkl")
        with open(stim, "wb") as f:
            pickle.dump(cases, f)
        run_cocotb(core, params, "tb.sort.bench", test_dir=tmp,
                   extra_env={"VARACCEL_STIMULUS": stim, "VARACCEL_RESPONSE": resp,
                              "VARACCEL_PARAMS": json.dumps(params, sort_keys=True)})
        with open(resp, "rb") as f:
            return pickle.load(f)


def measure(radix_bits, n=4096, k=900, key_bits=16, lanes=1, seed=0, banks=0, topk=True):
    """Rows ``{case, P, R, G, cycles, goal, model}`` for one (P, R) and top-k banks G (0: the
    core's default; top-k rows only with ``topk``); raises if any output is wrong. ``model`` is
    :func:`sorter_cycles` for the sort row."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    keys = random_keys(gen, n, key_bits)
    beats = packet_beats(keys.tolist(), False, lanes, key_bits=key_bits)
    want = sortnum.sort(keys, key_bits=key_bits, radix_bits=radix_bits).tolist()
    for out_lanes in (1, 2) if lanes > 1 else (1,):
        sort_params = parse_params("sort", {"key_bits": key_bits, "radix_bits": radix_bits, "max_len": n,
                                            "lanes": lanes, "out_lanes": out_lanes})
        out = _run("sort", sort_params, [{"inputs": {"i": beats}, "outputs": {"o": -(-n // out_lanes)}}])[0]
        if [b["index"] for b in sort_items(out["outputs"]["o"], out_lanes)] != want:
            raise AssertionError(f"sort P={lanes} R={radix_bits} out_lanes={out_lanes}: output differs from golden")
        rows.append({"case": f"sort {n} uniform" + (", 2 keys a beat" if out_lanes == 2 else ""), "P": lanes,
                     "R": radix_bits, "G": None, "cycles": out["cycles"], "goal": None,
                     "model": sorter_cycles(n, key_bits, radix_bits, lanes=lanes, out_lanes=out_lanes)})
    if not topk:
        return rows
    topk_params = parse_params("topk", {"key_bits": key_bits, "radix_bits": radix_bits, "max_len": n,
                                        "lanes": lanes, "banks": banks})
    inputs = {"logits": logit_keys(gen, n, key_bits, temperature=1.0), "uniform": random_keys(gen, n, key_bits)}
    cases, expect = [], []
    for name, keys in inputs.items():
        for unordered in (False, True):
            beats = topk_beats(keys.tolist(), lanes, key_bits=key_bits)
            cases.append({"inputs": {"i": beats, "cmd": [{"k": k, "unordered": int(unordered)}]},
                          "outputs": {"o": {"packets": 1}, "status": 1}})
            want = sortnum.topk(keys, k, sorted=not unordered, key_bits=key_bits, radix_bits=radix_bits)
            goal = (2 if unordered else 3) * n // lanes + 64
            expect.append((name, unordered, want.tolist(), goal))
    for res, (name, unordered, want, goal) in zip(_run("topk", topk_params, cases), expect):
        if [b["index"] for b in topk_items(res["outputs"]["o"], lanes)] != want:
            raise AssertionError(f"topk {name} R={radix_bits}: output differs from golden")
        rows.append({"case": f"top-{k} of {n} {name} {'unordered' if unordered else 'sorted'}",
                     "P": lanes, "R": radix_bits, "G": TopK(key_bits, radix_bits, n, lanes, banks).banks,
                     "cycles": res["cycles"], "goal": goal, "model": None})
    return rows


def topk_k_sweep(ks, n=4096, key_bits=16, radix_bits=4, seed=0, banks=0):
    """Cycles of top-k of ``n`` VAR-like logit keys for every k in ``ks``, sorted and unordered, in
    one simulator launch: rows ``{k, unordered, cycles}``; raises if any output is wrong."""
    gen = torch.Generator().manual_seed(seed)
    params = parse_params("topk", {"key_bits": key_bits, "radix_bits": radix_bits, "max_len": n, "banks": banks})
    keys = logit_keys(gen, n, key_bits, temperature=1.0)
    beats = [{"key": int(x), "last": int(i == n - 1)} for i, x in enumerate(keys.tolist())]
    cases, expect = [], []
    for k in ks:
        for unordered in (False, True):
            cases.append({"inputs": {"i": beats, "cmd": [{"k": int(k), "unordered": int(unordered)}]},
                          "outputs": {"o": int(k), "status": 1}})
            expect.append((int(k), unordered, sortnum.topk(keys, int(k), sorted=not unordered, key_bits=key_bits,
                                                          radix_bits=radix_bits).tolist()))
    rows = []
    for res, (k, unordered, want) in zip(_run("topk", params, cases), expect):
        if [b["index"] for b in res["outputs"]["o"]] != want:
            raise AssertionError(f"topk k={k} unordered={unordered}: output differs from golden")
        rows.append({"k": k, "unordered": unordered, "cycles": res["cycles"]})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--radix", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--k", type=int, default=900)
    parser.add_argument("--banks", type=int, nargs="+", default=[0],
                        help="top-k banks G (0: the core's default, min(8, 2 P))")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows, unsupported = [], []
    for lanes in args.lanes:
        for radix in args.radix:
            if lanes not in SUPPORTED_LANES:
                unsupported.append(f"P={lanes} R={radix}: not implemented (lanes must be in {SUPPORTED_LANES})")
                continue
            topk = lanes in TOPK_LANES
            if not topk:
                unsupported.append(f"top-k P={lanes} R={radix}: not implemented (lanes must be in {TOPK_LANES})")
            for i, banks in enumerate(args.banks):
                got = measure(radix, args.n, args.k, lanes=lanes, banks=banks, topk=topk)
                rows += got if i == 0 else [r for r in got if r["G"] is not None]
    if args.json:
        print(json.dumps({"rows": rows, "unsupported": unsupported}, indent=2))
        return 0
    print(f"{'case':40s} {'P':>2s} {'R':>2s} {'G':>2s} {'cycles':>8s} {'elem/cyc':>8s} {'model':>7s} {'goal':>7s} "
          f"{'met':>4s}")
    for r in rows:
        goal = "" if r["goal"] is None else str(r["goal"])
        met = "" if r["goal"] is None else ("yes" if r["cycles"] <= r["goal"] else "no")
        model = "" if r["model"] is None else str(r["model"])
        banks = "" if r["G"] is None else str(r["G"])
        print(f"{r['case']:40s} {r['P']:2d} {r['R']:2d} {banks:>2s} {r['cycles']:8d} {args.n / r['cycles']:8.3f} "
              f"{model:>7s} {goal:>7s} {met:>4s}")
    print("sort: each LSD pass moves P keys per cycle (n + 10 cycles a pass at P = 1, ceil(n / P) + 2 at P > 1); the P > 1 "
          "emission merges P sorted banks at one key per beat (or two: out_lanes = 2, what the top-k core's sorted mode "
          "uses); model = sorter_cycles(n, 16, R, lanes=P, out_lanes)")
    for line in unsupported:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
