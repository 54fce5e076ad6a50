"""sim/endpoints.py: late endpoints of a nextpnr detailed timing report, grouped by register."""
import json

import pytest

from sim.endpoints import TimingReport, main, signal_group


def net(name, driver, *sinks):
    return {"net": name, "driver": driver, "port": "Q", "event": "posedge clk", "sources": [],
            "endpoints": [{"cell": c, "port": p, "delay": d, "event": "posedge clk"} for c, p, d in sinks]}


REPORT = {
    "fmax": {"clk": {"achieved": 120.0, "constraint": 200.0}},
    "detailed_net_timings": [
        net("core.dv_q1[3]", "core.dv_q1_TRELLIS_FF_Q_3",
            ("core.dv_q1_TRELLIS_FF_Q_2", "DI", [7.9, 8.2]), ("core.dv_q12_TRELLIS_FF_Q", "DI", [6.0, 6.8])),
        net("core.a_seq", "core.a_seq_TRELLIS_FF_Q",
            ("core.a_seq_TRELLIS_FF_Q_1", "CE", [7.5, 7.6]), ("core.a_seq_TRELLIS_FF_Q_1", "DI", 6.1)),
        net("core.kmem", "core.x_LUT4_Z", ("core.kmem.kmem_0$DP16KD", "WEA", [1.0, 2.0])),
    ],
}


def test_signal_group_folds_bits_numbers_and_mapping_suffixes():
    assert signal_group("core.dv_q12_TRELLIS_FF_Q_2") == "core.dv_q#"
    assert signal_group("core.dv_q1[7]") == "core.dv_q#"
    assert signal_group("core.b_row_last_TRELLIS_FF_Q_DI_L6MUX21_Z_D1_PFUMX_Z") == "core.b_row_last"
    assert signal_group("core.i__valid$219_TRELLIS_FF_Q") == "core.i__valid"


def test_late_groups_count_endpoints_at_or_after_the_period():
    timing = TimingReport(REPORT)
    assert [e[0] for e in timing.endpoints] == sorted((8.2, 6.8, 7.6, 6.1, 2.0), reverse=True)
    rows = timing.late_groups(6.8)
    # (worst arrival, group, port, count): dv_q1 at 8.2 and dv_q12 at 6.8 are one group
    assert [r[:4] for r in rows] == [(8.2, "core.dv_q#", "DI", 2), (7.6, "core.a_seq", "CE", 1)]
    assert timing.late_groups(9.0) == []
    assert len(timing.late_groups(0.0)) == 4


def test_report_without_detailed_timings_is_refused(tmp_path):
    with pytest.raises(ValueError, match="report"):
        TimingReport({"fmax": {}})


def test_cli_prints_groups_at_the_given_frequency(tmp_path, capsys):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(REPORT))
    assert main([str(path), "--mhz", "125"]) == 0   # 8.0 ns: only the dv_q group
    out = capsys.readouterr().out
    assert "5 timed endpoints, the latest at 8.20 ns" in out
    assert "x1 " in out and "core.dv_q#.DI" in out and "core.a_seq" not in out.split("groups")[1]
    main([str(path)])   # default: the report's target, 200 MHz = 5 ns
    assert "core.a_seq.CE" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(path), "--period", "0"])
