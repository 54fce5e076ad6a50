"""GPU latency of the golden VAR pipeline, dense vs accelerated (run on the device machine).

Usage (repository root, a CUDA machine with torch):

    python -m golden.bench.gpu --arch d16-256,d30-256,d36-512,d30-1024 --accel dense,fastvar

Random weights (timing needs no training), batch 1 image (2 rows with classifier-free
guidance), cfg 4, top-k 900, top-p 0.95, bf16 autocast, SDPA attention (masked steps of the
sparse technique: block-sparse flex_attention where the hooks choose it, see ``--attn-kernel``;
its compilations fall in the warm-up runs). Latency per image is
the median of ``--repeats`` timed runs after ``--warmup`` runs, measured with CUDA events
around the whole ``autoregressive_infer_cfg`` call (VAE decode included). Speed-ups are
ratios to the dense run of the same architecture in the same process. Peak memory is
``torch.cuda.max_memory_allocated`` of the timed runs.

``--hooks general`` times the hooks' general path (``AcceleratedHooks(fast=False)``, the
reference the fast paths are tested against); ``--verify`` also generates each accelerated
configuration once through both paths (the fast one with the SDPA kernel, which must give the
same image bit for bit) and, where the timed run used the block-sparse flex_attention kernel
(``--attn-kernel``, on a GPU by default), reports how far its image is from the SDPA one
(other rounding; a changed sample anywhere changes the rest of the image).

``--kernel-check`` compares the attention kernels alone on every step of each architecture
whose sparse mask is not all True: random bf16 q, k, v, errors of flex and of SDPA with the
boolean mask against float32 SDPA, and their median times next to unmasked SDPA.
``--profile DIR`` writes torch.profiler tables of one generation per (arch, accel) and the
GPU time per step (CUDA events at each step's end) to DIR.
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from golden.accel import AccelConfig, AcceleratedHooks
from golden.accel import flex as flexattn
from golden.accel.graphs import StepGraphs, graphable
from golden.accel.sparse import step_mask, tile_mask
from golden.model import VARConfig, build
from golden.model.hooks import WrappedHooks

__all__ = ["ARCHS", "make_hooks", "time_generation", "verify_graphs", "cuda_ms", "median_ms", "main"]

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


def _generator(var, cfg_var, hooks, *, seed=0, dtype=torch.bfloat16, batch=1):
    """A function generating one batch through ``hooks`` (None: dense) with the benchmark's settings."""
    device = next(var.parameters()).device
    label = torch.full((batch,), 7, device=device, dtype=torch.long)
    counted = _innermost(hooks)

    def once():
        if counted is not None and hasattr(counted, "counter"):
            counted.counter = type(counted.counter)(cfg_var.depth)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            return var.autoregressive_infer_cfg(B=batch, label_B=label, g_seed=seed, cfg=4.0, top_k=900,
                                                top_p=0.95, hooks=hooks)
    return once


def make_hooks(cfg_var, accel, *, fast=True, graphs=False, **flex_kw):
    """The benchmark's hooks for ``accel`` ("dense": None), wrapped in StepGraphs when
    ``graphs`` and the configuration allows it (:func:`golden.accel.graphs.graphable`).
    Returns (hooks, reason the graphs were not used or "")."""
    hooks = None if accel == "dense" else AcceleratedHooks(cfg_var, accel, fast=fast, **flex_kw)
    if not graphs:
        return hooks, ""
    ok, why = graphable(hooks)
    return (StepGraphs(hooks), "") if ok else (hooks, why)


