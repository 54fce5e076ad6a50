"""Multi-scale VQVAE of VAR: conv encoder/decoder plus a residual multi-scale quantizer.

Our own implementation. Module attribute names follow the official checkpoint
``vae_ch160v4096z32.pth`` so that its state_dict loads with ``strict=True``:

* ``encoder`` / ``decoder``: LDM "vq-f16" style conv nets, ``ch_mult`` levels of
  ``num_res_blocks`` ResNet blocks (``num_res_blocks + 1`` in the decoder), single-head
  spatial self-attention after every block of the deepest level and in the middle.
* ``quant_conv`` / ``post_quant_conv``: 3x3 convs on the Cvae-channel latent.
* ``quantize``: the residual quantizer over the scale schedule ``patch_nums``. At scale k the
  residual is area-downsampled to pn x pn, each position takes its nearest codebook entry,
  the token map is bicubic-upsampled back to full size, passed through a Phi conv
  (``Phi(h) = (1 - r) h + r conv3x3(h)``) and added to ``f_hat``.

Tensor names carry shape suffixes: B batch, C channels, h/w (H/W) token map sides,
l/L token counts, V vocabulary.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VARConfig

__all__ = ["VQVAE", "VectorQuantizer2", "Encoder", "Decoder", "Phi"]


# ----------------------------------------------------------------------------- conv pieces
def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3, plus a (1x1 conv when widths differ) skip."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.in_channels, self.out_channels = c_in, c_out
        self.norm1 = _group_norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm2 = _group_norm(c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1, 1, 0) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions; q, k, v from one 1x1 conv."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.C = channels
        self.norm = _group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, 1, 0)
        self.proj_out = nn.Conv2d(channels, channels, 1, 1, 0)

    def forward(self, x_BChw):
        B, C, H, W = x_BChw.shape
        q, k, v = self.qkv(self.norm(x_BChw)).reshape(B, 3, C, H * W).unbind(1)   # each B C (hw)
        w_Bqk = torch.bmm(q.transpose(1, 2), k) * (C ** -0.5)                     # B (hw)q (hw)k
        w_Bqk = w_Bqk.softmax(dim=2)
        out_BCq = torch.bmm(v, w_Bqk.transpose(1, 2))                              # B C (hw)q
        return x_BChw + self.proj_out(out_BCq.reshape(B, C, H, W))


class Downsample2x(nn.Module):
    """Pad right/bottom by one, then a stride-2 3x3 conv with no padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample2x(nn.Module):
    """Nearest 2x upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResNet blocks), ``attn`` (maybe empty), optional resampler."""

    def __init__(self, blocks: List[nn.Module], attns: List[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run_blocks(self, h):
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, c: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(c, c, groups)
        self.attn_1 = AttnBlock(c, groups)
        self.block_2 = ResnetBlock(c, c, groups)

    def forward(self, h):
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """image (B, 3, H, W) in [-1, 1] -> latent (B, z_channels, H/2^(n-1), W/2^(n-1))."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 groups: int = 32, in_channels: int = 3):
        super().__init__()
        n = len(ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        c = ch
        for lvl, mult in enumerate(ch_mult):
            c_out = ch * mult
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(c, c_out, groups))
                c = c_out
                if lvl == n - 1:
                    attns.append(AttnBlock(c, groups))
            level = _Level(blocks, attns)
            if lvl != n - 1:
                level.downsample = Downsample2x(c)
            self.down.append(level)
        self.mid = _Mid(c, groups)
        self.norm_out = _group_norm(c, groups)
        self.conv_out = nn.Conv2d(c, z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level.run_blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """latent (B, z_channels, h, w) -> image (B, 3, h*2^(n-1), w*2^(n-1)), unclamped."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 groups: int = 32, out_channels: int = 3):
        super().__init__()
        n = len(ch_mult)
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c, 3, 1, 1)
        self.mid = _Mid(c, groups)
        levels = [None] * n
        for lvl in reversed(range(n)):        # built deepest first, stored by level index
            c_out = ch * ch_mult[lvl]
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(c, c_out, groups))
                c = c_out
                if lvl == n - 1:
                    attns.append(AttnBlock(c, groups))
            level = _Level(blocks, attns)
            if lvl != 0:
                level.upsample = Upsample2x(c)
            levels[lvl] = level
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(c, groups)
        self.conv_out = nn.Conv2d(c, out_channels, 3, 1, 1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for lvl in reversed(range(len(self.up))):
            level = self.up[lvl]
            h = level.run_blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------- quantizer
class Phi(nn.Conv2d):
    """Residual refinement conv: ``(1 - r) * h + r * conv3x3(h)`` (r = |quant_resi|)."""

    def __init__(self, channels: int, quant_resi: float):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h_BChw):
        return h_BChw * (1.0 - self.resi_ratio) + super().forward(h_BChw) * self.resi_ratio


