"""Performance model (sim/perf.py): analytic op counts against the golden OpCounter, and the
cycle model's sanity (monotonic in the work, parameters checked)."""

import math

import pytest

from golden.accel.generate import run
from golden.model import VARConfig, build
from golden.model.config import PATCH_NUMS_256
from sim import perf

# The tiny preset (4 scales, tiles of 4) and a narrow model on the real 256 px schedule
# (10 scales, 680 tokens, default tiles of 16, two sink scales), both cheap on a CPU.
TINY = VARConfig.preset("tiny")
SCHED256 = VARConfig.preset("tiny").replace(patch_nums=PATCH_NUMS_256, depth=3, num_heads=2)

_models = {}


def _golden(cfg, spec):
    key = (cfg, spec)
    if key not in _models:
        if cfg not in _models:
            _models[cfg] = build(cfg, seed=0)[1]
        _models[key] = run(_models[cfg], spec, seed=0).counter
    return _models[key]


def _check_exact(cfg, spec):
    golden = _golden(cfg, spec)
    steps = perf.op_counts(cfg, spec)
    assert all(s.exact for s in steps), f"{spec}: the model flags its own counts as estimates"
    assert len(steps) == len(golden.steps)
    for g, s in zip(golden.steps, steps):
        assert g.scales == s.scales
        assert g.tokens == s.tokens, f"{spec} scales {s.scales}: tokens"
        for name in ("linear_macs", "attn_macs", "attn_tiles_kept", "attn_tiles_total", "sort_calls"):
            assert getattr(g, name) == getattr(s, name), f"{spec} scales {s.scales}: {name}"
    assert golden.totals() == perf.totals(steps)


@pytest.mark.parametrize("spec", ["dense", "fastvar", "sparse", "parallel", "sparse,parallel",
                                  "mxfp4,fastvar,hwsample", "mxfp6,hwsample"])
def test_counts_equal_golden_tiny(spec):
    _check_exact(TINY, spec)


@pytest.mark.parametrize("spec", ["dense", "sparse", "fastvar,hwsample"])
def test_counts_equal_golden_256px_schedule(spec):
    _check_exact(SCHED256, spec)


def test_fastvar_sparse_estimate_is_flagged_and_close():
    """Sparse tiles over a pruned cache depend on which tokens were kept: an estimate, within 10 %."""
    golden = _golden(SCHED256, "fastvar,sparse").totals()
    steps = perf.op_counts(SCHED256, "fastvar,sparse")
    assert not all(s.exact for s in steps)
    t = perf.totals(steps)
    assert t["linear_macs"] == golden["linear_macs"] and t["tokens"] == golden["tokens"]
    assert abs(t["attn_macs"] / golden["attn_macs"] - 1) < 0.10


def test_quantized_split_and_bytes():
    d16 = VARConfig.preset("d16")
    dense, q = perf.op_counts(d16, "dense"), perf.op_counts(d16, "mxfp4")
    assert sum(s.linear_macs_q for s in dense) == 0
    C, F = d16.embed_dim, d16.ffn_hidden
    assert sum(s.linear_macs_q for s in q) == 2 * d16.L * d16.depth * (4 * C * C + 2 * C * F)
    # MXFP4 weights: 4.25 bits instead of 8.25 for the block linears
    assert q[0].weight_bytes < 0.6 * dense[0].weight_bytes


def test_sparser_masks_give_fewer_attention_cycles():
    d16 = VARConfig.preset("d16")
    cycles = []
    for spec in ("dense", "sparse,window=3", "sparse,window=1"):
        r = perf.predict(perf.op_counts(d16, spec), "vck190", counts={"fp4": 0, "fp8": 1024, "attn": 8, "sort": 4})
        cycles.append(r["cycles"]["attn"])
    assert cycles[0] > cycles[1] > cycles[2]


def test_more_work_and_slower_clock_lower_throughput():
    d16, d30 = VARConfig.preset("d16"), VARConfig.preset("d30")
    a = perf.predict(perf.op_counts(d16, "mxfp4"), "vck190")
    b = perf.predict(perf.op_counts(d30, "mxfp4"), "vck190")
    assert a["images_per_s"] > b["images_per_s"]
    slow = perf.predict(perf.op_counts(d16, "mxfp4"), "vck190", clock_mhz=100)
    assert slow["images_per_s"] < a["images_per_s"]
    small = perf.predict(perf.op_counts(d16, "mxfp4"), "kc705")
    assert small["images_per_s"] < a["images_per_s"]
    for r in (a, b, slow, small):
        assert r["resources_used"]["LUT"] <= r["util"] * perf.BUDGETS["vck190"]["LUT"] + 1
        assert math.isclose(r["seconds"] * r["images_per_s"], 1.0)


def test_ladder_is_monotonic_and_turbo_needs_a_ratio():
    rows = perf.ladder("d16", "vck190")
    ips = [r["images_per_s"] for r in rows]
    assert ips == sorted(ips)
    with pytest.raises(ValueError, match="turbo_keep"):
        perf.op_counts(VARConfig.preset("d16"), "turbo")
    assert "turbo" in perf.ladder("d16", turbo_keep=0.5)[-1]["label"]


@pytest.mark.parametrize("kw, name", [({"budget": "zu9"}, "budget"), ({"clock_mhz": 0}, "clock_mhz"),
                                      ({"util": 1.5}, "util"), ({"overlap": "some"}, "overlap"),
                                      ({"ddr_gbs": -1.0}, "ddr_gbs")])
def test_bad_parameters_raise(kw, name):
    steps = perf.op_counts(TINY, "dense")
    with pytest.raises(ValueError, match=name):
        perf.predict(steps, **kw)


def test_forced_counts_are_checked():
    steps = perf.op_counts(VARConfig.preset("d16"), "mxfp4")
    with pytest.raises(ValueError, match="counts"):
        perf.predict(steps, counts={"fp4": 0, "fp8": 100, "attn": 1, "sort": 1})
    with pytest.raises(ValueError, match="counts"):
        perf.predict(steps, counts={"fp4": 10 ** 6, "fp8": 100, "attn": 1, "sort": 1})


def test_bad_counting_parameters_raise():
    with pytest.raises(ValueError, match="turbo_keep"):
        perf.op_counts(TINY, "dense", turbo_keep=1.5)
    with pytest.raises(ValueError, match="top_k"):
        perf.op_counts(TINY, "dense", top_k=0)


def test_report_and_cli(capsys):
    text = perf.perf_report(("d16",))
    assert "FPQVAR" in text and "| dense" in text and "Assumptions" in text
    from sim.cli import main
    assert main(["perf", "--arch", "d16", "--accel", "mxfp4,fastvar,sparse"]) == 0
    assert "images/s" in capsys.readouterr().out
