"""Run the emitted Verilog of a core on user tensors (the library behind ``varaccel rtl``)."""

import os
import pickle
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

from golden.numerics import fp as fpnum
from hw.emit import parse_params
from .runner import REPO_ROOT, run_cocotb

__all__ = ["RTLResult", "replay", "rtl_lutmul", "rtl_quantize", "rtl_dot", "rtl_sort", "rtl_topk",
           "rtl_attention", "RTL_COMMANDS"]


@dataclass
class RTLResult:
    """Outputs of one RTL run: named arrays, the cycle count, and notes for the user."""

    outputs: dict
    cycles: int
    params: dict
    notes: list = field(default_factory=list)


def replay(core, params, inputs, outputs, *, waves=False, timeout=None):
    """Play beats through the emitted ``core`` (no stalls) and return (output beats, cycles).

    ``inputs``: ``{stream member: [beat dict]}``; ``outputs``: ``{stream member: beat count}``.
    The model is built once per parameter set (build/sim) and reused.
    """
    total = sum(len(b) for b in inputs.values())
    stimulus = {"inputs": inputs, "outputs": outputs, "timeout": timeout or (64 * total + 100000)}
    workdir = REPO_ROOT / "build" / "rtl_runs"
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        stim_path, resp_path = os.path.join(tmp, "stimulus.pkl"), os.path.join(tmp, "response.pkl")
        with open(stim_path, "wb") as f:
            pickle.dump(stimulus, f)
        run_cocotb(core, params, "tb.replay", extra_env={"VARACCEL_STIMULUS": stim_path,
                                                       "VARACCEL_RESPONSE": resp_path},
                   waves=waves, test_dir=tmp)
        with open(resp_path, "rb") as f:
            response = pickle.load(f)
    return response["outputs"], response["cycles"]


def _lane_beats(arrays, names, lanes, extra=None):
    """Beats of ``lanes`` elements from flat arrays (the tail beat repeats the last element)."""
    n = len(arrays[0])
    beats = []
    for start in range(0, n, lanes):
        beat = dict(extra(start) if extra else {})
        for lane in range(lanes):
            index = min(start + lane, n - 1)
            for array, name in zip(arrays, names):
                beat[f"{name}.{lane}"] = int(array[index])
        beat["last"] = int(start + lanes >= n)
        beats.append(beat)
    return beats


def _from_lanes(beats, name, lanes, count):
    return [beat[f"{name}.{lane}"] for beat in beats for lane in range(lanes)][:count]


