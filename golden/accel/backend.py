"""Where the accelerated pipeline's core datapaths are computed: golden/numerics, or a stand-in.

The accelerated pipeline calls a backend for the operations that a varaccel core performs and
whose result flows back into the generation:

* ``topk``: the sampling top-k of every token's guided logits (the radix sort / top-k core);
* ``attention``: one head's attention, on the attention core's numerics, with the core's tile
  mask (the unified attention core).

:class:`CoreBackend` computes them with golden/numerics, the bit-exact specification. A
subclass that runs the emitted Verilog instead (``sim.loop.RTLBackend``) therefore has to give
the same generation bit for bit: that is the RTL-in-the-loop check of the main job.
"""

from __future__ import annotations

import torch

from golden.numerics import attention as attn_num
from golden.numerics import sort as hsort

__all__ = ["CoreBackend", "core_tile_mask"]


def core_tile_mask(allowed_nL: torch.Tensor, Br: int, Bc: int) -> torch.Tensor:
    """Block mask (ceil(n / Br), ceil(L / Bc)) of the attention core from a token mask (n, L).

    The core computes whole (query tile, key block) pairs: a pair is kept when any token pair in
    it is allowed. With Br = block_q and Bc = block_k of the block-sparse pattern this is that
    pattern exactly; with other tile sizes it is the smallest tile superset of the token mask.
    """
    n, L = allowed_nL.shape
    nq, nk = -(-n // Br), -(-L // Bc)
    padded = torch.zeros(nq * Br, nk * Bc, dtype=torch.bool)
    padded[:n, :L] = allowed_nL
    return padded.reshape(nq, Br, nk, Bc).any(dim=3).any(dim=1)


class CoreBackend:
    """The golden backend: every core operation from golden/numerics (the specification)."""

    name = "golden"

    def topk(self, logits_RV: torch.Tensor, k: int) -> torch.Tensor:
        """Indices (R, k) of the k largest float32 logits per row, descending, ties to the lower
        index (the top-k core's contract on full 32-bit order-preserving keys)."""
        return hsort.topk(hsort.float_to_key(logits_RV.float()), k)

    def attention(self, q_nD, k_LD, v_LD, tiles, scale: float, numerics: attn_num.AttnNumerics,
                  tag: str = "") -> torch.Tensor:
        """Attention of one head on the attention core's numerics: float64 (n, D).

        ``q_nD``/``k_LD``/``v_LD`` float tensors (quantized here with the core's MX formats),
        ``tiles`` the core's block mask (see :func:`core_tile_mask`), ``scale`` the softmax
        scale. ``tag`` names the call (scale, block, row, head) for a backend that reports.
        """
        return attn_num.attention_exact(q_nD.float(), k_LD.float(), v_LD.float(), scale=scale, mask=tiles,
                                        numerics=numerics).out
