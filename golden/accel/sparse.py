"""Block-sparse attention masks for VAR (our SparVAR-style static pattern): sinks, cross-scale
local windows, tiles.

Token rule. A query at (i, j) of scale q (side s = patch_nums[q]) may attend to a key at
(u, v) of scale t <= q (side p = patch_nums[t]) when

* t < ``sink_scales`` (attention sinks: every key of the first scales), or
* ``|u - floor(i * p / s)| <= window`` and ``|v - floor(j * p / s)| <= window``: the key lies
  in a Chebyshev window of radius ``window`` (in tokens of the key's scale) around the query's
  position mapped onto that scale by index. For t = q this is the query's own neighbourhood.

Keys of later scales are never visible (VAR's block-causal rule). SparVAR predicts its pattern
from a decision scale at run time; ours is static and index-mapped, so the hardware can build
it from the scale schedule alone.

Tile rule. Queries (from the first query of the step) and keys (from position 0) are cut into
tiles of ``block_q`` x ``block_k`` consecutive tokens. A tile is kept when any of its token
pairs is allowed by the token rule, and a kept tile is computed whole: the effective
token-level mask is the tile mask expanded (:func:`expand_tiles`), intersected with the
block-causal rule. Every query row keeps its own key (window >= 0), so no row is ever empty.
"""

from __future__ import annotations

import functools
from typing import Sequence, Tuple

import torch

__all__ = ["token_tables", "token_mask", "tile_mask", "expand_tiles", "block_mask", "block_density",
           "step_mask"]


@functools.lru_cache(maxsize=None)
def token_tables(patch_nums: Tuple[int, ...]):
    """Per position of the full L sequence: (scale index, row, column, side) as int64 tensors."""
    lvl, row, col, side = [], [], [], []
    for si, pn in enumerate(patch_nums):
        r = torch.arange(pn).repeat_interleave(pn)
        c = torch.arange(pn).repeat(pn)
        lvl.append(torch.full((pn * pn,), si))
        row.append(r)
        col.append(c)
        side.append(torch.full((pn * pn,), pn))
    return tuple(torch.cat(t).to(torch.int64) for t in (lvl, row, col, side))


def token_mask(patch_nums: Sequence[int], q_pos: torch.Tensor, k_pos: torch.Tensor, window: int,
               sink_scales: int) -> torch.Tensor:
    """Token rule (module docstring) for query positions ``q_pos`` (..., n) and key positions
    ``k_pos`` (..., m), both indices into the full L sequence: bool (..., n, m)."""
    lvl, row, col, side = token_tables(tuple(int(p) for p in patch_nums))
    ql, qi, qj, qs = (t[q_pos].unsqueeze(-1) for t in (lvl, row, col, side))
    kl, ku, kv, ks = (t[k_pos].unsqueeze(-2) for t in (lvl, row, col, side))
    mi = torch.div(qi * ks, qs, rounding_mode="floor")
    mj = torch.div(qj * ks, qs, rounding_mode="floor")
    local = ((ku - mi).abs() <= window) & ((kv - mj).abs() <= window)
    return (kl <= ql) & ((kl < sink_scales) | local)


def tile_mask(allowed: torch.Tensor, block_q: int, block_k: int) -> torch.Tensor:
    """(nQb, nKb) bool: tile (a, b) kept when any pair in rows [a*bq, (a+1)*bq) x columns
    [b*bk, (b+1)*bk) of ``allowed`` (n, m) is True (the last tiles may be partial)."""
    n, m = allowed.shape[-2:]
    nqb, nkb = -(-n // block_q), -(-m // block_k)
    padded = torch.zeros(*allowed.shape[:-2], nqb * block_q, nkb * block_k, dtype=torch.bool, device=allowed.device)
    padded[..., :n, :m] = allowed
    return padded.reshape(*allowed.shape[:-2], nqb, block_q, nkb, block_k).any(-1).any(-2)


def expand_tiles(tiles: torch.Tensor, n: int, m: int, block_q: int, block_k: int) -> torch.Tensor:
    """Token-level (n, m) mask of a tile mask: every pair inside a kept tile."""
    return tiles.repeat_interleave(block_q, -2).repeat_interleave(block_k, -1)[..., :n, :m]


def _scale_range(patch_nums, si):
    b = sum(p * p for p in patch_nums[:si])
    return b, b + patch_nums[si] ** 2


def block_mask(patch_nums: Sequence[int], scale_index: int, block_q: int = 16, block_k: int = 16,
               window: int = 1, sink_scales: int = 1) -> torch.Tensor:
    """Tile mask (nQb, nKb) of the step of scale ``scale_index``: its pn^2 queries against the
    keys of scales 0..scale_index (module docstring)."""
    patch_nums = tuple(int(p) for p in patch_nums)
    if not 0 <= scale_index < len(patch_nums):
        raise ValueError(f"scale_index={scale_index} must be in [0, {len(patch_nums) - 1}]")
    for name, v in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be an integer >= 1")
    if not isinstance(window, int) or window < 0:
        raise ValueError(f"window={window!r} must be an integer >= 0")
    b, e = _scale_range(patch_nums, scale_index)
    return tile_mask(token_mask(patch_nums, torch.arange(b, e), torch.arange(e), window, sink_scales),
                     block_q, block_k)


def block_density(mask: torch.Tensor) -> float:
    """Fraction of kept tiles."""
    return float(mask.float().mean()) if mask.numel() else 1.0


@functools.lru_cache(maxsize=64)
def step_mask(patch_nums: Tuple[int, ...], q_begin: int, q_end: int, block_q: int, block_k: int,
              window: int, sink_scales: int) -> torch.Tensor:
    """Effective token mask (q_end - q_begin, q_end) of a dense step over positions
    [q_begin, q_end) (one scale, or several with parallel decoding): tiles expanded, block-causal."""
    q, k = torch.arange(q_begin, q_end), torch.arange(q_end)
    tok = token_mask(patch_nums, q, k, window, sink_scales)
    tiles = tile_mask(tok, block_q, block_k)
    lvl = token_tables(patch_nums)[0]
    causal = lvl[k].unsqueeze(0) <= lvl[q].unsqueeze(1)
    return expand_tiles(tiles, q.numel(), k.numel(), block_q, block_k) & causal
