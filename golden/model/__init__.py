"""golden/model: VAR transformer + multi-scale VQVAE with the official checkpoint layout.

    from golden.model import VARConfig, build, load_official
    vae, var = build(VARConfig.preset("tiny"), seed=0)           # deterministic random weights
    with torch.device("meta"):
        vae, var = build(VARConfig.preset("d30"))                # shapes only, no memory
    vae, var = load_official("var_d16.pth", "vae_ch160v4096z32.pth", VARConfig.preset("d16"))
    img_B3HW = var.autoregressive_infer_cfg(B=2, label_B=torch.tensor([1, 2]), g_seed=0,
                                            cfg=4.0, top_k=900, top_p=0.95)

Extension points for acceleration code: see :mod:`golden.model.hooks`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .config import VARConfig
from .hooks import ScaleOutput, StepContext, VARHooks
from .sampling import sample_with_top_k_top_p_
from .var import VAR
from .vqvae import VQVAE, VectorQuantizer2

__all__ = ["VARConfig", "VAR", "VQVAE", "VectorQuantizer2", "VARHooks", "StepContext", "ScaleOutput",
           "build", "load_official", "count_params", "sample_with_top_k_top_p_"]


def count_params(module: nn.Module) -> int:
    """Number of parameters (buffers excluded); works on meta tensors."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def _init_vae_(vae: VQVAE, g: torch.Generator) -> None:
    # PyTorch's default layer initialisation, drawn from a private generator.
    for m in vae.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(m.bias, -bound, bound, generator=g)
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 1.0, generator=g)
    vae.quantize.ema_vocab_hit_SV.zero_()


def build(cfg: VARConfig, seed: int = 0, *, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5,
          init_head: float = 0.02, init_std: float = -1.0) -> Tuple[VQVAE, VAR]:
    """Build (vae, var) for ``cfg``, on the current default device.

    Under ``with torch.device("meta"):`` the modules hold meta tensors and nothing is
    allocated or initialised. Otherwise the weights are drawn deterministically from ``seed``
    (VAR: the official init scheme with the given knobs; VQVAE: PyTorch default layer init)
    without touching the global RNG. Both are returned in eval mode."""
    if not isinstance(cfg, VARConfig):
        raise ValueError(f"cfg={cfg!r} must be a VARConfig")
    device = torch.empty(0).device
    with torch.device("meta"):
        vae = VQVAE(cfg)
        var = VAR(vae, cfg)
    if device.type != "meta":
        vae.to_empty(device=device)
        var.to_empty(device=device)
        var.reset_buffers()
        g = torch.Generator(device=device).manual_seed(int(seed))
        _init_vae_(vae, g)
        var.init_weights(init_adaln=init_adaln, init_adaln_gamma=init_adaln_gamma, init_head=init_head,
                         init_std=init_std, generator=g)
    vae.eval()
    var.eval()
    return vae, var


def _read_state_dict(path) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return dict(sd)


def _check_layout(what: str, module: nn.Module, sd: Mapping, few: int = 5) -> None:
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} != model {want[k]}"
                  for k in want if k in sd and tuple(sd[k].shape) != want[k]]
    if missing or unexpected or mismatched:
        parts = []
        for name, lst in (("missing", missing), ("unexpected", unexpected), ("mismatched shapes", mismatched)):
            if lst:
                more = f" (+{len(lst) - few} more)" if len(lst) > few else ""
                parts.append(f"{len(lst)} {name}: {lst[:few]}{more}")
        raise ValueError(f"{what} does not match the model built from the config: " + "; ".join(parts))


def load_official(var_ckpt, vae_ckpt, cfg: Optional[VARConfig] = None, device="cpu") -> Tuple[VQVAE, VAR]:
    """Load released FoundationVision/VAR checkpoints (e.g. ``var_d16.pth`` and
    ``vae_ch160v4096z32.pth``) strictly into our modules; cfg defaults to preset d16.

    FileNotFoundError names a missing file; ValueError lists the first few missing,
    unexpected and shape-mismatched keys when the files do not fit ``cfg``."""
    cfg = VARConfig.preset("d16") if cfg is None else cfg
    var_sd = _read_state_dict(var_ckpt)
    vae_sd = _read_state_dict(vae_ckpt)
    with torch.device("meta"):
        vae, var = build(cfg)
    # The codebook-usage buffer depends on the number of scales the VAE was trained with.
    k = "quantize.ema_vocab_hit_SV"
    want_ema = tuple(vae.quantize.ema_vocab_hit_SV.shape)
    if k in vae_sd and tuple(vae_sd[k].shape) != want_ema and vae_sd[k].ndim == 2 and vae_sd[k].shape[1] == want_ema[1]:
        vae_sd[k] = torch.zeros(want_ema)
    _check_layout(f"VQVAE checkpoint {os.fspath(vae_ckpt)}", vae, vae_sd)
    _check_layout(f"VAR checkpoint {os.fspath(var_ckpt)}", var, var_sd)
    vae.to_empty(device=device)
    var.to_empty(device=device)
    vae.load_state_dict(vae_sd, strict=True)
    var.load_state_dict(var_sd, strict=True)
    vae.eval()
    var.eval()
    for p in list(vae.parameters()) + list(var.parameters()):
        p.requires_grad_(False)
    return vae, var
