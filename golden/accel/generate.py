"""generate(): one accelerated VAR generation next to the dense baseline, with images, a savings
table and fidelity metrics (the library side of ``varaccel generate``)."""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import torch

from golden.model import VARConfig, build, load_official

from .config import AccelConfig
from .hooks import AcceleratedHooks, OpCounter
from .infer import RunRecord, accelerated_infer

__all__ = ["load_model", "run", "savings_table", "generate", "save_image", "save_side_by_side"]


def load_model(preset: str = "tiny", var_ckpt=None, vae_ckpt=None, weights_seed: int = 0,
               init_kw: Optional[Dict] = None):
    """(vae, var): official checkpoints when both paths are given (``preset`` names their
    config, default d16 then), else deterministic random weights from ``weights_seed``
    (``init_kw``: knobs of :func:`golden.model.build`, e.g. ``{"init_adaln_gamma": 0.5}`` so
    that random blocks do more than the near-identity of the official init)."""
    if (var_ckpt is None) != (vae_ckpt is None):
        raise ValueError("var_ckpt and vae_ckpt must be given together")
    cfg = model_config(preset, var_ckpt)
    if var_ckpt is not None:
        return load_official(var_ckpt, vae_ckpt, cfg)
    return build(cfg, seed=weights_seed, **(init_kw or {}))


def model_config(preset: str = "tiny", var_ckpt=None) -> VARConfig:
    """The VARConfig that :func:`load_model` builds: ``preset``, except that official
    checkpoints with the default (or tiny) preset mean d16, the smallest released model."""
    if var_ckpt is not None:
        return VARConfig.preset(preset if preset and preset != "tiny" else "d16")
    return VARConfig.preset(preset)


def run(var, accel=None, seed: int = 0, label=0, B: int = 1, cfg: float = 4.0, top_k: int = 900,
        top_p: float = 0.95, tap=None, progress: bool = False, backend=None) -> RunRecord:
    """One generation with ``accel`` (spec or AccelConfig): a RunRecord with image, per-scale
    guided logits and ids, and the OpCounter. ``backend``: where core operations run
    (:mod:`golden.accel.backend`; golden/numerics by default)."""
    hooks = AcceleratedHooks(var.cfg, accel, counter=OpCounter(var.cfg.depth), tap=tap, backend=backend)
    rec = RunRecord()
    label_B = label if label is None or isinstance(label, int) else torch.as_tensor(label)
    accelerated_infer(var, B, label_B, g_seed=seed, cfg=cfg, top_k=top_k, top_p=top_p, hooks=hooks,
                      record=rec, progress=progress)
    return rec


def savings_table(dense: OpCounter, accel: OpCounter, name: str = "accel") -> str:
    """Totals of both runs and the accelerated/dense ratio, as a fixed-width text table."""
    d, a = dense.totals(), accel.totals()
    rows = [("sequential steps", "steps"), ("tokens through blocks", "tokens"), ("linear MACs", "linear_macs"),
            ("attention MACs", "attn_macs"), ("total MACs", "macs"), ("attention tiles kept", "attn_tiles_kept"),
            ("attention tiles", "attn_tiles_total"), ("sort-core calls", "sort_calls")]
    w = max(len(name), 12)
    out = [f"{'':24} {'dense':>14} {name:>{w}} {'ratio':>7}"]
    for label, k in rows:
        r = f"{a[k] / d[k]:7.3f}" if d[k] else f"{'-':>7}"
        out.append(f"{label:24} {d[k]:>14,} {a[k]:>{w},} {r}")
    out.append(f"{'tile density':24} {d['tile_density']:>14.3f} {a['tile_density']:>{w}.3f}")
    if a["macs"]:
        out.append(f"{'MAC speed-up':24} {'':>14} {d['macs'] / a['macs']:>{w}.2f}x")
    return "\n".join(out)


def _to_hwc(img_3HW: torch.Tensor):
    return img_3HW.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def save_image(img_3HW: torch.Tensor, path) -> None:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    plt.imsave(os.fspath(path), _to_hwc(img_3HW))


def save_side_by_side(dense_3HW, accel_3HW, path, title: str = "", metrics: Optional[Dict] = None) -> None:
    """dense | accelerated | |difference| x 4, as one PNG."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    diff = ((dense_3HW - accel_3HW).abs() * 4).clamp(0, 1)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    for ax, im, t in zip(axes, (dense_3HW, accel_3HW, diff), ("dense", title or "accelerated", "|diff| x4")):
        ax.imshow(_to_hwc(im), interpolation="nearest")
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    if metrics:
        fig.suptitle(f"PSNR {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.4f}  "
                     f"tokens agree {metrics['token_agreement_mean']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=100)
    plt.close(fig)


def generate(preset: str = "tiny", accel="fastvar,sparse,mxfp4", seed: int = 0, out="img.png", var_ckpt=None,
             vae_ckpt=None, cfg: float = 4.0, top_k: int = 900, top_p: float = 0.95, label: int = 0,
             weights_seed: int = 0, init_kw: Optional[Dict] = None,
             progress: bool = True) -> Tuple[str, Dict[str, object]]:
    """Generate one image of class ``label`` with ``accel`` and the dense baseline (same weights,
    same sampling seed). Writes ``out`` (the accelerated image) and ``<stem>_vs_dense.png``
    (dense | accelerated | difference); returns (savings table, fidelity metrics of
    :func:`golden.fidelity.compare` plus ``images``: the two paths)."""
    from golden.fidelity import compare

    vae, var = load_model(preset, var_ckpt, vae_ckpt, weights_seed, init_kw)
    acfg = AccelConfig.parse(accel, var.cfg)
    dense = run(var, "dense", seed, label, 1, cfg, top_k, top_p, progress=False)
    acc = run(var, acfg, seed, label, 1, cfg, top_k, top_p, progress=progress)
    metrics = compare(dense, acc)
    name = "+".join(acfg.enabled())
    table = savings_table(dense.counter, acc.counter, name=name if len(name) <= 28 else "accel")
    table = f"accel: {name}\n" + table
    out = os.fspath(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_image(acc.image[0], out)
    stem, _ = os.path.splitext(out)
    sbs = stem + "_vs_dense.png"
    save_side_by_side(dense.image[0], acc.image[0], sbs, title=name, metrics=metrics)
    metrics["images"] = [out, sbs]
    return table, metrics
