"""Attention-core jobs for the RTL: stimulus generation, beats in the host streaming order, golden outputs.

Shared by the cocotb tests (tb/attn/test_attention.py), the tensor runner (sim/rtl_attention.py)
and the benchmark (sim/bench_attn.py). The streaming order is the one documented in
hw/attn/core.py: ``cmd`` (1 beat), ``mask`` (1 beat per query tile; none in similarity mode),
``q`` (every row), ``k``/``v`` (per tile, the valid keys of each kept block in increasing block
order; no ``v`` in similarity mode). Attention jobs come back as rows on ``o``, similarity jobs
as one score per (row, key) on ``s`` in tile, key block, row, key order.
"""

import dataclasses
import math

import torch

from golden.numerics import attention as attn
from golden.numerics import fp as fpnum

__all__ = ["numerics_of", "Job", "make_job", "job_from_float", "job_beats", "expected_rows", "row_of_beat",
           "MODE_ATTENTION", "MODE_SIMILARITY", "make_sim_job", "sim_job_from_float", "score_order",
           "golden_scores", "expected_scores", "score_of_beat", "output_count"]

# cmd.mode values (hw/attn/core.py; repeated here so that the testbench does not import the RTL).
MODE_ATTENTION = 0
MODE_SIMILARITY = 1


def numerics_of(params):
    """The AttnNumerics of a core parameter set (the core's parameters minus its own extras)."""
    names = {f.name for f in dataclasses.fields(attn.AttnNumerics)}
    return attn.AttnNumerics(**{k: v for k, v in params.items() if k in names})


@dataclasses.dataclass
class Job:
    qc: torch.Tensor
    qs: torch.Tensor
    kc: torch.Tensor
    ks: torch.Tensor
    vc: torch.Tensor
    vs: torch.Tensor
    mask: torch.Tensor
    scale: float
    mode: int = MODE_ATTENTION  # MODE_SIMILARITY: vc / vs are None and the mask is all ones

    @property
    def Lq(self):
        return self.qc.shape[0]

    @property
    def Lk(self):
        return self.kc.shape[0]


def _no_nan(codes, fmt):
    """Replace Inf/NaN element codes by the largest finite code of the same sign."""
    c = codes.to(torch.int64)
    is_inf, is_nan = fpnum._special_masks(c, fmt)
    bad = is_inf | is_nan
    maxcode = int(fpnum.quantize_codes(torch.tensor([fmt.max_finite], dtype=torch.float64), fmt)[0])
    fixed = (c & fmt.sign_bit) | maxcode
    return torch.where(bad, fixed, c).to(torch.uint8)


def make_mask(gen, nQb, nKb, kind):
    """Block masks: 'dense', 'sink' (only key block 0), 'masked_tile' (one tile fully masked,
    the rest random), or a float density (random, each tile keeps >= 1 block)."""
    if kind == "dense":
        return torch.ones((nQb, nKb), dtype=torch.bool)
    if kind == "sink":
        mask = torch.zeros((nQb, nKb), dtype=torch.bool)
        mask[:, 0] = True
        return mask
    if kind == "masked_tile":
        mask = torch.rand((nQb, nKb), generator=gen) < 0.5
        mask[:, -1] = True
        mask[int(torch.randint(0, nQb, (1,), generator=gen))] = False
        return mask
    mask = torch.rand((nQb, nKb), generator=gen) < float(kind)
    if nKb:
        first = torch.randint(0, nKb, (nQb,), generator=gen)
        mask[torch.arange(nQb), first] = True
    return mask


def _uniform_codes(gen, nm, L, fmt):
    """L tokens of uniform element codes of ``fmt`` (NaN codes replaced) and E8M0 scale codes within
    2^+-6: saturated scores, wrapped dot products and exponent floors all occur."""
    c = torch.randint(0, 1 << fmt.code_width, (L, nm.D), generator=gen)
    s = 127 + torch.randint(-6, 7, (L, nm.nb), generator=gen)
    return _no_nan(c, fmt), s.to(torch.uint8)


