"""Every emitted core is Verilator `--lint-only -Wall` clean and its emission is deterministic."""

import subprocess

import pytest

from hw.emit import CORES, emit_core
from sim.runner import setup_verilator


@pytest.mark.parametrize("core", sorted(CORES))
def test_verilator_lint_wall(core, tmp_path):
    root = setup_verilator()
    emitted = emit_core(core, None, tmp_path)
    proc = subprocess.run([str(root / "bin" / "verilator"), "--lint-only", "-Wall", str(emitted.verilog)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "%Warning" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("core", sorted(CORES))
def test_emission_is_deterministic_and_has_no_paths(core, tmp_path):
    first = emit_core(core, None, tmp_path / "a").verilog.read_text()
    second = emit_core(core, None, tmp_path / "b").verilog.read_text()
    assert first == second
    assert "/work/" not in first and "/home/" not in first and ".py:" not in first
    core_file = (tmp_path / "a" / f"varaccel_{core}.core").read_text()
    assert core_file.startswith("CAPI=2:") and f"varaccel_{core}.v" in core_file
