# amaranth: UnusedElaboratable=no
"""RTL regression of the top-k core against golden.numerics.sort.topk and clamp_k."""

import pytest

from hw.emit import parse_params
from rtl_util import rtl, run_tb

CONFIGS = [
    {"key_bits": 16, "radix_bits": 4, "max_len": 256, "banks": 2},
    {"key_bits": 16, "radix_bits": 8, "max_len": 128, "banks": 4},
    # one bank; short top digit (7 = 3 + 3 + 1), tiny RAMs
    {"key_bits": 7, "radix_bits": 3, "max_len": 40, "banks": 1},
    # eight banks, a packet limit that is not a multiple of them
    {"key_bits": 12, "radix_bits": 5, "max_len": 43, "banks": 8},
    # P keys per beat: packet limits that are not multiples of P
    {"key_bits": 16, "radix_bits": 4, "max_len": 250, "lanes": 2},
    {"key_bits": 10, "radix_bits": 3, "max_len": 97, "lanes": 4, "banks": 4},
    # the full-size core: fewer, longer packets
    {"key_bits": 16, "radix_bits": 4, "max_len": 4096, "banks": 2},
]


@rtl
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_topk(config, seed):
    run_tb("topk", parse_params("topk", config), "tb.sort.test_topk", seed)


@pytest.mark.parametrize("params,name", [
    ({"key_bits": 0}, "key_bits"),
    ({"radix_bits": 9}, "radix_bits"),
    ({"key_bits": 4, "radix_bits": 5}, "radix_bits"),
    ({"max_len": 1}, "max_len"),
    ({"lanes": 3}, "lanes"),
    ({"lanes": 8}, "lanes"),
    ({"lanes": 4, "banks": 2}, "banks"),
    ({"banks": -1}, "banks"),
    ({"banks": 3}, "banks"),
    ({"banks": 16}, "banks"),
    ({"max_len": 3, "banks": 4}, "banks"),
    ({"banks": True}, "banks"),
])
def test_topk_bad_params(params, name):
    from hw.sort.topk import TopK
    with pytest.raises(ValueError, match=name):
        TopK(**params)


@rtl
@pytest.mark.parametrize("unordered", [False, True])
def test_rtl_topk_host_lanes(unordered, seed):
    """``varaccel rtl topk --param lanes=2``: float rows of a length that P does not divide (one
    with ties across the k-th key, one constant) packed into 2-key beats give golden's indices."""
    import numpy as np
    from golden.numerics import sort as sortnum
    from sim.rtl import rtl_topk
    from tb.sort.host import float_keys

    config = {"key_bits": 16, "radix_bits": 4, "max_len": 64, "lanes": 2}
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 63)).astype(np.float32)
    x[0, :20] = x[0, 20:40]
    x[1] = -1.5
    res = rtl_topk(x, k=17, unordered=unordered, **config)
    want = sortnum.topk(float_keys(x, 16), 17, sorted=not unordered, key_bits=16, radix_bits=4).numpy()
    np.testing.assert_array_equal(res.outputs["indices"], want)
