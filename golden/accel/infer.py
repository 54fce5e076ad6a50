"""accelerated_infer: VAR's KV-cached CFG inference loop with parallel decoding and hardware sampling.

Both need a change of the loop itself, which hooks cannot express, so this driver re-states
``VAR.autoregressive_infer_cfg`` (same operations in the same order, using the model's own
modules and quantizer) and adds:

Parallel decoding (draft-free, ours). With ``parallel_last = P >= 2`` the last P scales
k .. k+P-1 form one step: after scale k-1 (f_hat = f_hat_{k-1}), the input of every scale j of
the group is ``word_embed(area(f_hat_{k-1}, pn_j)) + lvl/pos embedding of j``. For j = k that is
the exact input; for j > k it is the upsampled prediction without the contributions of scales
k .. j-1 (no draft model). All P token maps go through the transformer in one forward pass,
block-causal by scale (a query of scale j sees the cache and group scales <= j); then each
scale's logits are guided with its own t = cfg * j / (SN - 1) and sampled in scale order, and
f_hat is updated scale by scale as usual. Sequential steps: SN - P + 1 instead of SN.

Hardware sampling: ``keep = golden.numerics.sort.topk_topp_mask(logits, min(top_k, V), top_p)``
then ``sort.sample_from_mask`` (one multinomial draw per token row from the same generator).
It draws the same ids as the official sampler wherever the two masks agree.

With no technique on, the result equals ``var.autoregressive_infer_cfg`` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Union

import torch

from golden.model.hooks import ScaleOutput
from golden.model.sampling import sample_with_top_k_top_p_
from golden.numerics import sort as hsort

from .config import AccelConfig
from .hooks import AcceleratedHooks

__all__ = ["RunRecord", "accelerated_infer", "hw_sample"]


@dataclass
class RunRecord:
    """What one generation produced: the image (B, 3, H, W) in [0, 1], per scale the guided
    logits before filtering (B, pn^2, V) and the sampled ids (B, pn^2), and the op counts."""
    image: Optional[torch.Tensor] = None
    logits: List[torch.Tensor] = field(default_factory=list)
    ids: List[torch.Tensor] = field(default_factory=list)
    counter: object = None
    accel: Optional[AccelConfig] = None


def hw_sample(logits_BlV: torch.Tensor, top_k: int, top_p: float, rng=None, backend=None) -> torch.Tensor:
    """Token ids (B, l) drawn through the sort core's top-k / top-p mask; the top-k runs on
    ``backend`` (golden/numerics when None, see :mod:`golden.accel.backend`)."""
    V = logits_BlV.shape[-1]
    topk_fn = None if backend is None else backend.topk
    keep = hsort.topk_topp_mask(logits_BlV.float(), min(int(top_k), V), float(top_p), topk_fn=topk_fn)
    return hsort.sample_from_mask(logits_BlV, keep, generator=rng)


@torch.no_grad()
def accelerated_infer(var, B: int, label_B: Optional[Union[int, torch.Tensor]], g_seed: Optional[int] = None,
                      cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0, hooks=None, accel=None,
                      record: Optional[RunRecord] = None, progress: bool = False) -> torch.Tensor:
    """Generate B images (B, 3, H, W) in [0, 1]; arguments as ``autoregressive_infer_cfg``.

    ``hooks``: an :class:`AcceleratedHooks` (or any hooks object); when None one is built from
    ``accel`` (AccelConfig or spec string). Parallel decoding and hardware sampling follow the
    AccelConfig of ``hooks.acfg`` (plain hooks objects: neither). ``record`` collects per-scale
    logits and ids."""
    if hooks is None:
        hooks = AcceleratedHooks(var.cfg, accel)
    acfg = getattr(hooks, "acfg", None) or AccelConfig.parse(accel, var.cfg)
    dev = var.lvl_1L.device
    rng = None if g_seed is None else torch.Generator(device=dev).manual_seed(int(g_seed))
    if label_B is None:
        uniform = torch.full((1, var.num_classes), 1.0 / var.num_classes, device=dev)
        label_B = torch.multinomial(uniform, num_samples=B, replacement=True, generator=rng).reshape(B)
    elif isinstance(label_B, int):
        label_B = torch.full((B,), var.num_classes if label_B < 0 else label_B, device=dev, dtype=torch.long)
    label_B = label_B.to(dev)
    quant = var.vae_quant_proxy[0]
    pns = var.patch_nums
    SN = len(pns)
    bes = var.begin_ends

    sos = cond_BD = var.class_emb(torch.cat((label_B, torch.full_like(label_B, var.num_classes)), dim=0))
    lvl_pos = var.lvl_embed(var.lvl_1L) + var.pos_1LC
    next_BlC = (sos.unsqueeze(1).expand(2 * B, var.first_l, -1)
                + var.pos_start.expand(2 * B, var.first_l, -1) + lvl_pos[:, :var.first_l])
    f_hat = sos.new_zeros(B, var.Cvae, pns[-1], pns[-1])
    groups = acfg.step_groups(SN)
    it = groups
    if progress:
        from tqdm import tqdm
        it = tqdm(groups, desc="scales", unit="step")

    for b in var.blocks:
        b.attn.kv_caching(True)
    try:
        for gi, grp in enumerate(it):
            q_begin, q_end = bes[grp[0]][0], bes[grp[-1]][1]
            ctx = var._ctx(hooks, mode="ar", si=grp[0], q_begin=q_begin, q_end=q_end, batch_cfg=True)
            attn_bias = None
            if len(grp) > 1:
                lvl = var.lvl_1L[0, :q_end]
                vis = lvl.view(1, -1) <= lvl[q_begin:].view(-1, 1)
                attn_bias = torch.where(vis, 0.0, -torch.inf).view(1, 1, q_end - q_begin, q_end)
            logits_2BlV = var.step_logits(next_BlC, cond_BD, attn_bias, ctx)
            for si in grp:
                pn = pns[si]
                if len(grp) > 1:
                    o = bes[si][0] - q_begin
                    lg = logits_2BlV[:, o:o + pn * pn]
                else:
                    lg = logits_2BlV
                ratio = si / var.num_stages_minus_1
                t = cfg * ratio
                logits_BlV = (1 + t) * lg[:B] - t * lg[B:]
                if record is not None:
                    record.logits.append(logits_BlV.clone())
                if acfg.hw_sampling:
                    idx_Bl = hw_sample(logits_BlV, top_k, top_p, rng, getattr(hooks, "backend", None))
                    st = getattr(getattr(hooks, "counter", None), "current", None)
                    if st is not None:
                        st.sort_calls += idx_Bl.numel()
                else:
                    idx_Bl = sample_with_top_k_top_p_(logits_BlV, rng=rng, top_k=top_k, top_p=top_p,
                                                      num_samples=1)[:, :, 0]
                if record is not None:
                    record.ids.append(idx_Bl.clone())
                h_BlC = quant.embedding(idx_Bl)
                h_BChw = h_BlC.transpose(1, 2).reshape(B, var.Cvae, pn, pn)
                f_hat, nxt = quant.get_next_autoregressive_input(si, SN, f_hat, h_BChw)
                end_fn = getattr(hooks, "on_scale_end", None) if hooks is not None else None
                if end_fn is not None:
                    end_fn(ctx, ScaleOutput(si=si, pn=pn, logits_2BlV=lg, idx_Bl=idx_Bl, f_hat=f_hat))
            if gi + 1 < len(groups):
                nxt_grp = groups[gi + 1]
                parts = []
                for j in nxt_grp:
                    pj = pns[j]
                    m = nxt if j == grp[-1] + 1 else torch.nn.functional.interpolate(f_hat, size=(pj, pj), mode="area")
                    m = m.reshape(B, var.Cvae, -1).transpose(1, 2)
                    parts.append(_embed(var, m, ctx) + lvl_pos[:, bes[j][0]:bes[j][1]])
                next_BlC = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).repeat(2, 1, 1)
    finally:
        for b in var.blocks:
            b.attn.kv_caching(False)
    img = var.vae.fhat_to_img(f_hat).add(1).mul(0.5)
    if record is not None:
        record.image = img
        record.counter = getattr(hooks, "counter", None)
        record.accel = acfg
    return img


def _embed(var, m, ctx):
    from golden.model.hooks import hooked_linear
    return hooked_linear(var.word_embed, m, ctx)
