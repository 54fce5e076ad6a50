"""Block-sparse attention through ``torch.nn.attention.flex_attention``: the kernel of the sparse
technique's fast path on a GPU.

Why. A boolean ``attn_mask`` makes ``F.scaled_dot_product_attention`` pick its memory-efficient
kernel, which computes every (query tile, key tile) and only then masks, so the sparse mask
of :mod:`golden.accel.sparse` saved no time. flex_attention skips the tiles that a ``BlockMask``
marks empty, and evaluates a mask function only inside tiles it marks partial.

Same mask, coarser tiles. Our mask is defined on tiles of ``block_q`` x ``block_k`` (16 x 16 at
256 px and above) expanded to tokens (:func:`golden.accel.sparse.step_mask`, or that mask
gathered at the tokens a block runs on). flex's kernel tiles are larger (64 or 128), so
:func:`block_layout` cuts the token mask into ``flex_q`` x ``flex_k`` blocks and classifies each
one: no allowed pair (skipped), every pair allowed (full: computed without the mask
function), or some (partial: computed with a mask function that reads the token mask). The
kept (query, key) pairs are therefore exactly those of the token mask; only the order of the
floating-point operations differs from SDPA's.

The mask function's cost decides the speed: at 1024 px every kept 128 x 128 block of the
sparse pattern is partial, and a function gathering one byte per (query, key) from the token
mask made the kernel ten times slower than the block sparsity alone (H200, last step: 5.5 ms
against 0.59 ms without a mask function, and 1.47 ms for dense flash SDPA). Where the token
mask is a tile mask expanded (one scale per step), :func:`block_mask` takes the tile table
instead: the function then reads the tile index of each query row and key column (one load
per row or column) and one bit of a table small enough to stay in cache.
"""

from __future__ import annotations

import inspect
from typing import Optional, Tuple

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

__all__ = ["block_layout", "block_mask", "flex_attend", "effective_mask"]


