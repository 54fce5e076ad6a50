"""Tests of the model's ``step`` hook and of golden.accel.graphs.StepGraphs on the CPU.

The CUDA capture and replay themselves need a GPU: the benchmark checks them there
(``python -m golden.bench.gpu --graphs --verify``: every phase's image equals an eager one bit
for bit). Here: the step hook's plumbing, StepGraphs' delegation (images and op counts equal
to the wrapped hooks'), which configurations it accepts, and its phase bookkeeping."""

import pytest
import torch

from golden.accel import AcceleratedHooks, RunRecord, accelerated_infer
from golden.accel.graphs import StepGraphs, graphable
from golden.model import VARConfig, build
from golden.model.hooks import StepContext, VARHooks

KW = dict(B=2, label_B=torch.tensor([1, 3]), g_seed=5, cfg=4.0, top_k=900, top_p=0.95)


@pytest.fixture(scope="module")
def var():
    _, model = build(VARConfig.preset("tiny"), seed=4, init_adaln_gamma=0.5, init_head=1.0)
    return model


class CountingSteps(VARHooks):
    """Step hook that records what it was given and scales the logits (so that a hook that is
    not called, or whose result is dropped, changes the outcome)."""

    def __init__(self):
        self.seen = []
        self.block_hooks = []

    def step(self, var, x_BlC, cond_BD, attn_bias, ctx, run):
        self.seen.append((ctx.si, ctx.q_begin, ctx.q_end, tuple(x_BlC.shape), attn_bias is None))
        return run(x_BlC, cond_BD, attn_bias, ctx) * 0.5

    def block(self, block, x_BLC, cond_BD, attn_bias, ctx, run):
        self.block_hooks.append(ctx.hooks is self)
        return run(x_BLC, attn_bias)


def test_step_hook_wraps_every_step(var):
    hooks = CountingSteps()
    img = var.autoregressive_infer_cfg(**KW, hooks=hooks)
    pns = var.patch_nums
    ends = [sum(p * p for p in pns[:i + 1]) for i in range(len(pns))]
    assert [s[0] for s in hooks.seen] == list(range(len(pns)))
    assert [(s[1], s[2]) for s in hooks.seen] == list(zip([0] + ends[:-1], ends))
    assert all(s[3] == (2 * KW["B"], p * p, var.C) and s[4] for s, p in zip(hooks.seen, pns))
    assert len(hooks.block_hooks) == len(pns) * var.depth and all(hooks.block_hooks)
    # halving the logits flattens the sampling distribution: another image
    assert not torch.equal(img, var.autoregressive_infer_cfg(**KW))


def test_base_step_hook_is_the_identity(var):
    assert torch.equal(var.autoregressive_infer_cfg(**KW, hooks=VARHooks()), var.autoregressive_infer_cfg(**KW))


@pytest.mark.parametrize("spec", ["dense", "fastvar", "sparse", "fastvar,parallel"])
def test_step_graphs_off_cuda_equal_the_wrapped_hooks(var, spec):
    """Off CUDA StepGraphs runs each step eagerly through the wrapped hooks: same logits, ids,
    image and op counts, in the model's loop and in the accelerated driver (parallel decoding:
    a step with an attention bias), over several generations."""
    plain = AcceleratedHooks(var.cfg, spec)
    wrapped = StepGraphs(AcceleratedHooks(var.cfg, spec))
    for _ in range(3):                       # the phases a GPU would go through
        a, b = RunRecord(), RunRecord()
        accelerated_infer(var, **KW, hooks=plain, record=a)
        accelerated_infer(var, **KW, hooks=wrapped, record=b)
        assert torch.equal(a.image, b.image)
        assert all(torch.equal(x, y) for x, y in zip(a.logits, b.logits))
        assert all(torch.equal(x, y) for x, y in zip(a.ids, b.ids))
    assert plain.counter.totals() == wrapped.inner.counter.totals()
    assert wrapped.counter is wrapped.inner.counter      # attributes come from the wrapped hooks
    assert wrapped.captures == 0 and wrapped.replays == 0
    if spec in ("dense", "sparse", "fastvar"):
        img = var.autoregressive_infer_cfg(**KW, hooks=StepGraphs(AcceleratedHooks(var.cfg, spec)))
        assert torch.equal(img, var.autoregressive_infer_cfg(**KW, hooks=AcceleratedHooks(var.cfg, spec)))


def test_step_graphs_dense_wraps_no_hooks(var):
    assert torch.equal(var.autoregressive_infer_cfg(**KW, hooks=StepGraphs()), var.autoregressive_infer_cfg(**KW))
    assert graphable(None) == (True, "")


@pytest.mark.parametrize("spec,kw,reason", [
    ("turbo", {}, "aggregation and bypass"),
    ("bypass", {}, "aggregation and bypass"),
    ("fastvar,sparse", {}, "per-row masks"),
    ("mxfp4", {}, "low-bit"),
    ("attncore", {}, "attention core"),
    ("fastvar", {"fast": False}, "general path"),
    ("fastvar", {"tap": object()}, "taps"),
])
def test_step_graphs_reject_what_cannot_be_captured(var, spec, kw, reason):
    hooks = AcceleratedHooks(var.cfg, spec, **kw)
    ok, why = graphable(hooks)
    assert not ok and reason in why
    with pytest.raises(ValueError, match="inner hooks"):
        StepGraphs(hooks)


def test_step_graphs_reject_unknown_hooks():
    ok, why = graphable(CountingSteps())
    assert not ok and "not an AcceleratedHooks" in why
    for spec in ("dense", "fastvar", "sparse", "parallel", "hwsample", "fastvar,parallel"):
        assert graphable(AcceleratedHooks(VARConfig.preset("tiny"), spec)) == (True, "")


def _ctx(si, q_begin):
    return StepContext(mode="ar", patch_nums=(1, 2), q_begin=q_begin, q_end=q_begin + 1, si=si)


def test_step_graphs_phases_advance_per_generation():
    g = StepGraphs()
    steps = [{"runs": 0}, {"runs": 0}]
    for gen in range(4):
        assert [g._advance(e, _ctx(i, i)) for i, e in enumerate(steps)] == [min(gen, 2)] * 2


def test_step_graphs_refuse_a_generation_that_mixes_phases():
    g = StepGraphs()
    first, second = {"runs": 0}, {"runs": 0}
    g._advance(first, _ctx(0, 0))
    g._advance(second, _ctx(1, 1))
    assert g._advance(first, _ctx(0, 0)) == 1            # second generation: capture
    with pytest.raises(RuntimeError, match="phase 1 but this generation began in phase 2"):
        g._advance({"runs": 0}, _ctx(1, 1))               # a step never seen before: eager
    g.reset()
    assert g._advance({"runs": 0}, _ctx(0, 0)) == 0
