"""Tests of golden/accel and golden/fidelity on the tiny preset: each technique changes what it
should and nothing else, mask properties, op counts, low-bit linears, pivot top-k, fidelity."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from golden.accel import (AccelConfig, AcceleratedHooks, RunRecord, accelerated_infer, block_density, block_mask,
                          pivot_scores, select_pivots)
from golden.accel.backend import CoreBackend
from golden.accel.generate import generate, savings_table
from golden.fidelity import compare, logit_kl, psnr, ssim, token_agreement
from golden.model import VARConfig, build
from golden.model.hooks import StepContext
from golden.numerics import fp
from golden.numerics import sort as hsort
from golden.accel import hooks as hooks_mod
from golden.accel import flex
from golden.accel.sparse import step_mask as sparse_step_mask
from golden.accel.sparse import tile_mask

KW = dict(B=2, label_B=torch.tensor([1, 3]), g_seed=7, cfg=4.0, top_k=900, top_p=0.95)


@pytest.fixture(scope="module")
def model():
    cfg = VARConfig.preset("tiny")
    # gamma 0.5 so that random blocks change their input noticeably (the official init ~ identity)
    vae, var = build(cfg, seed=3, init_adaln_gamma=0.5, init_head=1.0)
    return cfg, var


@pytest.fixture(scope="module")
def dense(model):
    cfg, var = model
    img = var.autoregressive_infer_cfg(**KW)
    rec = RunRecord()
    hooks = AcceleratedHooks(cfg, "dense")
    accelerated_infer(var, **KW, hooks=hooks, record=rec)
    return img, rec, hooks.counter


def accel_run(var, spec):
    hooks = AcceleratedHooks(var.cfg, spec)
    rec = RunRecord()
    accelerated_infer(var, **KW, hooks=hooks, record=rec)
    return rec, hooks


def same_logits(a, b, scales):
    return all(torch.equal(a.logits[s], b.logits[s]) for s in scales)


# ------------------------------------------------------------------------------- config
def test_parse_presets_and_overrides(model):
    cfg, _ = model
    a = AccelConfig.parse("fastvar,sparse,mxfp4", cfg)
    assert a.prune and a.sparse and a.quant == "e2m1" and a.quant_dual_fc2 and not a.aggregate
    assert a.block_q == 4                                     # small-map default
    assert AccelConfig.parse("sparse", VARConfig.preset("d16")).block_q == 16
    b = AccelConfig.parse("sparse,window=3,prune_keep=0.6:0.3,quant=none", cfg)
    assert b.window == 3 and b.prune_keep == (0.6, 0.3) and b.quant is None
    assert AccelConfig.parse("dense", cfg).is_dense and not a.is_dense
    assert AccelConfig.parse("all", cfg).step_groups(4) == [(0,), (1,), (2, 3)]
    for bad in ("nosuch", "window=-1", "quant=e9m9", "parallel_last=1"):
        with pytest.raises(ValueError):
            AccelConfig.parse(bad, cfg)


# ------------------------------------------------------------------------------- dense
def test_dense_hooks_and_driver_bit_exact(model, dense):
    cfg, var = model
    img, rec, _ = dense
    assert torch.equal(var.autoregressive_infer_cfg(**KW, hooks=AcceleratedHooks(cfg, "dense")), img)
    assert torch.equal(rec.image, img)


def test_hw_sampling_matches_official_sampler(model, dense):
    _, var = model
    rec, hooks = accel_run(var, "hwsample")
    assert torch.equal(rec.image, dense[0])
    assert hooks.counter.totals()["sort_calls"] == KW["B"] * sum(p * p for p in var.patch_nums)


def test_op_counter_dense_totals(model, dense):
    cfg, var = model
    t = dense[2].totals()
    R, C, H, V, Cv = 2 * KW["B"], cfg.embed_dim, cfg.ffn_hidden, cfg.vocab_size, cfg.z_channels
    pns = cfg.patch_nums
    L = sum(p * p for p in pns)
    assert t["steps"] == len(pns)
    assert t["tokens"] == R * L * cfg.depth
    per_tok = 3 * C * C + C * C + C * H + H * C
    lin = R * L * cfg.depth * per_tok + R * len(pns) * cfg.depth * 6 * C * C    # blocks + AdaLN
    lin += R * len(pns) * 2 * C * C + R * L * C * V                              # head AdaLN + head
    lin += KW["B"] * (L - 1) * Cv * C                                            # word_embed (per image)
    assert t["linear_macs"] == lin
    ends = np.cumsum([p * p for p in pns])
    attn = cfg.depth * sum(R * 2 * C * p * p * int(e) for p, e in zip(pns, ends))
    assert t["attn_macs"] == attn
    assert t["attn_tiles_kept"] == t["attn_tiles_total"] and t["sort_calls"] == 0


# ------------------------------------------------------------------------------- pruning
def test_prune_keep_one_equals_dense(model, dense):
    _, var = model
    rec, hooks = accel_run(var, "fastvar,prune_keep=1.0:1.0")
    assert torch.equal(rec.image, dense[0]) and same_logits(rec, dense[1], range(4))
    assert hooks.counter.totals()["tokens"] == dense[2].totals()["tokens"]


def test_prune_changes_only_pruned_scales(model, dense):
    cfg, var = model
    rec, hooks = accel_run(var, "fastvar")
    assert same_logits(rec, dense[1], [0, 1])
    assert not torch.equal(rec.logits[3], dense[1].logits[3])
    R = 2 * KW["B"]
    st = hooks.counter.steps
    # 3x3 keeps 9 - floor(4.5) = 5, 4x4 keeps 4 (25 %), in every block (layers 0.1..0.9 of depth 2)
    assert st[2].tokens == [R * 5] * cfg.depth and st[3].tokens == [R * 4] * cfg.depth
    assert st[1].tokens == [R * 4] * cfg.depth
    assert hooks.counter.totals()["sort_calls"] == 2 * cfg.depth * R


def test_pivot_topk_matches_numpy(seed):
    g = torch.Generator().manual_seed(seed)
    R, n, C = 3, int(torch.randint(2, 40, (1,), generator=g)), 16
    x = torch.randn(R, n, C, generator=g)
    k = int(torch.randint(1, n + 1, (1,), generator=g))
    s = pivot_scores(x)
    xn = x.numpy().astype(np.float64)
    ref = ((xn - xn.mean(1, keepdims=True)) ** 2).sum(-1)
    np.testing.assert_allclose(s.numpy(), ref, rtol=1e-5)
    got = select_pivots(s, k).numpy()
    want = np.sort(np.argsort(-s.numpy(), axis=1, kind="stable")[:, :k], axis=1)
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------- sparse
def test_sparse_full_window_equals_dense(model, dense):
    _, var = model
    rec, hooks = accel_run(var, "sparse,window=16,sink_scales=0")
    assert torch.equal(rec.image, dense[0]) and same_logits(rec, dense[1], range(4))
    assert hooks.counter.totals()["tile_density"] == 1.0


def test_sparse_changes_attention_only(model, dense):
    _, var = model
    rec, hooks = accel_run(var, "sparse,window=0,block_q=1,block_k=1")
    t, d = hooks.counter.totals(), dense[2].totals()
    assert t["tokens"] == d["tokens"] and t["linear_macs"] == d["linear_macs"]
    assert t["attn_macs"] < d["attn_macs"] and t["tile_density"] < 1.0
    assert same_logits(rec, dense[1], [0])
    assert not torch.equal(rec.logits[3], dense[1].logits[3])


PNS = [(1, 2, 3, 4), (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)]


@pytest.mark.parametrize("pns", PNS)
def test_block_mask_properties(pns, seed):
    g = torch.Generator().manual_seed(seed)
    bq, bk = (int(v) for v in torch.randint(1, 20, (2,), generator=g))
    sinks = int(torch.randint(1, 3, (1,), generator=g))
    begin = np.cumsum((0,) + tuple(p * p for p in pns))
    for si in range(len(pns)):
        dens = []
        for w in range(0, pns[-1] + 1, 3):
            m = block_mask(pns, si, bq, bk, w, sinks)
            assert m.shape == (-(-pns[si] ** 2 // bq), -(-int(begin[si + 1]) // bk))
            assert m.any(1).all()                               # every query tile keeps something
            sink_tiles = -(-int(begin[min(sinks, si + 1)]) // bk)
            assert m[:, :sink_tiles].all()                      # sinks always kept
            dens.append(block_density(m))
        assert all(a <= b for a, b in zip(dens, dens[1:]))      # monotone in the window
        assert block_mask(pns, si, bq, bk, pns[-1], sinks).all()


def test_block_mask_index_mapping():
    pns = (1, 2, 4)
    m = block_mask(pns, 2, 1, 1, window=0, sink_scales=0)      # token level
    # query (3, 2) of the 4x4 map maps to (1, 1) of the 2x2 map (position 1 + 3) and itself
    q = 3 * 4 + 2
    kept = set(torch.nonzero(m[q]).flatten().tolist())
    assert kept == {0, 1 + 3, 5 + q}


# ------------------------------------------------------------------------------- aggregation / bypass
def test_aggregation_threshold_above_one_is_dense(model, dense):
    _, var = model
    rec, _ = accel_run(var, "aggregate,agg_threshold=1.0")
    assert torch.equal(rec.image, dense[0]) and same_logits(rec, dense[1], range(4))


def test_aggregation_merges_windows(model, dense):
    cfg, var = model
    rec, hooks = accel_run(var, "aggregate,agg_threshold=-1.0,agg_last=1")
    st = hooks.counter.steps
    R = 2 * KW["B"]
    assert st[3].tokens == [R * 4] * cfg.depth                 # 4x4 map, 2x2 windows -> 4 representatives
    assert same_logits(rec, dense[1], [0, 1, 2]) and not torch.equal(rec.logits[3], dense[1].logits[3])


def test_bypass(model, dense):
    cfg, var = model
    rec, _ = accel_run(var, "bypass,bypass_threshold=0.0")
    assert torch.equal(rec.image, dense[0]) and same_logits(rec, dense[1], range(4))
    rec, hooks = accel_run(var, "bypass,bypass_threshold=1e9,bypass_last=2")
    st = hooks.counter.steps
    R = 2 * KW["B"]
    assert st[1].tokens == [R * 4] * cfg.depth
    assert st[2].tokens[0] == R * 9 and st[2].tokens[1:] == [0] * (cfg.depth - 1)
    assert same_logits(rec, dense[1], [0, 1])


# ------------------------------------------------------------------------------- parallel decoding
def test_parallel_decoding(model, dense):
    cfg, var = model
    rec, hooks = accel_run(var, "parallel")
    t = hooks.counter.totals()
    assert t["steps"] == len(cfg.patch_nums) - 1 and len(rec.ids) == len(cfg.patch_nums)
    assert same_logits(rec, dense[1], [0, 1])
    # scale 2 has its exact input and sees only scales <= 2: same logits up to rounding
    torch.testing.assert_close(rec.logits[2], dense[1].logits[2], rtol=1e-4, atol=1e-5)
    assert t["tokens"] == dense[2].totals()["tokens"]


# ------------------------------------------------------------------------------- low-bit FP
def _ctx():
    return StepContext(mode="ar", patch_nums=(1, 2, 3, 4), q_begin=0, q_end=1, si=0)


@pytest.mark.parametrize("spec,fmt", [("mxfp4", "e2m1"), ("mxfp6", "e2m3")])
def test_quant_linear_equals_mx_matmul(model, seed, spec, fmt):
    cfg, var = model
    hooks = AcceleratedHooks(cfg, spec)
    g = torch.Generator().manual_seed(seed)
    layer = var.blocks[1].ffn.fc1
    x = torch.randn(2, 5, cfg.embed_dim, generator=g) * 3
    y = hooks.linear(layer, x, layer.bias, _ctx())
    assert torch.equal(y, fp.mx_matmul(x, layer.weight, fmt, fmt).float() + layer.bias)
    # independent check: dequantized operands through a float64 matmul
    xq = fp.mx_dequantize(*fp.mx_quantize(x, fmt), fmt).double()
    wq = fp.mx_dequantize(*fp.mx_quantize(layer.weight, fmt), fmt).double()
    torch.testing.assert_close(y, (xq @ wq.T).float() + layer.bias, rtol=1e-5, atol=1e-5)
    # layers outside the blocks stay dense
    head = var.head
    xh = torch.randn(3, cfg.embed_dim, generator=g)
    assert torch.equal(hooks.linear(head, xh, head.bias, _ctx()), F.linear(xh, head.weight, head.bias))


def test_dual_format_fc2(model, seed):
    cfg, var = model
    hooks = AcceleratedHooks(cfg, "mxfp4")
    g = torch.Generator().manual_seed(seed)
    layer = var.blocks[0].ffn.fc2
    x = F.gelu(torch.randn(4, cfg.ffn_hidden, generator=g) * 2, approximate="tanh")
    y = hooks.linear(layer, x, None, _ctx())
    nc, ns, pc, ps = fp.dual_quantize(x)
    xq = fp.dual_dequantize(nc, ns, pc, ps).double()
    wq = fp.mx_dequantize(*fp.mx_quantize(layer.weight, "e2m1"), "e2m1").double()
    torch.testing.assert_close(y, (xq @ wq.T).float(), rtol=1e-5, atol=1e-6)


def test_group_hadamard_linear(model, seed):
    cfg, var = model
    hooks = AcceleratedHooks(cfg, "mxfp4,quant_hadamard=32")
    g = torch.Generator().manual_seed(seed)
    layer = var.blocks[0].attn.proj
    x = torch.randn(3, cfg.embed_dim, generator=g)
    y = hooks.linear(layer, x, layer.bias, _ctx())
    w = fp.fold_hadamard_into_weight(layer.weight.double(), 32).float()
    assert torch.equal(y, fp.mx_matmul(fp.group_hadamard(x, 32), w, "e2m1", "e2m1").float() + layer.bias)


def test_mxfp_run_changes_logits_not_counts(model, dense):
    _, var = model
    rec, hooks = accel_run(var, "mxfp6")
    kl = logit_kl(dense[1].logits, rec.logits)
    assert all(k > 0 for k in kl[1:])
    t, d = hooks.counter.totals(), dense[2].totals()
    assert t["macs"] == d["macs"] and t["tokens"] == d["tokens"]


# ------------------------------------------------------------------------------- fidelity
def test_fidelity_identity_and_noise(seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(2, 3, 32, 32, generator=g)
    assert psnr(img, img) == math.inf and ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    ps, ss = [], []
    for sigma in (0.01, 0.05, 0.2):
        noisy = (img + sigma * torch.randn(img.shape, generator=g)).clamp(0, 1)
        ps.append(psnr(img, noisy))
        ss.append(ssim(img, noisy))
    assert ps[0] > ps[1] > ps[2] and 1.0 > ss[0] > ss[1] > ss[2]
    # PSNR of a uniform offset d: -20 log10 d
    assert psnr(torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.1)) == pytest.approx(20.0)


def test_compare_self_is_perfect(dense):
    m = compare(dense[1], dense[1])
    assert m["psnr"] == math.inf and m["ssim"] == pytest.approx(1.0)
    assert m["token_agreement"] == [1.0] * 4 and m["logit_kl"] == [0.0] * 4
    assert token_agreement([torch.tensor([1, 2])], [torch.tensor([1, 3])]) == [0.5]


def test_generate_writes_images(tmp_path):
    table, metrics = generate(accel="fastvar,sparse,mxfp4", out=tmp_path / "img.png", progress=False)
    assert (tmp_path / "img.png").is_file() and (tmp_path / "img_vs_dense.png").is_file()
    assert "total MACs" in table and "ratio" in table
    assert set(metrics) >= {"psnr", "ssim", "token_agreement", "logit_kl"}


def test_hooks_in_model_loop_equal_driver(model):
    """Techniques 1, 2, 3, 5 work through plain autoregressive_infer_cfg(hooks=...) too."""
    cfg, var = model
    spec = "fastvar,sparse,turbo,mxfp4,agg_threshold=0.5"
    a = var.autoregressive_infer_cfg(**KW, hooks=AcceleratedHooks(cfg, spec))
    rec, _ = accel_run(var, spec)
    assert torch.equal(a, rec.image)


# ------------------------------------------------------------------------------- core backend
class RecordingBackend(CoreBackend):
    """The golden backend, recording every attention call and checking it against float SDPA."""

    def __init__(self):
        self.attn_tags, self.topk_calls, self.tiles = [], 0, {}

    def topk(self, logits_RV, k):
        self.topk_calls += 1
        return super().topk(logits_RV, k)

    def attention(self, q, k, v, tiles, scale, numerics, tag=""):
        out = super().attention(q, k, v, tiles, scale, numerics, tag)
        elem = tiles.repeat_interleave(numerics.Br, 0)[:q.shape[0]].repeat_interleave(numerics.Bc, 1)[:, :k.shape[0]]
        ref = F.scaled_dot_product_attention(q.double()[None], k.double()[None], v.double()[None],
                                             attn_mask=elem[None], scale=scale)[0]
        # the core's formats (E4M3 q, k, v) bound the error from below; 10 % leaves room for it
        assert float((out - ref).norm() / ref.norm()) < 0.1, tag
        self.attn_tags.append(tag)
        self.tiles[tag] = tiles
        return out


def test_topk_fn_gives_the_radix_select_mask(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 200, generator=g)
    logits[0, :50] = 1.5  # ties across the k-th value
    logits[1] = 0.25      # a constant row
    golden_topk = CoreBackend().topk
    for k, p in ((1, 0.0), (17, 0.95), (50, 0.0), (200, 0.5)):
        ref = hsort.topk_topp_mask(logits, k, p)
        assert torch.equal(hsort.topk_topp_mask(logits, k, p, topk_fn=golden_topk), ref)
    # a top-k that returns the wrong set gives another mask: the injected result is really used
    def bottom_k(x, k):
        return torch.argsort(x, dim=-1, stable=True)[:, :k].flip(-1)
    assert not torch.equal(hsort.topk_topp_mask(logits, 17, 0.0, topk_fn=bottom_k), hsort.topk_topp_mask(logits, 17, 0.0))


def test_attention_core_hook(model):
    cfg, var = model
    float_rec, _ = accel_run(var, "sparse,hwsample")
    backend = RecordingBackend()
    hooks = AcceleratedHooks(cfg, "sparse,hwsample,attncore,attn_core_blocks=0:1", backend=backend)
    rec = RunRecord()
    accelerated_infer(var, **KW, hooks=hooks, record=rec)
    last = len(var.patch_nums) - 1
    R, H = 2 * KW["B"], cfg.num_heads
    assert backend.attn_tags == [f"s{last}.b{b}.r{r}.h{h}" for b in (0, 1) for r in range(R) for h in range(H)]
    assert backend.topk_calls == len(var.patch_nums)
    # scales before the last are untouched; the last differs by the core's numerics only
    assert same_logits(rec, float_rec, range(last))
    assert not torch.equal(rec.logits[last], float_rec.logits[last])
    # with block_q / block_k tiles the core's block mask is the sparse pattern itself
    a = hooks.acfg
    pattern = block_mask(var.patch_nums, last, a.block_q, a.block_k, a.window, a.sink_scales)
    assert not bool(pattern.all())  # a real sparse pattern at this size
    for tag, tiles in backend.tiles.items():
        assert torch.equal(tiles, pattern), tag
    with pytest.raises(ValueError, match="attn_core_blocks"):
        AccelConfig.parse("attn_core_blocks=-1", cfg)
    with pytest.raises(ValueError, match="attn_core_last"):
        AccelConfig.parse("attn_core_last=-1", cfg)


# ------------------------------------------------------------------------------- fast paths
def test_select_pivots_equals_radix_model(seed):
    """The stable-sort pivot top-k of the hooks equals the sort core's radix model (the
    definition) on random, tied, constant, signed-zero, infinite and NaN scores, for every k."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 300, (1,), generator=g))
    rows = [torch.randn(n, generator=g),
            torch.randint(0, 4, (n,), generator=g).float(),                     # many ties
            torch.full((n,), 2.5),                                               # constant
            torch.zeros(n),
            torch.where(torch.rand(n, generator=g) < 0.5, torch.tensor(-0.0), torch.tensor(0.0)),
            torch.randn(n, generator=g).abs().round(decimals=1)]                 # ties among distinct values
    odd = torch.randn(n, generator=g)
    odd[torch.randint(0, n, (max(1, n // 5),), generator=g)] = math.nan
    odd[0], odd[-1] = math.inf, -math.inf
    rows.append(odd)
    scores = torch.stack(rows)
    for k in sorted({0, 1, 2, n // 4, n // 2, n - 1, n, int(torch.randint(0, n + 1, (1,), generator=g))}):
        ref = hooks_mod.select_pivots_reference(scores, k)
        got = select_pivots(scores, k)
        assert torch.equal(got, ref), k
    with pytest.raises(ValueError, match="k must be"):
        select_pivots(scores, n + 1)


def _small_model():
    cfg = VARConfig.preset("tiny").replace(depth=5, patch_nums=(1, 2, 3, 4, 6, 8))
    _, var = build(cfg, seed=5, init_adaln_gamma=0.5, init_head=1.0)
    return cfg, var


FAST_SPECS = ["dense", "fastvar", "sparse", "fastvar,sparse", "turbo,agg_threshold=0.5", "fastvar,turbo",
              "fastvar,sparse,turbo,agg_threshold=0.5,bypass_threshold=0.5", "parallel,fastvar",
              "parallel,sparse", "parallel,fastvar,sparse,turbo", "sparse,window=0,block_q=1,block_k=1",
              "fastvar,prune_keep=1.0:1.0", "fastvar,mxfp4", "all"]


# the slow low-bit specs only on the tiny model; the 6-scale model (a step's first position is
# beyond its length, more blocks outside the pruning range) for the token-subset techniques
FAST_SPECS_SMALL = ["fastvar", "sparse", "fastvar,sparse", "fastvar,sparse,turbo,agg_threshold=0.5",
                    "parallel,fastvar,sparse,turbo"]


@pytest.mark.parametrize("which", ["tiny", "small"])
def test_fast_paths_equal_general_path(model, which):
    """AcceleratedHooks(fast=True), the default, gives the same logits, ids, image and op counts,
    bit for bit, as the general path (fast=False) in every combination of techniques."""
    cfg, var = model if which == "tiny" else _small_model()
    for spec in FAST_SPECS if which == "tiny" else FAST_SPECS_SMALL:
        recs = []
        for fast in (True, False):
            hooks = AcceleratedHooks(cfg, spec, fast=fast)
            rec = RunRecord()
            accelerated_infer(var, **KW, hooks=hooks, record=rec)
            # a second generation through the same hooks object (state reset, caches reused)
            img2 = var.autoregressive_infer_cfg(**KW, hooks=hooks)
            recs.append((rec, hooks.counter, img2))
        (a, ca, ia), (b, cb, ib) = recs
        assert torch.equal(a.image, b.image) and torch.equal(ia, ib), spec
        assert all(torch.equal(x, y) for x, y in zip(a.logits, b.logits)), spec
        assert all(torch.equal(x, y) for x, y in zip(a.ids, b.ids)), spec
        assert ca.steps == cb.steps, spec


# ------------------------------------------------------------------------------- flex_attention
def _flex_brute_blocks(mask, fq, fk):
    """(kept, full) per (row, query block, key block) by looping over the blocks."""
    B, n, m = mask.shape
    nqb, nkb = -(-n // fq), -(-m // fk)
    kept = torch.zeros(B, nqb, nkb, dtype=torch.bool)
    full = torch.zeros(B, nqb, nkb, dtype=torch.bool)
    for b in range(B):
        for i in range(nqb):
            for j in range(nkb):
                blk = mask[b, i * fq:(i + 1) * fq, j * fk:(j + 1) * fk]
                kept[b, i, j] = bool(blk.any())
                full[b, i, j] = blk.shape == (fq, fk) and bool(blk.all())
    return kept, full


def _flex_masks(seed):
    """Token masks with empty, full, partial and ragged blocks: random, the sparse step masks
    of a 10-scale schedule, and one row all True."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for B in (1, 3):
        n, m = (int(v) for v in torch.randint(1, 90, (2,), generator=g))
        rnd = torch.rand(B, n, m, generator=g) < 0.3
        rnd[:, :, : m // 3] = True                     # whole blocks allowed
        rnd[:, n // 2:, m // 2:] = False               # whole blocks skipped
        out.append(rnd)
    pns = PNS[1]
    begin = np.cumsum((0,) + tuple(p * p for p in pns))
    for si in (6, 9):
        out.append(sparse_step_mask(pns, int(begin[si]), int(begin[si + 1]), 16, 16, 1, 2).unsqueeze(0))
    out.append(torch.ones(1, 40, 70, dtype=torch.bool))
    return out


def test_flex_block_layout_keeps_exactly_the_mask(seed):
    """The BlockMask built from a token mask lists every block with an allowed pair (full blocks
    only where every pair, ragged edges excluded, is allowed), and full blocks plus the mask
    function on partial ones give back the token mask itself."""
    for mask in _flex_masks(seed):
        for fq, fk in ((16, 16), (32, 16), (16, 48)):
            num, idx, fnum, fidx = flex.block_layout(mask, fq, fk)
            kept, full = _flex_brute_blocks(mask, fq, fk)
            B, nqb, nkb = kept.shape
            assert num.shape == fnum.shape == (B, 1, nqb) and idx.shape == fidx.shape == (B, 1, nqb, nkb)
            assert num.dtype == idx.dtype == torch.int32
            for b in range(B):
                for a in range(nqb):
                    part = idx[b, 0, a, :num[b, 0, a]].tolist()
                    whole = fidx[b, 0, a, :fnum[b, 0, a]].tolist()
                    assert part == sorted(part) and whole == sorted(whole)
                    assert whole == torch.nonzero(full[b, a]).flatten().tolist()
                    assert part == torch.nonzero(kept[b, a] & ~full[b, a]).flatten().tolist()
            bm = flex.block_mask(mask, fq, fk)
            assert torch.equal(flex.effective_mask(bm, *mask.shape[1:]), mask)


def test_flex_tile_form_keeps_exactly_the_mask(seed):
    """The tile form of the mask function (tile table + tile of each query and key) gives the
    token mask too: for a step mask, and for it gathered at per-row subsets of queries and keys
    in ascending order (what pruned rows see)."""
    g = torch.Generator().manual_seed(seed)
    pns = PNS[1]
    begin = np.cumsum((0,) + tuple(p * p for p in pns))
    for si in (7, 9):
        M = sparse_step_mask(pns, int(begin[si]), int(begin[si + 1]), 16, 16, 1, 2)
        n, m = M.shape
        tiles = tile_mask(M, 16, 16)
        bm = flex.block_mask(M[None], 32, 32, tiles, torch.arange(n)[None] // 16, torch.arange(m)[None] // 16)
        assert torch.equal(flex.effective_mask(bm, n, m), M[None])
        nk, mk = n // 2, m // 3
        qsel = torch.stack([torch.sort(torch.randperm(n, generator=g)[:nk]).values for _ in range(2)])
        ksel = torch.stack([torch.sort(torch.randperm(m, generator=g)[:mk]).values for _ in range(2)])
        sub = M[qsel.unsqueeze(-1), ksel.unsqueeze(-2)]
        bm = flex.block_mask(sub, 16, 32, tiles, qsel // 16, ksel // 16)
        assert torch.equal(flex.effective_mask(bm, nk, mk), sub)
        # a wrong tile table shows
        bm = flex.block_mask(sub, 16, 32, ~tiles, qsel // 16, ksel // 16)
        assert not torch.equal(flex.effective_mask(bm, nk, mk), sub)
    with pytest.raises(ValueError, match="q_tile"):
        flex.block_mask(M[None], 32, 32, tiles)


def test_flex_block_layout_rejects_bad_parameters():
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    for kw, name in ((dict(flex_q=24), "flex_q"), (dict(flex_k=0), "flex_k"), (dict(flex_q=True), "flex_q")):
        with pytest.raises(ValueError, match=name):
            flex.block_layout(mask, **kw)
    with pytest.raises(ValueError, match="mask"):
        flex.block_layout(mask.float())
    with pytest.raises(ValueError, match="mask"):
        flex.block_layout(mask[0])


# On CPU flex_attention runs its eager reference (the point of the comparison), which warns.
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attend_equals_sdpa_with_the_mask(seed):
    """flex_attend with the BlockMask of a token mask computes SDPA with that boolean mask (CPU:
    flex's eager reference, float64), for a mask shared by the rows and one per row."""
    g = torch.Generator().manual_seed(seed)
    for mask in _flex_masks(seed):
        B = 2 if mask.shape[0] == 1 else mask.shape[0]
        n, m = mask.shape[1:]
        mask = mask.clone()
        mask[..., 0] = True                            # no empty row (SDPA gives NaN there)
        q, k, v = (torch.randn(B, 3, L, 8, generator=g, dtype=torch.float64) for L in (n, m, m))
        got = flex.flex_attend(q, k, v, flex.block_mask(mask, 16, 32), 0.3)
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1), scale=0.3)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
        # a different mask gives a different result: the mask is really applied
        other = flex.flex_attend(q, k, v, flex.block_mask(torch.ones_like(mask), 16, 32), 0.3)
        assert mask.all() or not torch.allclose(other, ref)


def test_hooks_flex_kernel_matches_sdpa():
    """The fast path with the flex kernel (CPU: eager flex) gives the SDPA kernel's logits up to
    rounding and the same op counts, in steps with one mask for all rows (sparse) and with a
    mask per row (pruned key caches), and really runs flex there."""
    cfg, var = _small_model()
    for spec in ("sparse", "fastvar,sparse", "parallel,sparse"):
        runs = []
        for kernel in ("sdpa", "flex"):
            hooks = AcceleratedHooks(cfg, spec, attn_kernel=kernel, flex_block=16, flex_min_queries=0,
                                     flex_rows=True)
            rec = RunRecord()
            accelerated_infer(var, **KW, hooks=hooks, record=rec)
            runs.append((rec, hooks))
        (a, ha), (b, hb) = runs
        assert ha.kernel_calls["flex"] == 0 and ha.kernel_calls["sdpa"] > 0
        assert hb.kernel_calls["sdpa"] == 0 and hb.kernel_calls["flex"] == ha.kernel_calls["sdpa"]
        # one scale per step: the tile form; two scales in one step (parallel decoding): the
        # block-causal rule cuts tiles, so the token mask
        assert (hb.kernel_calls["flex_token_fn"] > 0) == spec.startswith("parallel"), spec
        assert ha.counter.steps == hb.counter.steps, spec
        assert all(torch.equal(x, y) for x, y in zip(a.ids, b.ids)), spec
        for x, y in zip(a.logits, b.logits):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="attn_kernel"):
        AcceleratedHooks(cfg, "sparse", attn_kernel="triton")
    with pytest.raises(ValueError, match="flex_block"):
        AcceleratedHooks(cfg, "sparse", flex_block=256)
    with pytest.raises(ValueError, match="flex_min_queries"):
        AcceleratedHooks(cfg, "sparse", flex_min_queries=-1)


def test_hooks_flex_policy():
    """Which masked attention calls go to flex: none in steps under flex_min_queries queries, and
    per-row masks (pruned key caches) only with flex_rows; the rest through SDPA."""
    cfg, var = _small_model()

    def calls(spec, **kw):
        hooks = AcceleratedHooks(cfg, spec, attn_kernel="flex", flex_block=16, **kw)
        accelerated_infer(var, **KW, hooks=hooks, record=RunRecord())
        return hooks.kernel_calls["flex"], hooks.kernel_calls["sdpa"]

    # sparse masks at the 4x4, 6x6 and 8x8 steps (16, 36, 64 queries), one call per block
    D = cfg.depth
    assert calls("sparse", flex_min_queries=0) == (3 * D, 0)
    assert calls("sparse", flex_min_queries=36) == (2 * D, D)
    assert calls("sparse", flex_min_queries=65) == (0, 3 * D)
    # fastvar prunes the 6x6 and 8x8 steps in every block here: their masks differ per row
    assert calls("fastvar,sparse", flex_min_queries=0, flex_rows=True) == (3 * D, 0)
    assert calls("fastvar,sparse", flex_min_queries=0, flex_rows=False) == (D, 2 * D)
