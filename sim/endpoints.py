"""Late endpoints of a placed and routed design, from nextpnr-ecp5's detailed timing report.

The critical path that nextpnr prints is one path of many: on a large design the late
endpoints fall into groups (a register that fans out across the die, a compare behind a
state flag) and closing timing means working through the groups, not the single worst path.
``varaccel synth --family ecp5`` writes ``nextpnr_seed<N>.json`` with nextpnr's
``--detailed-timing-report``: for every routed net, the arrival time range (ns after the
launching clock edge) at each of its timed sinks. This tool reads that file and groups the
endpoints that arrive after a period by register name (bit indices and numbers folded, so
``core.dv_q3[7]`` and ``core.dv_q12[0]`` are one group ``core.dv_q#``), with the net that
drives each group. The report lists only the path ends (flip-flop, RAM and multiplier
inputs), not the LUTs on the way: the path behind a group is read from the HDL. A design
placed with I/O pins also has paths from its input pins, which are not register to register
and do not count in nextpnr's Fmax (out of context, as the attention core is placed, the
latest endpoint was the critical path's).

Usage::

    python -m sim.endpoints build/synth/attention-<params>-ecp5/nextpnr_seed1.json --mhz 150

(``<params>``: the parameter tag of the flow's work directory, ``workdir`` in its result.)
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

# Suffixes that Yosys' and nextpnr's ECP5 mapping append to the name of the HDL signal a cell
# came from; everything from the first of them on is dropped when grouping.
_CELL_SUFFIXES = ("_TRELLIS_FF", "_TRELLIS_COMB", "_LUT4", "_PFUMX", "_L6MUX21", "_CCU2C", "_DP16KD",
                  "_MULT18X18D", "_ALU54B")


def signal_group(cell: str) -> str:
    """The HDL signal a mapped cell belongs to, with bit indices and numbers folded to ``#``."""
    name = re.sub(r"\$.*", "", cell)
    cuts = [k for k in (name.find(s) for s in _CELL_SUFFIXES) if k > 0]
    if cuts:
        name = name[:min(cuts)]
    name = re.sub(r"\[\d+\]", "", name)
    return re.sub(r"\d+", "#", name)


class TimingReport:
    """The timed endpoints of a nextpnr detailed timing report."""

    def __init__(self, report: dict):
        if "detailed_net_timings" not in report:
            raise ValueError("report: no detailed_net_timings (run nextpnr with --detailed-timing-report)")
        self.endpoints = []   # (arrival, cell, port, net, driver cell, driver port), latest first
        for net in report["detailed_net_timings"]:
            for sink in net["endpoints"]:
                delay = sink["delay"]
                arrival = max(delay) if isinstance(delay, list) else float(delay)
                entry = (arrival, sink["cell"], sink["port"], net["net"], net["driver"], net["port"])
                self.endpoints.append(entry)
        self.endpoints.sort(key=lambda e: -e[0])

    @classmethod
    def load(cls, path) -> "TimingReport":
        return cls(json.loads(Path(path).read_text()))

    def late_groups(self, period: float):
        """[(worst arrival, group, port, count, an example endpoint)] of the endpoints that
        arrive at or after ``period``, the latest group first."""
        groups = defaultdict(list)
        for entry in self.endpoints:
            if entry[0] < period:
                break
            groups[(signal_group(entry[1]), entry[2])].append(entry)
        rows = [(lst[0][0], group, port, len(lst), lst[0]) for (group, port), lst in groups.items()]
        return sorted(rows, key=lambda r: -r[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.endpoints", description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="nextpnr --report JSON written with --detailed-timing-report")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--period", type=float, default=None,
                        help="list endpoints arriving at or after this many ns (default: the report's Fmax target)")
    target.add_argument("--mhz", type=float, default=None, help="the same as --period 1000/MHZ")
    parser.add_argument("--rows", type=int, default=40, help="groups to print")
    args = parser.parse_args(argv)
    report = json.loads(Path(args.report).read_text())
    timing = TimingReport(report)
    period = args.period if args.mhz is None else 1000.0 / args.mhz
    if period is not None and not period > 0:
        raise SystemExit("--period / --mhz must be positive")
    if period is None:
        fmax = report.get("fmax", {})
        period = 1000.0 / min(v["constraint"] for v in fmax.values()) if fmax else 6.67
    arrivals = [e[0] for e in timing.endpoints]
    print(f"{len(arrivals)} timed endpoints, the latest at {arrivals[0]:.2f} ns")
    for t in sorted({period - 1.0, period - 0.5, period, period + 0.5, period + 1.0}):
        print(f"  at or after {t:5.2f} ns: {sum(a >= t for a in arrivals)}")
    print(f"groups at or after {period:.2f} ns (worst arrival, endpoints, group.port <- driving net):")
    for worst, group, port, count, example in timing.late_groups(period)[:args.rows]:
        print(f"  {worst:5.2f} x{count:<4d} {group}.{port}  <- {signal_group(example[3])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
