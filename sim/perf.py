"""Performance model of the varaccel accelerator: op counts per VAR step -> cycles -> images/s.

Two halves.

1. ``op_counts(var_cfg, accel)``: an analytic count, per sequential step, of what the golden
   OpCounter (golden/accel/hooks.py) counts for one image (B = 1, 2 CFG rows): tokens per
   block, linear MACs (split into the MXFP4/6 block linears and the rest), attention MACs and
   tiles, sort-core calls; plus what the hardware needs beyond that (attention jobs, sort sizes,
   weight and KV-cache bytes). It is derived from the architecture (patch_nums, depth, width,
   heads, vocab) and the deterministic parts of the techniques: FastVAR ``n_keep`` per scale and
   block range, the static block-sparse tile masks of golden/accel/sparse.py, parallel decoding's
   block-causal groups, hardware sampling. It equals the golden OpCounter exactly for dense,
   fastvar, sparse, parallel, mxfp4/6 and hwsample (tests/test_perf.py checks it on the tiny
   preset). Two parts are estimates, flagged ``exact=False``:
   * sparse attention in blocks whose KV cache holds a FastVAR-pruned scale: which tokens were
     kept is data dependent, so the kept tokens are guessed evenly spaced over their map and the
     golden tile rule is applied to that guess (within 5 % of golden on the 256 px schedule);
   * token aggregation and dynamic bypass (data dependent): ``turbo_keep`` is the measured
     fraction of tokens that still run through a block where they apply, a parameter the caller
     states (there is no default: random weights say nothing about it).

2. ``predict(counts, budget, ...)``: cycles per image on a named FPGA budget. Assumptions (all
   printed by ``perf_report``):
   * Cores and their cost come from sim/perf_points.json (measured here): a dot-unit lane does
     one product per cycle (latency 11 per stream); an attention core does one (query, key) pair
     per cycle (2 D MACs) plus a per-job overhead, the largest measured (174,796 - 174,080 = 716
     cycles dense; 696 and 684 at 50 % and 25 % density, the loader's cycle per kept block
     showing); a top-k call costs cycles interpolated in the key count from the measured
     points. Resources per core from Yosys synth_xilinx (xc7), used for every family.
   * Linear layers: block linears in MXFP4 on E2M1 dot lanes; with the dual-format fc2 the fc2
     input streams twice (negative part E1M2, positive part E2M1; assumed two beats per element).
     Everything not quantized by the AccelConfig (AdaLN, head, word embedding; and every linear
     of the dense baseline) runs on E4M3 x E4M3 dot lanes: no FP16 datapath is built or measured
     here, so the "dense" baseline is FP8-equivalent, not FP16 (this flatters the baseline).
   * AdaLN (``adaln_table``, default on, for every configuration): the AdaLN linears depend only
     on the class label (and the CFG null class), so their outputs are precomputed per class and
     read from DDR (2 x depth x 6C values per image) instead of recomputed at each step.
   * One image at a time (batch 1 = 2 CFG rows), steps strictly sequential. Within a step the
     cores run one after another (``overlap="serial"``, default) or fully concurrently
     (``"concurrent"``: the step takes its slowest core). DDR transfers (weights once per step,
     KV cache read and write per block) overlap compute perfectly (double buffering); a step
     takes max(compute, memory). Weights never fit on chip for d16/d30 (>= 107 MB in MXFP4).
   * Resources: at most ``util`` (default 0.7) of the LUTs and BRAM go to the cores (the rest:
     DMA, NoC/AXI, control); linear-layer multipliers are LUTs; DSPs only where Yosys maps the
     attention core's (196 per core; every DSP of the budget may be used); AI Engines unused.
     LUTs are split between dot lanes, attention cores and sort cores to minimise the serial
     step time: with work W_i (LUT-cycles) each class gets LUTs proportional to sqrt(W_i).
   * One clock for every core (``clock_mhz``, default 200, the project's Fmax goal; measured ECP5
     Fmax: LUT multiplier 248 MHz, sort/top-k and attention far below it - see README).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["BUDGETS", "FPQVAR", "StepOps", "load_points", "op_counts", "totals", "predict",
           "ladder", "perf_report", "main"]

POINTS_PATH = Path(__file__).with_name("perf_points.json")

#: FPGA budgets (programmable logic only). Sources in "source".
BUDGETS = {
    "vck190": {
        "name": "AMD VCK190 (Versal AI Core XCVC1902)",
        "LUT": 899_840, "DSP": 1_968, "BRAM36": 967, "URAM": 463,
        "ddr_gbs": 25.6,
        "source": ("XCVC1902 PL: 899,840 LUTs, 1,968 DSP58, 967 BRAM36, 463 URAM (AMD Versal AI Core "
                   "product table DS950; the same four counts are listed as 'Available' for the "
                   "same-fabric xcvm1802 in the VMK180 TRD, xilinx.github.io/vmk180-trd/2021.2 "
                   "'Hardware Architecture of the Accelerator'; '1968 DSP engines', '8GB of DDR4 UDIMM, "
                   "8GB LPDDR4' in AMD UG1702, platform info xilinx_vck190_base). DDR: the 64-bit DDR4 "
                   "DIMM assumed at 3200 MT/s = 25.6 GB/s peak (LPDDR4 not used)"),
    },
    "kc705": {
        "name": "AMD Kintex-7 XC7K325T (KC705)",
        "LUT": 203_800, "DSP": 840, "BRAM36": 445, "URAM": 0,
        "ddr_gbs": 12.8,
        "source": ("XC7K325T: 203,800 LUTs, 840 DSP48E1, 445 BRAM36, AMD 7 Series product table DS180; "
                   "KC705 DDR3 SODIMM 64-bit at 1600 MT/s = 12.8 GB/s peak (UG810)"),
    },
}

#: Published anchors (reported, not modelled).
FPQVAR = {
    "images_per_s": 1.1,
    "int_speedup": 3.1,
    "board": "vck190",
    "source": ("FPQVAR (Wei et al., arXiv 2505.16335, abstract): 'Our accelerator on AMD-Xilinx VCK190 "
               "FPGA achieves a throughput of 1.1 image/s, which is 3.1x higher than the integer-based "
               "accelerator'. The abstract does not name the VAR depth of that figure; the paper's "
               "quantization results are on VAR-d30 (256 px) and d36 (512 px) and the released "
               "GALT factors are for d30 and d36, so d30 at 256 px is the likely model (not confirmed "
               "here)."),
}

_SERIAL, _CONCURRENT = "serial", "concurrent"


def load_points(path=POINTS_PATH) -> dict:
    """The measured points (sim/perf_points.json)."""
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------------------ op counts
@dataclass
class StepOps:
    """Counts of one sequential step (one forward pass) for one image (rows = 2 CFG rows)."""
    scales: tuple
    rows: int
    tokens: List[int]                 # per block, summed over rows (OpCounter.tokens)
    linear_macs: int = 0              # every hooked linear (OpCounter.linear_macs)
    linear_macs_q: int = 0            # of which block linears quantized by the AccelConfig
    fc2_dual_macs: int = 0            # of those, fc2 MACs in the dual format (stream twice)
    adaln_macs: int = 0               # AdaLN linears (blocks and head_nm)
    attn_macs: int = 0
    attn_tiles_kept: int = 0
    attn_tiles_total: int = 0
    attn_jobs: int = 0                # (row, head, block) attention jobs
    sort_calls: int = 0
    sort_jobs: List[tuple] = field(default_factory=list)   # (n keys, k, calls)
    weight_bytes: float = 0.0         # weights read from DDR in this step
    kv_bytes: float = 0.0             # KV cache read + written
    adaln_table_bytes: float = 0.0    # AdaLN outputs read from a per-class table (FP16)
    exact: bool = True


def _layer_macs(C, F):
    """MACs per token of one block's linears: qkv 3C^2, proj C^2, fc1 C F, fc2 F C."""
    return 4 * C * C + 2 * C * F


