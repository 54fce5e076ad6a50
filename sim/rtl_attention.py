"""``varaccel rtl attention``: float tensors through the emitted attention core.

To be wired into sim/rtl.py's RTL_COMMANDS as
``"attention": (rtl_attention, ["q", "k", "v", "mask"], ["out", "y", "exp"])`` (mask optional).
"""

import os
from contextlib import contextmanager

import numpy as np
import torch

from golden.numerics import attention as attn
from hw.emit import parse_params

__all__ = ["rtl_attention", "fast_slow_files", "mac_floor_cycles"]


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
    """Replay one prepared job (tb.attn.jobs.Job) without stalls: (output beats, cycles)."""
    from sim.rtl import replay
    from tb.attn.jobs import job_beats, numerics_of
    nm = numerics_of(params)
    beats = job_beats(job, nm)
    with fast_slow_files():
        out, cycles = replay("attention", params, beats, {"o": job.Lq}, waves=waves,
                             timeout=4 * mac_floor_cycles(job, nm) + 200 * job.Lq + 20000)
    return out["o"], cycles


def rtl_attention(q, k, v, mask=None, *, scale=None, waves=False, **params):
    """Attention of float32 ``q`` (Lq, D) against ``k``, ``v`` (Lk, D) on the emitted core.

    The inputs are MX-quantized with the golden quantizer (qk_fmt / v_fmt of ``params``), the
    softmax scale is ``scale`` (default 1/sqrt(D)), ``mask`` a bool block mask (nQb, nKb) or None.
    Outputs: ``out`` float32 (Lq, D) = y * 2^exp, ``y`` int64 mantissas, ``exp`` int64 (Lq, D/block),
    ``masked`` bool (Lq,). Notes give the cycles against the MAC floor.
    """
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
    nKb = -(-k.shape[0] // nm.Bc)
    if nKb > params["max_kblocks"]:
        raise ValueError(f"Lk = {k.shape[0]} needs {nKb} key blocks > max_kblocks = {params['max_kblocks']}")
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