def rtl_lutmul(a_codes, b_codes, *, waves=False, **params):
    """Exact products of code arrays ``a_codes`` x ``b_codes`` (same shape) on the RTL.

    Returns products as int64 in units of ``2^-F`` (``F`` in the notes and ``params``).
    """
    params = parse_params("lutmul", params)
    a = np.asarray(a_codes).astype(np.int64)
    b = np.asarray(b_codes).astype(np.int64)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, not {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("a and b must not be empty")
    if params["signmag"]:
        raise ValueError("signmag=True is a synthesis variant of the multiplier; rtl runs need signmag=false")
    lanes = params["lanes"]
    beats = _lane_beats([a.ravel(), b.ravel()], ["a", "b"], lanes)
    out, cycles = replay("lutmul", params, {"i": beats}, {"o": len(beats)}, waves=waves)
    products = np.array(_from_lanes(out["o"], "p", lanes, a.size), dtype=np.int64).reshape(a.shape)
    frac = fpnum.product_frac_bits(params["fmt_a"], params["fmt_b"])
    invalid = sum(o["invalid"] for o in out["o"])
    notes = [f"products in units of 2^-{frac} (F = {frac})"]
    if invalid:
        notes.append(f"{invalid} beats had an Inf/NaN operand (those lanes are 0)")
    return RTLResult({"p": products}, cycles, params, notes)


def _float_bits(x, in_format):
    """Raw IEEE bits of ``x`` in the quantizer's input format (bf16: float32 rounded RNE)."""
    t = torch.as_tensor(np.asarray(x))
    if in_format == "f32":
        return t.to(torch.float32).view(torch.int32).numpy().astype(np.int64) & 0xFFFFFFFF
    if in_format == "f16":
        return t.to(torch.float16).view(torch.int16).numpy().astype(np.int64) & 0xFFFF
    return t.to(torch.bfloat16).view(torch.int16).numpy().astype(np.int64) & 0xFFFF


def rtl_quantize(x, *, waves=False, **params):
    """Element codes of ``x`` (any shape) from the RTL quantizer (+ E8M0 scales in MX mode).

    In MX mode the last dimension must be a multiple of ``block``; scales have shape
    ``x.shape[:-1] + (x.shape[-1] // block,)``.
    """
    params = parse_params("quantize", params)
    x = np.asarray(x)
    if x.size == 0:
        raise ValueError("x must not be empty")
    if params["mx"] and (x.ndim == 0 or x.shape[-1] % params["block"]):
        raise ValueError(f"x's last dimension must be a multiple of block={params['block']} in MX mode")
    lanes = params["lanes"]
    bits = _float_bits(x, params["in_format"]).ravel()
    beats = _lane_beats([bits], ["x"], lanes)
    if params["mx"]:  # packets end on vector ends
        row = x.shape[-1]
        for i, beat in enumerate(beats):
            beat["last"] = int(((i + 1) * lanes) % row == 0)
    out, cycles = replay("quantize", params, {"i": beats}, {"o": len(beats)}, waves=waves)
    codes = np.array(_from_lanes(out["o"], "codes", lanes, x.size), dtype=np.uint8).reshape(x.shape)
    result = {"codes": codes}
    if params["mx"]:
        per_block = params["block"] // lanes
        scales = [beat["scale"] for beat in out["o"][::per_block]]
        result["scales"] = np.array(scales, dtype=np.uint8).reshape(x.shape[:-1] + (-1,))
    notes = []
    if any(o.get("nan") for o in out["o"]):
        notes.append("NaN inputs were seen (sticky nan flag set)")
    return RTLResult(result, cycles, params, notes)


def rtl_dot(a, b, *, waves=False, **params):
    """Row-wise MX dot products of float arrays ``a`` and ``b`` (``(R, K)``; ``b`` may be ``(K,)``).

    Both are quantized along K with the golden MX quantizer (formats ``fmt_a``/``fmt_b``),
    streamed through the RTL, and the exact accumulator values come back: ``acc`` (int64,
    units of ``2^-acc_frac``), ``value`` (float64) and ``overflow``.
    """
    params = parse_params("dot", params)
    a = torch.as_tensor(np.asarray(a, dtype=np.float32))
    b = torch.as_tensor(np.asarray(b, dtype=np.float32))
    if a.ndim == 1:
        a = a[None]
    if b.ndim == 1:
        b = b[None].expand(a.shape[0], -1)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"a must be (R, K) and b (R, K) or (K,), not {tuple(a.shape)} and {tuple(b.shape)}")
    block, lanes = params["block"], params["lanes"]
    if a.shape[1] % block:
        raise ValueError(f"K = {a.shape[1]} must be a multiple of block = {block}")
    ca, sa = fpnum.mx_quantize(a, params["fmt_a"], block)
    cb, sb = fpnum.mx_quantize(b.contiguous(), params["fmt_b"], block)
    beats = []
    K = a.shape[1]
    for row in range(a.shape[0]):
        for start in range(0, K, lanes):
            beat = {"sa": int(sa[row, start // block]), "sb": int(sb[row, start // block]),
                    "last": int(start + lanes >= K)}
            for lane in range(lanes):
                beat[f"a.{lane}"] = int(ca[row, start + lane])
                beat[f"b.{lane}"] = int(cb[row, start + lane])
            beats.append(beat)
    out, cycles = replay("dot", params, {"i": beats}, {"o": a.shape[0]}, waves=waves)
    acc = np.array([o["acc"] for o in out["o"]], dtype=np.int64)
    overflow = np.array([o["overflow"] for o in out["o"]], dtype=bool)
    value = acc.astype(np.float64) * 2.0 ** -params["acc_frac"]
    notes = [f"{len(beats)} beats of {lanes} products; {overflow.sum()} overflowed rows"]
    return RTLResult({"value": value, "acc": acc, "overflow": overflow}, cycles, params, notes)


def rtl_sort(keys, **kwargs):
    """Row-wise sort of float keys on the RTL sorter (see :func:`tb.sort.host.rtl_sort`)."""
    from tb.sort.host import rtl_sort as run
    return run(keys, **kwargs)


def rtl_topk(keys, **kwargs):
    """Row-wise top-k of float keys on the RTL top-k core (see :func:`tb.sort.host.rtl_topk`)."""
    from tb.sort.host import rtl_topk as run
    return run(keys, **kwargs)


def rtl_attention(q, k=None, v=None, mask=None, **kwargs):
    """Attention (or, with ``mode="similarity"``, the token-similarity score matrix of ``q``) on
    the RTL attention core (see :func:`sim.rtl_attention.rtl_attention`)."""
    from .rtl_attention import rtl_attention as run
    return run(q, k, v, mask, **kwargs)


# CLI name -> (function, names of the --in arrays, names of the outputs written to --out).
RTL_COMMANDS = {
    "sort": (rtl_sort, ["keys"], ["indices", "sorted_keys"]),
    "topk": (rtl_topk, ["keys"], ["indices"]),
    "attention": (rtl_attention, ["q", "k", "v", "mask"], ["out", "y", "exp"]),
    "lutmul": (rtl_lutmul, ["a_codes", "b_codes"], ["p"]),
    "quantize": (rtl_quantize, ["x"], ["codes", "scales"]),
    "dot": (rtl_dot, ["a", "b"], ["value", "acc", "overflow"]),
}
