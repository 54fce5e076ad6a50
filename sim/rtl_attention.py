"""``varaccel rtl attention``: float tensors through the emitted attention core.

Wired into sim/rtl.py's RTL_COMMANDS as
``"attention": (rtl_attention, ["q", "k", "v", "mask"], ["out", "y", "exp"])``: attention takes
q, k, v (mask optional); ``--param mode=similarity`` takes one token set x (or q and k) and
writes the score matrix.
"""

import os
from contextlib import contextmanager

import numpy as np
import torch

from golden.numerics import attention as attn
from hw.emit import parse_params

__all__ = ["rtl_attention", "rtl_similarity", "fast_slow_files", "mac_floor_cycles"]

MODES = ("attention", "similarity")


@contextmanager
def fast_slow_files():
    """Build the Verilator model with Verilator's default optimisation instead of -O1 everywhere.

    sim/runner.py passes ``-CFLAGS -O1``, which also applies to the __Slow files (the VPI symbol
    table that cocotb needs): with the ~5000 public signals of this core gcc spends > 20 minutes
    on Vtop__Syms__ctor__0__Slow.cpp at -O1 and about 1 s at -O0. Clearing VM_USER_CFLAGS on the
    make command line leaves the eval files at Verilator's -Os and the slow files at -O0.
    """
    saved = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = ((saved + " ") if saved else "") + "VM_USER_CFLAGS="
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved


def mac_floor_cycles(job, nm):
    """Cycles at 100 % MAC utilisation (2 D MACs per cycle: one (row, key) pair per cycle),
    counting only the kept blocks: sum over tiles of rows x kept keys."""
    total = 0
    nQb, nKb = job.mask.shape
    for t in range(nQb):
        rows = min(nm.Br, job.Lq - t * nm.Br)
        keys = sum(min(nm.Bc, job.Lk - j * nm.Bc) for j in range(nKb) if bool(job.mask[t, j]))
        total += rows * keys
    return total


def run_job(job, params, *, waves=False):
    """Replay one prepared job (tb.attn.jobs.Job) without stalls: (output beats, cycles).

    The beats are those of ``o`` (one per row) for an attention job and of ``s`` (one per
    (row, key), in tb.attn.jobs.score_order) for a similarity job.
    """
    from sim.rtl import replay
    from tb.attn.jobs import MODE_SIMILARITY, job_beats, numerics_of, output_count
    nm = numerics_of(params)
    beats = job_beats(job, nm)
    stream = "s" if job.mode == MODE_SIMILARITY else "o"
    with fast_slow_files():
        out, cycles = replay("attention", params, beats, {stream: output_count(job)}, waves=waves,
                             timeout=4 * mac_floor_cycles(job, nm) + 200 * job.Lq + 20000)
    return out[stream], cycles