def _random_scale(gen, nm):
    """A softmax / score scale of 2^[-6, 3] / sqrt(D)."""
    return 1.0 / math.sqrt(nm.D) * float(torch.exp2(torch.randint(-6, 4, (1,), generator=gen)))


def make_job(gen, nm, Lq, Lk, *, mask="dense", score_std=2.0, v_spread=4, kind="gauss"):
    """A random job. ``score_std``: std of the scores in nats (0.3 small .. 30 very peaked);
    ``v_spread``: V tokens scaled by 2^U(-v_spread, v_spread) (tile exponents, e growth);
    ``kind``: 'gauss' (MX-quantized Gaussians) or 'codes' (uniform codes and scales: saturation,
    wrap, floors)."""
    D = nm.D
    if kind == "codes":
        qc, qs = _uniform_codes(gen, nm, Lq, nm.fq)
        kc, ks = _uniform_codes(gen, nm, Lk, nm.fq)
        vc, vs = _uniform_codes(gen, nm, Lk, nm.fv)
        scale = _random_scale(gen, nm)
    else:
        q = torch.randn(Lq, D, generator=gen)
        k = torch.randn(Lk, D, generator=gen)
        v = torch.randn(Lk, D, generator=gen)
        v = v * torch.exp2(torch.randint(-v_spread, v_spread + 1, (Lk, 1), generator=gen).float())
        # q.k / sqrt(D) has std ~ |q||k|/sqrt(D) ~ 1 for unit Gaussians: scale q to the target.
        q = q * score_std
        scale = 1.0 / math.sqrt(D)
        qc, qs, kc, ks, vc, vs = attn.quantize_qkv(q, k, v, nm)
    nQb, nKb = -(-Lq // nm.Br), -(-Lk // nm.Bc)
    m = make_mask(gen, nQb, nKb, mask) if not isinstance(mask, torch.Tensor) else mask
    return Job(qc, qs, kc, ks, vc, vs, m, scale)


def job_from_float(q, k, v, nm, *, mask=None, scale=None):
    """A job from float tensors (quantized with the golden quantizer)."""
    qc, qs, kc, ks, vc, vs = attn.quantize_qkv(q, k, v, nm)
    nQb, nKb = -(-q.shape[0] // nm.Br), -(-k.shape[0] // nm.Bc)
    if mask is None:
        mask = torch.ones((nQb, nKb), dtype=torch.bool)
    scale = 1.0 / math.sqrt(nm.D) if scale is None else scale
    return Job(qc, qs, kc, ks, vc, vs, mask, scale)


def make_sim_job(gen, nm, Lq, Lk=None, *, kind="gauss", score_std=1.0):
    """A random similarity job: ``Lq`` tokens against themselves (``Lk`` None), or ``Lq`` query
    tokens against ``Lk`` other tokens. ``kind`` 'gauss': MX-quantized Gaussians whose score
    std is ~``score_std`` nats; 'codes': uniform codes and scales and a random scale up to
    2^3 / sqrt(D), so scores saturate and dot products may wrap."""
    D = nm.D
    if kind == "codes":
        def tokens(L):
            return _uniform_codes(gen, nm, L, nm.fq)
        scale = _random_scale(gen, nm)
    else:
        def tokens(L):
            return fpnum.mx_quantize(torch.randn(L, D, generator=gen) * math.sqrt(score_std), nm.fq, nm.block)
        scale = 1.0 / math.sqrt(D)
    qc, qs = tokens(Lq)
    kc, ks = (qc, qs) if Lk is None else tokens(Lk)
    return _sim_job(qc, qs, kc, ks, nm, scale)


def _sim_job(qc, qs, kc, ks, nm, scale):
    nQb, nKb = -(-qc.shape[0] // nm.Br), -(-kc.shape[0] // nm.Bc)
    return Job(qc, qs, kc, ks, None, None, torch.ones((nQb, nKb), dtype=torch.bool), scale, MODE_SIMILARITY)


def sim_job_from_float(x, nm, *, scale=None):
    """The similarity job of float tokens ``x`` (L, D) against themselves (golden quantizer)."""
    c, s = fpnum.mx_quantize(x, nm.fq, nm.block)
    return _sim_job(c, s, c, s, nm, 1.0 / math.sqrt(nm.D) if scale is None else scale)


def _token(codes, scales, row):
    beat = {f"codes.{d}": int(codes[row, d]) for d in range(codes.shape[1])}
    beat.update({f"scales.{b}": int(scales[row, b]) for b in range(scales.shape[1])})
    return beat


def job_beats(job, nm):
    """{stream: [beats]} of a job in the host streaming order (see hw/attn/core.py)."""
    C, c_frac = attn.score_constant(job.scale, nm)
    shift = nm.dot_frac + c_frac - nm.score_frac
    beats = {"cmd": [{"lq": job.Lq, "lk": job.Lk, "c": C, "shift": shift, "mode": job.mode}],
             "mask": [], "q": [], "k": [], "v": []}
    sim = job.mode == MODE_SIMILARITY
    nQb, nKb = job.mask.shape
    for t in range(nQb):
        bits = sum(1 << j for j in range(nKb) if bool(job.mask[t, j]))
        if not sim:  # similarity jobs are dense: no mask beat
            beats["mask"].append({"bits": bits})
        for j in range(nKb):
            if not bool(job.mask[t, j]):
                continue
            for key in range(j * nm.Bc, min((j + 1) * nm.Bc, job.Lk)):
                beats["k"].append(_token(job.kc, job.ks, key))
                if not sim:
                    beats["v"].append(_token(job.vc, job.vs, key))
    for row in range(job.Lq):
        beats["q"].append(_token(job.qc, job.qs, row))
    return beats


def golden(job, nm):
    return attn.attention_from_codes(job.qc, job.qs, job.kc, job.ks, job.vc, job.vs, scale=job.scale,
                                     mask=job.mask, numerics=nm)


def expected_rows(job, nm):
    """Golden output rows as (y tuple, exp tuple, masked, last)."""
    res = golden(job, nm)
    rows = []
    for r in range(job.Lq):
        rows.append((tuple(int(x) for x in res.out_fixed[r]), tuple(int(x) for x in res.out_exp[r]),
                     int(res.row_sum[r] == 0), int(r == job.Lq - 1)))
    return rows


def row_of_beat(beat, nm):
    return (tuple(beat[f"y.{d}"] for d in range(nm.D)), tuple(beat[f"exp.{b}"] for b in range(nm.nb)),
            beat["masked"], beat["last"])


def score_order(job, nm):
    """(row, key) pairs in the order the core streams a similarity job's scores on ``s``:
    query tile, then key block, then row of the tile, then key of the block."""
    pairs = []
    for t in range(-(-job.Lq // nm.Br)):
        rows = range(t * nm.Br, min((t + 1) * nm.Br, job.Lq))
        for j in range(-(-job.Lk // nm.Bc)):
            keys = range(j * nm.Bc, min((j + 1) * nm.Bc, job.Lk))
            pairs.extend((r, k) for r in rows for k in keys)
    return pairs


def golden_scores(job, nm):
    """(scores int64 (Lq, Lk), saturated bool (Lq, Lk)) of a similarity job from golden."""
    s, _, sat = attn.scores_from_codes(job.qc, job.qs, job.kc, job.ks, scale=job.scale, numerics=nm)
    return s, sat


def expected_scores(job, nm):
    """Golden ``s`` beats of a similarity job as (score, last), in the core's order."""
    s, _ = golden_scores(job, nm)
    pairs = score_order(job, nm)
    return [(int(s[r, k]), int(i == len(pairs) - 1)) for i, (r, k) in enumerate(pairs)]


def score_of_beat(beat):
    return (beat["score"], beat["last"])


def output_count(job):
    """Beats the job produces: one per row on ``o`` (attention), one per (row, key) on ``s``."""
    return job.Lq * job.Lk if job.mode == MODE_SIMILARITY else job.Lq
