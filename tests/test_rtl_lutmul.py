"""RTL regression of the LUT multiplier: every code pair of every supported format pair."""

import pytest

from hw.emit import parse_params
from rtl_util import rtl, run_tb

PAIRS = [
    ("e2m1", "e2m1", 1, False),
    ("e2m1", "e2m1", 4, True),
    ("e2m3", "e2m1", 2, False),
    ("e3m2", "e2m1", 2, False),
    ("e1m2", "e2m1", 2, False),
    ("e4m3", "e4m3", 4, False),
    ("e5m2", "e4m3", 4, False),
    ("e2m3", "e2m3", 2, True),
]
# The naive baseline of the synthesis benchmark (decode, then `*`) must be exact too.
NAIVE = [("e2m1", "e2m1", 2), ("e4m3", "e4m3", 2)]


@rtl
@pytest.mark.parametrize("fmt_a,fmt_b,lanes,signmag", PAIRS,
                         ids=[f"{a}x{b}-l{n}{'-sm' if s else ''}" for a, b, n, s in PAIRS])
def test_lutmul(fmt_a, fmt_b, lanes, signmag, seed):
    params = parse_params("lutmul", {"fmt_a": fmt_a, "fmt_b": fmt_b, "lanes": lanes, "signmag": signmag})
    run_tb("lutmul", params, "tb.fp.test_lutmul", seed)


@rtl
@pytest.mark.parametrize("fmt_a,fmt_b,lanes", NAIVE, ids=[f"naive-{a}x{b}" for a, b, _ in NAIVE])
def test_lutmul_naive(fmt_a, fmt_b, lanes, seed):
    params = parse_params("lutmul", {"fmt_a": fmt_a, "fmt_b": fmt_b, "lanes": lanes, "method": "naive"})
    run_tb("lutmul", params, "tb.fp.test_lutmul", seed)
