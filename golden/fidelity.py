"""Fidelity of an accelerated VAR run against the dense run with the same weights and seed:
PSNR, SSIM (Gaussian window, our implementation), token agreement and logit KL per scale."""

from __future__ import annotations

import math
from typing import Dict, List

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "token_agreement", "logit_kl", "compare"]


def _as_B3HW(img: torch.Tensor) -> torch.Tensor:
    img = torch.as_tensor(img).to(torch.float64)
    if img.dim() == 2:
        img = img[None, None]
    elif img.dim() == 3:
        img = img[None]
    if img.dim() != 4:
        raise ValueError("images must be (H, W), (C, H, W) or (B, C, H, W)")
    return img


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """10 log10(data_range^2 / MSE) over all pixels; inf for identical images."""
    a, b = _as_B3HW(a), _as_B3HW(b)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = float((a - b).square().mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range ** 2 / mse)


def _gauss(win: int, sigma: float) -> torch.Tensor:
    x = torch.arange(win, dtype=torch.float64) - (win - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma * sigma))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, win: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean SSIM (Wang et al. 2004): local statistics under a separable Gaussian window
    (``win`` taps, ``sigma``; shrunk to the largest odd size that fits a small image), valid
    positions only, population (biased) variances, C1 = (k1 L)^2, C2 = (k2 L)^2, each channel
    separately, averaged over channels and images. 1.0 for identical images."""
    a, b = _as_B3HW(a), _as_B3HW(b)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    B, C, H, W = a.shape
    w = min(win, H, W)
    if w % 2 == 0:
        w -= 1
    g = _gauss(w, sigma)
    kh = g.view(1, 1, w, 1).expand(C, 1, w, 1)
    kw = g.view(1, 1, 1, w).expand(C, 1, 1, w)

    def blur(t):
        return F.conv2d(F.conv2d(t, kh, groups=C), kw, groups=C)

    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a.square()
    sbb = blur(b * b) - mu_b.square()
    sab = blur(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a.square() + mu_b.square() + c1) * (saa + sbb + c2))
    return float(s.mean())


def token_agreement(ids_a: List[torch.Tensor], ids_b: List[torch.Tensor]) -> List[float]:
    """Per scale: fraction of positions with the same sampled token id."""
    return [float((x == y).float().mean()) for x, y in zip(ids_a, ids_b)]


def logit_kl(logits_p: List[torch.Tensor], logits_q: List[torch.Tensor]) -> List[float]:
    """Per scale: mean over tokens of KL(softmax(p) || softmax(q)) in nats (guided logits,
    before top-k/top-p); rounding below 0 is clamped to 0."""
    out = []
    for p, q in zip(logits_p, logits_q):
        lp, lq = F.log_softmax(p.double(), -1), F.log_softmax(q.double(), -1)
        out.append(max(0.0, float((lp.exp() * (lp - lq)).sum(-1).mean())))
    return out


def compare(dense_run, accel_run) -> Dict[str, object]:
    """Fidelity of ``accel_run`` against ``dense_run`` (objects with .image, .ids, .logits, e.g.
    :class:`golden.accel.RunRecord`): psnr (dB), ssim, token_agreement and logit_kl (lists per
    scale), and their means."""
    ta = token_agreement(dense_run.ids, accel_run.ids)
    kl = logit_kl(dense_run.logits, accel_run.logits)
    return {
        "psnr": psnr(dense_run.image, accel_run.image),
        "ssim": ssim(dense_run.image, accel_run.image),
        "token_agreement": ta,
        "logit_kl": kl,
        "token_agreement_mean": sum(ta) / len(ta) if ta else 1.0,
        "logit_kl_mean": sum(kl) / len(kl) if kl else 0.0,
    }
