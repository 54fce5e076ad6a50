"""Command line ``varaccel``: a thin layer over the library functions in hw/, sim/ and golden/."""

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _cmd_verilog(args):
    from hw.emit import CORES, emit_core
    cores = args.cores or list(CORES)
    if args.param and len(cores) != 1:
        raise SystemExit("--param needs exactly one CORE")
    out = Path(args.out)
    rows = []
    for core in cores:
        emitted = emit_core(core, args.param, out)
        rows.append((core, emitted.verilog, emitted.core_file))
        print(f"{core:10s} -> {emitted.verilog}  ({emitted.core_file.name})")
    from sim.docs import write_verilog_readme
    readme = write_verilog_readme(out, cores)
    print(f"ports and protocols: {readme}")
    return 0


def _cmd_rtl(args):
    import numpy as np
    from sim.rtl import RTL_COMMANDS
    if args.core not in RTL_COMMANDS:
        raise SystemExit(f"rtl: CORE must be one of {sorted(RTL_COMMANDS)}, not {args.core!r}")
    function, in_names, out_names = RTL_COMMANDS[args.core]
    # attention: the mask may be left out; with --param mode=similarity only x (q) is needed
    # (and k for cross scores); rtl_attention checks which inputs its mode takes.
    optional = 3 if args.core == "attention" else 0
    if not len(in_names) - optional <= len(args.inputs) <= len(in_names):
        raise SystemExit(f"rtl {args.core} takes {len(in_names)} --in files ({', '.join(in_names)}), "
                         f"got {len(args.inputs)}")
    arrays = [np.load(path) for path in args.inputs]
    params = dict(p.split("=", 1) for p in args.param)
    result = function(*arrays, waves=args.waves, **params)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    primary = out_names[0]
    np.save(out, result.outputs[primary])
    written = [str(out)]
    for name in out_names[1:]:
        if name in result.outputs:
            extra = out.with_name(out.stem + f".{name}.npy")
            np.save(extra, result.outputs[name])
            written.append(str(extra))
    print(f"{args.core}: {result.cycles} cycles; wrote {', '.join(written)}")
    for note in result.notes:
        print(f"  {note}")
    return 0


def _seed_list(text):
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds: comma-separated integers, not {text!r}") from None


def _cmd_synth(args):
    from hw.emit import CORES
    from sim.synth import format_table, synthesize
    cores = list(CORES) if args.all else args.cores
    if not cores:
        raise SystemExit("synth: name a CORE or use --all")
    families = ["xc7", "ecp5"] if args.all and not args.family else [args.family or "xc7"]
    results = []
    for core in cores:
        for family in families:
            try:
                results.append(synthesize(core, args.param if len(cores) == 1 else None, family,
                                          dsp=not args.nodsp, seeds=args.seeds, pnr_timeout=args.pnr_timeout))
            except (ImportError, ModuleNotFoundError) as error:
                print(f"skip {core}: {error}", file=sys.stderr)
            except RuntimeError as error:
                if not args.all:
                    raise
                # --all: one core failing in one tool flow is a row of the table, not the end of it
                print(f"{core} ({family}) failed: {str(error).splitlines()[0]}", file=sys.stderr)
                results.append({"core": core, "family": family, "error": str(error).splitlines()[0]})
    from sim.main_job import write_synth_summary
    if args.all:
        write_synth_summary(results)  # the main job's report reads it
    elif not args.param and not args.nodsp and results:
        write_synth_summary(results, merge=True)  # a default-configuration rerun refreshes its rows
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "cells"} for r in results], indent=2))
    else:
        print(format_table([r for r in results if "error" not in r]))
        for r in results:
            if "error" in r:
                print(f"- {r['core']} ({r['family']}): {r['error']}")
            elif len(r.get("fmax_by_seed", {})) > 1:
                seeds = ", ".join(f"{seed}: {'unfinished' if f is None else f}" for seed, f in r["fmax_by_seed"].items())
                print(f"- {r['core']} ({r['family']}) Fmax by nextpnr seed (MHz): {seeds}; "
                      f"median {r['fmax_mhz']}, best {r['fmax_best_mhz']}")
    return 0