def _check_block(name, v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 16 or v % 16:
        raise ValueError(f"{name}={v!r} must be a positive multiple of 16 (flex's kernel tiles)")


def _padded(mask: torch.Tensor, flex_q: int, flex_k: int) -> torch.Tensor:
    """``mask`` (B, n, m) zero-padded to whole blocks (B, nqb * flex_q, nkb * flex_k)."""
    B, n, m = mask.shape
    nqb, nkb = -(-n // flex_q), -(-m // flex_k)
    if (nqb * flex_q, nkb * flex_k) == (n, m):
        return mask.contiguous()
    out = torch.zeros(B, nqb * flex_q, nkb * flex_k, dtype=torch.bool, device=mask.device)
    out[:, :n, :m] = mask
    return out


def block_layout(mask: torch.Tensor, flex_q: int = 128, flex_k: int = 128
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """flex's block-sparse layout of a token mask ``mask`` (B, n, m) bool (True = attend):
    ``(kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices)``, int32, shapes
    (B, 1, nqb) and (B, 1, nqb, nkb) (one head entry, broadcast over heads).

    Block (a, b) covers queries [a*flex_q, (a+1)*flex_q) and keys [b*flex_k, (b+1)*flex_k);
    pairs past n or m count as not allowed, so a ragged edge block is never full and goes
    through the mask function (which the padding makes False there). Row a of ``kv_indices``
    lists its partial blocks first, in ascending order, and ``kv_num_blocks[..., a]`` says how
    many; likewise ``full_*`` for the full blocks."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 3:
        raise ValueError("mask must be a bool tensor of shape (batch, queries, keys)")
    _check_block("flex_q", flex_q)
    _check_block("flex_k", flex_k)
    B = mask.shape[0]
    padded = _padded(mask, flex_q, flex_k)
    nqb, nkb = padded.shape[1] // flex_q, padded.shape[2] // flex_k
    count = padded.view(B, nqb, flex_q, nkb, flex_k).sum((2, 4))
    full = count == flex_q * flex_k
    partial = (count > 0) & ~full

    def pack(sel):
        num = sel.sum(-1, dtype=torch.int32)
        # stable: the selected blocks first, in ascending key-block order
        idx = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return num.unsqueeze(1).contiguous(), idx.unsqueeze(1).contiguous()

    return pack(partial) + pack(full)


def _lookup_mod(table: torch.Tensor):
    """Mask function reading the padded token mask ``table`` (1 or B, nqb*flex_q, nkb*flex_k)."""
    if table.shape[0] == 1:
        def mask_mod(b, h, q_idx, kv_idx):
            return table[0, q_idx, kv_idx]
    else:
        def mask_mod(b, h, q_idx, kv_idx):
            return table[b, q_idx, kv_idx]
    return mask_mod


def _tile_mod(tiles: torch.Tensor, q_tile: torch.Tensor, k_tile: torch.Tensor):
    """Mask function ``tiles[q_tile[b, q], k_tile[b, kv]]`` (b = 0 when the index tables have one
    row). ``tiles`` has a last all-False row and column that padded indices point to."""
    if q_tile.shape[0] == 1:
        def mask_mod(b, h, q_idx, kv_idx):
            return tiles[q_tile[0, q_idx], k_tile[0, kv_idx]]
    else:
        def mask_mod(b, h, q_idx, kv_idx):
            return tiles[q_tile[b, q_idx], k_tile[b, kv_idx]]
    return mask_mod


def _tile_tables(tiles, q_tile, k_tile, n_pad, m_pad):
    """``tiles`` with an all-False last row and column, and the index tables (B, n) / (B, m)
    padded to (B, n_pad) / (B, m_pad) with indices of that row and column (int32)."""
    T = torch.zeros(tiles.shape[0] + 1, tiles.shape[1] + 1, dtype=torch.bool, device=tiles.device)
    T[:-1, :-1] = tiles
    qt = torch.full((q_tile.shape[0], n_pad), tiles.shape[0], dtype=torch.int32, device=tiles.device)
    qt[:, :q_tile.shape[1]] = q_tile
    kt = torch.full((k_tile.shape[0], m_pad), tiles.shape[1], dtype=torch.int32, device=tiles.device)
    kt[:, :k_tile.shape[1]] = k_tile
    return T, qt, kt


# flex's BlockMask.from_kv_blocks also builds the transposed (query-block) layout for the
# backward pass unless told not to; inference needs none. The switch is newer than some torch
# versions the benchmark meets, hence the check.
_FROM_KV_TAKES_COMPUTE_Q = "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters


def block_mask(mask: torch.Tensor, flex_q: int = 128, flex_k: int = 128, tiles: Optional[torch.Tensor] = None,
               q_tile: Optional[torch.Tensor] = None, k_tile: Optional[torch.Tensor] = None):
    """A flex ``BlockMask`` that keeps exactly the True pairs of ``mask`` (B, n, m) bool; B = 1
    broadcasts over the batch. Built with tensor ops only (no host sync).

    Optional tile form of the same mask, for a cheaper mask function (module docstring): a
    tile table ``tiles`` (nT, mT) bool and the tile of each query ``q_tile`` (B, n) and key
    ``k_tile`` (B, m) (B may be 1), with ``mask[b, i, j] == tiles[q_tile[b, i], k_tile[b, j]]``;
    the caller guarantees that equality (the tests check it on the hooks' masks)."""
    layout = block_layout(mask, flex_q, flex_k)
    n, m = mask.shape[1:]
    n_pad, m_pad = -(-n // flex_q) * flex_q, -(-m // flex_k) * flex_k
    if tiles is None:
        mod = _lookup_mod(_padded(mask, flex_q, flex_k))
    else:
        if q_tile is None or k_tile is None or q_tile.shape[-1] != n or k_tile.shape[-1] != m:
            raise ValueError("q_tile and k_tile must be given with tiles, shaped (B, queries) and (B, keys)")
        mod = _tile_mod(*_tile_tables(tiles, q_tile, k_tile, n_pad, m_pad))
    kw = dict(BLOCK_SIZE=(flex_q, flex_k), mask_mod=mod, seq_lengths=(n, m))
    if _FROM_KV_TAKES_COMPUTE_Q:
        kw["compute_q_blocks"] = False
    return BlockMask.from_kv_blocks(*layout, **kw)


def effective_mask(bm, n: int, m: int) -> torch.Tensor:
    """Token mask (B, n, m) that a BlockMask ``bm`` makes flex compute, from its layout alone:
    full blocks whole, partial blocks through its mask function, other blocks not at all. For
    tests: it must equal the mask the BlockMask was built from."""
    fq, fk = bm.BLOCK_SIZE
    B, _, nqb = bm.kv_num_blocks.shape
    nkb = bm.kv_indices.shape[-1]

    def dense(num, idx):
        out = torch.zeros(B, nqb, nkb, dtype=torch.bool, device=num.device)
        for b in range(B):
            for a in range(nqb):
                out[b, a, idx[b, 0, a, :int(num[b, 0, a])].long()] = True
        return out

    part = dense(bm.kv_num_blocks, bm.kv_indices)
    full = dense(bm.full_kv_num_blocks, bm.full_kv_indices) if bm.full_kv_num_blocks is not None \
        else torch.zeros_like(part)
    if (part & full).any():
        raise AssertionError("a block is listed as both partial and full")
    q = torch.arange(nqb * fq)
    k = torch.arange(nkb * fk)
    mod = torch.stack([bm.mask_mod(torch.tensor(b), torch.tensor(0), q[:, None], k[None, :]) for b in range(B)])
    up = lambda t: t.repeat_interleave(fq, 1).repeat_interleave(fk, 2)  # noqa: E731
    eff = up(full) | (up(part) & mod)
    return eff[:, :n, :m]


# ------------------------------------------------------------------------------ the kernel
_compiled = None


def _kernel():
    """flex_attention compiled, specialised to each shape: every VAR step has its own query and
    key lengths, so each compiles once (2 to 7 s on an H200, in the warm-up run). One
    compilation with dynamic shapes was measured slower on the H200 (7.0 against 5.5 ms at the
    last 1024 px step with the token-mask function; 0.24 against 0.10 to 0.17 ms of host time
    per call). On CPU, the eager flex_attention (a dense reference that honours the
    mask function but not the block layout) serves tests.

    Dynamo's settings are raised for the whole process here, once: more recompilations than its
    default limit of 8 (one per step shape and mask form: 9 masked steps at 1024 px, more
    with pruning and per architecture), and an error instead of its silent fallback to the
    eager flex_attention past the limit, which would materialise every score. (Patching the
    settings around each call instead costs about a millisecond per call.)"""
    global _compiled
    if _compiled is None:
        cfg = torch._dynamo.config
        cfg.recompile_limit = max(cfg.recompile_limit, 256)
        cfg.fail_on_recompile_limit_hit = True
        _compiled = torch.compile(flex_attention, dynamic=False, fullgraph=True)
    return _compiled


def flex_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bm, scale: float,
                kernel_options: Optional[dict] = None) -> torch.Tensor:
    """softmax(scale q k^T, masked by ``bm``) v for (B, H, n, c) q and (B, H, m, c) k, v.

    Under autocast, q, k and v are cast to the autocast dtype first, as SDPA's autocast rule
    does (flex_attention has none, and needs one dtype for all three). On CUDA the compiled
    kernel runs (see :func:`_kernel`)."""
    dev = q.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        q, k, v = q.to(dt), k.to(dt), v.to(dt)
    elif not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype outside autocast, got {q.dtype}, {k.dtype}, {v.dtype}")
    if dev == "cuda":
        return _kernel()(q, k, v, block_mask=bm, scale=scale, kernel_options=kernel_options)
    with torch.autocast(dev, enabled=False):
        return flex_attention(q, k, v, block_mask=bm, scale=scale)
