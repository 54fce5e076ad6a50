"""Hyperparameters of a VAR transformer together with its multi-scale VQVAE.

One :class:`VARConfig` describes both networks, because they share the scale schedule
(``patch_nums``) and the token vocabulary. The official presets reproduce the released
FoundationVision/VAR checkpoints exactly (``var_d16.pth`` ... ``var_d36.pth`` with
``vae_ch160v4096z32.pth``); ``tiny`` keeps the same structure at toy size for CPU tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Tuple

# Scale schedules (side of the square token map at each step) used by the official training code.
PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
PATCH_NUMS_1024 = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)

PRESET_NAMES = ("d16", "d20", "d24", "d30", "d36", "tiny")


@dataclass(frozen=True)
class VARConfig:
    # --- transformer ---
    depth: int = 16
    embed_dim: int = 1024           # C (width); also the condition width D
    num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    num_classes: int = 1000         # class_emb has num_classes + 1 rows (last = CFG "null" class)
    attn_l2_norm: bool = True
    shared_aln: bool = False        # d36-s: one AdaLN linear shared by all blocks
    cond_drop_rate: float = 0.1     # label dropout, applied only in training mode
    # --- shared between transformer and VQVAE ---
    patch_nums: Tuple[int, ...] = PATCH_NUMS_256
    vocab_size: int = 4096          # V
    z_channels: int = 32            # Cvae
    # --- VQVAE ---
    vae_ch: int = 160
    ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    vae_norm_groups: int = 32       # GroupNorm groups of the VQVAE (official: 32)
    quant_conv_ks: int = 3
    quant_resi: float = 0.5         # Phi(h) = (1 - r) h + r conv(h)
    share_quant_resi: int = 4       # 0: one Phi per scale, 1: one Phi, k>1: k partially shared Phis
    beta: float = 0.25              # commitment weight (VQVAE training only)
    using_znorm: bool = False       # cosine instead of L2 nearest neighbour

    def __post_init__(self):
        object.__setattr__(self, "patch_nums", tuple(int(p) for p in self.patch_nums))
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def need(ok: bool, name: str, allowed: str):
            if not ok:
                raise ValueError(f"VARConfig.{name}={getattr(self, name)!r} is invalid: must be {allowed}")

        need(isinstance(self.depth, int) and self.depth >= 1, "depth", "an integer >= 1")
        need(isinstance(self.embed_dim, int) and self.embed_dim >= 1, "embed_dim", "an integer >= 1")
        need(isinstance(self.num_heads, int) and self.num_heads >= 1 and self.embed_dim % self.num_heads == 0,
             "num_heads", f"an integer >= 1 that divides embed_dim={self.embed_dim}")
        need(self.mlp_ratio > 0, "mlp_ratio", "> 0")
        need(self.norm_eps > 0, "norm_eps", "> 0")
        need(isinstance(self.num_classes, int) and self.num_classes >= 1, "num_classes", "an integer >= 1")
        need(0.0 <= self.cond_drop_rate <= 1.0, "cond_drop_rate", "in [0, 1]")
        need(len(self.patch_nums) >= 2 and all(p >= 1 for p in self.patch_nums)
             and all(a < b for a, b in zip(self.patch_nums, self.patch_nums[1:])),
             "patch_nums", "a strictly increasing tuple of >= 2 positive ints")
        need(isinstance(self.vocab_size, int) and self.vocab_size >= 2, "vocab_size", "an integer >= 2")
        need(isinstance(self.z_channels, int) and self.z_channels >= 1, "z_channels", "an integer >= 1")
        need(len(self.ch_mult) >= 1 and all(m >= 1 for m in self.ch_mult), "ch_mult", "a non-empty tuple of ints >= 1")
        need(isinstance(self.num_res_blocks, int) and self.num_res_blocks >= 1, "num_res_blocks", "an integer >= 1")
        need(isinstance(self.vae_norm_groups, int) and self.vae_norm_groups >= 1, "vae_norm_groups", "an integer >= 1")
        need(isinstance(self.vae_ch, int) and self.vae_ch >= 1
             and all((self.vae_ch * m) % self.vae_norm_groups == 0 for m in (1,) + self.ch_mult),
             "vae_ch", f"a positive int such that vae_ch * m is divisible by vae_norm_groups={self.vae_norm_groups} "
                       f"for every m in ch_mult={self.ch_mult}")
        need(self.quant_conv_ks in (1, 3, 5, 7), "quant_conv_ks", "an odd kernel size in {1, 3, 5, 7}")
        need(0.0 <= abs(self.quant_resi) <= 1.0, "quant_resi", "with |quant_resi| <= 1")
        need(isinstance(self.share_quant_resi, int) and 0 <= self.share_quant_resi, "share_quant_resi", "an integer >= 0")

    # ------------------------------------------------------------------ derived
    @property
    def width(self) -> int:
        return self.embed_dim

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        return round(self.embed_dim * self.mlp_ratio)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def L(self) -> int:
        """Total tokens over all scales (680 for the 256 px schedule)."""
        return sum(p * p for p in self.patch_nums)

    @property
    def first_l(self) -> int:
        return self.patch_nums[0] ** 2

    @property
    def begin_ends(self) -> Tuple[Tuple[int, int], ...]:
        out, cur = [], 0
        for p in self.patch_nums:
            out.append((cur, cur + p * p))
            cur += p * p
        return tuple(out)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample

    @property
    def num_quant_resi(self) -> int:
        """How many Phi convs the quantizer holds."""
        if self.share_quant_resi == 0:
            return len(self.patch_nums)
        return self.share_quant_resi

    def replace(self, **changes) -> "VARConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str) -> "VARConfig":
        """Official model sizes ('d16', 'd20', 'd24', 'd30', 'd36') or the toy 'tiny'."""
        if name == "tiny":
            return cls(
                depth=2, embed_dim=64, num_heads=2, num_classes=10, patch_nums=(1, 2, 3, 4),
                vocab_size=64, z_channels=8, vae_ch=16, vae_norm_groups=8,
            )
        if name in ("d16", "d20", "d24", "d30"):
            depth = int(name[1:])
            return cls(depth=depth, embed_dim=64 * depth, num_heads=depth, patch_nums=PATCH_NUMS_256)
        if name in ("d36", "d36-s"):
            return cls(depth=36, embed_dim=64 * 36, num_heads=36, patch_nums=PATCH_NUMS_512, shared_aln=True)
        raise ValueError(f"preset name={name!r} is unknown: must be one of {PRESET_NAMES}")

