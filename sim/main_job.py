"""The main job (``make run``): emit every core, run the RTL regression, print a summary."""

import sys

from .regression import format_summary, run_regression, summarize_junit
from .runner import REPO_ROOT

__all__ = ["run_main_job"]


def run_main_job(args):
    """Emit Verilog for every core into build/verilog, run the cocotb regression, summarize.

    Returns the process exit code: non-zero when any test failed.
    """
    from hw.emit import CORES, emit_core
    from sim.docs import write_verilog_readme
    out = REPO_ROOT / "build" / "verilog"
    for core in CORES:
        emitted = emit_core(core, None, out)
        print(f"emitted {emitted.verilog.relative_to(REPO_ROOT)}")
    write_verilog_readme(out, list(CORES))
    code, junit = run_regression(marker="rtl", jobs=getattr(args, "jobs", 2))
    summary = summarize_junit([junit])
    print("\nRTL regression (every output compared bit for bit with golden/numerics):\n")
    print(format_summary(summary))
    return code


if __name__ == "__main__":
    sys.exit(run_main_job(None))