def _phi_ticks(k: int) -> np.ndarray:
    # Positions in [0, 1] of k Phis; a scale at relative position si/(SN-1) uses the nearest one.
    if k == 4:
        return np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)
    return np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)


def _nearest_tick(ticks: np.ndarray, at: float) -> int:
    return int(np.argmin(np.abs(ticks - at)))


class PhiPartiallyShared(nn.Module):
    """K Phis stored as ``qresi_ls``; indexed with the relative scale position in [0, 1]."""

    def __init__(self, phis: List[nn.Module]):
        super().__init__()
        self.qresi_ls = nn.ModuleList(phis)
        self.ticks = _phi_ticks(len(phis))

    def __getitem__(self, at_0_1: float) -> nn.Module:
        return self.qresi_ls[_nearest_tick(self.ticks, at_0_1)]


class PhiShared(nn.Module):
    """One Phi (``qresi``) for every scale."""

    def __init__(self, phi: nn.Module):
        super().__init__()
        self.qresi = phi

    def __getitem__(self, _at_0_1: float) -> nn.Module:
        return self.qresi


class PhiNonShared(nn.ModuleList):
    """One Phi per scale (keys ``quant_resi.<k>.*``)."""

    def __init__(self, phis: List[nn.Module]):
        super().__init__(phis)
        self.ticks = _phi_ticks(len(phis))

    def __getitem__(self, at_0_1):
        if isinstance(at_0_1, float):
            return super().__getitem__(_nearest_tick(self.ticks, at_0_1))
        return super().__getitem__(at_0_1)


def _patch_hws(pns) -> List[Tuple[int, int]]:
    return [(p, p) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in pns]


