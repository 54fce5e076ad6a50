"""The main job (``make run`` = ``varaccel run``): Verilog, golden VAR run, RTL replay and
RTL-in-the-loop generation, cycle sweeps, synthesis and performance figures, one report.

Stages (a progress bar while they run; a summary table on the terminal at the end):

1. emit every core into build/verilog (Verilog, FuseSoC .core, ports JSON, README of the tops);
2. replay tensors tapped from a golden run through the RTL (sampling top-k, pruning top-k, an
   MXFP4 linear slice, one head's attention): :func:`sim.e2e.replay_taps`;
3. RTL in the loop: the same generation with the sampling top-k of every scale and the last
   scale's block-0 attention (all heads, both CFG rows) computed by the emitted Verilog; the
   image must equal the golden hardware-numerics image bit for bit: :mod:`sim.loop`;
4. hardware numerics against float64 per layer and scale; attention cycles against block
   density; top-k cycles against k;
5. synthesis table (``build/synth/summary.json`` from ``varaccel synth --all``, or ``--synth``)
   and the accelerator performance model (:mod:`sim.perf`);
6. the RTL regression (``--no-regression`` skips it; ``--junit FILE ...`` summarizes the JUnit
   files of CI shards, ``make test SHARD=k/N JUNIT=FILE``, instead of running it);

then ``build/report/index.html`` and ``report.md``. Any mismatch names the core, tensor, index
and both values, and the exit code is non-zero.
"""

import json
import sys

from .regression import format_summary, run_regression, summarize_junit
from .runner import REPO_ROOT

__all__ = ["run_main_job", "REPORT_DIR", "SYNTH_SUMMARY"]

REPORT_DIR = REPO_ROOT / "build" / "report"
SYNTH_SUMMARY = REPO_ROOT / "build" / "synth" / "summary.json"

TOPK_SWEEP_K = (1, 16, 64, 256, 900, 2048, 4096)


def _util(row):
    floor = row.get("floor")
    return f"{100.0 * floor / row['cycles']:.1f} %" if floor and row.get("cycles") else "-"


ROW_COLUMNS = [("core / tensor", "tensor"), ("exact", lambda r: f"{r['exact']}/{r['total']}"),
               ("cycles", "cycles"), ("floor", lambda r: r.get("floor", "-")), ("utilization", _util),
               ("what", "note")]


def _per_core(rows):
    cores = {}
    for r in rows:
        c = cores.setdefault(r["core"], {"core": r["core"], "calls": 0, "exact": 0, "total": 0, "cycles": 0,
                                         "floor": 0})
        c["calls"] += 1
        for key in ("exact", "total", "cycles"):
            c[key] += r[key]
        c["floor"] += r.get("floor") or 0
    return list(cores.values())


def _synth_section(run_synth):
    from sim.synth import format_table
    if run_synth:
        from hw.emit import CORES
        from sim.synth import synthesize
        results = []
        for core in CORES:
            for family in ("xc7", "ecp5"):
                try:
                    results.append(synthesize(core, None, family))
                except Exception as error:  # one core failing to synthesize must not hide the others
                    results.append({"core": core, "family": family, "error": str(error)})
        write_synth_summary(results)
    if not SYNTH_SUMMARY.exists():
        return ("No synthesis results yet: run `varaccel synth --all` (or `varaccel run --synth`); they are "
                f"read from `{SYNTH_SUMMARY.relative_to(REPO_ROOT)}`.")
    results = json.loads(SYNTH_SUMMARY.read_text())
    ok = [r for r in results if "error" not in r]
    failed = "\n".join(f"- {r['core']} ({r['family']}): {r['error']}" for r in results if "error" in r)
    return (f"Yosys `synth_xilinx` resources and nextpnr-ecp5 Fmax of every core in its default configuration "
            f"(`varaccel synth --all`):\n\n{format_table(ok)}\n\n{failed}")


def write_synth_summary(results, merge=False):
    """Store synthesis results for the report (build/synth/summary.json): ``varaccel synth --all``
    writes it whole; ``merge`` replaces only the rows of the same (core, family) (a single-core
    rerun in its default configuration)."""
    rows = [{k: v for k, v in r.items() if k not in ("cells", "workdir")} for r in results]
    if merge and SYNTH_SUMMARY.exists():
        fresh = {(r["core"], r["family"]) for r in rows}
        rows = [r for r in json.loads(SYNTH_SUMMARY.read_text()) if (r["core"], r["family"]) not in fresh] + rows
    SYNTH_SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SYNTH_SUMMARY.write_text(json.dumps(rows, indent=1))


def _perf_section():
    from sim.perf import perf_report
    return perf_report()


