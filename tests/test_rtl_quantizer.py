# amaranth: UnusedElaboratable=no
"""RTL regression of the quantizer: element casts and MX blocks over formats, inputs and lanes."""

import pytest

from hw.emit import parse_params
from rtl_util import rtl, run_tb

# (fmt, in_format, lanes, mx, block)
CONFIGS = [
    ("e2m1", "f16", 4, False, 32),  # every float16 bit pattern
    ("e4m3", "f32", 2, False, 32),
    ("e5m2", "bf16", 1, False, 32),
    ("e2m3", "f32", 4, True, 32),
    ("e2m1", "f16", 8, True, 32),
    ("e3m2", "bf16", 2, True, 16),
    ("e1m2", "f16", 2, True, 2),  # one beat per block: the banks swap every cycle
]


def _id(fmt, in_format, lanes, mx, block):
    return f"{fmt}-{in_format}-l{lanes}" + (f"-mx{block}" if mx else "")


@rtl
@pytest.mark.parametrize("fmt,in_format,lanes,mx,block", CONFIGS, ids=[_id(*c) for c in CONFIGS])
def test_quantizer(fmt, in_format, lanes, mx, block, seed):
    params = parse_params("quantize", {"fmt": fmt, "in_format": in_format, "lanes": lanes,
                                       "mx": mx, "block": block})
    run_tb("quantize", params, "tb.fp.test_quantizer", seed)


@pytest.mark.parametrize("params,name", [
    ({"fmt": "e9m9"}, "fmt"),
    ({"in_format": "f64"}, "in_format"),
    ({"lanes": 0}, "lanes"),
    ({"lanes": 33}, "lanes"),
    ({"mx": 1}, "mx"),
    ({"block": 48}, "block"),
    ({"block": 512}, "block"),
    ({"mx": True, "lanes": 3, "block": 32}, "lanes"),
    ({"mx": True, "lanes": 32, "block": 16}, "lanes"),
])
def test_quantizer_bad_params(params, name):
    from hw.fp.quantizer import Quantizer
    with pytest.raises(ValueError, match=name):
        Quantizer(**params)
