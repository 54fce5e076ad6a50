"""AcceleratedHooks: every technique of golden/accel as a switch on one golden.model hooks object,
and OpCounter, the per-step operation counts.

All techniques act in autoregressive ("ar") steps; in teacher forcing ("tf") only the linear
quantization and the q/k/v fake quantization apply. Definitions (ours; the published VAR-Turbo
algorithms are not public):

Token subsets. Pruning, aggregation and bypass make a block see a per-row subset of the step's
tokens. The subset of each row is gathered in ascending position order and rows are padded to a
common length; pads are never visible as keys, their outputs are discarded and no op is counted
for them. A block's KV cache therefore holds only the tokens it ran on (positions tracked per
block), so a later scale attends to what earlier scales kept, as in FastVAR.

FastVAR cached token pruning (block hook, blocks ``prune_blocks``, scales with keep ratio r < 1).
    For each scale map of n tokens in the step and each batch row: pivot score of token t =
    ``sum_c (x_tc - mean_t' x_t'c)^2`` (float32, on the block input); ``n_keep = n - floor(n (1 - r))``
    tokens with the largest scores are kept, selected by ``golden.numerics.sort.topk`` on
    ``float_to_key`` keys (ties to the lower index). The block runs on the kept tokens; their
    queries attend to the block's whole KV cache (earlier scales as stored) plus the kept tokens
    of the current scale. A pruned token's output is ``x_t + up(D_b)_t``, where ``D_b`` (rows, C,
    p, p) is the block's update map ``block(x) - x`` at the last scale where block b ran without
    pruning, and ``up`` is area interpolation to the current side. This equals FastVAR's restoring
    of the attention and FFN branch outputs from the cache (both come from the cache for a pruned
    token); FastVAR re-selects tokens before the FFN, we select once per block. The cache is not
    updated at pruned scales (FastVAR keeps the last unpruned scale's). No cache yet: identity.

Token aggregation (block hook, last ``agg_last`` scales, blocks ``agg_layers``).
    Each map is tiled in ``agg_window`` x ``agg_window`` windows; the window's top-left token is
    its representative. Token t (not a representative) joins it when both are in the block's
    subset and ``cos(x_t, x_rep) = <x_t/|x_t|, x_rep/|x_rep|> > agg_threshold`` (dot products of
    L2-normalised tokens, as the attention core computes them). The representative enters the
    block with the mean of its group; members do not enter it. Un-merge copies the update back:
    every member of a group of two or more (representative included) gets ``x_t + (y_rep -
    mean)``; singletons get their own block output.

Dynamic bypass (block hook, last ``bypass_last`` scales).
    After block b >= ``floor(bypass_from_layer * depth)``, a token that ran through it with a
    relative update ``|y_t - x_t|_2 / |x_t|_2 < bypass_threshold`` skips blocks b+1 .. depth-1
    of this step (its output is its input; it adds no keys to those blocks' caches).

Block-sparse attention (attend hook). The mask of :mod:`golden.accel.sparse` (tiles over the
dense layout of the step, expanded to tokens) is gathered at the positions of the queries and
keys actually present, and intersected with the key validity (pads) and the block-causal rule.
A query row left with no key (only possible for pad rows) falls back to the sink keys.
On a GPU the fast path computes it with flex_attention and a block mask that keeps exactly
these pairs (:mod:`golden.accel.flex`), so empty tiles cost nothing; the general path, the
reference, passes the boolean mask to SDPA, which computes every tile.

Low-bit FP (linear hook): ``y = mx_matmul(x, W, fmt, fmt, block) + bias`` (float64 exact result,
then float32). Dual format for ``ffn.fc2``: ``mx_matmul(x-, W, e1m2, fmt) + mx_matmul(x+, W,
e2m1, fmt)`` with x- = min(x, 0), x+ = max(x, 0), i.e. ``dual_quantize`` streams into one exact
accumulation. Group Hadamard: ``mx_matmul(group_hadamard(x), fold_hadamard_into_weight(W))``
where the group divides K (not on a dual-format input). Attention: q, k, v fake-quantized
(``mx_dequantize(mx_quantize(.))`` along the head dim) in ``quant_attn``.

Counting (per forward pass, in "ar" mode; totals over the 2B CFG rows): tokens that went
through each block, linear MACs (rows x in x out, for every hooked linear incl. AdaLN and
head), attention MACs (2 x head_dim x heads x pairs in kept tiles; tiles of ``block_q`` x
``block_k`` over each row's compacted query and key sequences), tiles kept / total, sort-core
calls (one per row of pivot scores, one per sampled token row with hardware sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from golden.model.hooks import VARHooks
from golden.numerics import attention as attn_num
from golden.numerics import fp
from golden.numerics import sort as hsort

from .backend import CoreBackend, core_tile_mask
from .config import AccelConfig
from . import flex as flexattn
from .sparse import expand_tiles, step_mask, tile_mask, token_tables

__all__ = ["AcceleratedHooks", "OpCounter", "StepStats", "pivot_scores", "select_pivots",
           "select_pivots_reference"]


# ---------------------------------------------------------------------------------- counting
@dataclass
class StepStats:
    """Counts of one forward pass (one sequential step) covering ``scales``."""
    scales: Tuple[int, ...]
    rows: int
    tokens: List[int]
    linear_macs: int = 0
    attn_macs: int = 0
    attn_tiles_kept: int = 0
    attn_tiles_total: int = 0
    sort_calls: int = 0

    @property
    def macs(self) -> int:
        return self.linear_macs + self.attn_macs


@dataclass
class OpCounter:
    """Per-step operation counts (see the module docstring)."""
    depth: int
    steps: List[StepStats] = field(default_factory=list)

    def begin(self, scales, rows) -> StepStats:
        self.steps.append(StepStats(tuple(scales), int(rows), [0] * self.depth))
        return self.steps[-1]

    @property
    def current(self) -> Optional[StepStats]:
        return self.steps[-1] if self.steps else None

    def reset(self) -> None:
        self.steps.clear()

    def totals(self) -> Dict[str, float]:
        s = self.steps
        tot = {
            "steps": len(s),
            "tokens": sum(sum(x.tokens) for x in s),
            "linear_macs": sum(x.linear_macs for x in s),
            "attn_macs": sum(x.attn_macs for x in s),
            "attn_tiles_kept": sum(x.attn_tiles_kept for x in s),
            "attn_tiles_total": sum(x.attn_tiles_total for x in s),
            "sort_calls": sum(x.sort_calls for x in s),
        }
        tot["macs"] = tot["linear_macs"] + tot["attn_macs"]
        tot["tile_density"] = tot["attn_tiles_kept"] / tot["attn_tiles_total"] if tot["attn_tiles_total"] else 1.0
        return tot

    def per_scale_table(self) -> str:
        lines = [f"{'scales':>8} {'tokens/block':>24} {'lin MMAC':>9} {'attn MMAC':>9} {'tiles':>11} {'sorts':>6}"]
        for x in self.steps:
            sc = ",".join(str(i) for i in x.scales)
            tk = "/".join(str(t) for t in x.tokens)
            lines.append(f"{sc:>8} {tk:>24} {x.linear_macs / 1e6:9.3f} {x.attn_macs / 1e6:9.3f} "
                         f"{x.attn_tiles_kept:>5}/{x.attn_tiles_total:<5} {x.sort_calls:>6}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------- pruning
def pivot_scores(x_RnC: torch.Tensor) -> torch.Tensor:
    """FastVAR pivot score per token: squared L2 distance to the mean token of its row, float32 (R, n)."""
    xf = x_RnC.float()
    return (xf - xf.mean(dim=1, keepdim=True)).square().sum(dim=-1)


def select_pivots_reference(scores_Rn: torch.Tensor, n_keep: int) -> torch.Tensor:
    """:func:`select_pivots` through the sort core's bit-exact radix model (the definition)."""
    return hsort.topk(hsort.float_to_key(scores_Rn.float().contiguous()), int(n_keep), sorted=False)


