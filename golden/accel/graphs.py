"""StepGraphs: every KV-cached step of a generation replayed from a CUDA graph.

Why. On a GPU, eager VAR is bound by the host's kernel launches, not by arithmetic: in dense
d30 at 1024 px the steps of 1 to 1296 queries each take 37 to 49 ms whatever their size (README,
``python -m golden.bench.gpu --profile``), while the techniques of golden/accel cut work only in
the last steps. A CUDA graph launches a step's thousands of kernels at once, so the time that
is left is the GPU's, which is what the techniques reduce.

How. ``StepGraphs(inner)`` is a hooks object (``inner``: the hooks it wraps, e.g. an
:class:`~golden.accel.hooks.AcceleratedHooks`, or None for the dense model) that implements the
model's ``step`` hook (:mod:`golden.model.hooks`) and hands every other hook and attribute to
``inner``. For each step it keeps a key (model, step positions, input shapes and dtypes,
autocast state) and counts the generations that ran it:

1. first generation: the step runs eagerly on a side stream (the stream the graphs are captured
   on, so cuBLAS workspaces and flex_attention's compilations exist before any capture);
2. second: the step is captured into a CUDA graph on that stream, then replayed. All graphs
   share one memory pool; tensors one step leaves for a later one (the KV cache, the pruning
   hooks' cached update maps) are allocated inside the graph that writes them, and the graphs
   replay in capture order, which is what makes sharing the pool safe;
3. later generations: the step's inputs (token embeddings, condition, attention bias) are copied
   into the captured input buffers and the graph is replayed.

Every step of one generation must be in the same phase (a graph reads the KV cache that the
previous step's graph wrote): a generation that mixes phases raises RuntimeError, and
:meth:`StepGraphs.reset` drops every graph to start over.

What a step must satisfy to be captured: no host synchronisation inside it, and shapes and the
wrapped hooks' Python decisions fixed per step, the same in every generation.
:func:`graphable` says which hooks do: the dense model, FastVAR pruning alone (fixed n_keep
per row), the step-fixed block-sparse mask (SDPA or flex_attention) and parallel decoding. Token
aggregation and bypass (data-dependent token counts, host syncs), pruning together with the
sparse mask (per-row mask counts), low-bit linears and the attention core's model do not.

What a replay does not do: run the wrapped hooks' Python. Their op counter therefore counts the
first two generations only, and taps record nothing. The logits a replayed step returns are the
graph's output buffer, overwritten by the next replay of that step; the inference loops consume
them before that.

Off CUDA (or with ``enabled=False``) the step runs eagerly, unchanged: the CPU tests check the
plumbing, and the GPU benchmark checks that replayed generations equal eager ones bit for bit
(``python -m golden.bench.gpu --graphs --verify``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import torch

from golden.model.hooks import WrappedHooks

__all__ = ["StepGraphs", "graphable"]


def graphable(hooks) -> Tuple[bool, str]:
    """(True, "") when ``hooks`` (None or an AcceleratedHooks, possibly under wrappers such as
    StepGraphs) can run under StepGraphs, else (False, the reason)."""
    while isinstance(hooks, WrappedHooks):
        hooks = hooks.inner
    if hooks is None:
        return True, ""
    acfg = getattr(hooks, "acfg", None)
    if acfg is None:
        return False, f"{type(hooks).__name__} is not an AcceleratedHooks: its steps are unknown"
    if not getattr(hooks, "fast", False):
        return False, "the hooks' general path syncs with the host in every block (fast=False)"
    if getattr(hooks, "tap", None) is not None:
        return False, "taps record in Python, which a replay does not run"
    if acfg.aggregate or acfg.bypass:
        return False, "aggregation and bypass choose their token counts from the data"
    if acfg.prune and acfg.sparse:
        return False, "pruning with the sparse mask counts per-row masks on the host"
    if acfg.quant or acfg.quant_attn:
        return False, "the low-bit linears and attention are not captured (host-side checks)"
    if acfg.attn_core_last:
        return False, "the attention core's model runs per head in Python"
    return True, ""


class StepGraphs(WrappedHooks):
    """Hooks wrapper replaying each step from a CUDA graph (see the module docstring).
    ``inner``: the wrapped hooks (None: dense); ``enabled``: False runs every step eagerly.
    Raises ValueError when :func:`graphable` rejects ``inner``."""

    def __init__(self, inner=None, enabled: bool = True):
        ok, why = graphable(inner)
        if not ok:
            raise ValueError(f"inner hooks cannot be captured in CUDA graphs: {why}")
        super().__init__(inner)
        self.enabled = bool(enabled)
        self._stream: Optional[torch.cuda.Stream] = None
        self._pool = None
        self._steps = {}            # key -> {"runs": generations seen, and once captured: graph, buffers}
        self._phase: Optional[int] = None
        self.captures = 0           # graphs captured
        self.replays = 0            # graph replays (the capturing generation's one included)

    def reset(self) -> None:
        """Drop every captured graph and buffer; the next generation starts at phase 1."""
        self._steps.clear()
        self._phase = None
        self._pool = None

    def _advance(self, entry, ctx) -> int:
        """Phase (0 eager, 1 capture, 2 replay) of this run of a step, counted in ``entry``; a
        generation's first step (q_begin 0) sets the generation's phase, which every later step
        must share."""
        phase = min(entry["runs"], 2)
        if ctx.q_begin == 0:
            self._phase = phase
        elif phase != self._phase:
            raise RuntimeError(f"StepGraphs: step {ctx.si} is in phase {phase + 1} but this generation "
                               f"began in phase {(self._phase or 0) + 1} (the steps' graphs form one chain "
                               f"through the KV cache); call reset()")
        entry["runs"] += 1
        return phase

    def step(self, var, x_BlC, cond_BD, attn_bias, ctx, run):
        inner_ctx = ctx if ctx.hooks is self.inner else dataclasses.replace(ctx, hooks=self.inner)
        if not self.enabled or x_BlC.device.type != "cuda":
            return run(x_BlC, cond_BD, attn_bias, inner_ctx)
        key = (id(var), ctx.mode, ctx.si, ctx.q_begin, ctx.q_end, tuple(x_BlC.shape), x_BlC.dtype,
               tuple(cond_BD.shape), cond_BD.dtype, None if attn_bias is None else tuple(attn_bias.shape),
               torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), id(self.inner))
        entry = self._steps.setdefault(key, {"runs": 0})
        phase = self._advance(entry, ctx)
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=x_BlC.device)
        main = torch.cuda.current_stream(x_BlC.device)
        if phase == 0:
            self._stream.wait_stream(main)
            with torch.cuda.stream(self._stream):
                out = run(x_BlC, cond_BD, attn_bias, inner_ctx)
            main.wait_stream(self._stream)
            out.record_stream(main)
            return out
        if phase == 1:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            entry["x"], entry["cond"] = x_BlC.clone(), cond_BD.clone()
            entry["bias"] = None if attn_bias is None else attn_bias.clone()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, stream=self._stream):
                entry["out"] = run(entry["x"], entry["cond"], entry["bias"], inner_ctx)
            entry["graph"] = graph
            self.captures += 1
        else:
            entry["x"].copy_(x_BlC)
            entry["cond"].copy_(cond_BD)
            if attn_bias is not None:
                entry["bias"].copy_(attn_bias)
        entry["graph"].replay()
        self.replays += 1
        return entry["out"]

