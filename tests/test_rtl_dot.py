"""RTL regression of the MX dot-product unit against golden.numerics.fp.dot_exact."""

import pytest

from hw.emit import parse_params
from rtl_util import rtl, run_tb

CONFIGS = [
    {"fmt_a": "e2m1", "fmt_b": "e2m1", "lanes": 32, "block": 32},
    {"fmt_a": "e4m3", "fmt_b": "e4m3", "lanes": 8, "block": 32},
    # A narrow accumulator so that wrap-around, overflow and floor shifts happen often.
    {"fmt_a": "e1m2", "fmt_b": "e2m1", "lanes": 4, "block": 16, "acc_frac": 6, "acc_width": 20},
    {"fmt_a": "e3m2", "fmt_b": "e2m3", "lanes": 16, "block": 32, "acc_frac": 30, "acc_width": 62},
]


@rtl
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_dot(config, seed):
    run_tb("dot", parse_params("dot", config), "tb.fp.test_dot", seed)