def time_generation(var, cfg_var, accel, *, warmup, repeats, seed=0, dtype=torch.bfloat16, batch=1, fast=True,
                    graphs=False, steps=False, **flex_kw):
    """Timing of a batch of ``batch`` images with ``accel`` hooks ("dense": none), a dict:
    ``ms`` median latency, ``peak_gib`` peak memory, ``saved`` op counts and ``calls`` attention
    kernel calls per generation (of the first generation: a replay runs no Python; None for
    dense), ``no_graphs`` why CUDA graphs were not used ("" when they were or were not asked
    for) and, with ``steps`` on a GPU, ``steps``: :func:`step_times` of one more generation.
    ``fast``: the hooks' fast paths (False: their general path); ``graphs``: every step
    replayed from a CUDA graph where the configuration allows
    (:class:`golden.accel.graphs.StepGraphs`; the first two warm-up generations run eagerly and
    capture, so ``warmup`` is raised to 2); ``flex_kw``: the kernel choice (``attn_kernel``,
    ``flex_block``, ...) of AcceleratedHooks."""
    device = next(var.parameters()).device
    hooks, no_graphs = make_hooks(cfg_var, accel, fast=fast, graphs=graphs and device.type == "cuda", **flex_kw)
    if graphs and device.type != "cuda":
        no_graphs = "CUDA graphs need a CUDA device"
    counted = _innermost(hooks)
    once = _generator(var, cfg_var, hooks, seed=seed, dtype=dtype, batch=batch)
    if isinstance(hooks, StepGraphs):
        warmup = max(warmup, 2)

    saved = calls = None
    for i in range(max(warmup, 1) if counted is not None else warmup):
        once()
        if i == 0 and counted is not None:
            saved = counted.counter.totals()
            calls = dict(counted.kernel_calls)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            times.append(cuda_ms(once))
        else:
            t0 = time.perf_counter()
            once()
            times.append(1000 * (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    out = {"ms": statistics.median(times), "peak_gib": peak, "saved": saved, "calls": calls, "no_graphs": no_graphs}
    if steps and device.type == "cuda":
        out["steps"] = step_times(var, cfg_var, hooks, batch=batch)
    return out


def verify_paths(var, cfg_var, accel, *, seed=0, dtype=torch.bfloat16, batch=1, **flex_kw):
    """One generation through the general hooks path, one through the fast path with the SDPA
    kernel and one with the flex kernel: (fast-sdpa image identical to general?, max abs
    difference of those two, max abs and mean abs difference of the flex image to the sdpa one).
    ``flex_kw``: AcceleratedHooks' flex settings (its ``attn_kernel`` is set here)."""
    flex_kw.pop("attn_kernel", None)
    imgs = []
    for fast, kernel in ((False, "sdpa"), (True, "sdpa"), (True, "flex")):
        hooks = AcceleratedHooks(cfg_var, accel, fast=fast, attn_kernel=kernel, **flex_kw)
        imgs.append(_generator(var, cfg_var, hooks, seed=seed, dtype=dtype, batch=batch)().float())
    general, sdpa, flx = imgs
    return (bool(torch.equal(general, sdpa)), float((general - sdpa).abs().max()),
            float((flx - sdpa).abs().max()), float((flx - sdpa).abs().mean()))


def verify_graphs(var, cfg_var, accel, *, seed=0, dtype=torch.bfloat16, batch=1, fast=True, **flex_kw):
    """Whether the images of StepGraphs' three phases (eager on the side stream, capture, replay)
    equal an eager generation through the same hooks bit for bit: a dict with one bool per
    phase and the largest absolute difference; None when ``accel`` is not graphable."""
    plain, _ = make_hooks(cfg_var, accel, fast=fast, **flex_kw)
    graphed, why = make_hooks(cfg_var, accel, fast=fast, graphs=True, **flex_kw)
    if why:
        return None
    ref = _generator(var, cfg_var, plain, seed=seed, dtype=dtype, batch=batch)().float()
    gen = _generator(var, cfg_var, graphed, seed=seed, dtype=dtype, batch=batch)
    out = {}
    worst = 0.0
    for phase in ("eager", "capture", "replay"):
        img = gen().float()
        out[f"graphs_{phase}_identical"] = bool(torch.equal(img, ref))
        worst = max(worst, float((img - ref).abs().max()))
    out["graphs_max_abs_diff"] = worst
    return out


def cuda_ms(fn):
    """Milliseconds of one call of ``fn`` between two CUDA events (the GPU work it queued)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def median_ms(fn, reps=10):
    """Median of ``reps`` CUDA-event timings of ``fn`` after two warm-up calls."""
    fn()
    fn()
    return statistics.median(cuda_ms(fn) for _ in range(reps))


def kernel_check(cfg_var, accel="sparse", variants=(("tile", 128), ("tile", 64), ("token", 128)), rows=2, seed=0,
                 min_queries=1024):
    """Per step of ``cfg_var`` with at least ``min_queries`` queries whose ``accel`` sparse mask
    is not all True: relative errors of flex and of SDPA (bool mask), both bf16, against
    float32 SDPA with the same mask, and median kernel times (ms) of unmasked SDPA, SDPA with
    the bool mask and flex in each (mask function form, block size) of ``variants`` (every one
    compiles per shape: a few seconds each). Fresh random q, k, v per step (unit-norm q and k,
    as VAR's l2-normalised attention)."""
    a = AccelConfig.parse(accel, cfg_var)
    pn = tuple(cfg_var.patch_nums)
    H, c = cfg_var.num_heads, cfg_var.embed_dim // cfg_var.num_heads
    g = torch.Generator(device="cuda").manual_seed(seed)
    out, begin = [], 0
    for si, p in enumerate(pn):
        end = begin + p * p
        M = step_mask(pn, begin, end, a.block_q, a.block_k, a.window, a.sink_scales).cuda()
        n, m = M.shape
        begin = end
        if bool(M.all()) or n < min_queries:
            continue
        q, k, v = (torch.randn(rows, H, L, c, device="cuda", generator=g) for L in (n, m, m))
        q, k = F.normalize(q, dim=-1) * 8, F.normalize(k, dim=-1)   # scores of a few units, as after VAR's gain
        mask = M.expand(rows, 1, n, m)
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
        rel = lambda o: float((o.float() - ref).norm() / ref.norm())   # noqa: E731
        row = {"scale": si, "queries": n, "keys": m, "token_density": round(float(M.float().mean()), 4)}
        row["sdpa_mask_rel_err"] = rel(F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=1.0))
        row["ms_sdpa_dense"] = median_ms(lambda: F.scaled_dot_product_attention(qb, kb, vb, scale=1.0))
        row["ms_sdpa_mask"] = median_ms(lambda: F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask,
                                                                                scale=1.0))
        tiles = tile_mask(M, a.block_q, a.block_k)
        for form, fb in variants:
            if form == "tile":
                bm = flexattn.block_mask(M.unsqueeze(0), fb, fb, tiles, torch.arange(n, device="cuda")[None] // a.block_q,
                                         torch.arange(m, device="cuda")[None] // a.block_k)
            else:
                bm = flexattn.block_mask(M.unsqueeze(0), fb, fb)
            opts = None if fb == 128 else {"BLOCK_M": fb, "BLOCK_N": fb}
            name = f"flex_{form}{fb}"
            row[f"{name}_rel_err"] = rel(flexattn.flex_attend(qb, kb, vb, bm, 1.0, opts))
            layout = flexattn.block_layout(M.unsqueeze(0), fb, fb)
            blocks = layout[1].shape[-1] * layout[1].shape[-2]
            row[f"{name}_partial_full_of"] = [int(layout[0].sum()), int(layout[2].sum()), blocks]
            row[f"ms_{name}"] = median_ms(lambda: flexattn.flex_attend(qb, kb, vb, bm, 1.0, opts))
        out.append(row)
    return out


class _StepClock(WrappedHooks):
    """Hooks wrapper taking a CUDA event and a host clock reading at the end of every step;
    every other hook and attribute is ``inner``'s (None: the model stays dense)."""

    def __init__(self, inner=None):
        super().__init__(inner)
        self.events, self.host = [], []

    def on_scale_end(self, ctx, out):
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        self.events.append(e)
        self.host.append(time.perf_counter())
        fn = getattr(self.inner, "on_scale_end", None)
        if fn is not None:
            fn(ctx, out)


def _innermost(hooks):
    """The hooks that do the work (the AcceleratedHooks or None) under the wrappers."""
    while isinstance(hooks, WrappedHooks):
        hooks = hooks.inner
    return hooks


def step_times(var, cfg_var, hooks, *, batch=1):
    """One more generation through ``hooks`` (already warmed up: with StepGraphs, a replay), one
    dict per step: ``gpu_ms`` between the ends of consecutive steps (the first from the call's
    start; each covers the step's transformer pass and the previous step's sampling and f_hat
    update) and ``host_ms`` the host took to enqueue it; then the rest (the last sampling and
    the VAE decode), GPU ms only."""
    clock = _StepClock(hooks)
    once = _generator(var, cfg_var, clock, batch=batch)
    torch.cuda.synchronize()
    start, done = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    h0 = time.perf_counter()
    start.record()
    once()
    done.record()
    torch.cuda.synchronize()
    out, prev_e, prev_h = [], start, h0
    for si, (e, h) in enumerate(zip(clock.events, clock.host)):
        out.append({"scale": si, "gpu_ms": round(prev_e.elapsed_time(e), 2), "host_ms": round(1000 * (h - prev_h), 2)})
        prev_e, prev_h = e, h
    out.append({"scale": "vae decode + rest", "gpu_ms": round(prev_e.elapsed_time(done), 2)})
    return out


def vae_decode_ms(var, cfg_var, *, batch=1, dtype=torch.bfloat16):
    """Median GPU ms of the VAE decode alone (``fhat_to_img`` of a random f_hat of the last
    scale's size, under the benchmark's autocast): the part of a generation that no technique
    changes. Timed as replays of a CUDA graph of the decode, so that the host's launches,
    which a generation overlaps with the GPU's work, do not count."""
    pn = cfg_var.patch_nums[-1]
    f_hat = torch.randn(batch, cfg_var.z_channels, pn, pn, device="cuda")

    def decode():
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
            return var.vae.fhat_to_img(f_hat)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        decode()                     # warm-up on the capturing stream
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        decode()
    return median_ms(graph.replay, reps=5)


def profile_generation(var, cfg_var, accel, path, *, batch=1, **flex_kw):
    """Write to ``path`` (a text file) torch.profiler tables of one generation (after a warm-up)
    sorted by GPU and by CPU self time, the GPU busy time against the wall time, and for dense
    the GPU and host time per step. Returns a summary dict."""
    from torch.profiler import ProfilerActivity, profile
    hooks = None if accel == "dense" else AcceleratedHooks(cfg_var, accel, **flex_kw)
    once = _generator(var, cfg_var, hooks, batch=batch)
    once()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        once()
        torch.cuda.synchronize()
        wall = 1000 * (time.perf_counter() - t0)
    avg = prof.key_averages()
    cuda_type = torch.autograd.DeviceType.CUDA
    kernels = [e for e in avg if e.device_type == cuda_type]
    busy = sum(e.self_device_time_total for e in kernels) / 1000
    launches = sum(e.count for e in kernels)
    summary = {"arch_accel": accel, "wall_ms_profiled": round(wall, 1), "gpu_busy_ms": round(busy, 1),
               "gpu_ops": launches}
    lines = [json.dumps(summary), "", "== by GPU self time ==",
             avg.table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=70), "",
             "== by CPU self time ==", avg.table(sort_by="self_cpu_time_total", row_limit=30,
                                                  max_name_column_width=70)]
    if hooks is None:
        steps = step_times(var, cfg_var, None, batch=batch)
        summary["steps"] = steps
        lines += ["", "== per step (dense, no profiler): GPU ms between step ends, host ms to enqueue ==",
                  *(json.dumps(s) for s in steps)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return summary


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
    parser.add_argument("--attn-kernel", choices=("auto", "sdpa", "flex"), default="auto",
                        help="masked attention kernel of the fast path (auto: flex on a GPU)")
    parser.add_argument("--flex-block", type=int, default=64, help="flex_attention block side in tokens")
    parser.add_argument("--flex-min-queries", type=int, default=1024,
                        help="flex only in steps with at least this many queries")
    parser.add_argument("--flex-rows", action="store_true",
                        help="flex also for masks that differ between rows (pruned key caches)")
    parser.add_argument("--kernel-check", action="store_true",
                        help="compare and time the attention kernels alone on each sparse step")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="write torch.profiler tables of one generation per (arch, accel) to DIR")
    parser.add_argument("--bf16-linear-weights", action="store_true",
                        help="store every nn.Linear's weight and bias in bf16 once (autocast otherwise casts "
                             "them at every call: same matmul inputs, fewer kernels); not for the low-bit "
                             "quantized linears, which read the float32 weights")
    parser.add_argument("--graphs", action="store_true",
                        help="replay every step from a CUDA graph (golden.accel.graphs.StepGraphs) where the "
                             "configuration allows; the others run eagerly and say why")
    parser.add_argument("--steps", action="store_true",
                        help="also time one generation per step (CUDA events) and the VAE decode alone, and "
                             "report latency and speed-up without the decode")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # The accel hooks and the golden sort model allocate index tensors with factory calls
    # (arange, zeros); making the GPU the default device keeps them beside the activations.
    torch.set_default_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; bf16 autocast; batch {args.batch} (+CFG); "
          f"hooks {args.hooks}; attn kernel {args.attn_kernel}, flex block {args.flex_block}, from "
          f"{args.flex_min_queries} queries{', per-row masks too' if args.flex_rows else ''}; "
          f"linear weights {'bf16' if args.bf16_linear_weights else 'float32 (autocast casts)'}; "
          f"steps {'replayed from CUDA graphs where possible' if args.graphs else 'eager'}", flush=True)
    if args.bf16_linear_weights and device.type != "cuda":
        raise ValueError("--bf16-linear-weights needs a CUDA device: the CPU runs without autocast, in float32")
    flex_kw = dict(attn_kernel=args.attn_kernel, flex_block=args.flex_block, flex_min_queries=args.flex_min_queries,
                   flex_rows=args.flex_rows)
    rows, checks, profiles = [], [], []
    if args.kernel_check:
        if device.type != "cuda":
            raise ValueError("--kernel-check needs a CUDA device")
        for arch in args.arch.split(","):
            for r in kernel_check(arch_config(arch)):
                r["arch"] = arch
                checks.append(r)
                print(json.dumps(r), flush=True)
    if args.profile:
        if device.type != "cuda":
            raise ValueError("--profile needs a CUDA device")
        os.makedirs(args.profile, exist_ok=True)
    for arch in args.arch.split(","):
        cfg_var = arch_config(arch)
        with torch.device(device):
            _, var = build(cfg_var, seed=0)
        var.eval()
        if args.bf16_linear_weights:
            for mod in var.modules():
                if isinstance(mod, torch.nn.Linear):
                    mod.to(torch.bfloat16)
        dense_ms = None
        vae_ms = vae_decode_ms(var, cfg_var, batch=args.batch) if args.steps and device.type == "cuda" else None
        for accel in args.accel.split(","):
            spec = accel.replace("+", ",")
            try:
                timed = time_generation(
                    var, cfg_var, spec if accel != "dense" else "dense", warmup=args.warmup, repeats=args.repeats,
                    batch=args.batch, fast=args.hooks == "fast", graphs=args.graphs, steps=args.steps, **flex_kw)
                ms, peak, saved, calls, no_graphs = (timed[k] for k in ("ms", "peak_gib", "saved", "calls",
                                                                        "no_graphs"))
            except torch.cuda.OutOfMemoryError as error:
                print(f"{arch} {accel}: out of memory ({error})", flush=True)
                torch.cuda.empty_cache()
                continue
            if accel == "dense":
                dense_ms = ms
            row = {"arch": arch, "accel": accel, "batch": args.batch, "tokens": cfg_var.L if hasattr(cfg_var, "L") else None,
                   "ms": round(ms, 1), "speedup": round(dense_ms / ms, 2) if dense_ms else None,
                   "peak_gib": round(peak, 2)}
            if vae_ms is not None:
                row["vae_decode_ms"] = round(vae_ms, 1)
                row["ms_without_vae"] = round(ms - vae_ms, 1)
                if dense_ms is not None:
                    row["speedup_without_vae"] = round((dense_ms - vae_ms) / (ms - vae_ms), 2)
            if "steps" in timed:
                row["step_ms"] = [st["gpu_ms"] for st in timed["steps"]]
            if args.graphs:
                row["graphs"] = not no_graphs
                if no_graphs:
                    row["eager_because"] = no_graphs
            if saved:
                row["counted_macs"] = saved["macs"]
            if calls:
                row["masked_attn_calls"] = calls
            if args.verify and accel != "dense":
                (row["paths_identical"], row["paths_max_abs_diff"], row["flex_vs_sdpa_image_max_abs"],
                 row["flex_vs_sdpa_image_mean_abs"]) = verify_paths(var, cfg_var, spec, batch=args.batch, **flex_kw)
            if args.verify and args.graphs:
                checked = verify_graphs(var, cfg_var, spec if accel != "dense" else "dense", batch=args.batch,
                                        fast=args.hooks == "fast", **flex_kw)
                if checked:
                    row.update(checked)
            if args.profile and accel in ("dense", "sparse"):
                path = os.path.join(args.profile, f"profile_{arch}_{accel.replace('+', '-')}.txt")
                p = profile_generation(var, cfg_var, spec if accel != "dense" else "dense", path,
                                       batch=args.batch, **flex_kw)
                p["arch"] = arch
                profiles.append(p)
                print(json.dumps({k: v for k, v in p.items() if k != "steps"}), flush=True)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del var
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\n| arch | batch | accel | latency ms (whole batch) | speed-up vs dense | peak GiB | CUDA graphs |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        g = "yes" if r.get("graphs") else (f"no: {r['eager_because']}" if "eager_because" in r else "no")
        print(f"| {r['arch']} | {r['batch']} | {r['accel']} | {r['ms']} | {r['speedup']} | {r['peak_gib']} | {g} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "hooks": args.hooks,
                       **flex_kw,
                       "bf16_linear_weights": args.bf16_linear_weights, "graphs": args.graphs, "rows": rows,
                       "kernel_check": checks, "profiles": profiles}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
