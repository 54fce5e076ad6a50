"""The main job (``make run``): emit every core, replay golden VAR taps through the RTL, run the
RTL regression, and write build/report/report.md."""

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
    from sim.e2e import format_rows, replay_taps
    rows = replay_taps(seed=0)
    replay_table = format_rows(rows)
    print("\nRTL replay of tensors tapped from the golden tiny VAR run:\n")
    print(replay_table)
    mismatches = [r for r in rows if r["exact"] != r["total"]]
    for r in mismatches:
        print(f"MISMATCH {r['tensor']}: {r['mismatch']}", file=sys.stderr)
    code = 0
    table = "(regression skipped: --no-regression)"
    if not getattr(args, "no_regression", False):
        code, junit = run_regression(marker="rtl", jobs=getattr(args, "jobs", 2))
        table = format_summary(summarize_junit([junit]))
        print("\nRTL regression (every output compared bit for bit with golden/numerics):\n")
        print(table)
    report = REPO_ROOT / "build" / "report" / "report.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("# varaccel run\n\n## Golden taps replayed through the RTL (tiny preset, seed 0)\n\n"
                      + replay_table + "\n\n## RTL regression\n\n" + table + "\n")
    print(f"\nreport: {report}")
    return 1 if (code or mismatches) else 0


if __name__ == "__main__":
    sys.exit(run_main_job(None))