def select_pivots(scores_Rn: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices (R, n_keep), ascending, of the n_keep largest scores per row (sort-core top-k,
    ties to the lower index).

    Same result as :func:`select_pivots_reference` (tests/test_accel.py compares them on random,
    tied, constant, signed-zero and NaN scores), in a few kernels and without host syncs: the
    radix model runs one small kernel per digit and checks key ranges on the host. A stable
    descending sort of the same order-preserving keys puts ties in ascending index order, so its
    first n_keep entries are exactly the radix select's set (every key above the threshold plus
    the lowest-index ties); sorting those indices gives the core's unordered (index-order) output."""
    n_keep = int(n_keep)
    keys = hsort.float_to_key(scores_Rn.float().contiguous())
    if not 0 <= n_keep <= keys.shape[-1]:
        raise ValueError(f"k must be an integer in [0, {keys.shape[-1]}] (the row length), got {n_keep!r}")
    top = torch.sort(keys, dim=-1, descending=True, stable=True).indices[..., :n_keep]
    return torch.sort(top, dim=-1).values


def n_keep_for(n: int, ratio: float) -> int:
    return n - int(math.floor(n * (1.0 - ratio) + 1e-9))


def _fake_quant(t: torch.Tensor, fmt: str) -> torch.Tensor:
    c = t.shape[-1]
    block = math.gcd(c, 32)
    codes, scales = fp.mx_quantize(t.float(), fmt, block)
    return fp.mx_dequantize(codes, scales, fmt, block).to(t.dtype)