class VectorQuantizer2(nn.Module):
    """Multi-scale residual quantizer (same name, buffers and semantics as the official one)."""

    def __init__(self, vocab_size: int, Cvae: int, v_patch_nums: Sequence[int], quant_resi: float = 0.5,
                 share_quant_resi: int = 4, using_znorm: bool = False, beta: float = 0.25):
        super().__init__()
        self.vocab_size, self.Cvae = int(vocab_size), int(Cvae)
        self.v_patch_nums = tuple(v_patch_nums)
        self.using_znorm, self.beta = using_znorm, beta
        self.quant_resi_ratio = quant_resi

        def make_phi():
            return Phi(Cvae, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()

        if share_quant_resi == 0:
            self.quant_resi = PhiNonShared([make_phi() for _ in self.v_patch_nums])
        elif share_quant_resi == 1:
            self.quant_resi = PhiShared(make_phi())
        else:
            self.quant_resi = PhiPartiallyShared([make_phi() for _ in range(share_quant_resi)])

        # Codebook usage statistics (training only); part of the checkpoint.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.v_patch_nums), self.vocab_size))
        self.embedding = nn.Embedding(self.vocab_size, self.Cvae)

    # ---- helpers
    def phi(self, si: int, SN: int) -> nn.Module:
        """The Phi used at scale ``si`` of an ``SN``-scale schedule."""
        return self.quant_resi[si / (SN - 1)]

    def nearest_idx(self, z_NC: torch.Tensor) -> torch.LongTensor:
        """Index of the nearest codebook row of every row of z_NC (ties: lowest index)."""
        E_VC = self.embedding.weight.detach()
        if self.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(E_VC, dim=-1).T, dim=1)
        d_NV = z_NC.square().sum(dim=1, keepdim=True) + E_VC.square().sum(dim=1)
        d_NV = torch.addmm(d_NV, z_NC, E_VC.T, beta=1, alpha=-2)
        return torch.argmin(d_NV, dim=1)

    def _quantize_scales(self, f_BChw, patch_hws):
        """Yield (si, idx_N, f_hat after this scale); f_rest is updated in place as in the paper."""
        B, C, H, W = f_BChw.shape
        if patch_hws[-1] != (H, W):
            raise ValueError(f"v_patch_nums last scale {patch_hws[-1]} must equal the latent size {(H, W)}")
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        SN = len(patch_hws)
        for si, (ph, pw) in enumerate(patch_hws):
            last = si == SN - 1
            z = f_rest if last else F.interpolate(f_rest, size=(ph, pw), mode="area")
            idx_N = self.nearest_idx(z.permute(0, 2, 3, 1).reshape(-1, C))
            h_BChw = self.embedding(idx_N.view(B, ph, pw)).permute(0, 3, 1, 2)
            if not last:
                h_BChw = F.interpolate(h_BChw, size=(H, W), mode="bicubic")
            h_BChw = self.phi(si, SN)(h_BChw.contiguous())
            f_hat = f_hat + h_BChw
            f_rest = f_rest - h_BChw
            yield si, idx_N, f_hat

    # ---- training forward (no distributed statistics)
    def forward(self, f_BChw: torch.Tensor, ret_usages: bool = False):
        """Returns (f_hat with straight-through gradient, usages or None, vq loss)."""
        f_BChw = f_BChw.float()
        f_ng = f_BChw.detach()
        loss = 0.0
        hits = []
        SN = len(self.v_patch_nums)
        f_hat = None
        for si, idx_N, f_hat in self._quantize_scales(f_BChw, _patch_hws(self.v_patch_nums)):
            hits.append(idx_N.bincount(minlength=self.vocab_size).float())
            loss = loss + F.mse_loss(f_hat.detach(), f_BChw) * self.beta + F.mse_loss(f_hat, f_ng)
        loss = loss / SN
        f_hat = (f_hat.detach() - f_ng) + f_BChw
        usages = [float((h > 0).float().mean() * 100) for h in hits] if ret_usages else None
        return f_hat, usages, loss

    # ---- inference / teacher-forcing utilities (official names)
    def f_to_idxBl_or_fhat(self, f_BChw: torch.Tensor, to_fhat: bool,
                           v_patch_nums: Optional[Sequence[Union[int, Tuple[int, int]]]] = None) -> List[torch.Tensor]:
        """Quantize f over all scales; per scale return the token ids (B, ph*pw) or f_hat so far."""
        B = f_BChw.shape[0]
        patch_hws = _patch_hws(v_patch_nums or self.v_patch_nums)
        out = []
        for si, idx_N, f_hat in self._quantize_scales(f_BChw, patch_hws):
            ph, pw = patch_hws[si]
            out.append(f_hat.clone() if to_fhat else idx_N.reshape(B, ph * pw))
        return out

    def embed_to_fhat(self, ms_h_BChw: List[torch.Tensor], all_to_max_scale: bool = True, last_one: bool = False):
        """Accumulate per-scale embedded token maps into f_hat (every map upsampled to the last scale)."""
        B = ms_h_BChw[0].shape[0]
        H = W = self.v_patch_nums[-1]
        SN = len(self.v_patch_nums)
        outs = []
        if all_to_max_scale:
            f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, H, W, dtype=torch.float32)
            for si in range(SN):
                h = ms_h_BChw[si]
                if si < SN - 1:
                    h = F.interpolate(h, size=(H, W), mode="bicubic")
                f_hat = f_hat + self.phi(si, SN)(h)
                outs.append(f_hat.clone())
        else:   # experimental variant of the official code: grow f_hat scale by scale
            p0 = self.v_patch_nums[0]
            f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, p0, p0, dtype=torch.float32)
            for si, pn in enumerate(self.v_patch_nums):
                f_hat = F.interpolate(f_hat, size=(pn, pn), mode="bicubic")
                f_hat = f_hat + self.phi(si, SN)(ms_h_BChw[si])
                outs.append(f_hat)
        return outs[-1] if last_one else outs

    def idxBl_to_var_input(self, gt_ms_idx_Bl: List[torch.Tensor]) -> Optional[torch.Tensor]:
        """Teacher-forcing input of VAR: for scales 1..SN-1, f_hat of the earlier scales
        area-downsampled to that scale, flattened: (B, L - first_l, Cvae)."""
        B, C = gt_ms_idx_Bl[0].shape[0], self.Cvae
        H = W = self.v_patch_nums[-1]
        SN = len(self.v_patch_nums)
        f_hat = gt_ms_idx_Bl[0].new_zeros(B, C, H, W, dtype=torch.float32)
        nxt = []
        for si in range(SN - 1):
            pn = self.v_patch_nums[si]
            h = self.embedding(gt_ms_idx_Bl[si]).transpose(1, 2).reshape(B, C, pn, pn)
            f_hat = f_hat + self.phi(si, SN)(F.interpolate(h, size=(H, W), mode="bicubic"))
            pn_next = self.v_patch_nums[si + 1]
            nxt.append(F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").reshape(B, C, -1).transpose(1, 2))
        return torch.cat(nxt, dim=1) if nxt else None

    def get_next_autoregressive_input(self, si: int, SN: int, f_hat: torch.Tensor, h_BChw: torch.Tensor):
        """Add scale ``si``'s embedded tokens h_BChw (B, Cvae, pn, pn) to f_hat **in place** and
        return (f_hat, next step's input map): f_hat area-downsampled to the next scale, or
        f_hat itself after the last scale."""
        HW = self.v_patch_nums[-1]
        if si != SN - 1:
            f_hat.add_(self.phi(si, SN)(F.interpolate(h_BChw, size=(HW, HW), mode="bicubic")))
            pn_next = self.v_patch_nums[si + 1]
            return f_hat, F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")
        f_hat.add_(self.phi(si, SN)(h_BChw))
        return f_hat, f_hat


# ----------------------------------------------------------------------------- VQVAE
class VQVAE(nn.Module):
    def __init__(self, cfg: VARConfig):
        super().__init__()
        self.cfg = cfg
        self.V = self.vocab_size = cfg.vocab_size
        self.Cvae = cfg.z_channels
        self.downsample = cfg.downsample
        g = cfg.vae_norm_groups
        self.encoder = Encoder(cfg.vae_ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels, groups=g)
        self.decoder = Decoder(cfg.vae_ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels, groups=g)
        self.quantize = VectorQuantizer2(
            vocab_size=cfg.vocab_size, Cvae=cfg.z_channels, v_patch_nums=cfg.patch_nums,
            quant_resi=cfg.quant_resi, share_quant_resi=cfg.share_quant_resi,
            using_znorm=cfg.using_znorm, beta=cfg.beta,
        )
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(self.Cvae, self.Cvae, ks, 1, ks // 2)
        self.post_quant_conv = nn.Conv2d(self.Cvae, self.Cvae, ks, 1, ks // 2)

    def forward(self, img_B3HW, ret_usages: bool = False):
        """VQVAE training pass: (reconstruction, usages, vq loss)."""
        f_hat, usages, loss = self.quantize(self.quant_conv(self.encoder(img_B3HW)), ret_usages=ret_usages)
        return self.decoder(self.post_quant_conv(f_hat)), usages, loss

    def img_to_f(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] -> continuous latent f (B, Cvae, h, w) before quantization."""
        return self.quant_conv(self.encoder(img_B3HW))

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Quantized latent -> image in [-1, 1] (clamped)."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)

    def img_to_idxBl(self, img_B3HW: torch.Tensor, v_patch_nums=None) -> List[torch.LongTensor]:
        """Image in [-1, 1] -> token ids per scale, list of (B, pn*pn)."""
        return self.quantize.f_to_idxBl_or_fhat(self.img_to_f(img_B3HW), to_fhat=False, v_patch_nums=v_patch_nums)

    def idxBl_to_img(self, ms_idx_Bl: List[torch.Tensor], same_shape: bool, last_one: bool = False):
        B = ms_idx_Bl[0].shape[0]
        ms_h = []
        for idx_Bl in ms_idx_Bl:
            pn = round(idx_Bl.shape[1] ** 0.5)
            ms_h.append(self.quantize.embedding(idx_Bl).transpose(1, 2).reshape(B, self.Cvae, pn, pn))
        return self.embed_to_img(ms_h, all_to_max_scale=same_shape, last_one=last_one)

    def embed_to_img(self, ms_h_BChw: List[torch.Tensor], all_to_max_scale: bool, last_one: bool = False):
        fh = self.quantize.embed_to_fhat(ms_h_BChw, all_to_max_scale=all_to_max_scale, last_one=last_one)
        if last_one:
            return self.fhat_to_img(fh)
        return [self.fhat_to_img(f) for f in fh]

    def img_to_reconstructed_img(self, img_B3HW, v_patch_nums=None, last_one: bool = False):
        fh = self.quantize.f_to_idxBl_or_fhat(self.img_to_f(img_B3HW), to_fhat=True, v_patch_nums=v_patch_nums)
        if last_one:
            return self.fhat_to_img(fh[-1])
        return [self.fhat_to_img(f) for f in fh]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # As in the official model: the usage statistics depend on the number of scales the VAE
        # was trained with; keep ours when the checkpoint's count differs.
        key = "quantize.ema_vocab_hit_SV"
        if key in state_dict and tuple(state_dict[key].shape) != tuple(self.quantize.ema_vocab_hit_SV.shape) \
                and state_dict[key].ndim == 2 and state_dict[key].shape[1] == self.vocab_size:
            state_dict = dict(state_dict)
            state_dict[key] = self.quantize.ema_vocab_hit_SV
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
