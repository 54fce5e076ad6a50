"""RTL regression of the top-k core against golden.numerics.sort.topk and clamp_k."""

import pytest

from hw.emit import parse_params
from rtl_util import rtl, run_tb

CONFIGS = [
    {"key_bits": 16, "radix_bits": 4, "max_len": 256},
    {"key_bits": 16, "radix_bits": 8, "max_len": 128},
    # short top digit (7 = 3 + 3 + 1), tiny RAMs
    {"key_bits": 7, "radix_bits": 3, "max_len": 40},
    # the full-size core: fewer, longer packets
    {"key_bits": 16, "radix_bits": 4, "max_len": 4096},
]


@rtl
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_topk(config, seed):
    run_tb("topk", parse_params("topk", config), "tb.sort.test_topk", seed)
