"""Token sampling of VAR inference: top-k / top-p filtering then multinomial sampling.

Same semantics and signature as the official ``sample_with_top_k_top_p_`` (our own code):

* top-k (k > 0): every logit strictly below the k-th largest of its row becomes -inf
  (ties with the k-th largest are kept, so more than k may survive).
* top-p (p > 0): sort the row ascending, softmax, cumulative sum; entries whose cumulative
  probability is <= 1 - p are removed, the largest entry always survives.
* one multinomial draw per row (``num_samples`` draws; negative ``num_samples`` means
  without replacement) from the softmax of what is left, with generator ``rng``.

The logits tensor is modified in place (trailing underscore), as in the official code.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["top_k_top_p_filter_", "sample_with_top_k_top_p_", "gumbel_softmax_with_rng"]


def top_k_top_p_filter_(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Mask (in place, with -inf) the logits that top-k / top-p sampling may not pick."""
    V = logits_BlV.shape[-1]
    if top_k > 0:
        kth_Bl1 = logits_BlV.topk(min(int(top_k), V), dim=-1, largest=True, sorted=False).values.amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth_Bl1, -torch.inf)
    if top_p > 0:
        # stable: tied logits at the top-p cut are then dropped lower index first, the rule the
        # sort core implements (golden.numerics.sort.topk_topp_mask); torch.sort is not stable on CPU.
        asc_vals, asc_idx = logits_BlV.sort(dim=-1, descending=False, stable=True)
        drop_sorted = asc_vals.softmax(dim=-1).cumsum(dim=-1) <= (1.0 - top_p)
        drop_sorted[..., -1] = False
        drop = torch.zeros_like(drop_sorted).scatter_(-1, asc_idx, drop_sorted)
        logits_BlV.masked_fill_(drop, -torch.inf)
    return logits_BlV


def sample_with_top_k_top_p_(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                             rng: Optional[torch.Generator] = None, num_samples: int = 1) -> torch.Tensor:
    """Sample token ids (B, l, |num_samples|) from logits (B, l, V) after top-k / top-p filtering."""
    B, l, V = logits_BlV.shape
    top_k_top_p_filter_(logits_BlV, top_k=top_k, top_p=top_p)
    probs_NV = logits_BlV.softmax(dim=-1).reshape(-1, V)
    idx = torch.multinomial(probs_NV, num_samples=abs(num_samples), replacement=num_samples >= 0, generator=rng)
    return idx.reshape(B, l, abs(num_samples))


def gumbel_softmax_with_rng(logits: torch.Tensor, tau: float = 1.0, hard: bool = False, eps: float = 1e-10,
                            dim: int = -1, rng: Optional[torch.Generator] = None) -> torch.Tensor:
    """Gumbel-softmax whose noise comes from ``rng`` (used by ``more_smooth`` inference)."""
    if rng is None:
        return F.gumbel_softmax(logits, tau=tau, hard=hard, eps=eps, dim=dim)
    g = -torch.empty_like(logits).exponential_(generator=rng).log()
    y = ((logits + g) / tau).softmax(dim)
    if not hard:
        return y
    one_hot = torch.zeros_like(logits).scatter_(dim, y.argmax(dim, keepdim=True), 1.0)
    return one_hot - y.detach() + y