# ---------------------------------------------------------------------------------- hooks
class AcceleratedHooks(VARHooks):
    """Hooks for ``var.autoregressive_infer_cfg(hooks=...)`` (techniques 1, 2, 3, 5) or for
    :func:`golden.accel.infer.accelerated_infer` (all, incl. parallel decoding and hardware
    sampling). ``accel``: an AccelConfig or a spec string for :meth:`AccelConfig.parse`.
    ``tap``: optional recorder (:class:`golden.taps.TapRecorder`). ``backend``: where core
    operations run (:class:`golden.accel.backend.CoreBackend`, golden/numerics, by default). State
    is reset at the first block of scale 0, so one object serves several generations; ``counter``
    accumulates.

    ``fast`` (default True) takes shortcuts that give the same outputs and counts as the general
    code (``fast=False``, kept as the reference; tests/test_accel.py compares the two bit for
    bit): a block whose token set is known without looking at the data (no technique acts on
    it, or pruning alone with its fixed n_keep per row) skips the per-row bookkeeping; its
    attention mask, when it depends only on the step, is built and counted once per step
    instead of once per block; pivots come from a stable sort instead of the radix model; and
    no host sync is made where the answer is known from the schedule. On a GPU these host syncs
    and small kernels, not the arithmetic, made the accelerated runs slower than dense.

    ``attn_kernel`` picks the kernel of the fast path's masked attention: "sdpa" (a boolean
    mask through ``F.scaled_dot_product_attention``, every tile computed: bit for bit the
    general path), "flex" (block-sparse ``flex_attention``, :mod:`golden.accel.flex`; same kept
    pairs, other rounding; eager and dense on a CPU, for tests) or "auto" (default: flex where
    the tensors are on a GPU, else sdpa). Where flex is chosen it still serves only steps with
    at least ``flex_min_queries`` queries, and masks that differ between rows (pruned key
    caches) only with ``flex_rows``. ``flex_block``: flex's block side in tokens (kernel tiles
    of that size below 128).

    The defaults are measured (H200, d30 at 1024 px, ``python -m golden.bench.gpu
    --kernel-check``): with 64-token blocks flex beats unmasked flash SDPA at the last step
    (0.86 against 1.54 ms) and the boolean-mask SDPA from 1296 queries on (0.39 against 0.52
    ms), while 128-token blocks lose (3.5 ms at the last step: the mask function's cost grows
    with the tile); below about a thousand queries a step is bound by host time, where flex's
    call costs more than SDPA's. A per-row mask needs a BlockMask per block, which made
    fastvar+sparse slower end to end (0.71x of dense with it, 0.83x to 0.89x with SDPA)."""

    def __init__(self, cfg_var, accel=None, counter: Optional[OpCounter] = None, tap=None, backend=None,
                 fast: bool = True, attn_kernel: str = "auto", flex_block: int = 64, flex_min_queries: int = 1024,
                 flex_rows: bool = False):
        self.vcfg = cfg_var
        self.backend = backend if backend is not None else CoreBackend()
        self.acfg = AccelConfig.parse(accel, cfg_var)
        self.counter = counter if counter is not None else OpCounter(cfg_var.depth)
        self.tap = tap
        self.fast = bool(fast)
        if attn_kernel not in ("auto", "sdpa", "flex"):
            raise ValueError(f"attn_kernel={attn_kernel!r} must be one of 'auto', 'sdpa', 'flex'")
        if not isinstance(flex_block, int) or isinstance(flex_block, bool) or flex_block < 16 \
                or flex_block > 128 or flex_block % 16:
            raise ValueError(f"flex_block={flex_block!r} must be a multiple of 16 in [16, 128]")
        if not isinstance(flex_min_queries, int) or isinstance(flex_min_queries, bool) or flex_min_queries < 0:
            raise ValueError(f"flex_min_queries={flex_min_queries!r} must be an integer >= 0")
        self.attn_kernel = attn_kernel
        self.flex_block = flex_block
        self.flex_min_queries = flex_min_queries
        self.flex_rows = bool(flex_rows)
        # flex picks its own kernel tile for the default 128-token blocks; a smaller block needs
        # a kernel tile no larger than itself
        self._flex_options = None if flex_block == 128 else {"BLOCK_M": flex_block, "BLOCK_N": flex_block}
        # number of masked attention calls per kernel in the fast path, for the benchmark
        # ("flex_token_fn": flex calls whose mask function reads the token mask, not the tiles)
        self.kernel_calls = {"sdpa": 0, "flex": 0, "flex_token_fn": 0}
        self.patch_nums = tuple(cfg_var.patch_nums)
        self.SN = len(self.patch_nums)
        self.depth = cfg_var.depth
        self.lvl_L = token_tables(self.patch_nums)[0]
        self._prune_blocks = self.acfg.prune_blocks(self.depth)
        self._folded: Dict[str, torch.Tensor] = {}
        # per-step attention data of the fast path; depends only on the config and the step
        self._step_attn_cache: Dict[tuple, tuple] = {}
        self._step_flex_cache: Dict[tuple, object] = {}
        self.reset()

    def reset(self) -> None:
        # Key positions of each block's KV cache. While a block's keys are exactly positions
        # 0 .. L0-1 in every row (no technique has dropped one), only L0 is kept (_kident) and
        # the (rows, L0) tensor is built on demand (_kpos_tensor).
        self.kpos: Dict[int, torch.Tensor] = {}
        self._kident: Dict[int, int] = {}
        self._kpad: Dict[int, bool] = {}
        self.delta_cache: Dict[int, torch.Tensor] = {}
        self.skip: Optional[torch.Tensor] = None
        self._cur = None

    # --------------------------------------------------------------- helpers
    def _segments(self, q_begin: int, q_end: int):
        """(si, pn, offset within the step, n) of each scale map in positions [q_begin, q_end)."""
        out, pos = [], 0
        for si, pn in enumerate(self.patch_nums):
            if pos >= q_end:
                break
            if pos >= q_begin:
                out.append((si, pn, pos - q_begin, pn * pn))
            pos += pn * pn
        return out

    def _begin_step(self, ctx, R):
        if ctx.q_begin == 0:
            self.reset()
        self.skip = None
        segs = self._segments(ctx.q_begin, ctx.q_end)
        self.counter.begin([s[0] for s in segs], R)

    def _kpos_tensor(self, b: int, R: int) -> Optional[torch.Tensor]:
        """Key positions (R, keys) of block b's KV cache (-1 = pad), None when it is empty."""
        if b in self._kident:
            return torch.arange(self._kident[b]).expand(R, -1)
        return self.kpos.get(b)

    def _kv_append(self, b: int, ctx, R: int, run_pos: Optional[torch.Tensor] = None, pads: bool = False):
        """Record the positions of the tokens block b runs on (they join its KV cache).
        ``run_pos`` None: every position of the step, in order."""
        if run_pos is None and self.fast and b not in self.kpos and self._kident.get(b, 0) == ctx.q_begin:
            self._kident[b] = ctx.q_end
            return
        if run_pos is None:
            run_pos = torch.arange(ctx.q_begin, ctx.q_end).expand(R, -1)
        prev = self._kpos_tensor(b, R)
        self.kpos[b] = run_pos if prev is None else torch.cat((prev, run_pos), 1)
        self._kident.pop(b, None)
        self._kpad[b] = self._kpad.get(b, False) or pads

    def _agg_in_block(self, segs, b: int) -> bool:
        a = self.acfg
        return any(a.agg_applies(si, b, self.SN, self.depth) and n > 1 for si, _, _, n in segs)

    # --------------------------------------------------------------- block
    def block(self, block, x_BLC, cond_BD, attn_bias, ctx, run):
        if ctx.mode != "ar":
            return run(x_BLC, attn_bias)
        b = ctx.block_idx
        R, l, C = x_BLC.shape
        if b == 0:
            self._begin_step(ctx, R)
        segs = self._segments(ctx.q_begin, ctx.q_end)
        # The fast path covers blocks whose token subset does not depend on the data beyond the
        # pivot top-k: no bypass decision yet in this step and no aggregation in this block.
        if self.fast and self.skip is None and not self._agg_in_block(segs, b):
            out = self._block_fast(x_BLC, attn_bias, ctx, run, segs)
            if out is not None:
                return out
        return self._block_general(x_BLC, attn_bias, ctx, run, segs)

    def _block_fast(self, x_BLC, attn_bias, ctx, run, segs):
        """The general path's result for a block where every row runs the same number of tokens
        (all of them, or the pivots of pruned maps): no per-row bookkeeping, no host sync.
        Returns None (use the general path) where that does not hold."""
        b = ctx.block_idx
        R, l, C = x_BLC.shape
        st = self.counter.current
        a = self.acfg
        prune = []
        if b in self._prune_blocks:
            for si, pn, off, n in segs:
                nk = n_keep_for(n, a.prune_ratio(si, self.SN))
                if nk < n:
                    prune.append((si, nk))
        if any(nk < 1 for _, nk in prune):
            return None                      # a map pruned to nothing: rows get pads
        pruned_segs = {si for si, _ in prune}
        order = None
        if not prune:
            # every token runs: the general path's dense_path, positions in step order
            self._cur = dict(qpos=None, n=l, real=R * l, ctx=ctx, ident=True, pads=False)
            self._kv_append(b, ctx, R)
            st.tokens[b] += R * l
            out = run(x_BLC, attn_bias)
        else:
            nk_of = dict(prune)
            parts = []
            for si, pn, off, n in segs:
                if si in nk_of:
                    scores = pivot_scores(x_BLC[:, off:off + n])
                    keep = select_pivots(scores, nk_of[si])
                    st.sort_calls += R
                    if self.tap is not None:
                        self.tap.on_scores(ctx, si, b, scores, keep)
                    parts.append(keep + off)
                else:
                    parts.append(torch.arange(off, off + n, device=x_BLC.device).expand(R, n))
            # kept tokens of every row in ascending position order, as the general path's
            # stable argsort of the active mask gives them; every row has the same count
            order = torch.cat(parts, 1)
            n_run = order.shape[1]
            run_pos = order + ctx.q_begin
            self._cur = dict(qpos=run_pos, n=n_run, real=R * n_run, ctx=ctx, ident=False, pads=False)
            self._kv_append(b, ctx, R, run_pos, pads=False)
            st.tokens[b] += R * n_run
            idx = order.unsqueeze(-1).expand(R, n_run, C)
            y_run = run(x_BLC.gather(1, idx), None)
            out = x_BLC.clone()
            # pruned tokens: x + up(D_b) (identity without a cache); kept ones are overwritten below
            if b in self.delta_cache:
                for si, pn, off, n_s in segs:
                    if si in pruned_segs:
                        up = F.interpolate(self.delta_cache[b], size=(pn, pn), mode="area")
                        out[:, off:off + n_s] = x_BLC[:, off:off + n_s] + up.flatten(2).transpose(1, 2)
            out.scatter_(1, idx, y_run.to(out.dtype))
        self._cur = None
        self._after_block(x_BLC, out, ctx, segs, pruned_segs, order=order)
        return out

    def _after_block(self, x_BLC, out, ctx, segs, pruned_segs, order=None, ran=None, grouped=None):
        """Update-map cache for pruning and bypass decisions (shared by both paths). The fast
        path gives ``order`` (kept tokens, or None when all ran); the general one ``ran`` and
        ``grouped``."""
        b = ctx.block_idx
        R, l, C = x_BLC.shape
        a = self.acfg
        # update-map cache for pruning (only at scales this block ran unpruned)
        if b in self._prune_blocks:
            for si, pn, off, n_s in segs:
                if si not in pruned_segs:
                    self.delta_cache[b] = (out[:, off:off + n_s] - x_BLC[:, off:off + n_s]) \
                        .transpose(1, 2).reshape(R, C, pn, pn).clone()
        # bypass decisions for the following blocks
        if a.bypass and b >= a.bypass_first_block(self.depth) and b < self.depth - 1:
            applies_segs = [(off, n_s) for si, pn, off, n_s in segs if a.bypass_applies(si, self.SN)]
            if self.fast and not applies_segs:
                return                       # nothing newly bypassed: skip | False == skip
            if ran is None:
                if order is None:
                    ran = torch.ones(R, l, dtype=torch.bool)
                else:
                    ran = torch.zeros(R, l, dtype=torch.bool).scatter_(1, order, True)
            if grouped is not None:
                ran = ran | grouped
            rel = (out - x_BLC).float().norm(dim=-1) / x_BLC.float().norm(dim=-1).clamp_min(1e-12)
            applies = torch.zeros(R, l, dtype=torch.bool)
            for off, n_s in applies_segs:
                applies[:, off:off + n_s] = True
            newly = ran & applies & (rel < a.bypass_threshold)
            self.skip = newly if self.skip is None else (self.skip | newly)

    def _block_general(self, x_BLC, attn_bias, ctx, run, segs):
        """Any token subsets (pruning, aggregation, bypass together): the reference path."""
        b = ctx.block_idx
        R, l, C = x_BLC.shape
        st = self.counter.current
        qpos = torch.arange(ctx.q_begin, ctx.q_end)
        a = self.acfg
        sel_pivots = select_pivots if self.fast else select_pivots_reference

        active = torch.ones(R, l, dtype=torch.bool) if self.skip is None else ~self.skip
        pruned = torch.zeros(R, l, dtype=torch.bool)
        pruned_segs = set()
        if b in self._prune_blocks:
            for si, pn, off, n in segs:
                nk = n_keep_for(n, a.prune_ratio(si, self.SN))
                if nk >= n:
                    continue
                scores = pivot_scores(x_BLC[:, off:off + n])
                keep = sel_pivots(scores, nk)
                kept = torch.zeros(R, n, dtype=torch.bool).scatter_(1, keep, True)
                pruned[:, off:off + n] = ~kept
                pruned_segs.add(si)
                st.sort_calls += R
                if self.tap is not None:
                    self.tap.on_scores(ctx, si, b, scores, keep)
        active &= ~pruned

        # aggregation: rep_idx (l,) local index of each token's representative; merged (R, l)
        x_in = x_BLC
        member = torch.zeros(R, l, dtype=torch.bool)
        grouped = torch.zeros(R, l, dtype=torch.bool)
        rep_idx = torch.arange(l)
        for si, pn, off, n in segs:
            if not a.agg_applies(si, b, self.SN, self.depth) or n == 1:
                continue
            w = a.agg_window
            i, j = torch.arange(n) // pn, torch.arange(n) % pn
            rep_local = (i // w * w) * pn + (j // w * w)
            rep = rep_local + off
            rep_idx[off:off + n] = rep
            xs = x_BLC[:, off:off + n].float()
            xn = F.normalize(xs, dim=-1)
            cos = (xn * xn[:, rep_local]).sum(-1)
            act = active[:, off:off + n]
            mem = act & act[:, rep_local] & (rep_local != torch.arange(n)) & (cos > a.agg_threshold)
            member[:, off:off + n] = mem
        any_member = bool(member.any())
        if any_member:
            cnt = torch.ones(R, l).index_put_((torch.arange(R).unsqueeze(1).expand(R, l)[member],
                                               rep_idx.expand(R, l)[member]),
                                              torch.ones(int(member.sum())), accumulate=True)
            summed = x_BLC.clone()
            summed.index_put_((torch.arange(R).unsqueeze(1).expand(R, l)[member], rep_idx.expand(R, l)[member]),
                              x_BLC[member], accumulate=True)
            is_rep_grp = cnt > 1
            x_in = torch.where(is_rep_grp.unsqueeze(-1), summed / cnt.unsqueeze(-1), x_BLC)
            grouped = member | is_rep_grp
            active = active & ~member

        dense_path = bool(active.all()) and not any_member
        if dense_path:
            run_pos = qpos.expand(R, l)
            self._cur = dict(qpos=run_pos, n=l, real=R * l, ctx=ctx, ident=True, pads=False)
            self._kv_append(b, ctx, R)
            st.tokens[b] += R * l
            out = run(x_BLC, None if attn_bias is None else attn_bias)
            y_tok = out
        else:
            counts = active.sum(1)
            counts_l = counts.tolist()       # one host sync for the max, the sum and the pads
            n = max(1, max(counts_l))
            order = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :n]
            valid = torch.arange(n).unsqueeze(0) < counts.unsqueeze(1)
            run_pos = torch.where(valid, qpos[order], torch.full_like(order, -1))
            pads = min(counts_l) < n
            self._cur = dict(qpos=run_pos, n=n, real=sum(counts_l), ctx=ctx, ident=False, pads=pads)
            self._kv_append(b, ctx, R, run_pos, pads=pads)
            st.tokens[b] += sum(counts_l)
            x_run = x_in.gather(1, order.unsqueeze(-1).expand(R, n, C))
            y_run = run(x_run, None)
            out = x_BLC.clone()
            y_tok = torch.zeros_like(x_BLC)
            if self.fast:
                # all rows at once: the (row, position) pairs of real tokens are distinct
                rows = torch.arange(R).unsqueeze(1).expand(R, n)[valid]
                sel = order[valid]
                y_val = y_run[valid]
                y_tok[rows, sel] = y_val
                out[rows, sel] = y_val
            else:
                for r in range(R):
                    sel = order[r, valid[r]]
                    y_tok[r, sel] = y_run[r, valid[r]]
                    out[r, sel] = y_run[r, valid[r]]
            # pruned tokens: restore from the cached update map of this block
            for si, pn, off, n_s in segs:
                if si not in pruned_segs or b not in self.delta_cache:
                    continue
                up = F.interpolate(self.delta_cache[b], size=(pn, pn), mode="area")
                up = up.flatten(2).transpose(1, 2)
                pm = pruned[:, off:off + n_s]
                if self.skip is not None:      # a bypassed token stays the identity
                    pm = pm & ~self.skip[:, off:off + n_s]
                seg = out[:, off:off + n_s]
                out[:, off:off + n_s] = torch.where(pm.unsqueeze(-1), x_BLC[:, off:off + n_s] + up, seg)
            # un-merge: copy the representative's update back to its group
            if any_member:
                upd = y_tok.gather(1, rep_idx.expand(R, l).unsqueeze(-1).expand(R, l, C)) \
                    - x_in.gather(1, rep_idx.expand(R, l).unsqueeze(-1).expand(R, l, C))
                out = torch.where(grouped.unsqueeze(-1), x_BLC + upd, out)
        self._cur = None
        ran = torch.ones(R, l, dtype=torch.bool) if dense_path else active
        self._after_block(x_BLC, out, ctx, segs, pruned_segs, ran=ran, grouped=grouped)
        return out

    # --------------------------------------------------------------- attention
    def attend(self, attn, q, k, v, attn_bias, ctx):
        a = self.acfg
        if a.quant_attn:
            q, k, v = (_fake_quant(t, a.quant_attn) for t in (q, k, v))
        if ctx.mode != "ar" or self._cur is None:
            if self.tap is not None and ctx.mode == "ar":
                self.tap.on_attend(ctx, q, k, v, None)
            return attn.dense_attend(q, k, v, attn_bias)
        if self.fast and self.tap is None and not a.attn_core_applies(ctx.si, ctx.block_idx, self.SN):
            out = self._attend_fast(attn, q, k, v, ctx)
            if out is not None:
                return out
        R, H, n, c = q.shape
        qpos = self._cur["qpos"]
        if qpos is None:
            qpos = torch.arange(ctx.q_begin, ctx.q_end).expand(R, -1)
        kpos = self._kpos_tensor(ctx.block_idx, R)
        if kpos.shape[1] != k.shape[2]:
            raise RuntimeError(f"block {ctx.block_idx}: KV cache holds {k.shape[2]} keys, positions of "
                               f"{kpos.shape[1]} tracked (were the hooks swapped mid-generation?)")
        vq, vk = qpos >= 0, kpos >= 0
        qp, kp = qpos.clamp_min(0), kpos.clamp_min(0)
        if a.sparse:
            M = step_mask(self.patch_nums, ctx.q_begin, ctx.q_end, a.block_q, a.block_k, a.window, a.sink_scales)
            # a pad query (position -1) reads the row of the step's first position; its output
            # is discarded (without the clamp, -q_begin indexed out of range or wrapped around)
            allowed = M[(qp - ctx.q_begin).clamp_min(0).unsqueeze(-1), kp.unsqueeze(-2)]
        else:
            allowed = self.lvl_L[kp].unsqueeze(-2) <= self.lvl_L[qp].unsqueeze(-1)
        allowed = allowed & vk.unsqueeze(-2)
        empty = ~allowed.any(-1)
        if empty.any():
            sink = vk & (self.lvl_L[kp] < max(1, a.sink_scales))
            allowed = allowed | (empty.unsqueeze(-1) & sink.unsqueeze(-2))
            allowed[..., 0] |= ~allowed.any(-1)
        self._count_attention(allowed, vq, vk, H, c)
        if self.tap is not None:
            self.tap.on_attend(ctx, q, k, v, allowed, qpos, kpos)
        if a.attn_core_applies(ctx.si, ctx.block_idx, self.SN):
            return self._core_attend(attn, q, k, v, allowed, ctx)
        if bool(allowed.all()):
            return attn.dense_attend(q, k, v, None)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1), dropout_p=0.0,
                                              scale=attn.scale)

    def _step_attn(self, ctx, device):
        """Mask (n, q_end) of a step whose queries are its positions in order and whose keys are
        positions 0 .. q_end-1 (what the general path gathers for every block), whether it is all
        True, whether a row is empty, and its tile counts (pairs, kept, total) for one row."""
        key = (ctx.q_begin, ctx.q_end, str(device))
        hit = self._step_attn_cache.get(key)
        if hit is None:
            M = self._step_mask_cpu(ctx).to(device)
            hit = (M, bool(M.all()), bool((~M.any(-1)).any())) + self._tile_pairs(M)
            self._step_attn_cache[key] = hit
        return hit

    def _step_mask_cpu(self, ctx):
        a = self.acfg
        if a.sparse:
            return step_mask(self.patch_nums, ctx.q_begin, ctx.q_end, a.block_q, a.block_k, a.window,
                             a.sink_scales)
        lvl = self.lvl_L
        return lvl[:ctx.q_end].unsqueeze(0) <= lvl[ctx.q_begin:ctx.q_end].unsqueeze(1)

    def _flex_step(self, ctx, device):
        """Per step, for flex: the step's tile table on ``device`` when the step mask is exactly
        its tiles expanded (one scale per step: the block-causal rule keeps every key), else
        None (the mask function then reads the token mask); and the step's BlockMask once built."""
        key = (ctx.q_begin, ctx.q_end, str(device))
        hit = self._step_flex_cache.get(key)
        if hit is None:
            a = self.acfg
            M = self._step_mask_cpu(ctx)
            tiles = tile_mask(M, a.block_q, a.block_k)
            exact = torch.equal(expand_tiles(tiles, M.shape[0], M.shape[1], a.block_q, a.block_k), M)
            hit = self._step_flex_cache[key] = {"tiles": tiles.to(device) if exact else None, "bm": None}
        return hit

    def _flex_mask(self, allowed, tiles, qpos_in_step, kpos):
        """BlockMask of ``allowed`` (B, n, m); in tile form when the step has a tile table
        (``allowed[b, i, j] = tiles[qpos_in_step[b, i] // block_q, kpos[b, j] // block_k]``)."""
        a, fb = self.acfg, self.flex_block
        if tiles is None:
            self.kernel_calls["flex_token_fn"] += 1
            return flexattn.block_mask(allowed, fb, fb)
        return flexattn.block_mask(allowed, fb, fb, tiles, torch.div(qpos_in_step, a.block_q, rounding_mode="floor")
                                   .to(torch.int32), torch.div(kpos, a.block_k, rounding_mode="floor").to(torch.int32))

    def _attend_fast(self, attn, q, k, v, ctx):
        """The general attend's result without building (rows, queries, keys) masks per block
        where that is known from the step: no pads among queries and keys (then no row is empty:
        a query is always its own key, and the mask allows it). None: use the general path."""
        a = self.acfg
        cur = self._cur
        b = ctx.block_idx
        R, H, n, c = q.shape
        m = k.shape[2]
        if cur["pads"] or self._kpad.get(b, False):
            return None
        kident = self._kident.get(b)
        if cur["ident"] and kident is not None:
            if kident != m:
                raise RuntimeError(f"block {b}: KV cache holds {m} keys, positions of {kident} tracked "
                                   f"(were the hooks swapped mid-generation?)")
            M, all_true, has_empty, pairs, kept, total = self._step_attn(ctx, q.device)
            if has_empty:
                return None
            st = self.counter.current
            st.attn_macs += R * 2 * H * c * pairs        # every row has the same mask
            st.attn_tiles_kept += R * kept
            st.attn_tiles_total += R * total
            if all_true:
                return attn.dense_attend(q, k, v, None)
            if self._use_flex(q, n):
                fs = self._flex_step(ctx, q.device)
                if fs["bm"] is None:      # one block mask per step, shared by every block and row
                    fs["bm"] = self._flex_mask(M.unsqueeze(0), fs["tiles"], torch.arange(n, device=q.device)[None],
                                               torch.arange(m, device=q.device)[None])
                return self._flex(q, k, v, fs["bm"], attn)
            return self._sdpa(q, k, v, M.expand(R, 1, n, m), attn)
        single_scale = len(self._segments(ctx.q_begin, ctx.q_end)) == 1
        if not a.sparse and single_scale:
            # one scale per step: every cached key is of this scale or an earlier one, so the
            # block-causal mask is all True
            nqb, nkb = -(-n // a.block_q), -(-m // a.block_k)
            st = self.counter.current
            st.attn_macs += R * 2 * H * c * n * m
            st.attn_tiles_kept += R * nqb * nkb
            st.attn_tiles_total += R * nqb * nkb
            return attn.dense_attend(q, k, v, None)
        if not a.sparse:
            return None
        qpos = cur["qpos"] if cur["qpos"] is not None else torch.arange(ctx.q_begin, ctx.q_end).expand(R, -1)
        kpos = self._kpos_tensor(b, R)
        if kpos.shape[1] != m:
            raise RuntimeError(f"block {b}: KV cache holds {m} keys, positions of {kpos.shape[1]} tracked "
                               f"(were the hooks swapped mid-generation?)")
        M = self._step_attn(ctx, q.device)[0]
        allowed = M[(qpos - ctx.q_begin).unsqueeze(-1), kpos.unsqueeze(-2)]
        self._count_attention_rows(allowed, H, c)
        if bool(allowed.all()):
            return attn.dense_attend(q, k, v, None)
        if self.flex_rows and self._use_flex(q, n):
            # rows keep different tokens (pruning is per row): one block mask per block and row
            bm = self._flex_mask(allowed, self._flex_step(ctx, q.device)["tiles"], qpos - ctx.q_begin, kpos)
            return self._flex(q, k, v, bm, attn)
        return self._sdpa(q, k, v, allowed.unsqueeze(1), attn)

    def _use_flex(self, q, n) -> bool:
        return n >= self.flex_min_queries and (self.attn_kernel == "flex" or (self.attn_kernel == "auto" and q.is_cuda))

    def _flex(self, q, k, v, bm, attn):
        self.kernel_calls["flex"] += 1
        return flexattn.flex_attend(q, k, v, bm, attn.scale, self._flex_options)

    def _sdpa(self, q, k, v, mask, attn):
        self.kernel_calls["sdpa"] += 1
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=attn.scale)

    def _core_attend(self, attn, q, k, v, allowed, ctx):
        """Every (row, head) through the backend's attention core (tiles block_q x block_k)."""
        a = self.acfg
        R, H, n, c = q.shape
        nm = attn_num.AttnNumerics(D=c, Br=a.block_q, Bc=a.block_k)
        out = torch.empty(q.shape, dtype=torch.float32)
        for r in range(R):
            tiles = core_tile_mask(allowed[r], a.block_q, a.block_k)
            for h in range(H):
                tag = f"s{ctx.si}.b{ctx.block_idx}.r{r}.h{h}"
                out[r, h] = self.backend.attention(q[r, h], k[r, h], v[r, h], tiles, attn.scale, nm, tag).float()
        return out.to(q.dtype)

    def _tile_pairs(self, al):
        """(token pairs in kept tiles, kept tiles, tiles) of a (queries, keys) mask, summed over
        any leading dims (one host sync)."""
        a = self.acfg
        nq, nk = al.shape[-2:]
        tiles = tile_mask(al, a.block_q, a.block_k)
        rs = torch.full((tiles.shape[-2],), a.block_q, device=tiles.device)
        rs[-1] = nq - a.block_q * (tiles.shape[-2] - 1)
        cs = torch.full((tiles.shape[-1],), a.block_k, device=tiles.device)
        cs[-1] = nk - a.block_k * (tiles.shape[-1] - 1)
        pairs, kept = torch.stack(((tiles * rs.unsqueeze(1) * cs.unsqueeze(0)).sum(), tiles.sum())).tolist()
        return int(pairs), int(kept), tiles.numel()

    def _count_attention_rows(self, allowed, H, c):
        """_count_attention for masks without pads: per-row counts summed in one go (equal to the
        per-row loop, and to R times row 0 when the rows agree)."""
        st = self.counter.current
        pairs, kept, total = self._tile_pairs(allowed)
        st.attn_macs += 2 * H * c * pairs
        st.attn_tiles_kept += kept
        st.attn_tiles_total += total

    def _count_attention(self, allowed, vq, vk, H, c):
        st = self.counter.current
        a = self.acfg
        R = allowed.shape[0]
        uniform = bool(vq.all()) and bool(vk.all()) and bool((allowed == allowed[:1]).all())
        rows = [0] if uniform else range(R)
        for r in rows:
            al = allowed[r][vq[r]][:, vk[r]]
            nq, nk = al.shape
            if nq == 0 or nk == 0:         # every token of this row bypassed: nothing to compute
                continue
            tiles = tile_mask(al, a.block_q, a.block_k)
            rs = torch.full((tiles.shape[0],), a.block_q)
            rs[-1] = nq - a.block_q * (tiles.shape[0] - 1)
            cs = torch.full((tiles.shape[1],), a.block_k)
            cs[-1] = nk - a.block_k * (tiles.shape[1] - 1)
            pairs = int((tiles * rs.unsqueeze(1) * cs.unsqueeze(0)).sum())
            mult = R if uniform else 1
            st.attn_macs += mult * 2 * H * c * pairs
            st.attn_tiles_kept += mult * int(tiles.sum())
            st.attn_tiles_total += mult * tiles.numel()

    # --------------------------------------------------------------- linear
    def _quantized(self, name: str, K: int) -> bool:
        a = self.acfg
        if a.quant is None or K % a.quant_block:
            return False
        if a.quant_scope == "blocks":
            return name.startswith("blocks.") and ".ada_lin." not in name
        return True

    def linear(self, layer, x, bias, ctx):
        name = getattr(layer, "hook_name", "")
        N, K = layer.weight.shape
        if ctx is not None and ctx.mode == "ar" and self.counter.current is not None:
            rows = x.numel() // K
            cur = self._cur
            if cur is not None and x.dim() == 3 and x.shape[1] == cur["n"]:
                rows = cur["real"]
            self.counter.current.linear_macs += rows * K * N
        if self.tap is not None:
            self.tap.on_linear(ctx, layer, x)
        if not self._quantized(name, K):
            return F.linear(x, layer.weight, bias)
        return self.quant_linear(layer, x, bias)

    def quant_linear(self, layer, x, bias):
        """The low-bit FP linear of the module docstring (float32 result)."""
        a = self.acfg
        name = getattr(layer, "hook_name", "")
        w = layer.weight.float()
        K = w.shape[1]
        xf = x.float()
        if a.quant_dual_fc2 and name.endswith("ffn.fc2"):
            zero = torch.zeros((), dtype=xf.dtype)
            y = fp.mx_matmul(torch.where(xf < 0, xf, zero), w, "e1m2", a.quant, a.quant_block) \
                + fp.mx_matmul(torch.where(xf > 0, xf, zero), w, "e2m1", a.quant, a.quant_block)
        else:
            g = a.quant_hadamard
            if g and K % g == 0:
                if name not in self._folded:
                    self._folded[name] = fp.fold_hadamard_into_weight(w.double(), g).float()
                w = self._folded[name]
                xf = fp.group_hadamard(xf, g)
            y = fp.mx_matmul(xf, w, a.quant, a.quant, a.quant_block)
        y = y.to(torch.float32)
        return y if bias is None else y + bias

    # --------------------------------------------------------------- end of scale
    def on_scale_end(self, ctx, out):
        if self.tap is not None:
            self.tap.on_scale_end(ctx, out)
