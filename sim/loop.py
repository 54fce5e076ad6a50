"""RTL-in-the-loop generation: the emitted Verilog computes core operations inside a VAR run.

:class:`RTLBackend` is a :class:`golden.accel.backend.CoreBackend` whose ``topk`` and
``attention`` run on the emitted top-k and attention cores (Verilator), so their results flow
back into the generation: the sampled tokens, the next scale's input, the image. Every call is
also computed by golden/numerics and compared bit for bit (a row per call). Because golden/numerics
is the specification, a correct RTL must give the same image as the golden run with the same
hardware numerics, bit for bit; :func:`run_in_the_loop` checks that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from golden.accel.backend import CoreBackend
from golden.numerics import attention as attn_num

__all__ = ["RTLBackend", "LoopResult", "run_in_the_loop", "core_params_for", "sampling_k", "LOOP_ACCEL", "LIVELY"]

#: Random-weight init knobs of the tiny runs (stronger AdaLN and head, so techniques visibly act).
LIVELY = {"init_adaln_gamma": 0.5, "init_head": 1.0}


def sampling_k(vocab_size: int) -> int:
    """The sampling top-k: VAR's demo k = 900 of 4096, and for small vocabularies a quarter of
    them (the tiny preset: 16 of 64), so the selection stays a real one (k < V)."""
    return min(900, vocab_size // 4)


def core_params_for(var_cfg):
    """RTL parameter sets of the top-k and attention cores for a VAR model: (topk, attention).

    Top-k on full 32-bit float keys (exact sampling thresholds) over the vocabulary; attention
    with the model's head dim and the block-sparse tiles of ``AccelConfig.base`` (4 x 4 for the
    tiny preset, 16 x 16 for the official schedules), key blocks for the whole token sequence.
    One parameter set per model keeps every call on one Verilator build.
    """
    from golden.accel.config import AccelConfig
    a = AccelConfig.base(var_cfg)
    L = sum(p * p for p in var_cfg.patch_nums)
    kblocks = 1 << max(4, (-(-L // a.block_k) - 1).bit_length())
    topk = {"key_bits": 32, "radix_bits": 8, "max_len": 1 << (var_cfg.vocab_size - 1).bit_length()}
    attention = {"D": var_cfg.embed_dim // var_cfg.num_heads, "Br": a.block_q, "Bc": a.block_k, "max_kblocks": kblocks}
    return topk, attention

#: The acceleration set of the in-the-loop run: block-sparse attention, MXFP4 linears, hardware
#: sampling (top-k on the core) and the last scale's block-0 attention on the attention core.
LOOP_ACCEL = "sparse,mxfp4,hwsample,attncore"


class RTLBackend(CoreBackend):
    """Core operations on the emitted Verilog; each call is checked against golden/numerics.

    ``rows``: one dict per call (core, tensor, exact, total, cycles, note, mismatch), the same
    shape as the replay rows of :mod:`sim.e2e`.
    """

    name = "rtl"

    def __init__(self, topk_params: dict, attention_params: dict):
        # One Verilator build per parameter set: fixed sizes (core_params_for) keep every call
        # on the same model.
        self.topk_params = dict(topk_params)
        self.attention_params = dict(attention_params)
        self.rows = []
        self._golden = CoreBackend()

    def topk(self, logits_RV, k):
        from sim.e2e import result_row
        from sim.rtl import rtl_topk
        R, V = logits_RV.shape
        # 32-bit keys: the full float32 order, so the k-th key is the exact sampling threshold.
        result = rtl_topk(logits_RV.float().numpy(), k=k, **self.topk_params)
        got = np.asarray(result.outputs["indices"], dtype=np.int64)
        golden = self._golden.topk(logits_RV, k).numpy()
        self.rows.append(result_row(f"topk: sampling, {R} token{'s' if R != 1 else ''}", got, golden, result.cycles,
                              f"top-{k} of {V} per token (RTL result used for sampling)", floor=R * V))
        return torch.from_numpy(got)

    def attention(self, q_nD, k_LD, v_LD, tiles, scale, numerics, tag=""):
        from sim.e2e import attention_floor, result_row
        from sim.rtl import rtl_attention
        nm = numerics
        p = self.attention_params
        if (nm.D, nm.Br, nm.Bc) != (p["D"], p["Br"], p["Bc"]):
            raise ValueError(f"attention numerics (D, Br, Bc) = {(nm.D, nm.Br, nm.Bc)} differ from the RTL "
                             f"parameters {(p['D'], p['Br'], p['Bc'])}")
        result = rtl_attention(q_nD.float().numpy(), k_LD.float().numpy(), v_LD.float().numpy(), tiles.numpy(),
                               scale=scale, qk_fmt=nm.qk_fmt, v_fmt=nm.v_fmt, block=nm.block, **p)
        y = torch.as_tensor(np.asarray(result.outputs["y"], dtype=np.int64))
        ex = torch.as_tensor(np.asarray(result.outputs["exp"], dtype=np.int64))
        golden = attn_num.attention_exact(q_nD.float(), k_LD.float(), v_LD.float(), scale=scale, mask=tiles,
                                          numerics=nm)
        kept = int(tiles.sum())
        self.rows.append(result_row(f"attention: {tag}", torch.cat([y, ex], 1).numpy(),
                              torch.cat([golden.out_fixed, golden.out_exp], 1).numpy(), result.cycles,
                              f"Lq {q_nD.shape[0]}, Lk {k_LD.shape[0]}, tiles kept {kept}/{tiles.numel()} "
                              f"(RTL result used in the run)",
                              floor=attention_floor(tiles, q_nD.shape[0], k_LD.shape[0], nm.Br, nm.Bc)))
        return attn_num.output_to_float(y, ex, nm)


@dataclass
class LoopResult:
    """Images (1, 3, H, W) of the runs and the per-call comparison rows of the RTL backend."""

    image_rtl: torch.Tensor
    image_golden: torch.Tensor
    ids_rtl: list
    ids_golden: list
    rows: list = field(default_factory=list)
    accel: str = LOOP_ACCEL

    @property
    def identical(self) -> bool:
        return torch.equal(self.image_rtl, self.image_golden) and all(
            torch.equal(a, b) for a, b in zip(self.ids_rtl, self.ids_golden))


def run_in_the_loop(var, seed: int = 0, accel: str = LOOP_ACCEL, top_k=None, top_p: float = 0.95,
                    cfg: float = 4.0, label: int = 0) -> LoopResult:
    """Generate one image twice with the same hardware numerics: core operations from golden/numerics,
    then from the RTL (:class:`RTLBackend`). The two must agree bit for bit (``identical``).
    ``top_k`` defaults to :func:`sampling_k` of the vocabulary."""
    from golden.accel.generate import run
    top_k = sampling_k(var.cfg.vocab_size) if top_k is None else top_k
    golden = run(var, accel, seed, label, 1, cfg, top_k, top_p, backend=CoreBackend())
    backend = RTLBackend(*core_params_for(var.cfg))
    rtl = run(var, accel, seed, label, 1, cfg, top_k, top_p, backend=backend)
    return LoopResult(rtl.image, golden.image, rtl.ids, golden.ids, backend.rows, accel)