def _check_rows(params, L, name):
    nKb = -(-L // params["Bc"])
    if nKb > params["max_kblocks"]:
        raise ValueError(f"{name} = {L} needs {nKb} key blocks > max_kblocks = {params['max_kblocks']}")
    if L >= 1 << params["len_bits"]:
        raise ValueError(f"{name} = {L} does not fit len_bits = {params['len_bits']}")


def rtl_similarity(x, k=None, *, scale=None, waves=False, **params):
    """Similarity-mode scores of float32 tokens ``x`` (L, D) against themselves on the emitted core
    (or of query tokens ``x`` against other tokens ``k`` (Lk, D)).

    The tokens are MX-quantized with the golden quantizer (qk_fmt of ``params``); ``scale``
    (default 1/sqrt(D)) is folded into the score constant as in attention. Output ``out``:
    int64 (L, Lk) scores in units of 2^-score_frac (log2 units), equal to
    golden.numerics.attention.similarity_scores(x) (scores_from_codes for q != k).
    """
    from sim.rtl import RTLResult
    from tb.attn.jobs import numerics_of, score_order, sim_job_from_float
    params = parse_params("attention", params)
    nm = numerics_of(params)
    scale = None if scale is None else float(scale)
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] != nm.D or x.shape[0] == 0:
        raise ValueError(f"x must be (L >= 1, D={nm.D}), not {tuple(x.shape)}")
    job = sim_job_from_float(x, nm, scale=scale)
    if k is not None:
        kt = torch.as_tensor(np.asarray(k, dtype=np.float32))
        if kt.ndim != 2 or kt.shape[1] != nm.D or kt.shape[0] == 0:
            raise ValueError(f"k must be (Lk >= 1, D={nm.D}), not {tuple(kt.shape)}")
        other = sim_job_from_float(kt, nm)
        job.kc, job.ks = other.kc, other.ks
        job.mask = torch.ones((-(-job.Lq // nm.Br), -(-job.Lk // nm.Bc)), dtype=torch.bool)
    _check_rows(params, job.Lq, "L")
    _check_rows(params, job.Lk, "Lk")
    beats, cycles = run_job(job, params, waves=waves)
    s = np.zeros((job.Lq, job.Lk), dtype=np.int64)
    for (r, key), beat in zip(score_order(job, nm), beats):
        s[r, key] = beat["score"]
    floor = job.Lq * job.Lk
    notes = [f"scores in units of 2^-{nm.score_frac} (log2 units: scale * log2(e) folded in)",
             f"{cycles} cycles; floor {floor} (one score per cycle); utilisation {100.0 * floor / max(cycles, 1):.1f} %"]
    return RTLResult({"out": s}, cycles, params, notes)


def rtl_attention(q, k=None, v=None, mask=None, *, scale=None, mode="attention", waves=False, **params):
    """Attention of float32 ``q`` (Lq, D) against ``k``, ``v`` (Lk, D) on the emitted core.

    The inputs are MX-quantized with the golden quantizer (qk_fmt / v_fmt of ``params``), the
    softmax scale is ``scale`` (default 1/sqrt(D)), ``mask`` a bool block mask (nQb, nKb) or None.
    Outputs: ``out`` float32 (Lq, D) = y * 2^exp, ``y`` int64 mantissas, ``exp`` int64 (Lq, D/block),
    ``masked`` bool (Lq,). Notes give the cycles against the MAC floor.

    ``mode="similarity"`` runs :func:`rtl_similarity` on ``q`` (and ``k`` when given) instead;
    ``v`` and ``mask`` must then be left out.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if mode == "similarity":
        if v is not None or mask is not None:
            raise ValueError("mode=similarity takes x (and optionally k): v and mask must be left out")
        return rtl_similarity(q, k, scale=scale, waves=waves, **params)
    if k is None or v is None:
        raise ValueError("mode=attention needs q, k and v")
    from sim.rtl import RTLResult
    from tb.attn.jobs import job_from_float, numerics_of
    params = parse_params("attention", params)
    nm = numerics_of(params)
    scale = None if scale is None else float(scale)  # the CLI passes --param scale=... as text
    q = torch.as_tensor(np.asarray(q, dtype=np.float32))
    k = torch.as_tensor(np.asarray(k, dtype=np.float32))
    v = torch.as_tensor(np.asarray(v, dtype=np.float32))
    if q.ndim != 2 or k.ndim != 2 or v.shape != k.shape or q.shape[1] != nm.D or k.shape[1] != nm.D:
        raise ValueError(f"q must be (Lq, D={nm.D}) and k, v (Lk, D={nm.D}), not {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[0] == 0:
        raise ValueError("q must have at least one row")
    _check_rows(params, k.shape[0], "Lk")
    if mask is not None:
        mask = torch.as_tensor(np.asarray(mask)).to(torch.bool)
    job = job_from_float(q, k, v, nm, mask=mask, scale=scale)
    beats, cycles = run_job(job, params, waves=waves)
    y = np.array([[b[f"y.{d}"] for d in range(nm.D)] for b in beats], dtype=np.int64)
    ex = np.array([[b[f"exp.{i}"] for i in range(nm.nb)] for b in beats], dtype=np.int64)
    masked = np.array([b["masked"] for b in beats], dtype=bool)
    out = np.ldexp(y.reshape(len(beats), nm.nb, nm.block).astype(np.float64),
                   ex[:, :, None]).reshape(len(beats), nm.D).astype(np.float32)
    floor = mac_floor_cycles(job, nm)
    notes = [f"{cycles} cycles; MAC floor {floor} (2 x D = {2 * nm.D} MACs/cycle, kept blocks only); "
             f"utilisation {100.0 * floor / max(cycles, 1):.1f} %",
             f"blocks kept {int(job.mask.sum())} of {job.mask.numel()}"]
    return RTLResult({"out": out, "y": y, "exp": ex, "masked": masked}, cycles, params, notes)