def op_counts(var_cfg, accel=None, turbo_keep: Optional[float] = None, top_k: int = 900,
              weight_bits_q: Optional[float] = None, weight_bits_hp: float = 8.25,
              kv_bits: float = 8.25) -> List[StepOps]:
    """Per-step op counts of one image (module docstring). ``accel``: AccelConfig or spec string.
    ``turbo_keep``: fraction in (0, 1] of tokens still running through a block where aggregation
    / bypass apply (required when they are on). Bytes: quantized weights ``weight_bits_q`` bits
    each (default: MX element bits + 8/32 for the E8M0 scale, i.e. 4.25 for MXFP4), other
    weights ``weight_bits_hp`` (E4M3 + MX scale), K/V ``kv_bits`` (E4M3 + MX scale)."""
    import torch
    from golden.accel.config import AccelConfig
    from golden.accel.hooks import n_keep_for
    from golden.accel.sparse import step_mask, tile_mask, token_tables

    a = AccelConfig.parse(accel, var_cfg)
    if (a.aggregate or a.bypass) and turbo_keep is None:
        raise ValueError("turbo_keep must be given (a measured token fraction in (0, 1]) when "
                         "aggregation or bypass is on: they are data dependent")
    if turbo_keep is not None and not 0.0 < float(turbo_keep) <= 1.0:
        raise ValueError(f"turbo_keep={turbo_keep!r} must be in (0, 1]")
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k={top_k!r} must be an integer >= 1")
    if var_cfg.shared_aln:
        raise ValueError("var_cfg.shared_aln=True (d36-s) is not modelled: use a 256 px preset")
    pn = tuple(var_cfg.patch_nums)
    SN, depth, C, F = len(pn), var_cfg.depth, var_cfg.embed_dim, var_cfg.ffn_hidden
    H, hd, V, Cv = var_cfg.num_heads, var_cfg.head_dim, var_cfg.vocab_size, var_cfg.z_channels
    B, R = 1, 2
    if weight_bits_q is None:
        elem = {"e2m1": 4, "e2m3": 6, "e3m2": 6}.get(a.quant, 8)
        weight_bits_q = elem + 8.0 / a.quant_block
    begin = [sum(p * p for p in pn[:i]) for i in range(SN + 1)]
    lvl = token_tables(pn)[0]
    prune_blocks = set(a.prune_blocks(depth))
    quantized = a.quant is not None
    groups = a.step_groups(SN)

    def keep(si, b):
        r = a.prune_ratio(si, SN)
        n = pn[si] ** 2
        return n_keep_for(n, r) if (b in prune_blocks and r < 1.0) else n

    def turbo_frac(si, b):
        f = 1.0
        if a.aggregate and a.agg_applies(si, b, SN, depth):
            f = float(turbo_keep)
        if a.bypass and a.bypass_applies(si, SN) and b > a.bypass_first_block(depth):
            f = float(turbo_keep)
        return f

    def positions(si, b):
        """Positions of the tokens of scale si that block b runs on. A pruned scale keeps n_keep
        data-dependent tokens: guessed as evenly spaced over the map (the estimate; the count
        and the scale of every kept token are exact, so only sparse tile counts depend on it)."""
        n, k = pn[si] ** 2, keep(si, b)
        if k == n:
            return torch.arange(begin[si], begin[si + 1])
        return begin[si] + torch.round(torch.linspace(0, n - 1, k)).to(torch.int64)

    def pair_count(qpos, kpos, q0, q1):
        """Golden's count: tiles of block_q x block_k over the compacted query and key sequences,
        kept when any pair is allowed (sparse: the static mask; else block-causal), whole tiles."""
        if a.sparse:
            M = step_mask(pn, q0, q1, a.block_q, a.block_k, a.window, a.sink_scales)
            allowed = M[(qpos - q0).unsqueeze(-1), kpos.unsqueeze(-2)]
        else:
            allowed = lvl[kpos].unsqueeze(-2) <= lvl[qpos].unsqueeze(-1)
        t = tile_mask(allowed, a.block_q, a.block_k)
        rs = torch.full((t.shape[0],), a.block_q)
        rs[-1] = allowed.shape[0] - a.block_q * (t.shape[0] - 1)
        cs = torch.full((t.shape[1],), a.block_k)
        cs[-1] = allowed.shape[1] - a.block_k * (t.shape[1] - 1)
        return int((t * rs.unsqueeze(1) * cs.unsqueeze(0)).sum()), int(t.sum()), t.numel()

    kpos = [torch.zeros(0, dtype=torch.int64) for _ in range(depth)]   # each block's KV cache
    keys = [0] * depth                  # keys per row in each block's cache (with turbo fractions)
    guessed = [False] * depth           # cache holds guessed (pruned) positions
    steps = []
    for gi, grp in enumerate(groups):
        q0, q1 = begin[grp[0]], begin[grp[-1] + 1]
        st = StepOps(scales=tuple(grp), rows=R, tokens=[0] * depth)
        memo = {}
        for b in range(depth):
            per_scale = [keep(si, b) for si in grp]
            fr = [turbo_frac(si, b) for si in grp]
            nq_full = sum(per_scale)
            nq = sum(int(round(n * f)) for n, f in zip(per_scale, fr))
            approx = any(f < 1.0 for f in fr)
            st.tokens[b] = R * nq
            lin = nq * _layer_macs(C, F) * R
            st.linear_macs += lin
            if quantized and C % a.quant_block == 0 and F % a.quant_block == 0:
                st.linear_macs_q += lin
                if a.quant_dual_fc2:
                    st.fc2_dual_macs += nq * F * C * R
            st.adaln_macs += R * C * 6 * C
            st.linear_macs += R * C * 6 * C
            for si in grp:
                if keep(si, b) < pn[si] ** 2:
                    st.sort_calls += R
                    st.sort_jobs.append((pn[si] ** 2, keep(si, b), R))
            # attention of this block: queries = the step's kept tokens, keys = its cache + them
            qpos = torch.cat([positions(si, b) for si in grp])
            if any(keep(si, b) < pn[si] ** 2 for si in grp):
                guessed[b] = True
            kpos[b] = torch.cat((kpos[b], qpos))
            nk_full = kpos[b].numel()
            nk = keys[b] + nq
            if a.sparse or len(grp) > 1:
                sig = (tuple(qpos.tolist()), kpos[b].numel(), guessed[b])
                if sig not in memo:
                    memo[sig] = pair_count(qpos, kpos[b], q0, q1)
                pairs, tk, tt = memo[sig]
                approx |= a.sparse and guessed[b]
            else:       # one scale, dense: every key of earlier scales and of its own
                nqb, nkb = -(-nq_full // a.block_q), -(-nk_full // a.block_k)
                pairs, tk, tt = nq_full * nk_full, nqb * nkb, nqb * nkb
            if nq_full and (nq != nq_full or nk != nk_full):   # turbo: fewer queries and keys
                scale = (nq * nk) / (nq_full * nk_full)
                pairs, tk, tt = int(round(pairs * scale)), int(round(tk * scale)), max(1, int(round(tt * scale)))
            if nq:
                st.attn_macs += R * 2 * H * hd * pairs
                st.attn_tiles_kept += R * tk
                st.attn_tiles_total += R * tt
                st.attn_jobs += R * H
            st.kv_bytes += R * (nk + nq) * 2 * C * kv_bits / 8.0   # read the cache, write the new K, V
            keys[b] = nk
            st.exact &= not approx
        # head: AdaLN before head on the condition, then every token of the step
        l_step = q1 - q0
        st.adaln_macs += R * C * 2 * C
        st.linear_macs += R * C * 2 * C + R * l_step * C * V
        # word embedding of the next step's input (B rows, not 2B: CFG repeats after embedding)
        if gi + 1 < len(groups):
            nxt = groups[gi + 1]
            st.linear_macs += B * (begin[nxt[-1] + 1] - begin[nxt[0]]) * Cv * C
        if a.hw_sampling:
            st.sort_calls += B * l_step
        # the hardware samples every token on the sort core, with or without the golden flag
        st.sort_jobs.append((V, min(top_k, V), B * l_step))
        st.adaln_table_bytes = R * (depth * 6 + 2) * C * 2.0
        wq = depth * _layer_macs(C, F)
        st.weight_bytes = (wq * (weight_bits_q if quantized else weight_bits_hp)
                           + (C * V + Cv * C) * weight_bits_hp) / 8.0
        steps.append(st)
    return steps


def totals(steps: Sequence[StepOps]) -> Dict[str, float]:
    """Totals in the keys of ``OpCounter.totals``."""
    t = {"steps": len(steps), "tokens": sum(sum(s.tokens) for s in steps),
         "linear_macs": sum(s.linear_macs for s in steps), "attn_macs": sum(s.attn_macs for s in steps),
         "attn_tiles_kept": sum(s.attn_tiles_kept for s in steps),
         "attn_tiles_total": sum(s.attn_tiles_total for s in steps),
         "sort_calls": sum(s.sort_calls for s in steps)}
    t["macs"] = t["linear_macs"] + t["attn_macs"]
    t["tile_density"] = t["attn_tiles_kept"] / t["attn_tiles_total"] if t["attn_tiles_total"] else 1.0
    return t


# ------------------------------------------------------------------------------ cores
def _interp(points, x):
    """Piecewise-linear interpolation over measured (x, y) points, clamped extrapolation by
    the end segments' slope (never below the smallest measured y)."""
    pts = sorted(points)
    if len(pts) == 1:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x <= x1:
            break
    y = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return max(y, min(p[1] for p in pts))


class _Cores:
    """Cycle and resource functions of each core, from the measured points."""

    def __init__(self, points):
        self.p = points
        dot = points["dot"]
        self.dot_latency = dot["latency_cycles"]
        self.lane = {}
        for fmt, s in dot["synth_xc7"].items():
            if s["LUT"] is None:
                raise ValueError(f"perf_points.json dot.synth_xc7.{fmt}.LUT is missing: run `{s['command']}`")
            self.lane[fmt] = {k: s[k] / s["lanes"] for k in ("LUT", "DSP", "BRAM36")}
        att = points["attention"]
        self.attn_macs_per_cycle = att["macs_per_cycle"]
        over = [p["cycles"] - p["kept_pairs"] for p in att["points"]]
        # the overhead is nearly the same at every measured density (684 to 716 cycles, one
        # loader cycle per kept block): a fixed cost per job, the largest taken
        self.attn_job_overhead = max(over)
        if att["synth_xc7"]["LUT"] is None:
            raise ValueError(f"perf_points.json attention.synth_xc7.LUT is missing: run "
                             f"`{att['synth_xc7']['command']}`")
        self.attn_res = {k: att["synth_xc7"][k] for k in ("LUT", "DSP", "BRAM36")}
        # distributed RAM cells use LUTs too (RAM32M / RAM64M: 4 LUTs each)
        self.attn_res["LUT"] += 4 * sum(att["synth_xc7"].get("LUTRAM_cells", {}).values())
        self.sort_pts = [(p["n"], p["cycles_per_call"]) for p in points["topk"]["points"]]
        self.sort_res = {k: points["topk"]["synth_xc7"][k] for k in ("LUT", "DSP", "BRAM36")}

    def sort_cycles(self, n):
        return _interp(self.sort_pts, n)


def _fit_counts(work, unit_lut, luts, overlap=_SERIAL):
    """Split ``luts`` between core classes. Serial cores minimise sum_i work_i / n_i:
    L_i proportional to sqrt(work_i * unit_lut_i) (Lagrange); concurrent cores minimise
    max_i work_i / n_i: L_i proportional to work_i * unit_lut_i (balanced). n_i = floor(L_i /
    unit_lut_i), at least 1 where there is work."""
    power = 0.5 if overlap == _SERIAL else 1.0
    roots = {k: (work[k] * unit_lut[k]) ** power for k in work if work[k] > 0}
    s = sum(roots.values())
    n = {}
    for k in work:
        if work[k] <= 0:
            n[k] = 0
            continue
        n[k] = max(1, int(luts * roots[k] / s // unit_lut[k]))
    return n


def predict(steps: Sequence[StepOps], budget="vck190", clock_mhz: float = 200.0, util: float = 0.7,
            overlap: str = _SERIAL, ddr_gbs: Optional[float] = None, adaln_table: bool = True,
            points: Optional[dict] = None, counts: Optional[Dict[str, int]] = None) -> dict:
    """Cycles and images/s of one image (module docstring). ``budget``: a BUDGETS key or a dict
    with LUT/DSP/BRAM36/ddr_gbs. ``counts``: force core counts {'fp4','fp8','attn','sort'}
    (lanes for fp4/fp8) instead of the LUT split."""
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(f"budget={budget!r} is unknown: must be one of {sorted(BUDGETS)} or a dict")
        budget = BUDGETS[budget]
    if not (isinstance(clock_mhz, (int, float)) and clock_mhz > 0):
        raise ValueError(f"clock_mhz={clock_mhz!r} must be a number > 0")
    if not 0.0 < util <= 1.0:
        raise ValueError(f"util={util!r} must be in (0, 1]")
    if overlap not in (_SERIAL, _CONCURRENT):
        raise ValueError(f"overlap={overlap!r} must be '{_SERIAL}' or '{_CONCURRENT}'")
    bw = budget["ddr_gbs"] if ddr_gbs is None else ddr_gbs
    if not bw > 0:
        raise ValueError(f"ddr_gbs={bw!r} must be > 0")
    cores = _Cores(points or load_points())
    f = clock_mhz * 1e6

    # work per step and core class, in unit-cycles (lane-cycles, core-cycles)
    per = []
    for s in steps:
        q = s.linear_macs_q + s.fc2_dual_macs
        hp = s.linear_macs - s.linear_macs_q - (s.adaln_macs if adaln_table else 0)
        att = s.attn_macs / cores.attn_macs_per_cycle + s.attn_jobs * cores.attn_job_overhead
        srt = sum(cores.sort_cycles(n) * calls for n, _k, calls in s.sort_jobs)
        mem = s.weight_bytes + s.kv_bytes + (s.adaln_table_bytes if adaln_table else 0.0)
        per.append({"fp4": q, "fp8": hp, "attn": att, "sort": srt, "bytes": mem})
    tot = {k: sum(p[k] for p in per) for k in ("fp4", "fp8", "attn", "sort")}
    unit = {"fp4": cores.lane["e2m1"]["LUT"], "fp8": cores.lane["e4m3"]["LUT"],
            "attn": cores.attn_res["LUT"], "sort": cores.sort_res["LUT"]}
    luts = util * budget["LUT"]
    n = dict(counts) if counts else _fit_counts(tot, unit, luts, overlap)
    if set(n) != set(unit) or any(not isinstance(v, int) or v < 0 for v in n.values()):
        raise ValueError(f"counts={counts!r} must give a non-negative integer for each of {sorted(unit)}")
    if any(tot[k] > 0 and n[k] == 0 for k in n):
        raise ValueError(f"counts={counts!r} has no unit for work of kind "
                         f"{[k for k in n if tot[k] > 0 and n[k] == 0]}")
    # BRAM: sort and attention cores hold their buffers in BRAM; shrink them to fit
    bram_of = {"attn": cores.attn_res["BRAM36"], "sort": cores.sort_res["BRAM36"],
               "fp4": cores.lane["e2m1"]["BRAM36"], "fp8": cores.lane["e4m3"]["BRAM36"]}
    while counts is None and sum(n[k] * bram_of[k] for k in n) > util * budget["BRAM36"]:
        k = max(("attn", "sort"), key=lambda c: n[c] * bram_of[c])
        if n[k] <= 1:
            raise ValueError(f"budget BRAM36={budget['BRAM36']} cannot hold one core of each kind")
        n[k] -= 1
    # DSP: the attention core maps some multipliers to DSPs (all of them usable: nothing else needs DSPs)
    while counts is None and n["attn"] * cores.attn_res["DSP"] > budget["DSP"]:
        n["attn"] -= 1
    if n["attn"] < 1 and tot["attn"] > 0:
        raise ValueError(f"budget DSP={budget['DSP']} cannot hold one attention core")
    used = {r: sum(n[k] * ({"attn": cores.attn_res, "sort": cores.sort_res}.get(k)
                           or cores.lane["e2m1" if k == "fp4" else "e4m3"])[r] for k in n)
            for r in ("LUT", "DSP", "BRAM36")}
    if used["LUT"] > budget["LUT"] or used["DSP"] > budget["DSP"] or used["BRAM36"] > budget["BRAM36"]:
        raise ValueError(f"counts={n} do not fit the budget (LUT {used['LUT']:.0f}/{budget['LUT']}, "
                         f"DSP {used['DSP']:.0f}/{budget['DSP']}, BRAM36 {used['BRAM36']:.1f}/{budget['BRAM36']})")

    cyc = {"fp4": 0.0, "fp8": 0.0, "attn": 0.0, "sort": 0.0, "mem_stall": 0.0}
    bound = []
    for s, p in zip(steps, per):
        c = {}
        for k in ("fp4", "fp8"):
            # one stream per linear layer (4 per block, head, word embedding): latency paid once each
            c[k] = p[k] / n[k] + ((4 * len(s.tokens) + 2) * cores.dot_latency if p[k] else 0) if n[k] else 0.0
        c["attn"] = p["attn"] / n["attn"] if n["attn"] else 0.0
        c["sort"] = p["sort"] / n["sort"] if n["sort"] else 0.0
        compute = sum(c.values()) if overlap == _SERIAL else max(c.values())
        mem = p["bytes"] / (bw * 1e9) * f
        for k in c:
            cyc[k] += c[k]
        cyc["mem_stall"] += max(0.0, mem - compute)
        bound.append("memory" if mem > compute else "compute")
    if overlap == _SERIAL:
        total = sum(cyc.values())
    else:
        total = sum(max(max(p[k] / n[k] if n[k] else 0 for k in ("fp4", "fp8", "attn", "sort")),
                        p["bytes"] / (bw * 1e9) * f) for p in per)
    return {"budget": budget["name"], "clock_mhz": clock_mhz, "util": util, "overlap": overlap,
            "ddr_gbs": bw, "counts": n, "resources_used": used,
            "cycles": cyc, "cycles_total": total, "seconds": total / f, "images_per_s": f / total,
            "bound_per_step": bound, "bytes_per_image": sum(p["bytes"] for p in per),
            "exact_counts": all(s.exact for s in steps)}


# ------------------------------------------------------------------------------ ladder
#: Configurations of the ladder, each adding one technique; spec strings of AccelConfig.parse.
LADDER = [("dense (FP8-equiv.)", "dense"), ("+ MXFP4 LUT linears", "mxfp4"),
          ("+ FastVAR pruning", "mxfp4,fastvar"), ("+ block-sparse attn", "mxfp4,fastvar,sparse")]


def ladder(arch="d30", budget="vck190", clock_mhz=200.0, turbo_keep=None, **kw) -> List[dict]:
    """predict() for each configuration of LADDER (plus turbo when ``turbo_keep`` is given)."""
    from golden.model import VARConfig
    cfg = VARConfig.preset(arch)
    rows = list(LADDER)
    if turbo_keep is not None:
        rows.append((f"+ turbo (keep {turbo_keep:g}, assumed)", "mxfp4,fastvar,sparse,turbo"))
    out = []
    for label, spec in rows:
        steps = op_counts(cfg, spec, turbo_keep=turbo_keep if "turbo" in spec else None)
        r = predict(steps, budget, clock_mhz, **kw)
        r.update(label=label, accel=spec, arch=arch, totals=totals(steps))
        out.append(r)
    return out


def perf_report(archs=("d16", "d30"), budget="vck190", clock_mhz=200.0, turbo_keep=None, **kw) -> str:
    """A self-contained markdown section: per arch the ladder table, FPQVAR anchors, assumptions."""
    b = BUDGETS[budget] if isinstance(budget, str) else budget
    att_synth = load_points()["attention"]["synth_xc7"]
    att_luts = att_synth["LUT"] + 4 * sum(att_synth.get("LUTRAM_cells", {}).values())
    sample_pt = max(load_points()["topk"]["points"], key=lambda p: p["n"])
    lines = [f"### Performance model: {b['name']}, {clock_mhz:g} MHz (`varaccel perf`)", "",
             "Model, not measurement: analytic op counts per VAR step (equal to the golden OpCounter "
             "where the techniques are deterministic) x measured core cycles (sim/perf_points.json). "
             f"FPQVAR anchor (reported): {FPQVAR['images_per_s']} images/s on VCK190.", ""]
    for arch in archs:
        rows = ladder(arch, budget, clock_mhz, turbo_keep=turbo_keep, **kw)
        base = rows[0]["images_per_s"]
        total_gain = rows[-1]["images_per_s"] / base
        lines += [f"#### VAR-{arch}, 256 px, batch 1 (2 CFG rows)", "",
                  "| configuration | GMAC | fp4 lanes / fp8 lanes / attn / sort cores | Mcycles fp4 | fp8 | attn | sort | DDR stall | images/s (model) | vs FPQVAR 1.1 (reported) | step gain | share of gain |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        prev = base
        for r in rows:
            c, n = r["cycles"], r["counts"]
            gain = r["images_per_s"] / prev
            share = math.log(gain) / math.log(total_gain) if total_gain > 1 and r is not rows[0] else 0.0
            mark = "" if r["exact_counts"] else " *"
            lines.append(f"| {r['label']}{mark} | {r['totals']['macs'] / 1e9:.1f} | "
                         f"{n['fp4']} / {n['fp8']} / {n['attn']} / {n['sort']} | {c['fp4'] / 1e6:.2f} | "
                         f"{c['fp8'] / 1e6:.2f} | {c['attn'] / 1e6:.2f} | {c['sort'] / 1e6:.2f} | "
                         f"{c['mem_stall'] / 1e6:.2f} | {r['images_per_s']:.2f} | "
                         f"{r['images_per_s'] / FPQVAR['images_per_s']:.2f}x | "
                         f"{'-' if r is rows[0] else f'{gain:.2f}x'} | "
                         f"{'-' if r is rows[0] else f'{100 * share:.0f} %'} |")
            prev = r["images_per_s"]
        last = rows[-1]
        nb = sum(1 for x in last["bound_per_step"] if x == "memory")
        busy = {k: v for k, v in last["cycles"].items()}
        share_txt = ", ".join(f"{k} {100 * v / sum(busy.values()):.0f} %" for k, v in busy.items())
        lines += ["", f"Total gain over the modelled dense baseline: {total_gain:.2f}x; best configuration "
                  f"{last['images_per_s']:.2f} images/s = {last['images_per_s'] / FPQVAR['images_per_s']:.2f}x "
                  f"FPQVAR's reported 1.1 (goal 3x: {'met' if last['images_per_s'] >= 3.3 else 'not met'} in the model). "
                  f"DDR-bound steps in that configuration: {nb} of {len(last['bound_per_step'])}; "
                  f"{last['bytes_per_image'] / 1e9:.2f} GB moved per image. Resources used: "
                  f"{last['resources_used']['LUT']:.0f} LUT, {last['resources_used']['BRAM36']:.1f} BRAM36, "
                  f"{last['resources_used']['DSP']:.0f} DSP. Cycle shares of that configuration: {share_txt}.", ""]
    sens = []
    for arch in archs:
        cells = []
        for ov in (_SERIAL, _CONCURRENT):
            for mhz in (clock_mhz, 1.5 * clock_mhz):
                kw2 = dict(kw, overlap=ov)
                r = ladder(arch, budget, mhz, turbo_keep=turbo_keep, **kw2)[-1]
                cells.append(f"{r['images_per_s']:.2f} ({r['images_per_s'] / FPQVAR['images_per_s']:.2f}x)")
        sens.append(f"| VAR-{arch} | " + " | ".join(cells) + " |")
    lines += ["Sensitivity of the best configuration (images/s, x FPQVAR's 1.1):", "",
              f"| model | serial, {clock_mhz:g} MHz | serial, {1.5 * clock_mhz:g} MHz | concurrent, "
              f"{clock_mhz:g} MHz | concurrent, {1.5 * clock_mhz:g} MHz |", "|---|---|---|---|---|"] + sens + [""]
    lines += ["Rows marked * contain estimated counts (sparse attention over a FastVAR-pruned cache: kept "
              "tokens guessed evenly spaced). Share of gain = log(step gain) / log(total gain).", "",
              "Reported anchors: " + FPQVAR["source"] + f" The integer-based accelerator it compares with: "
              f"1.1 / 3.1 = {1.1 / 3.1:.2f} images/s (derived from the reported ratio).", "",
              "Assumptions:", "",
              f"- Budget: {b['source']}.",
              f"- At most {kw.get('util', 0.7):.0%} of LUTs and BRAM36 for the cores. Linear-layer multipliers "
              f"are LUT multipliers (no DSP); the attention core as synthesized uses {att_synth['DSP']} DSPs "
              f"(counted as DSP58 on Versal, at most all of them) and {att_luts:,} LUTs incl. its LUT-RAM (4 LUTs "
              "per RAM32M / RAM64M). AI Engines unused. Per-core resources from Yosys synth_xilinx (xc7) applied to every "
              "family.",
              f"- One clock, {clock_mhz:g} MHz, for every core (the project's Fmax goal; measured ECP5 Fmax: LUT "
              "multiplier 248 MHz, sort/top-k and attention far below it (README), which must be pipelined before "
              "this holds).",
              f"- Cores within a step: {kw.get('overlap', _SERIAL)}; steps sequential; one image at a time. "
              "DDR transfers overlap compute (double buffering): a step takes max(compute, DDR).",
              "- DDR traffic per step: all block weights (MXFP4: 4.25 bits/weight; E4M3 + scale: 8.25), head "
              "and word-embedding weights (8.25 bits), the KV cache of every block read once and the new K/V "
              "written (8.25 bits/value). Peak DDR bandwidth, no efficiency derating.",
              "- AdaLN outputs come from a per-class table in DDR (they depend only on the label), for every "
              "configuration; the golden counter still counts their MACs (GMAC column).",
              "- Dense baseline = same accelerator with E4M3 x E4M3 LUT lanes for every linear (no FP16 "
              "datapath is built here), dense attention. Non-block linears (head, word embedding) stay E4M3 "
              "in every configuration. Dual-format fc2 streams its input twice.",
              f"- Attention: one (query, key) pair per cycle per core + {_Cores(load_points()).attn_job_overhead} "
              "cycles per (row, head, block) job "
              "(measured at Lq=256, Lk=680); the core's tile size assumed equal to the AccelConfig's "
              f"(16 x 16). Sort: every sampled token is a top-{sample_pt['k']}-of-{sample_pt['n']} call "
              f"({sample_pt['cycles_per_call']:,g} cycles, R={sample_pt['radix_bits']}); FastVAR "
              "top-k calls interpolated between measured points (16, 64 and 4096 keys).",
              "- LUT split between dot lanes / attention / sort cores minimises the serial step time "
              "(LUTs proportional to sqrt(work x LUT per unit)).", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", action="append", choices=["d16", "d20", "d24", "d30", "tiny"], default=None,
                   help="VAR preset (repeatable; default d16 and d30)")
    p.add_argument("--accel", default=None,
                   help="one AccelConfig spec to predict instead of the ladder, e.g. mxfp4,fastvar,sparse")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="vck190")
    p.add_argument("--clock-mhz", type=float, default=200.0)
    p.add_argument("--util", type=float, default=0.7)
    p.add_argument("--overlap", choices=[_SERIAL, _CONCURRENT], default=_SERIAL)
    p.add_argument("--ddr-gbs", type=float, default=None, help="override the budget's DDR bandwidth")
    p.add_argument("--turbo-keep", type=float, default=None,
                   help="measured token fraction kept by aggregation/bypass (adds a turbo row)")
    p.add_argument("--json", action="store_true")


def main(args=None) -> int:
    if args is None or isinstance(args, (list, tuple)):
        parser = argparse.ArgumentParser(prog="varaccel perf", description=__doc__.splitlines()[0])
        add_arguments(parser)
        args = parser.parse_args(args)
    archs = args.arch or ["d16", "d30"]
    kw = dict(util=args.util, overlap=args.overlap, ddr_gbs=args.ddr_gbs)
    if args.accel is not None:
        from golden.model import VARConfig
        out = []
        for arch in archs:
            steps = op_counts(VARConfig.preset(arch), args.accel, turbo_keep=args.turbo_keep)
            r = predict(steps, args.budget, args.clock_mhz, **kw)
            r.update(arch=arch, accel=args.accel, totals=totals(steps),
                     steps=[{k: v for k, v in asdict(s).items()} for s in steps])
            out.append(r)
        if args.json:
            print(json.dumps(out, indent=2, default=str))
        else:
            for r in out:
                print(f"{r['arch']} {r['accel']}: {r['images_per_s']:.2f} images/s, "
                      f"{r['cycles_total'] / 1e6:.2f} Mcycles, counts {r['counts']}")
        return 0
    if args.json:
        out = {arch: ladder(arch, args.budget, args.clock_mhz, turbo_keep=args.turbo_keep, **kw)
               for arch in archs}
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(perf_report(archs, args.budget, args.clock_mhz, turbo_keep=args.turbo_keep, **kw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