def run_main_job(args):
    """Run the stages of the module docstring; returns the exit code (non-zero on any mismatch)."""
    from tqdm import tqdm

    from golden.accel.backend import CoreBackend
    from golden.accel.generate import load_model, run
    from hw.emit import CORES, emit_core
    from sim import report as rep
    from sim.bench_sort import topk_k_sweep
    from sim.docs import write_verilog_readme
    from sim.e2e import replay_taps
    from sim.loop import LIVELY, LOOP_ACCEL, core_params_for, run_in_the_loop, sampling_k

    preset = getattr(args, "preset", None) or "tiny"
    var_ckpt, vae_ckpt = getattr(args, "var_ckpt", None), getattr(args, "vae_ckpt", None)
    seed = getattr(args, "seed", 0) or 0
    accel = getattr(args, "accel", None) or LOOP_ACCEL
    stages = ["emit Verilog", "replay taps", "RTL in the loop", "float runs", "numerics error", "attention sweep",
              "top-k sweep", "synthesis + perf"] + ([] if getattr(args, "no_regression", False) else ["regression"])
    bar = tqdm(total=len(stages), desc="varaccel run", unit="stage", file=sys.stderr)

    def stage(name):
        bar.set_postfix_str(name)

    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    sections = []

    stage("emit Verilog")
    out = REPO_ROOT / "build" / "verilog"
    for core in CORES:
        emit_core(core, None, out)
    write_verilog_readme(out, list(CORES))
    bar.update()

    stage("replay taps")
    replay_rows = replay_taps(seed=seed, preset=preset, var_ckpt=var_ckpt, vae_ckpt=vae_ckpt)
    bar.update()

    stage("RTL in the loop")
    vae, var = load_model(preset, var_ckpt, vae_ckpt, init_kw=None if var_ckpt else LIVELY)
    loop = run_in_the_loop(var, seed=seed, accel=accel)
    bar.update()

    stage("float runs")
    k, p = sampling_k(var.cfg.vocab_size), 0.95
    dense = run(var, "dense", seed, 0, 1, 4.0, k, p, backend=CoreBackend())
    float_accel = ",".join(t for t in accel.split(",") if t not in ("mxfp4", "mxfp6", "attncore")) or "dense"
    accel_float = run(var, float_accel, seed, 0, 1, 4.0, k, p, backend=CoreBackend())
    grid = rep.plot_image_grid([("dense, float", dense.image[0]), (f"{float_accel}, float", accel_float.image[0]),
                                (f"{accel}, golden hw numerics", loop.image_golden[0]),
                                ("same, RTL in the loop", loop.image_rtl[0])], REPORT_DIR / "images.png")
    bar.update()

    stage("numerics error")
    errors = rep.linear_error_map(var, "mxfp4", seed, top_k=k, top_p=p)
    err_png = rep.plot_error_map(errors, REPORT_DIR / "numerics_error.png")
    by_scale = {}
    for (si, _), e in errors.items():
        by_scale.setdefault(si, []).append(e)
    err_rows = [{"scale": si, "layers": len(v), "median": f"{sorted(v)[len(v) // 2]:.3f}", "max": f"{max(v):.3f}"}
                for si, v in sorted(by_scale.items())]
    bar.update()

    stage("attention sweep")
    _, attn_params = core_params_for(var.cfg)
    Lk = min(16, attn_params["max_kblocks"]) * attn_params["Bc"]  # 16 key blocks where the build allows
    sweep = rep.attention_density_sweep(attn_params, Lq=8 * attn_params["Br"], Lk=Lk)
    sweep_png = rep.plot_attention_density(sweep, REPORT_DIR / "attention_density.png")
    bar.update()

    stage("top-k sweep")
    ksweep = topk_k_sweep(TOPK_SWEEP_K, n=4096)
    k_png = rep.plot_topk_k(ksweep, 4096, REPORT_DIR / "topk_k.png")
    bar.update()

    stage("synthesis + perf")
    synth_md = _synth_section(getattr(args, "synth", False))
    perf_md = _perf_section()
    bar.update()

    code, reg_md = 0, "(regression skipped: --no-regression)"
    if "regression" in stages:
        stage("regression")
        shards = getattr(args, "junit", None)
        if shards:
            # Results of CI shards (make test SHARD=k/N JUNIT=...): summarized, not re-run.
            summary = summarize_junit(shards)
            code = int(any(a["failed"] for a in summary.values()))
            reg_md = f"From {len(shards)} JUnit file(s): {', '.join(str(p) for p in shards)}\n\n" + format_summary(summary)
        else:
            code, junit = run_regression(marker="rtl", jobs=getattr(args, "jobs", 2))
            reg_md = format_summary(summarize_junit([junit]))
        bar.update()
    bar.close()

    rows = replay_rows + loop.rows
    mismatches = [r for r in rows if r["exact"] != r["total"]]
    verdict = (f"- RTL against golden/numerics: **{sum(r['exact'] for r in rows)} of {sum(r['total'] for r in rows)}** "
               f"rows exact over {len(rows)} RTL runs ({len(mismatches)} with a mismatch)\n"
               f"- RTL in the loop (`{accel}`, seed {seed}): image and every scale's tokens "
               f"**{'identical to' if loop.identical else 'DIFFERENT from'}** the golden hardware-numerics run\n"
               f"- RTL regression: {('passed' if code == 0 else 'FAILED') if 'regression' in stages else 'skipped (--no-regression)'}")
    model = f"official checkpoints ({preset})" if var_ckpt else f"{preset} preset, random weights (seed 0)"
    sections += [
        ("Verdict", f"Model: {model}.\n\n{verdict}", []),
        ("Golden taps replayed through the RTL", "Tensors recorded at the last scale of a golden run, pushed "
         "through the emitted Verilog and compared bit for bit with golden/numerics. Utilization = floor / cycles "
         "(floor: one key or beat per cycle for top-k and dot, one (query, key) pair per cycle for attention).\n\n"
         + rep.rows_table(replay_rows, ROW_COLUMNS), []),
        ("RTL in the loop", f"The generation `{accel}` with the sampling top-k of every scale and the last scale's "
         "block-0 attention (every head, both CFG rows) computed by the emitted Verilog, whose results are used by "
         "the run. Images: dense float, the techniques in float, the same with hardware numerics (golden), and "
         "with the RTL in the loop.\n\n" + rep.rows_table(loop.rows, ROW_COLUMNS), [grid]),
        ("Cycles and utilization per core", rep.rows_table(_per_core(rows), [
            ("core", "core"), ("RTL runs", "calls"), ("exact rows", lambda r: f"{r['exact']}/{r['total']}"),
            ("cycles", "cycles"), ("floor", "floor"), ("utilization", _util)]), []),
        ("Hardware numerics against float64", "Relative error of every MXFP4 linear layer (E2M1 weights and "
         "activations, E8M0 scales over 32, dual format at fc2: exactly the dot unit's numerics) against float64 on "
         "the same input, per scale:\n\n" + rep.rows_table(err_rows, [("scale", "scale"), ("layers", "layers"),
                                                                       ("median", "median"), ("max", "max")]),
         [err_png]),
        ("Attention cycles against sparsity", f"Attention core {attn_params} on random Q/K/V, block masks keeping "
         "the sink block and a random share of the others; every row checked against golden.\n\n"
         + rep.rows_table(sweep, [("density", lambda r: f"{r['density']:.2f}"), ("blocks kept", lambda r: f"{r['kept']}/{r['blocks']}"),
                                  ("cycles", "cycles"), ("floor", "floor"), ("utilization", lambda r: f"{100 * r['util']:.1f} %"),
                                  ("exact rows", "exact")]), [sweep_png]),
        ("Sort cycles against k", "Top-k core, default parameters (16-bit keys, R = 4, P = 1, G = 2 banks), 4096 VAR-like "
         "logits; every output checked against golden.\n\n" + rep.rows_table(ksweep, [
             ("k", "k"), ("mode", lambda r: "unordered" if r["unordered"] else "sorted"), ("cycles", "cycles"),
             ("cycles / N", lambda r: f"{r['cycles'] / 4096:.2f}")]), [k_png]),
        ("Synthesis", synth_md, []),
        ("Accelerator performance model", perf_md, []),
        ("RTL regression", reg_md, []),
    ]
    md_path, html_path = rep.write_report(REPORT_DIR, "varaccel run", sections)

    print("\n" + rep.rows_table(_per_core(rows), [("core", "core"), ("RTL runs", "calls"),
                                                 ("exact rows", lambda r: f"{r['exact']}/{r['total']}"),
                                                 ("cycles", "cycles"), ("utilization", _util)]))
    print("\n" + verdict.replace("**", ""))
    for r in mismatches:
        print(f"MISMATCH {r['tensor']}: {r['mismatch']}", file=sys.stderr)
    if not loop.identical:
        print("MISMATCH RTL-in-the-loop image differs from the golden hardware-numerics image", file=sys.stderr)
    print(f"\nreport: {html_path} (also {md_path})")
    return 1 if (code or mismatches or not loop.identical) else 0


if __name__ == "__main__":
    sys.exit(run_main_job(None))
