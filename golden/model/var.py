"""VAR transformer (next-scale prediction), our own implementation with the official layout.

Parameter / buffer names and shapes equal those of the released ``var_d*.pth`` checkpoints:

    word_embed            Linear(Cvae -> C)          token-map features of a scale -> width C
    class_emb             Embedding(num_classes + 1, C), last row = CFG null class
    pos_start             (1, first_l, C)            start-of-sequence positional term
    pos_1LC               (1, L, C)                  absolute position of every token of every scale
    lvl_embed             Embedding(num_scales, C)   scale ("level") embedding
    shared_ada_lin.1      Linear(C -> 6C)            only with shared_aln (d36-s)
    blocks.i.attn         mat_qkv (no bias), q_bias, v_bias, buffer zero_k_bias,
                          scale_mul_1H11 (log per-head scale, with attn_l2_norm), proj
    blocks.i.ffn          fc1 (C -> 4C), GELU(tanh), fc2 (4C -> C)
    blocks.i.ada_lin.1    Linear(C -> 6C)            gamma1, gamma2, scale1, scale2, shift1, shift2
    blocks.i.ada_gss      (1, 1, 6, C)               instead of ada_lin with shared_aln
    head_nm.ada_lin.1     Linear(C -> 2C)            scale, shift of the pre-head AdaLN
    head                  Linear(C -> V)
    buffers lvl_1L (1, L) and attn_bias_for_masking (1, 1, L, L).

The condition width D equals C. LayerNorms have no affine parameters (the AdaLN supplies
them). Attention with l2 norm: q and k are L2-normalised per head, q is multiplied by
exp(min(scale_mul, log 100)) and the softmax scale is 1; without it the scale is
0.25 / sqrt(head_dim). Queries of scale k see every token of scales <= k.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VARConfig
from .hooks import ScaleOutput, StepContext, get_hook, hooked_linear
from .sampling import gumbel_softmax_with_rng, sample_with_top_k_top_p_
from .vqvae import VQVAE

__all__ = ["VAR", "SelfAttention", "FFN", "AdaLNSelfAttn", "AdaLNBeforeHead", "SharedAdaLin"]


class SelfAttention(nn.Module):
    def __init__(self, block_idx: int, embed_dim: int, num_heads: int, attn_l2_norm: bool):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={embed_dim}")
        self.block_idx = block_idx
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
            self.max_scale_mul = math.log(100.0)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        # KV cache of autoregressive inference (B, H, tokens so far, head_dim)
        self.caching = False
        self.cached_k: Optional[torch.Tensor] = None
        self.cached_v: Optional[torch.Tensor] = None

    def kv_caching(self, enable: bool) -> None:
        self.caching, self.cached_k, self.cached_v = enable, None, None

    def qkv_bias(self) -> torch.Tensor:
        return torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))

    def dense_attend(self, q_BHlc, k_BHLc, v_BHLc, attn_bias=None) -> torch.Tensor:
        """Exact dense attention: softmax(scale * q k^T + bias) v."""
        return F.scaled_dot_product_attention(q_BHlc, k_BHLc, v_BHLc, attn_mask=attn_bias, dropout_p=0.0,
                                              scale=self.scale)

    def attend(self, q_BHlc, k_BHLc, v_BHLc, attn_bias=None, ctx: Optional[StepContext] = None) -> torch.Tensor:
        """The one place attention is computed; ``ctx.hooks.attend`` replaces it when present."""
        fn = get_hook(ctx, "attend")
        if fn is not None:
            return fn(self, q_BHlc, k_BHLc, v_BHLc, attn_bias, ctx)
        return self.dense_attend(q_BHlc, k_BHLc, v_BHLc, attn_bias)

    def forward(self, x_BlC: torch.Tensor, attn_bias: Optional[torch.Tensor], ctx: Optional[StepContext] = None):
        B, l, C = x_BlC.shape
        qkv = hooked_linear(self.mat_qkv, x_BlC, ctx, bias=self.qkv_bias())
        q, k, v = qkv.view(B, l, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # B H l c
        if self.attn_l2_norm:
            gain_1H11 = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1) * gain_1H11
            k = F.normalize(k, dim=-1)
        if self.caching:
            if self.cached_k is not None:
                k = torch.cat((self.cached_k, k), dim=2)
                v = torch.cat((self.cached_v, v), dim=2)
            self.cached_k, self.cached_v = k, v
        o_BHlc = self.attend(q, k, v, attn_bias, ctx)
        return hooked_linear(self.proj, o_BHlc.transpose(1, 2).reshape(B, l, C), ctx)


class FFN(nn.Module):
    def __init__(self, embed_dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, embed_dim)

    def forward(self, x, ctx: Optional[StepContext] = None):
        return hooked_linear(self.fc2, self.act(hooked_linear(self.fc1, x, ctx)), ctx)


class SharedAdaLin(nn.Linear):
    """The d36-s AdaLN linear shared by all blocks: cond (B, D) -> (B, 1, 6, C)."""

    def forward(self, cond_BD):
        return super().forward(cond_BD).view(-1, 1, 6, self.weight.shape[0] // 6)


class AdaLNSelfAttn(nn.Module):
    def __init__(self, block_idx: int, cfg: VARConfig):
        super().__init__()
        C = cfg.embed_dim
        self.block_idx, self.C, self.D = block_idx, C, C
        self.attn = SelfAttention(block_idx, C, cfg.num_heads, cfg.attn_l2_norm)
        self.ffn = FFN(C, cfg.ffn_hidden)
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.shared_aln = cfg.shared_aln
        if self.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def modulation(self, cond, ctx=None):
        """(gamma1, gamma2, scale1, scale2, shift1, shift2), each (B, 1, C)."""
        if self.shared_aln:
            return (self.ada_gss + cond).unbind(2)        # cond: (B, 1, 6, C) from shared_ada_lin
        return hooked_linear(self.ada_lin[1], F.silu(cond), ctx).view(-1, 1, 6, self.C).unbind(2)

    def forward(self, x_BLC, cond_BD, attn_bias, ctx: Optional[StepContext] = None):
        fn = get_hook(ctx, "block")
        if fn is not None:
            return fn(self, x_BLC, cond_BD, attn_bias, ctx, lambda x, bias: self._run(x, cond_BD, bias, ctx))
        return self._run(x_BLC, cond_BD, attn_bias, ctx)

    def _run(self, x_BLC, cond_BD, attn_bias, ctx):
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.modulation(cond_BD, ctx)
        h = self.ln_wo_grad(x_BLC) * (scale1 + 1) + shift1
        x_BLC = x_BLC + self.attn(h, attn_bias, ctx) * gamma1
        h = self.ln_wo_grad(x_BLC) * (scale2 + 1) + shift2
        return x_BLC + self.ffn(h, ctx) * gamma2


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, D: int, norm_eps: float):
        super().__init__()
        self.C, self.D = C, D
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * C))

    def forward(self, x_BLC, cond_BD, ctx: Optional[StepContext] = None):
        scale, shift = hooked_linear(self.ada_lin[1], F.silu(cond_BD), ctx).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x_BLC) * (scale + 1) + shift


class VAR(nn.Module):
    """The class-conditional VAR transformer. The VQVAE is referenced, not owned (its weights
    are not in this state_dict), exactly as in the official model."""

    def __init__(self, vae: VQVAE, cfg: VARConfig):
        super().__init__()
        if vae.vocab_size != cfg.vocab_size or vae.Cvae != cfg.z_channels or \
                tuple(vae.quantize.v_patch_nums) != cfg.patch_nums:
            raise ValueError("vae does not match cfg (vocab_size, z_channels or patch_nums)")
        self.cfg = cfg
        self.Cvae, self.V = cfg.z_channels, cfg.vocab_size
        self.depth, self.C, self.D, self.num_heads = cfg.depth, cfg.embed_dim, cfg.embed_dim, cfg.num_heads
        self.num_classes = cfg.num_classes
        self.cond_drop_rate = cfg.cond_drop_rate
        self.patch_nums = cfg.patch_nums
        self.L, self.first_l = cfg.L, cfg.first_l
        self.begin_ends = list(cfg.begin_ends)
        self.num_stages_minus_1 = len(self.patch_nums) - 1
        self.vae_proxy = (vae,)
        self.vae_quant_proxy = (vae.quantize,)
        self.hooks = None                       # see golden.model.hooks

        C = self.C
        std = math.sqrt(1 / C / 3)
        self.word_embed = nn.Linear(self.Cvae, C)
        self.class_emb = nn.Embedding(self.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, self.L, C))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), C)
        self._init_std = std
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(self.D, 6 * C)) if cfg.shared_aln else nn.Identity()
        self.blocks = nn.ModuleList([AdaLNSelfAttn(i, cfg) for i in range(cfg.depth)])

        self.register_buffer("lvl_1L", torch.zeros(1, self.L, dtype=torch.long))
        self.register_buffer("attn_bias_for_masking", torch.zeros(1, 1, self.L, self.L))
        self.head_nm = AdaLNBeforeHead(C, self.D, cfg.norm_eps)
        self.head = nn.Linear(C, self.V)

        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                m.hook_name = name
        self.reset_buffers()

    # ------------------------------------------------------------------ buffers / init
    @property
    def vae(self) -> VQVAE:
        return self.vae_proxy[0]

    def reset_buffers(self) -> None:
        """Recompute the constant buffers (scale index per token, block-causal mask, zero k bias)."""
        if self.lvl_1L.is_meta:
            return
        dev = self.lvl_1L.device
        lvl_L = torch.cat([torch.full((pn * pn,), si, dtype=torch.long, device=dev)
                           for si, pn in enumerate(self.patch_nums)])
        self.lvl_1L.copy_(lvl_L.view(1, self.L))
        visible_LL = lvl_L.view(self.L, 1) >= lvl_L.view(1, self.L)     # query scale >= key scale
        self.attn_bias_for_masking.copy_(torch.where(visible_LL, 0.0, -torch.inf).view(1, 1, self.L, self.L))
        for b in self.blocks:
            b.attn.zero_k_bias.zero_()

    @torch.no_grad()
    def init_weights(self, init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1.0,
                     generator: Optional[torch.Generator] = None) -> None:
        """Official initialisation scheme, drawn from ``generator``."""
        if init_std < 0:
            init_std = self._init_std
        tn = lambda t, s: nn.init.trunc_normal_(t, mean=0.0, std=s, generator=generator)
        tn(self.pos_start, self._init_std)
        tn(self.pos_1LC, self._init_std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                tn(m.weight, init_std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                tn(m.weight, init_std)
        if init_head >= 0:
            self.head.weight.mul_(init_head)
            self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        C = self.C
        for b in self.blocks:
            b.attn.proj.weight.div_(math.sqrt(2 * self.depth))
            b.ffn.fc2.weight.div_(math.sqrt(2 * self.depth))
            b.attn.q_bias.zero_()
            b.attn.v_bias.zero_()
            if b.attn.attn_l2_norm:
                b.attn.scale_mul_1H11.fill_(math.log(4.0))
            if b.shared_aln:
                b.ada_gss.copy_(torch.randn(b.ada_gss.shape, generator=generator, device=b.ada_gss.device) / C ** 0.5)
                b.ada_gss[:, :, 2:].mul_(init_adaln)
                b.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                lin = b.ada_lin[-1]
                lin.weight[2 * C:].mul_(init_adaln)
                lin.weight[:2 * C].mul_(init_adaln_gamma)
                lin.bias.zero_()

    # ------------------------------------------------------------------ pieces
    def _ctx(self, hooks, **kw) -> StepContext:
        return StepContext(patch_nums=self.patch_nums, hooks=self.hooks if hooks is None else hooks, **kw)

    def get_logits(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor, ctx: Optional[StepContext] = None):
        return hooked_linear(self.head, self.head_nm(h_BLC.float(), cond_BD, ctx).float(), ctx).float()

    def _run_blocks(self, x_BLC, cond_BD_or_gss, attn_bias, ctx: StepContext):
        for b in self.blocks:
            x_BLC = b(x_BLC, cond_BD_or_gss, attn_bias, ctx.with_block(b.block_idx))
        return x_BLC

    def _transformer_logits(self, x_BlC, cond_BD, attn_bias, ctx: StepContext) -> torch.Tensor:
        return self.get_logits(self._run_blocks(x_BlC, self.shared_ada_lin(cond_BD), attn_bias, ctx), cond_BD, ctx)

    def step_logits(self, x_BlC, cond_BD, attn_bias, ctx: StepContext) -> torch.Tensor:
        """Raw logits (2B, l, V) of one KV-cached step: every block, then the head. The one place
        a step's transformer pass runs; ``ctx.hooks.step`` wraps it when present (CUDA graphs,
        :mod:`golden.accel.graphs`)."""
        fn = get_hook(ctx, "step")
        if fn is not None:
            return fn(self, x_BlC, cond_BD, attn_bias, ctx, self._transformer_logits)
        return self._transformer_logits(x_BlC, cond_BD, attn_bias, ctx)

    # ------------------------------------------------------------------ teacher forcing
    def forward(self, label_B: torch.LongTensor, x_BLCv_wo_first_l: torch.Tensor, hooks=None) -> torch.Tensor:
        """Teacher-forcing logits (B, L', V) for all scales at once, block-causal by scale.

        ``x_BLCv_wo_first_l`` (B, L' - first_l, Cvae) is the input of scales 1.. (from
        ``vae.quantize.idxBl_to_var_input``); it may cover only a prefix of the scales.
        Labels are replaced by the null class with probability cond_drop_rate in training
        mode only."""
        B = x_BLCv_wo_first_l.shape[0]
        ed = self.first_l + x_BLCv_wo_first_l.shape[1]
        if ed not in [e for _, e in self.begin_ends]:
            raise ValueError(f"x_BLCv_wo_first_l has {x_BLCv_wo_first_l.shape[1]} tokens: not a whole number of scales")
        if self.training and self.cond_drop_rate > 0:
            drop_B = torch.rand(B, device=label_B.device) < self.cond_drop_rate
            label_B = torch.where(drop_B, self.num_classes, label_B)
        ctx = self._ctx(hooks, mode="tf", q_begin=0, q_end=ed)
        sos = cond_BD = self.class_emb(label_B)
        sos = sos.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
        x_BLC = torch.cat((sos, hooked_linear(self.word_embed, x_BLCv_wo_first_l.float(), ctx)), dim=1)
        x_BLC = x_BLC + (self.lvl_embed(self.lvl_1L[:, :ed].expand(B, -1)) + self.pos_1LC[:, :ed])
        attn_bias = self.attn_bias_for_masking[:, :, :ed, :ed]
        x_BLC = self._run_blocks(x_BLC, self.shared_ada_lin(cond_BD), attn_bias, ctx)
        return self.get_logits(x_BLC, cond_BD, ctx)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def autoregressive_infer_cfg(self, B: int, label_B: Optional[Union[int, torch.LongTensor]],
                                 g_seed: Optional[int] = None, cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0,
                                 more_smooth: bool = False, hooks=None) -> torch.Tensor:
        """Generate B images (B, 3, H, W) in [0, 1] with classifier-free guidance and a KV cache.

        label_B: tensor of B labels, an int for all (negative: the null class), or None for
        uniformly random labels. g_seed seeds a private generator (None: global RNG).
        Guidance at step si: t = cfg * si / (steps - 1); logits = (1 + t) cond - t uncond."""
        dev = self.lvl_1L.device
        rng = None if g_seed is None else torch.Generator(device=dev).manual_seed(int(g_seed))
        if label_B is None:
            uniform = torch.full((1, self.num_classes), 1.0 / self.num_classes, device=dev)
            label_B = torch.multinomial(uniform, num_samples=B, replacement=True, generator=rng).reshape(B)
        elif isinstance(label_B, int):
            label_B = torch.full((B,), self.num_classes if label_B < 0 else label_B, device=dev, dtype=torch.long)
        label_B = label_B.to(dev)
        quant = self.vae_quant_proxy[0]
        SN = len(self.patch_nums)

        sos = cond_BD = self.class_emb(torch.cat((label_B, torch.full_like(label_B, self.num_classes)), dim=0))
        lvl_pos = self.lvl_embed(self.lvl_1L) + self.pos_1LC
        next_BlC = (sos.unsqueeze(1).expand(2 * B, self.first_l, -1)
                    + self.pos_start.expand(2 * B, self.first_l, -1) + lvl_pos[:, :self.first_l])
        f_hat = sos.new_zeros(B, self.Cvae, self.patch_nums[-1], self.patch_nums[-1])

        for b in self.blocks:
            b.attn.kv_caching(True)
        try:
            cur_L = 0
            for si, pn in enumerate(self.patch_nums):
                ratio = si / self.num_stages_minus_1
                q_begin, cur_L = cur_L, cur_L + pn * pn
                ctx = self._ctx(hooks, mode="ar", si=si, q_begin=q_begin, q_end=cur_L, batch_cfg=True)
                logits_2BlV = self.step_logits(next_BlC, cond_BD, None, ctx)

                t = cfg * ratio
                logits_BlV = (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:]
                idx_Bl = sample_with_top_k_top_p_(logits_BlV, rng=rng, top_k=top_k, top_p=top_p, num_samples=1)[:, :, 0]
                if not more_smooth:
                    h_BlC = quant.embedding(idx_Bl)
                else:   # visualisation only: soft mixture of codebook rows
                    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
                    h_BlC = gumbel_softmax_with_rng(logits_BlV.mul(1 + ratio), tau=tau, hard=False, dim=-1, rng=rng) \
                        @ quant.embedding.weight.unsqueeze(0)
                h_BChw = h_BlC.transpose(1, 2).reshape(B, self.Cvae, pn, pn)
                f_hat, nxt = quant.get_next_autoregressive_input(si, SN, f_hat, h_BChw)
                end_fn = getattr(ctx.hooks, "on_scale_end", None) if ctx.hooks is not None else None
                if end_fn is not None:
                    end_fn(ctx, ScaleOutput(si=si, pn=pn, logits_2BlV=logits_2BlV, idx_Bl=idx_Bl, f_hat=f_hat))
                if si != self.num_stages_minus_1:
                    pn_next = self.patch_nums[si + 1]
                    nxt = nxt.reshape(B, self.Cvae, -1).transpose(1, 2)
                    nxt = hooked_linear(self.word_embed, nxt, ctx) + lvl_pos[:, cur_L:cur_L + pn_next * pn_next]
                    next_BlC = nxt.repeat(2, 1, 1)
        finally:
            for b in self.blocks:
                b.attn.kv_caching(False)
        return self.vae.fhat_to_img(f_hat).add(1).mul(0.5)
