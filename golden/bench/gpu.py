"""GPU latency of the golden VAR pipeline, dense vs accelerated (run on the device machine).

Usage (repository root, a CUDA machine with torch):

    python -m golden.bench.gpu --arch d16-256,d30-256,d36-512,d30-1024 --accel dense,fastvar

Random weights (timing needs no training), batch 1 image (2 rows with classifier-free
guidance), cfg 4, top-k 900, top-p 0.95, bf16 autocast, SDPA attention. Latency per image is
the median of ``--repeats`` timed runs after ``--warmup`` runs, measured with CUDA events
around the whole ``autoregressive_infer_cfg`` call (VAE decode included). Speed-ups are
ratios to the dense run of the same architecture in the same process. Peak memory is
``torch.cuda.max_memory_allocated`` of the timed runs.

``--hooks general`` times the hooks' general path (``AcceleratedHooks(fast=False)``, the
reference the fast paths are tested against); ``--verify`` also generates each accelerated
configuration once through both paths and reports whether the images are identical.
"""

import argparse
import dataclasses
import json
import statistics
import sys
import time

import torch

from golden.accel import AccelConfig, AcceleratedHooks
from golden.model import VARConfig, build

__all__ = ["ARCHS", "time_generation", "main"]

PATCH_NUMS_1024 = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)

# name -> (preset, patch_nums or None for the preset's own)
ARCHS = {
    "d16-256": ("d16", None),
    "d30-256": ("d30", None),
    "d36-512": ("d36", None),
    "d30-1024": ("d30", PATCH_NUMS_1024),
    "tiny": ("tiny", None),
}


def arch_config(name):
    if name not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, not {name!r}")
    preset, patch_nums = ARCHS[name]
    cfg = VARConfig.preset(preset)
    if patch_nums is not None:
        cfg = dataclasses.replace(cfg, patch_nums=patch_nums)
    return cfg


def time_generation(var, cfg_var, accel, *, warmup, repeats, seed=0, dtype=torch.bfloat16, batch=1, fast=True):
    """Median latency (ms) and peak memory (GiB) of a batch of ``batch`` images with ``accel``
    hooks ("dense": none); ``fast``: the hooks' fast paths (False: their general path)."""
    hooks = None if accel == "dense" else AcceleratedHooks(cfg_var, accel, fast=fast)
    device = next(var.parameters()).device
    label = torch.full((batch,), 7, device=device, dtype=torch.long)

    def once():
        if hooks is not None:
            hooks.counter = type(hooks.counter)(cfg_var.depth)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            return var.autoregressive_infer_cfg(B=batch, label_B=label, g_seed=seed, cfg=4.0, top_k=900,
                                                top_p=0.95, hooks=hooks)

    for _ in range(warmup):
        once()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            once()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            once()
            times.append(1000 * (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    saved = hooks.counter.totals() if hooks is not None else None
    return statistics.median(times), peak, saved


def verify_paths(var, cfg_var, accel, *, seed=0, dtype=torch.bfloat16, batch=1):
    """One generation through the fast and one through the general hooks path: (identical?,
    max abs difference of the images)."""
    device = next(var.parameters()).device
    label = torch.full((batch,), 7, device=device, dtype=torch.long)
    imgs = []
    for fast in (True, False):
        hooks = AcceleratedHooks(cfg_var, accel, fast=fast)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            imgs.append(var.autoregressive_infer_cfg(B=batch, label_B=label, g_seed=seed, cfg=4.0, top_k=900,
                                                     top_p=0.95, hooks=hooks).float())
    return bool(torch.equal(imgs[0], imgs[1])), float((imgs[0] - imgs[1]).abs().max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="d16-256,d30-256,d36-512,d30-1024")
    parser.add_argument("--accel", default="dense,fastvar,sparse,turbo,fastvar+turbo")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="images per generate call")
    parser.add_argument("--hooks", choices=("fast", "general"), default="fast",
                        help="AcceleratedHooks path: fast (default) or the general reference path")
    parser.add_argument("--verify", action="store_true",
                        help="also compare one image per accelerated config through both hooks paths")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # The accel hooks and the golden sort model allocate index tensors with factory calls
    # (arange, zeros); making the GPU the default device keeps them beside the activations.
    torch.set_default_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; bf16 autocast; batch {args.batch} (+CFG); "
          f"hooks {args.hooks}", flush=True)
    rows = []
    for arch in args.arch.split(","):
        cfg_var = arch_config(arch)
        with torch.device(device):
            _, var = build(cfg_var, seed=0)
        var.eval()
        dense_ms = None
        for accel in args.accel.split(","):
            spec = accel.replace("+", ",")
            try:
                ms, peak, saved = time_generation(var, cfg_var, spec if accel != "dense" else "dense",
                                                  warmup=args.warmup, repeats=args.repeats,
                                                  batch=args.batch, fast=args.hooks == "fast")
            except torch.cuda.OutOfMemoryError as error:
                print(f"{arch} {accel}: out of memory ({error})", flush=True)
                torch.cuda.empty_cache()
                continue
            if accel == "dense":
                dense_ms = ms
            row = {"arch": arch, "accel": accel, "batch": args.batch, "tokens": cfg_var.L if hasattr(cfg_var, "L") else None,
                   "ms": round(ms, 1), "speedup": round(dense_ms / ms, 2) if dense_ms else None,
                   "peak_gib": round(peak, 2)}
            if saved:
                row["counted_macs"] = saved["macs"]
            if args.verify and accel != "dense":
                row["paths_identical"], row["paths_max_abs_diff"] = verify_paths(var, cfg_var, spec,
                                                                                 batch=args.batch)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del var
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\n| arch | batch | accel | latency ms (whole batch) | speed-up vs dense | peak GiB |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['batch']} | {r['accel']} | {r['ms']} | {r['speedup']} | {r['peak_gib']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "hooks": args.hooks, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
