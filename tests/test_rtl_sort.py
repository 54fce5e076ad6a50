"""RTL regression of the LSD radix sorter against golden.numerics.sort.sort."""

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
    # P = 2 and 4 lanes, R = 4 and 8; N not a multiple of P (banks of unequal capacity)
    {"key_bits": 16, "radix_bits": 4, "max_len": 256, "lanes": 2},
    {"key_bits": 16, "radix_bits": 8, "max_len": 131, "lanes": 2},
    {"key_bits": 16, "radix_bits": 4, "max_len": 250, "lanes": 4},
    {"key_bits": 16, "radix_bits": 8, "max_len": 128, "lanes": 4},
    {"key_bits": 7, "radix_bits": 3, "max_len": 41, "lanes": 4},
    {"key_bits": 16, "radix_bits": 4, "max_len": 4096, "lanes": 4},
]


@rtl
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_sort(config, seed):
    run_tb("sort", parse_params("sort", config), "tb.sort.test_sort", seed)
