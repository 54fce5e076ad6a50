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
