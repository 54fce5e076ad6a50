"""RTL regression of the attention core against golden.numerics.attention.attention_from_codes."""

import pytest

from hw.emit import parse_params
from rtl_util import rtl, run_tb
from sim.rtl_attention import fast_slow_files

CONFIGS = [
    {"D": 32, "Br": 8, "Bc": 8, "max_kblocks": 16},
    # The VAR head dim with default numerics, short tiles so that the short jobs span several.
    {"D": 64, "Br": 4, "Bc": 16, "max_kblocks": 8},
    # Narrow numerics: other formats, MX block 16, odd tile sizes, frequent score saturation,
    # a divider retiring 3 quotient bits per cycle.
    {"D": 32, "block": 16, "Br": 5, "Bc": 6, "qk_fmt": "e2m3", "v_fmt": "e3m2", "exp_bits": 6, "p_bits": 12,
     "score_frac": 8, "score_width": 16, "dot_width": 32, "dot_frac": 12, "v_guard": 1, "acc_frac": 3,
     "acc_width": 32, "l_width": 24, "div_steps": 3, "max_kblocks": 16},
]


@pytest.mark.parametrize("bad, name", [({"lanes": 5}, "lanes"), ({"Br": 0}, "Br"), ({"p_bits": 99}, "p_bits"),
                                        ({"D": 48, "block": 32}, "block"), ({"max_kblocks": 0}, "max_kblocks"),
                                        ({"qk_fmt": "e9m9"}, "qk_fmt"), ({"div_steps": 0}, "div_steps")])
def test_attention_bad_params(bad, name):
    from hw.attn.core import AttentionCore
    with pytest.raises(ValueError, match=name):
        AttentionCore(**bad)


@rtl
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_attention(config, seed):
    with fast_slow_files():
        run_tb("attention", parse_params("attention", config), "tb.attn.test_attention", seed)


@rtl
@pytest.mark.parametrize("seed", [122806995], indirect=True)
def test_attention_pinned_negative_block_sum(seed):
    """Pinned: a negative q.k block sum narrower than the dot accumulator was zero-extended by the
    right-shift (floor) path instead of sign-extended (narrow config, extreme codes)."""
    with fast_slow_files():
        run_tb("attention", parse_params("attention", CONFIGS[2]), "tb.attn.test_attention", seed,
               testcase="extreme_codes")
