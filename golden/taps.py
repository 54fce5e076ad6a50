"""Taps: the tensors each hardware core sees in a golden VAR run, saved as ``.npz``.

For the chosen scales, blocks and heads a :class:`TapRecorder` (attached to
:class:`golden.accel.AcceleratedHooks`) records, under ``"s{si}.b{b}.h{h}.<name>"``-style keys:

* attention core, per head: ``q``, ``k``, ``v`` as fed to attention (after L2 norm and the
  per-head gain, after any MX fake quantization; (rows, n, head_dim), k/v with the whole KV
  cache), and per block ``qpos``/``kpos`` (positions in the L sequence, -1 = pad) and ``mask``
  (bool (rows, n, kv): the effective attention mask; all True when dense);
* sort core: ``s{si}.logits_cond`` / ``logits_uncond`` / ``logits_guided`` (B, n, V), raw
  logits before guidance and after it, before top-k/top-p, and ``ids``; ``s{si}.b{b}.pivot_scores``
  (rows, n) float32 and ``pivot_keep`` (the kept indices) at pruned scales;
* FP datapath: ``s{si}.<linear name>.x``, the input activations of one named linear layer as
  fed (with token subsets: the gathered rows, pads included; ``qpos`` of the block says which
  are real), and ``<linear name>.weight`` / ``.bias`` once.

``save`` writes them with ``__config__``: a JSON string (tap spec, AccelConfig, VARConfig,
seed, sampling arguments). With parallel decoding a step covering several scales is tapped under
its first scale.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch

__all__ = ["TapSpec", "TapRecorder", "Taps", "load_taps", "run_with_taps"]

KINDS = ("qkv", "mask", "logits", "scores", "linear")


@dataclass(frozen=True)
class TapSpec:
    """What to record. ``scales=None``: every scale; ``linear``: a layer name such as
    ``"blocks.0.ffn.fc2"`` (None: no linear tap); ``kinds``: subset of qkv, mask, logits,
    scores, linear."""
    scales: Optional[Tuple[int, ...]] = None
    blocks: Tuple[int, ...] = (0,)
    heads: Tuple[int, ...] = (0,)
    linear: Optional[str] = "blocks.0.ffn.fc2"
    kinds: Tuple[str, ...] = KINDS

    def __post_init__(self):
        for k in self.kinds:
            if k not in KINDS:
                raise ValueError(f"TapSpec.kinds: {k!r} is unknown: must be among {KINDS}")

    @classmethod
    def make(cls, taps) -> "TapSpec":
        if taps is None:
            return cls()
        if isinstance(taps, TapSpec):
            return taps
        if isinstance(taps, dict):
            kw = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in taps.items()}
            return cls(**kw)
        raise ValueError(f"taps must be a TapSpec, a dict or None, got {taps!r}")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


class TapRecorder:
    """Collects arrays during a run; ``cfg``: the guidance scale, to record guided logits."""

    def __init__(self, spec=None, cfg: float = 4.0, num_scales: Optional[int] = None):
        self.spec = TapSpec.make(spec)
        self.cfg = float(cfg)
        self.num_scales = num_scales
        self.arrays: Dict[str, np.ndarray] = {}

    def _scale_ok(self, si) -> bool:
        return si is not None and (self.spec.scales is None or si in self.spec.scales)

    def on_attend(self, ctx, q, k, v, allowed, qpos=None, kpos=None):
        s = self.spec
        if ctx.mode != "ar" or not self._scale_ok(ctx.si) or ctx.block_idx not in s.blocks:
            return
        p = f"s{ctx.si}.b{ctx.block_idx}"
        if "qkv" in s.kinds:
            for h in s.heads:
                if h < q.shape[1]:
                    for name, t in (("q", q), ("k", k), ("v", v)):
                        self.arrays[f"{p}.h{h}.{name}"] = _np(t[:, h].float())
        if "mask" in s.kinds:
            R, _, n, _ = q.shape
            m = torch.ones(R, n, k.shape[2], dtype=torch.bool) if allowed is None else allowed
            self.arrays[f"{p}.mask"] = _np(m)
            if qpos is not None:
                self.arrays[f"{p}.qpos"] = _np(qpos)
                self.arrays[f"{p}.kpos"] = _np(kpos)

    def on_scores(self, ctx, si, b, scores, keep):
        if "scores" in self.spec.kinds and self._scale_ok(si) and b in self.spec.blocks:
            self.arrays[f"s{si}.b{b}.pivot_scores"] = _np(scores.float())
            self.arrays[f"s{si}.b{b}.pivot_keep"] = _np(keep)

    def on_linear(self, ctx, layer, x):
        s = self.spec
        name = getattr(layer, "hook_name", "")
        if "linear" not in s.kinds or s.linear is None or name != s.linear or ctx is None or ctx.mode != "ar":
            return
        if not self._scale_ok(ctx.si):
            return
        self.arrays[f"s{ctx.si}.{name}.x"] = _np(x.float())
        self.arrays.setdefault(f"{name}.weight", _np(layer.weight.float()))
        if layer.bias is not None:
            self.arrays.setdefault(f"{name}.bias", _np(layer.bias.float()))

    def on_scale_end(self, ctx, out):
        if "logits" not in self.spec.kinds or not self._scale_ok(out.si):
            return
        B = out.idx_Bl.shape[0]
        cond, uncond = out.logits_2BlV[:B].float(), out.logits_2BlV[B:].float()
        SN = self.num_scales or len(ctx.patch_nums)
        t = self.cfg * out.si / (SN - 1)
        p = f"s{out.si}"
        self.arrays[f"{p}.logits_cond"] = _np(cond)
        self.arrays[f"{p}.logits_uncond"] = _np(uncond)
        self.arrays[f"{p}.logits_guided"] = _np((1 + t) * cond - t * uncond)
        self.arrays[f"{p}.ids"] = _np(out.idx_Bl)

    def save(self, path, config: Optional[dict] = None) -> str:
        path = os.fspath(path)
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        cfg = dict(config or {})
        cfg.setdefault("taps", dataclasses.asdict(self.spec))
        np.savez_compressed(path, __config__=np.array(json.dumps(cfg, sort_keys=True)), **self.arrays)
        return path if path.endswith(".npz") else path + ".npz"


class Taps(dict):
    """name -> np.ndarray, with ``.config`` (the decoded JSON configuration)."""
    config: dict


def load_taps(path) -> Taps:
    """Read a taps ``.npz``: a :class:`Taps` dict of arrays with its ``config``."""
    with np.load(os.fspath(path), allow_pickle=False) as z:
        t = Taps({k: z[k] for k in z.files if k != "__config__"})
        t.config = json.loads(str(z["__config__"])) if "__config__" in z.files else {}
    return t


def run_with_taps(preset: str = "tiny", accel="dense", seed: int = 0, taps=None, out=None, var_ckpt=None,
                  vae_ckpt=None, cfg: float = 4.0, top_k: int = 900, top_p: float = 0.95, label: int = 0,
                  weights_seed: int = 0, init_kw=None):
    """Run one generation (B = 1) with ``accel`` and record ``taps`` (TapSpec, dict or None for
    the default); save to ``out`` (.npz) when given. Returns (image (1, 3, H, W), Taps)."""
    from golden.accel.config import AccelConfig
    from golden.accel.generate import load_model, run

    vae, var = load_model(preset, var_ckpt, vae_ckpt, weights_seed, init_kw)
    acfg = AccelConfig.parse(accel, var.cfg)
    rec = TapRecorder(taps, cfg=cfg, num_scales=len(var.patch_nums))
    r = run(var, acfg, seed, label, 1, cfg, top_k, top_p, tap=rec)
    config = {"taps": dataclasses.asdict(rec.spec), "accel": acfg.to_dict(), "var": dataclasses.asdict(var.cfg),
              "preset": preset, "seed": seed, "weights_seed": weights_seed, "init_kw": init_kw or {}, "label": label, "cfg": cfg,
              "top_k": top_k, "top_p": top_p, "var_ckpt": None if var_ckpt is None else os.path.basename(os.fspath(var_ckpt))}
    taps_out = Taps(rec.arrays)
    taps_out.config = json.loads(json.dumps(config, sort_keys=True))
    if out is not None:
        rec.save(out, config)
    return r.image, taps_out
