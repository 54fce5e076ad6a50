"""Host side of ``varaccel rtl sort`` / ``varaccel rtl topk``: tensors -> beats -> RTL -> arrays.

For sim/rtl.py's ``RTL_COMMANDS`` (the lead wires them in):
``"sort": (rtl_sort, ["keys"], ["indices", "sorted_keys"])`` and
``"topk": (rtl_topk, ["keys"], ["indices"])``.
"""

import numpy as np
import torch

from golden.numerics import sort as sortnum
from hw.emit import parse_params
from tb.sort.stimulus import packet_beats, sort_items, topk_beats, topk_items

__all__ = ["float_keys", "rtl_sort", "rtl_topk"]


def _truthy(value):
    return str(value).lower() in ("1", "true", "yes", "on")


def float_keys(x, key_bits):
    """float32/float16/bfloat16 or integer array -> unsigned keys of ``key_bits`` bits, (R, N).

    Floats use ``float_to_key`` (NaN last) and keep the top ``key_bits`` bits (``truncate_key``);
    unsigned integers must already fit ``key_bits``.
    """
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"keys must have shape (R, N) or (N,) with N >= 1, not {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if t.dtype == torch.float64:
            t = t.float()
        width = 32 if t.dtype == torch.float32 else 16
        keys = sortnum.float_to_key(t)
        return sortnum.truncate_key(keys, width, min(key_bits, width)) << max(0, key_bits - width)
    keys = torch.from_numpy(arr.astype(np.int64))
    if int(keys.min()) < 0 or int(keys.max()) >= 1 << key_bits:
        raise ValueError(f"integer keys must lie in [0, 2**{key_bits} - 1]")
    return keys


def rtl_sort(keys, *, descending=False, waves=False, **params):
    """Sort each row of ``keys`` (R, N) on the RTL sorter: int32 indices (R, N) + the keys.

    With ``lanes`` = P > 1 each row goes in as beats of P keys (the last one partial when P
    does not divide N); the output is one (key, index) per beat, or two with ``out_lanes`` = 2."""
    from sim.rtl import RTLResult, replay
    params = parse_params("sort", params)
    descending = _truthy(descending)
    k = float_keys(keys, params["key_bits"])
    rows, n = k.shape
    if n > params["max_len"]:
        raise ValueError(f"row length {n} exceeds max_len = {params['max_len']}")
    beats = [beat for row in k.tolist()
             for beat in packet_beats(row, descending, params["lanes"], key_bits=params["key_bits"])]
    out_lanes = params["out_lanes"]
    out, cycles = replay("sort", params, {"i": beats}, {"o": rows * -(-n // out_lanes)}, waves=waves)
    items = sort_items(out["o"], out_lanes)
    idx = np.array([b["index"] for b in items], dtype=np.int32).reshape(rows, n)
    skeys = np.array([b["key"] for b in items], dtype=np.int64).reshape(rows, n)
    return RTLResult({"indices": idx, "sorted_keys": skeys}, cycles, params,
                     [f"{rows} rows of {n} keys ({params['key_bits']}-bit keys, {params['lanes']} per beat), "
                      f"{'descending' if descending else 'ascending'}, ties to the lower index"])


def rtl_topk(keys, *, k, unordered=False, waves=False, **params):
    """Top-k indices of each row of ``keys`` (R, N): int32 (R, min(k, N)), descending key order
    (ties lower index first), or ascending index order with ``unordered``."""
    from sim.rtl import RTLResult, replay
    params = parse_params("topk", params)
    k = int(k)
    unordered = _truthy(unordered)
    if k < 0:
        raise ValueError(f"k must be >= 0, not {k}")
    keys_t = float_keys(keys, params["key_bits"])
    rows, n = keys_t.shape
    if n > params["max_len"]:
        raise ValueError(f"row length {n} exceeds max_len = {params['max_len']}")
    k_eff, code = sortnum.clamp_k(k, n)
    beats = [beat for row in keys_t.tolist()
             for beat in topk_beats(row, params["lanes"], key_bits=params["key_bits"])]
    cmds = [{"k": k, "unordered": int(unordered)}] * rows
    # P > 1 beats hold a variable number of keys: wait for each row's last beat instead
    expect = {"packets": rows} if k_eff else 0
    out, cycles = replay("topk", params, {"i": beats, "cmd": cmds}, {"o": expect, "status": rows},
                         waves=waves)
    items = topk_items(out["o"], params["lanes"])
    idx = np.array([b["index"] for b in items], dtype=np.int32).reshape(rows, k_eff)
    notes = [f"top-{k_eff} of {n} per row, {'ascending index' if unordered else 'descending key'} order, "
             f"{params['lanes']} keys per input beat, {len(out['o'])} output beats"]
    if code == sortnum.STATUS_K_CLAMPED:
        notes.append(f"k = {k} > N = {n}: clamped to N (status K_CLAMPED)")
    elif code == sortnum.STATUS_K_ZERO:
        notes.append("k = 0: no indices (status K_ZERO)")
    return RTLResult({"indices": idx}, cycles, params, notes)
