"""End-to-end replay: tensors tapped from a golden VAR run go through the emitted RTL.

``python -m sim.e2e`` (and ``make run``) runs the tiny preset with block-sparse attention,
records the tensors each core sees at the last scale, replays them through the Verilog of the
top-k, dot-product and attention cores, and counts exact matches with golden/numerics.
"""

import argparse
import sys

import numpy as np
import torch

from golden.accel.backend import core_tile_mask
from golden.numerics import attention as attn_num
from golden.numerics import fp as fpnum
from golden.numerics import sort as hsort

__all__ = ["replay_taps", "result_row", "attention_floor", "format_rows", "main"]

DOT_PARAMS = {"fmt_a": "e2m1", "fmt_b": "e2m1", "lanes": 32, "block": 32}


def attention_floor(tiles, Lq, Lk, Br, Bc):
    """(query, key) pairs in the kept tiles: the attention core's floor at one pair per cycle."""
    rows = torch.full((tiles.shape[0],), Br)
    rows[-1] = Lq - Br * (tiles.shape[0] - 1)
    cols = torch.full((tiles.shape[1],), Bc)
    cols[-1] = Lk - Bc * (tiles.shape[1] - 1)
    return int((tiles.long() * rows[:, None] * cols[None, :]).sum())


def result_row(name, got, expected, cycles, note="", floor=None):
    """One comparison of RTL output with golden: exact rows, cycles, the first mismatch."""
    got, expected = np.asarray(got), np.asarray(expected)
    exact = int((got == expected).all(axis=tuple(range(1, got.ndim))).sum()) if got.ndim > 1 else int((got == expected).sum())
    total = expected.shape[0]
    mismatch = ""
    if exact != total:
        index = np.argwhere(got != expected)[0]
        mismatch = f"first mismatch at {tuple(int(i) for i in index)}: rtl {got[tuple(index)]} golden {expected[tuple(index)]}"
    return {"core": name.split(":")[0], "tensor": name, "exact": exact, "total": total, "cycles": cycles,
            "note": note, "mismatch": mismatch, "floor": floor}


def replay_taps(seed=0, accel="sparse", preset="tiny", var_ckpt=None, vae_ckpt=None):
    """Run the golden pipeline (tiny preset, or official checkpoints) with taps and replay the
    last scale through the RTL.

    Returns a list of result rows (core, tensor, exact, total, cycles, note, mismatch).
    """
    from golden.accel.generate import model_config
    from golden.taps import run_with_taps
    from sim.loop import LIVELY, core_params_for, sampling_k
    from sim.rtl import rtl_attention, rtl_dot, rtl_topk

    init_kw = LIVELY if var_ckpt is None else None
    common = dict(var_ckpt=var_ckpt, vae_ckpt=vae_ckpt, init_kw=init_kw)
    TOPK_PARAMS, ATTN_PARAMS = core_params_for(model_config(preset, var_ckpt))
    _, taps = run_with_taps(preset, accel, seed, **common)
    last = max(int(k.split(".")[0][1:]) for k in taps if k.startswith("s") and k.endswith(".ids"))
    rows = []

    # Sampling: top-k of the guided logits of every token of the last scale.
    logits = torch.as_tensor(taps[f"s{last}.logits_guided"][0])
    k = sampling_k(logits.shape[-1])
    result = rtl_topk(logits.numpy(), k=k, **TOPK_PARAMS)
    golden = hsort.topk(hsort.float_to_key(logits), k).numpy()
    rows.append(result_row("topk: sampling logits", result.outputs["indices"], golden, result.cycles,
                     f"top-{k} of {logits.shape[-1]} per token, 32-bit keys", floor=logits.numel()))

    # Pruning: FastVAR pivot scores -> unordered top-n_keep (golden run with pruning on).
    _, prune_taps = run_with_taps(preset, "fastvar", seed, **common)
    key = f"s{last}.b0.pivot_scores"
    scores = torch.as_tensor(prune_taps[key])
    keep = prune_taps[f"s{last}.b0.pivot_keep"]
    result = rtl_topk(scores.numpy(), k=keep.shape[-1], unordered=True, **TOPK_PARAMS)
    rows.append(result_row("topk: pruning pivots", result.outputs["indices"], keep, result.cycles,
                     f"keep {keep.shape[-1]} of {scores.shape[-1]} (the tokens the golden run kept)",
                     floor=scores.numel()))

    # Linear layer: fc2 of block 0, a slice of 8 output channels for the cond row's tokens.
    x = torch.as_tensor(taps[f"s{last}.blocks.0.ffn.fc2.x"][0])
    w = torch.as_tensor(taps["blocks.0.ffn.fc2.weight"])[:8]
    a = x.repeat_interleave(w.shape[0], dim=0)
    b = w.repeat(x.shape[0], 1)
    result = rtl_dot(a.numpy(), b.numpy(), **DOT_PARAMS)
    ca, sa = fpnum.mx_quantize(a, "e2m1", 32)
    cb, sb = fpnum.mx_quantize(b, "e2m1", 32)
    acc, _ = fpnum.dot_exact(ca, sa, "e2m1", cb, sb, "e2m1", block=32)
    rows.append(result_row("dot: fc2 MXFP4", result.outputs["acc"], acc.numpy(), result.cycles,
                     f"{x.shape[0]} tokens x 8 of {taps['blocks.0.ffn.fc2.weight'].shape[0]} output channels, "
                     f"K = {x.shape[1]}", floor=a.numel() // DOT_PARAMS["lanes"]))

    # Attention: block 0, head 0, cond row, last scale, with its block-sparse mask.
    q = torch.as_tensor(taps[f"s{last}.b0.h0.q"][0])
    kk = torch.as_tensor(taps[f"s{last}.b0.h0.k"][0])
    v = torch.as_tensor(taps[f"s{last}.b0.h0.v"][0])
    token_mask = torch.as_tensor(taps[f"s{last}.b0.mask"][0])
    nm = attn_num.AttnNumerics(D=ATTN_PARAMS["D"], Br=ATTN_PARAMS["Br"], Bc=ATTN_PARAMS["Bc"])
    tiles = core_tile_mask(token_mask, nm.Br, nm.Bc)
    scale = 1.0  # VAR's released models: L2-normalized q, k with the head scale folded in q
    result = rtl_attention(q.numpy(), kk.numpy(), v.numpy(), tiles.numpy(), scale=scale, **ATTN_PARAMS)
    golden = attn_num.attention_exact(q, kk, v, scale=scale, mask=tiles, numerics=nm)
    rows.append(result_row("attention: last scale, block 0, head 0", result.outputs["y"],
                     golden.out_fixed.numpy(), result.cycles,
                     f"Lq {q.shape[0]}, Lk {kk.shape[0]}, tiles kept {int(tiles.sum())}/{tiles.numel()}",
                     floor=attention_floor(tiles, q.shape[0], kk.shape[0], nm.Br, nm.Bc)))
    return rows


def format_rows(rows):
    lines = ["| core / tensor | exact | cycles | what |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tensor']} | {r['exact']}/{r['total']} | {r['cycles']} | {r['note']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = replay_taps(args.seed)
    print("\nRTL replay of tensors tapped from the golden tiny VAR run (exact = rows equal bit for bit):\n")
    print(format_rows(rows))
    bad = [r for r in rows if r["exact"] != r["total"]]
    for r in bad:
        print(f"MISMATCH {r['tensor']}: {r['mismatch']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
