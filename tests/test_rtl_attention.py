"""RTL regression of the attention core against golden.numerics.attention.attention_from_codes."""

import pytest

from hw.emit import parse_params
from rtl_util import rtl, run_tb
from sim.rtl_attention import fast_slow_files

CONFIGS = [
    {"D": 32, "Br": 8, "Bc": 8, "max_kblocks": 16},
    # The VAR head dim with default numerics, short tiles so that the short jobs span several.
    {"D": 64, "Br": 4, "Bc": 16, "max_kblocks": 8},
    # Narrow numerics: other formats, MX block 16, odd tile sizes, frequent score saturation.
    {"D": 32, "block": 16, "Br": 5, "Bc": 6, "qk_fmt": "e2m3", "v_fmt": "e3m2", "exp_bits": 6, "p_bits": 12,
     "score_frac": 8, "score_width": 16, "dot_width": 32, "dot_frac": 12, "v_guard": 1, "acc_frac": 3,
     "acc_width": 32, "l_width": 24, "max_kblocks": 16},
]


@pytest.mark.parametrize("bad, name", [({"lanes": 5}, "lanes"), ({"Br": 0}, "Br"), ({"p_bits": 99}, "p_bits"),
                                        ({"D": 48, "block": 32}, "block"), ({"max_kblocks": 0}, "max_kblocks"),
                                        ({"qk_fmt": "e9m9"}, "qk_fmt")])
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


@pytest.mark.parametrize("kwargs, name", [({"mode": "pivot"}, "mode"), ({"mode": "similarity", "v": 1}, "v and mask"),
                                          ({"mode": "attention"}, "q, k and v")])
def test_rtl_attention_bad_mode_arguments(kwargs, name):
    """The tensor runner checks its mode and which inputs that mode takes before building anything."""
    import numpy as np
    from sim.rtl_attention import rtl_attention
    kwargs = dict(kwargs)
    v = kwargs.pop("v", None)
    with pytest.raises(ValueError, match=name):
        rtl_attention(np.zeros((2, 64), np.float32), None, None if v is None else np.zeros((2, 64), np.float32),
                      **kwargs)


@rtl
def test_rtl_similarity_runner_matches_golden():
    """``rtl_attention(x, mode="similarity")`` (what ``varaccel rtl attention --param mode=similarity``
    calls) reassembles the streamed scores into the matrix golden similarity_scores gives."""
    import numpy as np
    import torch
    from golden.numerics.attention import scores_from_codes, similarity_scores
    from golden.numerics.fp import mx_quantize
    from sim.rtl_attention import rtl_attention
    from tb.attn.jobs import numerics_of
    config = CONFIGS[0]
    nm = numerics_of(parse_params("attention", config))
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2 * config["Br"] + 3, config["D"], generator=gen)
    with fast_slow_files():
        result = rtl_attention(x.numpy(), mode="similarity", **config)
    assert np.array_equal(result.outputs["out"], similarity_scores(x, nm).numpy())
    # Cross scores (queries against other keys), Lk not a multiple of Bc.
    k = torch.randn(config["Bc"] + 5, config["D"], generator=gen) * 3
    with fast_slow_files():
        result = rtl_attention(x.numpy(), k.numpy(), mode="similarity", **config)
    qc, qs = mx_quantize(x, nm.fq, nm.block)
    kc, ks = mx_quantize(k, nm.fq, nm.block)
    assert np.array_equal(result.outputs["out"], scores_from_codes(qc, qs, kc, ks, numerics=nm)[0].numpy())


@rtl
@pytest.mark.parametrize("config_index, seed", [(2, 153478260), (2, 1914563131)])
def test_reset_mid_similarity_pinned(config_index, seed):
    """Pinned: with a 70 %-stalled sink the first score could come out after the fixed reset
    delay, so the reset missed the job (the reset now follows the first score)."""
    with fast_slow_files():
        run_tb("attention", parse_params("attention", CONFIGS[config_index]), "tb.attn.test_attention", seed,
               testcase="reset_mid_similarity")


def test_ecp5_target_uses_registered_multipliers_and_block_rams(tmp_path):
    """sim/synth.py elaborates for SynthTarget("ecp5"): every product register of the attention
    core is a MULT18X18D with its output register (hw/attn/dsp.py) and every block RAM a DP16KD
    with REGMODE OUTREG (hw/common/ram.py); plain emission (varaccel verilog, simulation) has
    neither. The target plumbing is otherwise only seen in a long synth run."""
    from hw.common.ram import SynthTarget
    from hw.emit import emit_core
    params = {"D": 16, "block": 16}
    plain = emit_core("attention", params, tmp_path / "plain").verilog.read_text()
    ecp5 = emit_core("attention", params, tmp_path / "ecp5", target=SynthTarget("ecp5")).verilog.read_text()
    assert "MULT18X18D" not in plain and "DP16KD" not in plain
    # state x alpha: 16 x 3 pieces of acc (40 bits) + 2 of l (32 bits); dot x C: 3 pieces of dot
    # (40 bits); p x vfix: 16 x 2 pieces of vfix (21 bits)
    assert ecp5.count("MULT18X18D") == 85
    assert ecp5.count(".REG_OUTPUT_CLK(\"CLK0\")") == 85
    # Input registers (hw/attn/dsp.py): alpha, C and p at every B input, the row state, dot and
    # vfix at every A input
    assert ecp5.count(".REG_INPUTB_CLK(\"CLK0\")") == 85
    assert ecp5.count(".REG_INPUTA_CLK(\"CLK0\")") == 85
    # Register copies kept apart in synthesis (hw/common/fanout.py): per lane, the Q and K
    # significands (one per product table), V's alignment amount, the row update's two shift
    # amounts, the block sums' valid and first-key flags, the divisor, the load enable of the
    # row's new state (U2S), the divider's fully-masked flag; the saturation
    # thresholds' shift (4 x 16 bits each), the exp2 index of p and alpha (per table part), p
    # (per 4 products), the score, valid and first-key flags for the running max, the similarity
    # flag (the loader's two, A's, B's, and A's end's).
    assert ecp5.count("varaccel_fanout_copy") == 16 * (2 * 2 + 1 + 2 + 2 + 1 + 1 + 1) + 2 * 4 + 2 * 4 + 4 + 3 + 5
    # Q, K (2 banks), V (2 banks): 136 bits, 8 x18 tiles each; scores 24 bits: 2; row state
    # 16 x 40 + 32 + 8 bits: 38
    assert ecp5.count(".REGMODE_B(\"OUTREG\")") == 8 + 8 + 8 + 2 + 38
