"""Attention core benchmark: cycles of the emitted Verilog for the last 256 px VAR step, one head.

Lq = 256 queries, Lk = 680 keys, D = 64, default core parameters (Br = Bc = 64, e4m3 Q/K/V):
dense, and block masks of 50 % and 25 % density (each query tile keeps the sink block 0 and a
random set of other blocks, round(density x 11) of the 11 key blocks). Every output row is
checked bit for bit against golden. The floor is Lq x (kept keys) x D x 2 / (2 D MACs per cycle)
= one (query, key) pair per cycle; utilisation = floor / measured cycles.

``--rows N`` simulates only the first N query rows (whole tiles: the per-tile cost is the same
for every tile of a dense job) and extrapolates cycles x Lq / N; the table says so.

``--similarity L`` measures a similarity-mode job instead: L tokens against themselves (L x L
scores, one per cycle at best), every score checked bit for bit against golden similarity scores.

Run: ``python -m sim.bench_attn [--rows N] [--seed S] [--similarity L]``.
"""

import argparse
import math
import random
import time

import torch

from golden.numerics import attention as attn
from hw.emit import parse_params
from sim.rtl_attention import mac_floor_cycles, run_job
from tb.attn.jobs import (expected_rows, expected_scores, job_from_float, numerics_of, row_of_beat, score_of_beat,
                          sim_job_from_float)

__all__ = ["bench", "bench_similarity", "main"]


def block_mask(rng, nQb, nKb, density):
    """Each tile keeps block 0 (the attention sink) and round(density * nKb) - 1 random others."""
    keep = max(1, round(density * nKb))
    mask = torch.zeros((nQb, nKb), dtype=torch.bool)
    for t in range(nQb):
        mask[t, 0] = True
        for j in rng.sample(range(1, nKb), keep - 1):
            mask[t, j] = True
    return mask


def bench(Lq=256, Lk=680, rows=None, seed=0, densities=(1.0, 0.5, 0.25), params=None):
    params = parse_params("attention", params or {})
    nm = numerics_of(params)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(Lq, nm.D, generator=gen) * 2.0
    k = torch.randn(Lk, nm.D, generator=gen)
    v = torch.randn(Lk, nm.D, generator=gen)
    nQb, nKb = -(-Lq // nm.Br), -(-Lk // nm.Bc)
    sim_rows = Lq if rows is None else min(Lq, max(nm.Br, (rows // nm.Br) * nm.Br))
    results = []
    for density in densities:
        mask = block_mask(rng, nQb, nKb, density) if density < 1 else torch.ones((nQb, nKb), dtype=torch.bool)
        full = job_from_float(q, k, v, nm, mask=mask)
        job = job_from_float(q[:sim_rows], k, v, nm, mask=mask[:-(-sim_rows // nm.Br)])
        t0 = time.time()
        beats, cycles = run_job(job, params)
        wall = time.time() - t0
        got = [row_of_beat(b, nm) for b in beats]
        exact = sum(g == e for g, e in zip(got, expected_rows(job, nm)))
        floor_sim = mac_floor_cycles(job, nm)
        floor_full = mac_floor_cycles(full, nm)
        est = cycles * Lq / sim_rows if sim_rows != Lq else cycles
        results.append({"density": density, "kept": int(mask.sum()), "blocks": mask.numel(),
                        "sim_rows": sim_rows, "cycles_sim": cycles, "floor_sim": floor_sim,
                        "cycles": est, "floor": floor_full, "dense_floor": Lq * Lk,
                        "util": floor_sim / cycles, "exact": exact, "wall_s": wall})
    return results


def bench_similarity(L=256, seed=0, params=None):
    """Cycles of one similarity job (L Gaussian tokens against themselves), no stalls."""
    params = parse_params("attention", params or {})
    nm = numerics_of(params)
    gen = torch.Generator().manual_seed(seed)
    job = sim_job_from_float(torch.randn(L, nm.D, generator=gen), nm)
    t0 = time.time()
    beats, cycles = run_job(job, params)
    wall = time.time() - t0
    got = [score_of_beat(b) for b in beats]
    exact = sum(g == e for g, e in zip(got, expected_scores(job, nm)))
    return {"L": L, "cycles": cycles, "floor": L * L, "util": L * L / cycles, "exact": exact, "wall_s": wall}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--Lq", type=int, default=256)
    ap.add_argument("--Lk", type=int, default=680)
    ap.add_argument("--rows", type=int, default=None, help="simulate only this many query rows and extrapolate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--similarity", type=int, default=None, metavar="L",
                    help="measure a similarity job of L tokens instead")
    args = ap.parse_args(argv)
    if args.similarity is not None:
        r = bench_similarity(args.similarity, args.seed)
        print(f"similarity mode, D=64, Br=Bc=64, e4m3: L={r['L']}: {r['cycles']} cycles, floor {r['floor']} "
              f"(one score per cycle), utilisation {100 * r['util']:.1f} %, exact {r['exact']}/{r['floor']}, "
              f"sim wall {r['wall_s']:.0f} s")
        return r
    res = bench(args.Lq, args.Lk, args.rows, args.seed)
    print(f"attention core, D=64, Br=Bc=64, e4m3, 2 x 64 MACs/cycle; Lq={args.Lq}, Lk={args.Lk}")
    print("| mask density | kept blocks | simulated rows | cycles | floor (kept) | MAC util | vs dense floor | exact rows | sim wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in res:
        extra = "" if r["sim_rows"] == args.Lq else " (extrapolated)"
        print(f"| {r['density']:.0%} | {r['kept']}/{r['blocks']} | {r['sim_rows']} | {r['cycles']:.0f}{extra} | "
              f"{r['floor']} | {100 * r['util']:.1f} % | {r['cycles'] / r['dense_floor']:.3f} | "
              f"{r['exact']}/{r['sim_rows']} | {r['wall_s']:.0f} |")
    return res


if __name__ == "__main__":
    main()
