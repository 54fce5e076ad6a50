"""Why is flex_attention slow on VAR's sparse masks? Times variants of the kernel on the last
steps of d30 at 1024 px (device machine): static or dynamic shapes, the mask function reading
the token mask or the 16 x 16 tile table, no mask function at all (partial blocks computed
whole: a bound, not our mask), and the host cost of one call at a small step.

    python -m golden.bench.flex_probe [--json OUT]
"""

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from golden.accel import AccelConfig
from golden.accel import flex as fx
from golden.accel.sparse import step_mask, tile_mask
from golden.bench.gpu import arch_config, median_ms


def _bm(M, fb, mode, bq=16, bk=16):
    layout = fx.block_layout(M.unsqueeze(0), fb, fb)
    n, m = M.shape
    if mode == "token":
        table = fx._padded(M.unsqueeze(0), fb, fb)[0]

        def mod(b, h, q, kv):
            return table[q, kv]
    elif mode == "tile":
        tiles = tile_mask(M, bq, bk)
        assert torch.equal(tiles.repeat_interleave(bq, 0).repeat_interleave(bk, 1)[:n, :m], M)
        tpad = torch.zeros(-(-n // fb) * fb // bq + 1, -(-m // fb) * fb // bk + 1, dtype=torch.bool, device=M.device)
        tpad[:tiles.shape[0], :tiles.shape[1]] = tiles

        def mod(b, h, q, kv):
            return tpad[q // bq, kv // bk]
    else:   # none: partial blocks become full (not our mask; the block-sparsity bound)
        num, idx = layout[:2]
        kept = fx._padded(M.unsqueeze(0), fb, fb).view(1, num.shape[-1], fb, idx.shape[-1], fb).any(4).any(2)
        kept = kept.unsqueeze(1)
        fn_ = kept.sum(-1, dtype=torch.int32)
        fi = torch.argsort((~kept).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return BlockMask.from_kv_blocks(torch.zeros_like(fn_), fi, fn_, fi, BLOCK_SIZE=(fb, fb),
                                        seq_lengths=(n, m))
    return BlockMask.from_kv_blocks(*layout, BLOCK_SIZE=(fb, fb), mask_mod=mod, seq_lengths=(n, m))


def weights_probe(reps=3):
    """Dense d30-1024 latency with the model's float32 weights (autocast casts every linear's
    weight to bf16 at every call: the weights have requires_grad False, so autocast's cast cache
    does not apply) and with the nn.Linear weights and biases stored in bf16 once (the same
    values autocast would pass to the matmul): medians and whether the images are equal."""
    from golden.bench.gpu import _generator
    from golden.model import build
    cfg = arch_config("d30-1024")
    torch.set_default_device("cuda")   # as the benchmark does: the model makes index tensors with factory calls
    with torch.device("cuda"):
        _, var = build(cfg, seed=0)
    var.eval()
    out = {"probe": "bf16 linear weights, dense d30-1024"}
    once = _generator(var, cfg, None)
    imgs = []
    for label in ("fp32_weights", "bf16_linear_weights"):
        if label == "bf16_linear_weights":
            for mod in var.modules():
                if isinstance(mod, torch.nn.Linear):
                    mod.to(torch.bfloat16)
        imgs.append(once())
        out[label + "_ms"] = median_ms(once, reps)
    out["images_equal"] = bool(torch.equal(imgs[0], imgs[1]))
    out["images_max_abs"] = float((imgs[0].float() - imgs[1].float()).abs().max())
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    cfg = arch_config("d30-1024")
    a = AccelConfig.parse("sparse", cfg)
    pn = tuple(cfg.patch_nums)
    H, c, R = cfg.num_heads, cfg.embed_dim // cfg.num_heads, 2
    comp = {"static": torch.compile(flex_attention, dynamic=False, fullgraph=True),
            "dynamic": torch.compile(flex_attention, dynamic=True, fullgraph=True)}
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    begins = [0]
    for p in pn:
        begins.append(begins[-1] + p * p)
    for si in (13, 12, 5):
        M = step_mask(pn, begins[si], begins[si + 1], a.block_q, a.block_k, a.window, a.sink_scales).cuda()
        n, m = M.shape
        # q as the model makes it: a view of the fused qkv projection (not contiguous)
        qkv = torch.randn(R, n, 3, H, c, device="cuda", generator=g, dtype=torch.bfloat16)
        q = F.normalize(qkv.permute(2, 0, 3, 1, 4)[0].float(), dim=-1).bfloat16() * 8
        k, v = (torch.randn(R, H, m, c, device="cuda", generator=g).bfloat16() for _ in range(2))
        k = F.normalize(k.float(), dim=-1).bfloat16()
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=M, scale=1.0)
        row = {"scale": si, "n": n, "m": m,
               "ms_sdpa_dense": median_ms(lambda: F.scaled_dot_product_attention(q, k, v, scale=1.0)),
               "ms_sdpa_mask": median_ms(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=M, scale=1.0))}
        variants = [("static", "token", 128), ("static", "tile", 128), ("static", "none", 128),
                    ("dynamic", "tile", 128), ("static", "tile", 64), ("dynamic", "token", 128)]
        for dyn, mode, fb in variants:
            name = f"{dyn}_{mode}_{fb}"
            try:
                bm = _bm(M, fb, mode)
                opts = None if fb == 128 else {"BLOCK_M": fb, "BLOCK_N": fb}
                fn = lambda: comp[dyn](q, k, v, block_mask=bm, scale=1.0, kernel_options=opts)  # noqa: E731
                t0 = time.perf_counter()
                o = fn()
                torch.cuda.synchronize()
                row[name + "_first_s"] = round(time.perf_counter() - t0, 1)
                row[name + "_rel_err"] = float((o.float() - ref).norm() / ref.norm())
                row[name + "_ms"] = median_ms(fn)
                # host time of one call, GPU left to finish: what a host-bound step pays
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(20):
                    fn()
                row[name + "_host_ms"] = (time.perf_counter() - t0) / 20 * 1000
                torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001 - a probe reports every variant's failure and goes on
                row[name + "_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        t0 = time.perf_counter()
        for _ in range(20):
            F.scaled_dot_product_attention(q, k, v, attn_mask=M, scale=1.0)
        row["sdpa_mask_host_ms"] = (time.perf_counter() - t0) / 20 * 1000
        torch.cuda.synchronize()
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    rows.append(weights_probe())
    print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
