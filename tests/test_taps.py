"""Tests of golden/taps: what is tapped is what the cores see, and the .npz round trip."""

import numpy as np
import torch

from golden.accel import AccelConfig, step_mask
from golden.model import VARConfig
from golden.taps import TapSpec, load_taps, run_with_taps

INIT = {"init_adaln_gamma": 0.5, "init_head": 1.0}


def test_taps_round_trip(tmp_path):
    out = tmp_path / "t.npz"
    spec = {"scales": [2, 3], "blocks": [0, 1], "heads": [1], "linear": "blocks.1.ffn.fc1"}
    img, taps = run_with_taps(accel="fastvar,sparse", seed=5, taps=spec, out=out, init_kw=INIT)
    assert img.shape == (1, 3, 64, 64)
    back = load_taps(out)
    assert set(back) == set(taps) and back.config == taps.config
    for k in taps:
        np.testing.assert_array_equal(back[k], taps[k])
    assert back.config["accel"]["prune"] and back.config["taps"]["heads"] == [1]
    assert back.config["seed"] == 5
    for k in ("s3.b1.h1.q", "s3.b0.mask", "s3.b0.pivot_scores", "s3.logits_guided", "s2.blocks.1.ffn.fc1.x",
              "blocks.1.ffn.fc1.weight"):
        assert k in back, k
    assert not any(k.startswith("s1.") for k in back)


def test_tapped_tensors_are_what_the_cores_see():
    cfg = VARConfig.preset("tiny")
    img, t = run_with_taps(accel="sparse", seed=1, taps=TapSpec(scales=(3,), blocks=(1,), heads=(0,)),
                           init_kw=INIT)
    q, k, v, mask = t["s3.b1.h0.q"], t["s3.b1.h0.k"], t["s3.b1.h0.v"], t["s3.b1.mask"]
    L = sum(p * p for p in cfg.patch_nums)
    assert q.shape == (2, 16, cfg.head_dim) and k.shape == (2, L, cfg.head_dim) and mask.shape == (2, 16, L)
    np.testing.assert_allclose(np.linalg.norm(k, axis=-1), 1.0, rtol=1e-5)       # k after L2 norm
    qn = np.linalg.norm(q, axis=-1)
    np.testing.assert_allclose(qn, qn[0, 0], rtol=1e-5)                          # q: norm x per-head gain
    a = AccelConfig.parse("sparse", cfg)
    want = step_mask(cfg.patch_nums, L - 16, L, a.block_q, a.block_k, a.window, a.sink_scales).numpy()
    np.testing.assert_array_equal(mask[0], want)
    # the attention core's output from the tapped tensors
    s = torch.softmax(torch.from_numpy(q[0] @ k[0].T).masked_fill(~torch.from_numpy(mask[0]), -torch.inf), -1)
    assert torch.isfinite(s @ torch.from_numpy(v[0])).all()
    # guided logits = (1 + t) cond - t uncond with t = cfg * si / (SN - 1)
    tg = 4.0 * 3 / 3
    np.testing.assert_allclose(t["s3.logits_guided"], (1 + tg) * t["s3.logits_cond"] - tg * t["s3.logits_uncond"],
                               rtol=1e-6, atol=1e-6)
    assert t["s3.ids"].shape == (1, 16)
