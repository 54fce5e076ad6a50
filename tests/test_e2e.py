"""End to end: tensors tapped from a golden tiny VAR run come out of the RTL bit for bit."""

import pytest

from rtl_util import rtl


@rtl
@pytest.mark.parametrize("seed", [0], indirect=True)
def test_golden_taps_replay_exactly(seed):
    from sim.e2e import replay_taps
    rows = replay_taps(seed=seed)
    assert {r["core"] for r in rows} == {"topk", "dot", "attention"}
    bad = [f"{r['tensor']}: {r['mismatch']}" for r in rows if r["exact"] != r["total"]]
    assert not bad, bad


@rtl
def test_rtl_in_the_loop_generation_is_identical(seed):
    """The emitted top-k and attention cores inside a generation give the golden image bit for bit."""
    from golden.accel.generate import load_model
    from sim.loop import LIVELY, run_in_the_loop
    _, var = load_model("tiny", init_kw=LIVELY)
    result = run_in_the_loop(var, seed=seed)
    cores = [r["core"] for r in result.rows]
    heads, cfg_rows = var.cfg.num_heads, 2
    assert cores.count("topk") == len(var.patch_nums) and cores.count("attention") == heads * cfg_rows
    bad = [f"{r['tensor']}: {r['mismatch']}" for r in result.rows if r["exact"] != r["total"]]
    assert not bad, bad
    assert result.identical
    assert all(r["floor"] and r["cycles"] >= r["floor"] for r in result.rows)
