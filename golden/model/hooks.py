"""Extension points of the VAR golden model, for the acceleration code in golden/accel.

Every forward pass of :class:`golden.model.var.VAR` (teacher forcing or one KV-cached
autoregressive step) carries a :class:`StepContext` down to each block. The context holds an
optional ``hooks`` object; the model asks it, by attribute name, for the methods below and
falls back to the exact dense computation when the object lacks one (or when hooks is None).
So a hook object implements only what it changes, and the state_dict is never touched.

``attend(attn, q_BHLc, k_BHLc, v_BHLc, attn_bias, ctx) -> o_BHLc``
    The attention core of one block, after projection, l2-normalisation and the KV cache:
    q is (B, H, l, c) for this step's queries; k, v are (B, H, kv_len, c) with every cached
    scale. ``attn_bias`` is an additive (1, 1, l, kv_len) mask (teacher forcing) or None (KV-
    cached step: every key is visible). ``attn.scale`` is the softmax scale (1 with l2 norm).
    Default: :meth:`SelfAttention.dense_attend` (``F.scaled_dot_product_attention``).
    Block-sparse masks, quantized attention or score taps replace this one method.

``linear(layer, x, bias, ctx) -> y``
    Every nn.Linear of the transformer (``layer.hook_name`` is its state_dict prefix, e.g.
    ``"blocks.3.attn.mat_qkv"``, ``"blocks.3.ffn.fc2"``, ``"head"``). ``bias`` is the bias to
    add (for ``mat_qkv`` the concatenation q_bias | 0 | v_bias). Default ``F.linear``.
    Low-bit weight/activation quantization replaces this.

``block(block, x_BLC, cond_BD, attn_bias, ctx, run) -> x_BLC``
    Wraps a whole transformer block; ``run(x_BLC, attn_bias)`` computes the unmodified block.
    Token pruning / aggregation / bypass (FastVAR, VAR-Turbo-style) go here: forward a subset
    of the tokens through ``run`` and rebuild the rest. Note the KV cache then holds only what
    ``run`` saw.

``step(var, x_BlC, cond_BD, attn_bias, ctx, run) -> logits_2BlV``
    Wraps the transformer pass of one KV-cached step (every block and the head);
    ``run(x_BlC, cond_BD, attn_bias, ctx)`` computes it, and the blocks see the hooks of the
    ``ctx`` given to ``run``. For running a step differently, not for changing its result:
    :class:`golden.accel.graphs.StepGraphs` replays it from a CUDA graph.

``on_scale_end(ctx, out)``
    Called once per autoregressive step with a :class:`ScaleOutput` (raw 2B-batch logits before
    guidance, sampled ids, f_hat): for tapping tensors out of a golden run.

:class:`VARHooks` is a do-nothing base class documenting these signatures.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["StepContext", "ScaleOutput", "VARHooks", "WrappedHooks", "hooked_linear", "get_hook"]


@dataclass(frozen=True)
class StepContext:
    mode: str                       # "tf": teacher forcing, all scales at once; "ar": one cached step
    patch_nums: Tuple[int, ...]
    q_begin: int                    # position of the first query token in the full L sequence
    q_end: int                      # one past the last query token
    si: Optional[int] = None        # scale index of the queries in "ar" mode (None in "tf")
    block_idx: int = -1             # set for the block being run (-1 outside blocks)
    batch_cfg: bool = False         # True when the batch is [cond; uncond] (CFG doubled)
    hooks: Any = None

    @property
    def kv_len(self) -> int:
        """Keys visible to this step's queries (everything up to the end of its own scale)."""
        return self.q_end

    def with_block(self, block_idx: int) -> "StepContext":
        return dataclasses.replace(self, block_idx=block_idx)


@dataclass
class ScaleOutput:
    si: int
    pn: int
    logits_2BlV: torch.Tensor       # raw logits, cond half then uncond half, before guidance
    idx_Bl: torch.Tensor            # sampled token ids (B, pn*pn)
    f_hat: torch.Tensor             # (B, Cvae, H, W) after adding this scale


def get_hook(ctx: Optional[StepContext], name: str):
    if ctx is None or ctx.hooks is None:
        return None
    return getattr(ctx.hooks, name, None)


_DEFAULT = object()


def hooked_linear(layer: nn.Linear, x: torch.Tensor, ctx: Optional[StepContext], bias=_DEFAULT) -> torch.Tensor:
    """``layer(x)`` (or with an overriding ``bias``), routed through ``ctx.hooks.linear`` if present."""
    b = layer.bias if bias is _DEFAULT else bias
    fn = get_hook(ctx, "linear")
    if fn is not None:
        return fn(layer, x, b, ctx)
    return F.linear(x, layer.weight, b)


class VARHooks:
    """Base class: each method reproduces the dense model exactly. Subclass and override."""

    def attend(self, attn, q_BHLc, k_BHLc, v_BHLc, attn_bias, ctx: StepContext):
        return attn.dense_attend(q_BHLc, k_BHLc, v_BHLc, attn_bias)

    def linear(self, layer: nn.Linear, x, bias, ctx: StepContext):
        return F.linear(x, layer.weight, bias)

    def block(self, block, x_BLC, cond_BD, attn_bias, ctx: StepContext, run):
        return run(x_BLC, attn_bias)

    def step(self, var, x_BlC, cond_BD, attn_bias, ctx: StepContext, run):
        return run(x_BlC, cond_BD, attn_bias, ctx)

    def on_scale_end(self, ctx: StepContext, out: ScaleOutput):
        pass


class WrappedHooks:
    """Base of hooks objects that wrap another (``inner``; None: the dense model) to change how a
    generation runs, not what it computes (CUDA graphs, step clocks): every hook and attribute
    the wrapper does not define is ``inner``'s, so wrappers stack."""

    def __init__(self, inner=None):
        self.inner = inner

    def __getattr__(self, name):
        # only reached for names the wrapper lacks; "inner" itself missing means __init__ did
        # not run (e.g. during unpickling): no recursion
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