def _cmd_generate(args):
    from golden.accel.generate import generate
    init_kw = {"init_adaln_gamma": 0.5, "init_head": 1.0} if args.lively else None
    table, metrics = generate(preset=args.preset, accel=args.accel, seed=args.seed, out=args.out,
                              var_ckpt=args.var_ckpt, vae_ckpt=args.vae_ckpt, cfg=args.cfg,
                              top_k=args.top_k, top_p=args.top_p, label=args.label or 0,
                              init_kw=init_kw)
    print(table)
    for key, value in metrics.items():
        if key != "images":
            print(f"{key}: {value}")
    print("wrote " + ", ".join(str(p) for p in metrics.get("images", [args.out])))
    return 0


def _cmd_run(args):
    from sim.main_job import run_main_job
    return run_main_job(args)


def _cmd_perf(args):
    from sim.perf import main as perf_main
    return perf_main(args)


def build_parser():
    parser = argparse.ArgumentParser(prog="varaccel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("verilog", help="emit Verilog + FuseSoC .core files")
    p.add_argument("cores", nargs="*", metavar="CORE")
    p.add_argument("--out", default="build/verilog")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.set_defaults(func=_cmd_verilog)

    p = sub.add_parser("rtl", help="run one core's emitted Verilog on .npy tensors, print cycles")
    p.add_argument("core", metavar="CORE")
    p.add_argument("--in", dest="inputs", action="append", default=[], metavar="A.npy")
    p.add_argument("--out", required=True, metavar="OUT.npy")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--waves", action="store_true", help="dump waves (build/sim/<core>-<tag>-waves)")
    p.set_defaults(func=_cmd_rtl)

    p = sub.add_parser("synth", help="Yosys resources / nextpnr Fmax estimate")
    p.add_argument("cores", nargs="*", metavar="CORE")
    p.add_argument("--all", action="store_true", help="every core, xc7 and ecp5")
    p.add_argument("--family", choices=["xc7", "xcup", "ecp5"], default=None)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--nodsp", action="store_true", help="forbid DSP slices (multipliers from LUTs)")
    p.add_argument("--seeds", type=_seed_list, default=[1], metavar="N[,N...]",
                   help="ecp5: nextpnr seeds to place and route (Fmax: their median; default 1)")
    p.add_argument("--pnr-timeout", type=float, default=None, metavar="SECONDS",
                   help="ecp5: time limit per seed (a seed over it counts as unfinished)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("generate", help="generate an image with the golden (accelerated) VAR")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--var-ckpt", default=None)
    p.add_argument("--vae-ckpt", default=None)
    p.add_argument("--accel", default="dense", help="comma list, e.g. fastvar,sparse,mxfp4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", type=int, default=None)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--out", default="build/generate/img.png")
    p.add_argument("--lively", action="store_true",
                   help="random weights with stronger AdaLN/head init, so techniques visibly act")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("run", help="the main job: Verilog, golden run, RTL replay and RTL in the loop, report")
    p.add_argument("--preset", default="tiny", help="model preset (tiny; with checkpoints e.g. d16)")
    p.add_argument("--var-ckpt", default=None, help="official var_dNN.pth (with --vae-ckpt)")
    p.add_argument("--vae-ckpt", default=None, help="official vae_ch160v4096z32.pth")
    p.add_argument("--accel", default=None, help="acceleration set of the RTL-in-the-loop run "
                                                 "(default sparse,mxfp4,hwsample,attncore)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synth", action="store_true", help="also run the synthesis of every core (slow)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--no-regression", action="store_true", help="skip the RTL regression")
    p.add_argument("--junit", nargs="+", default=None, metavar="FILE",
                   help="JUnit XML files of regression shards to summarize instead of running the regression")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("perf", help="performance model: cycles and images/s of VAR on an FPGA budget")
    from sim.perf import add_arguments
    add_arguments(p)
    p.set_defaults(func=_cmd_perf)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except ValueError as error:
        print(f"varaccel {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
