"""Bit-exact integer model of the unified attention core (hw/attn).

The core has three modes, all on one datapath (MX-quantized tokens, exact integer dot products):

* **attention**: FlashAttention-2 style online softmax over key blocks of ``Bc`` keys, per query
  tile of ``Br`` rows, dense or block-sparse (a boolean mask over (query tile, key block));
* **similarity**: the raw scaled score matrix of a token set against itself (token aggregation);
* **pivot**: squared L2 distance of every token to the mean token (FastVAR pivotal-token pruning).

Everything inside the bit-exact path is integer arithmetic that maps onto simple hardware:
adds, shifts, compares, small constant tables, integer multiplies and one integer divider per
output element. The only float computations are *configuration* values computed once on the
host and loaded as constants (the exp2 table, the scale constant): the model computes them
with float64 and the RTL gets the resulting integers (``exp2_table``, ``score_constant``).

Notation. A score is a signed fixed-point integer in units of 2^-score_frac (log2 units: the
softmax scale and log2(e) are folded in, so softmax weights are powers of two). A probability
is an unsigned fixed-point integer in units of 2^-p_bits, at most 2^p_bits (= 1.0). E8M0 scale
codes are kept as codes (0..254, value 2^(code - 127)); 255 (NaN) is an error where data is read.

Datapath, per query row (every rounding step is spelled out in the function that owns it):

1. ``quantize_qkv``: Q, K (qk_fmt) and V (v_fmt) MX-quantized per token along D (blocks of
   ``block``) by ``fp.mx_quantize`` (RNE, saturating, E8M0 block scales).
2. ``score_constant`` / ``_scores``: dot = fp.dot_exact-identical q.k (exact block sums, floor
   to 2^-dot_frac, dot_width-bit accumulator); s = round_half_up(dot * C / 2^(dot_frac + c_frac
   - score_frac)) with C * 2^-c_frac ~= scale * log2(e) (a const_bits-bit constant + a shift);
   s saturates to score_width bits.
3. ``exp2_fixed``: 2^x for x <= 0: round x to exp_bits fraction bits (half up), table of
   2^exp_bits entries on the fraction, rounding right shift (half up) by the integer part.
4. Online softmax per kept key block (``attention_from_codes``): m_new = max(m, max s),
   alpha = exp2(m - m_new), l = floor(l * alpha / 2^p_bits) + sum p; V tile alignment
   (see below); acc = floor(acc * alpha / 2^(p_bits + e_new - e_old)) +
   floor(P / 2^(p_bits - acc_frac + e_new - Xt)).
5. Output: y = round_half_up(acc * 2^p_bits / l) by exact integer division, value y * 2^out_exp.

V alignment (block floating point accumulator). V's MX scales are per token and per D-block,
so a key block's values are aligned to the tile exponent Xt_b = max over the block's (valid)
keys of the scale code of D-block b: vfix = floor(code_int * 2^v_guard / 2^(Xt_b - X_kb)),
an integer in units 2^(Xt_b - 127 - F_v - v_guard). The accumulator of each (row, D-block)
carries its own exponent code e_b (initially 0), which only grows: e_new = max(e_old, Xt_b),
and both the old accumulator and the new tile contribution are right-shifted (floor) to it.
This is exact up to the documented floors, independent of the absolute magnitude of V (scaling
V by 2^t scales the output by exactly 2^t), and needs no pre-pass over the KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .fp import (
    E8M0_BIAS,
    E8M0_NAN,
    FPFormat,
    _accumulate_blocks,
    _check_pair,
    _special_masks,
    code_to_int,
    get_format,
    mx_quantize,
    product_width,
)

__all__ = [
    "AttnNumerics",
    "AttnResult",
    "quantize_qkv",
    "score_constant",
    "exp2_table",
    "exp2_fixed",
    "max_keys",
    "scores_from_codes",
    "attention_from_codes",
    "attention_exact",
    "output_to_float",
    "output_mx",
    "similarity_scores",
    "pivot_scores",
    "format_rel_error",
    "e2e_error_estimate",
]

LOG2E = math.log2(math.e)


def _check_int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")


def _code_int_bits(f: FPFormat) -> int:
    """Bit length of the largest |code_to_int| of a format (magnitude of max_finite / 2^-F)."""
    return int(round(f.max_finite * 2**f.F)).bit_length()


@dataclass(frozen=True)
class AttnNumerics:
    """Datapath parameters of the attention core (all checked; ValueError names the parameter).

    Shapes / formats:
      D (64): head dim, a multiple of ``block``.  qk_fmt / v_fmt ("e4m3"): MX element formats of
      Q, K and of V (not both e5m2 for q/k).  block (32): MX block along D.
      Br (64): query tile rows.  Bc (64): keys per key block.
    Scores:
      dot_frac (16), dot_width (40): q.k DotProductUnit accumulator (fp.dot_exact semantics:
      block sums floored to 2^-dot_frac, dot_width-bit two's complement, wraps on overflow).
      const_bits (16): width of the scale*log2(e) constant C (top bit set).
      score_frac (10), score_width (24): fixed-point score (log2 units), saturating.
    Softmax:
      exp_bits (8): the exp2 table has 2^exp_bits entries for 2^-f, f = i / 2^exp_bits in [0, 1);
      must be <= score_frac.  p_bits (15): probability / alpha fraction bits (unsigned, <= 1.0,
      so p_bits + 1 bits wide).  l_width (32): unsigned row-sum register width.
    Output accumulator:
      v_guard (2): extra low bits of the aligned V values.  acc_frac (4): fraction bits kept of
      the p*V products (0..p_bits).  acc_width (40): signed accumulator width per output element.
    """

    D: int = 64
    qk_fmt: str = "e4m3"
    v_fmt: str = "e4m3"
    block: int = 32
    Br: int = 64
    Bc: int = 64
    dot_frac: int = 16
    dot_width: int = 40
    const_bits: int = 16
    score_frac: int = 10
    score_width: int = 24
    exp_bits: int = 8
    p_bits: int = 15
    l_width: int = 32
    v_guard: int = 2
    acc_frac: int = 4
    acc_width: int = 40

    def __post_init__(self):
        _check_int("D", self.D, 1, 4096)
        _check_int("block", self.block, 1, 4096)
        if self.D % self.block:
            raise ValueError(f"block must divide D: D={self.D} is not a multiple of block={self.block}")
        for name in ("qk_fmt", "v_fmt"):
            try:
                get_format(getattr(self, name))
            except ValueError:
                raise ValueError(f"{name} must be a format name of fp.FORMATS, got {getattr(self, name)!r}") from None
        fq, fv = get_format(self.qk_fmt), get_format(self.v_fmt)
        try:
            _check_pair(fq, fq)
        except ValueError:
            raise ValueError("qk_fmt e5m2 is not supported (e5m2 x e5m2 products overflow int64)") from None
        _check_int("Br", self.Br, 1, 4096)
        _check_int("Bc", self.Bc, 1, 4096)
        _check_int("dot_width", self.dot_width, 16, 62)
        _check_int("dot_frac", self.dot_frac, 0, self.dot_width - 1)
        _check_int("const_bits", self.const_bits, 2, 63 - self.dot_width)
        _check_int("score_width", self.score_width, 8, 40)
        _check_int("score_frac", self.score_frac, 0, self.score_width - 2)
        _check_int("exp_bits", self.exp_bits, 1, min(self.score_frac, 16))
        _check_int("p_bits", self.p_bits, 2, 30)
        _check_int("l_width", self.l_width, self.p_bits + 2, 62 - self.p_bits)
        _check_int("v_guard", self.v_guard, 0, 16)
        _check_int("acc_frac", self.acc_frac, 0, self.p_bits)
        # acc * alpha must stay in int64: acc_width - 1 + p_bits <= 62.
        _check_int("acc_width", self.acc_width, 16, 63 - self.p_bits)
        # One block's P = sum_k p_k * vfix_k must stay in int64.
        pbits = (self.p_bits + 1) + (_code_int_bits(fv) + self.v_guard) + (self.Bc - 1).bit_length()
        if pbits > 62:
            raise ValueError(f"Bc={self.Bc} too large for v_fmt={fv.name}, p_bits, v_guard: block sums need {pbits} > 62 bits")
        if self.acc_width < _code_int_bits(fv) + self.v_guard + self.acc_frac + 3:
            raise ValueError(
                f"acc_width must be >= {_code_int_bits(fv) + self.v_guard + self.acc_frac + 3} for v_fmt={fv.name} "
                f"(one key's contribution), got {self.acc_width}"
            )

    @property
    def fq(self) -> FPFormat:
        return get_format(self.qk_fmt)

    @property
    def fv(self) -> FPFormat:
        return get_format(self.v_fmt)

    @property
    def nb(self) -> int:
        """MX blocks per token (D // block)."""
        return self.D // self.block

    @property
    def score_min(self) -> int:
        """Most negative score: the saturation floor and the initial running max of a row."""
        return -(1 << (self.score_width - 1))

    @property
    def score_max(self) -> int:
        return (1 << (self.score_width - 1)) - 1

    @property
    def out_width(self) -> int:
        """Signed width of the output mantissa y (|y| <= max|vfix| * 2^acc_frac + 1)."""
        return _code_int_bits(self.fv) + self.v_guard + self.acc_frac + 2


@dataclass
class AttnResult:
    """Result of the attention core.

    out_fixed: int64 (Lq, D) output mantissas y; out: float64 (Lq, D) = y * 2^out_exp (exact);
    row_max: int64 (Lq,) final running max m (score units 2^-score_frac; score_min for a row
    with every block masked); row_sum: int64 (Lq,) final l (units 2^-p_bits; 0 for a fully
    masked row); stats: counters (see attention_from_codes); out_exp: int64 (Lq, D // block)
    the power-of-two weight of out_fixed per (row, D-block) = e_b - 127 - F_v - v_guard - acc_frac.
    """

    out_fixed: torch.Tensor
    out: torch.Tensor
    row_max: torch.Tensor
    row_sum: torch.Tensor
    stats: dict = field(default_factory=dict)
    out_exp: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------
# Constants: scale fold and exp2 table
# ----------------------------------------------------------------------------------------------


def score_constant(scale: float, numerics: AttnNumerics = AttnNumerics()):
    """(C, c_frac): the constant that folds the softmax scale and log2(e) into the scores.

    factor = scale * log2(e) (float64, host side). C is factor rounded to ``const_bits``
    significant bits (round half to even), C * 2^-c_frac ~= factor, 2^(const_bits-1) <= C <
    2^const_bits: a const_bits x dot_width integer multiplier plus a right shift. Relative
    error of the constant <= 2^-const_bits. ValueError (naming ``scale``) for a scale that is
    not a positive finite number or whose shift dot_frac + c_frac - score_frac leaves [0, 62].
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    mant, ex = math.frexp(float(scale) * LOG2E)  # factor = mant * 2^ex, 0.5 <= mant < 1
    c_frac = numerics.const_bits - ex
    C = round(mant * (1 << numerics.const_bits))
    if C == 1 << numerics.const_bits:
        C >>= 1
        c_frac -= 1
    sh = numerics.dot_frac + c_frac - numerics.score_frac
    if not 0 <= sh <= 62:
        raise ValueError(f"scale={scale!r} out of range: score shift dot_frac + c_frac - score_frac = {sh} not in [0, 62]")
    return C, c_frac


def exp2_table(numerics: AttnNumerics = AttnNumerics()) -> torch.Tensor:
    """The exp2 ROM: int64 (2^exp_bits,), T[i] = round(2^p_bits * 2^(-i / 2^exp_bits)).

    Rounded to nearest (float64 on the host; the values are irrational for i > 0, so no ties).
    T[0] = 2^p_bits (= 1.0), the rest lie in (2^(p_bits-1), 2^p_bits): p_bits + 1 bits wide.
    """
    n = 1 << numerics.exp_bits
    vals = [round(math.ldexp(2.0 ** (-i / n), numerics.p_bits)) for i in range(n)]
    return torch.tensor(vals, dtype=torch.int64)


def exp2_fixed(x: torch.Tensor, numerics: AttnNumerics = AttnNumerics()) -> torch.Tensor:
    """2^(x * 2^-score_frac) for integer x <= 0 (score units), as int64 in units of 2^-p_bits.

    1. t = -x >= 0; round t to exp_bits fraction bits, half up:
       u = (t + 2^(r-1)) >> r with r = score_frac - exp_bits (u = t when r = 0);
    2. n = u >> exp_bits (integer part), i = u & (2^exp_bits - 1) (table index);
    3. p = T[i] when n == 0, else (T[i] + 2^(n-1)) >> n (rounding right shift, half up);
       n >= p_bits + 2 gives 0 (the shifter saturates its shift amount there).
    The result lies in [0, 2^p_bits]; it is 2^p_bits exactly iff u == 0.
    Error vs 2^(x 2^-score_frac): relative <= ln2 * 2^-(exp_bits+1) from step 1 (when r > 0),
    plus <= 2^-(p_bits+1) absolute from T, plus <= 2^-(p_bits+1) absolute from step 3.
    """
    if bool((x > 0).any()):
        raise ValueError("x must be <= 0")
    nm = numerics
    T = exp2_table(nm)
    t = -x.to(torch.int64)
    r = nm.score_frac - nm.exp_bits
    u = (t + (1 << (r - 1))) >> r if r > 0 else t
    n = (u >> nm.exp_bits).clamp(max=nm.p_bits + 2)
    i = u & ((1 << nm.exp_bits) - 1)
    Ti = T[i]
    half = torch.where(n > 0, torch.ones_like(n) << (n - 1).clamp(min=0), torch.zeros_like(n))
    return (Ti + half) >> n


def max_keys(numerics: AttnNumerics = AttnNumerics()) -> int:
    """Largest key count Lk for which neither l nor acc can overflow (checked by the entry points).

    l <= Lk * 2^p_bits < 2^l_width (l only shrinks under alpha), and
    |acc| <= Lk * ((vmax << (v_guard + acc_frac)) + 2) < 2^(acc_width - 1), where vmax = max
    |code_to_int| of v_fmt: each key adds at most vmax << (v_guard + acc_frac) to |acc| and each
    floor can add at most one unit (two floors per key block, at most one block per key).
    """
    nm = numerics
    vmax = int(round(nm.fv.max_finite * 2**nm.fv.F))
    by_l = ((1 << nm.l_width) - 1) >> nm.p_bits
    by_acc = ((1 << (nm.acc_width - 1)) - 1) // ((vmax << (nm.v_guard + nm.acc_frac)) + 2)
    return min(by_l, by_acc)


# ----------------------------------------------------------------------------------------------
# Quantization and scores
# ----------------------------------------------------------------------------------------------


def quantize_qkv(q_LqD, k_LkD, v_LkD, numerics: AttnNumerics = AttnNumerics()):
    """MX-quantize Q, K (qk_fmt) and V (v_fmt) per token along D with fp.mx_quantize.

    Returns (q_codes, q_scales, k_codes, k_scales, v_codes, v_scales): codes uint8 (L, D),
    E8M0 scales uint8 (L, D // block). Quantization is per token, so NaN/Inf in one token only
    affects that token's own blocks (scale 255), which the core never reads when masked out.
    """
    nm = numerics
    for name, t in (("q_LqD", q_LqD), ("k_LkD", k_LkD), ("v_LkD", v_LkD)):
        if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point or t.dim() != 2 or t.shape[1] != nm.D:
            raise ValueError(f"{name} must be a 2-D floating-point tensor (L, D={nm.D})")
    if k_LkD.shape != v_LkD.shape:
        raise ValueError("k_LkD and v_LkD must have the same shape")
    qc, qs = mx_quantize(q_LqD, nm.fq, nm.block)
    kc, ks = mx_quantize(k_LkD, nm.fq, nm.block)
    vc, vs = mx_quantize(v_LkD, nm.fv, nm.block)
    return qc, qs, kc, ks, vc, vs


def _check_token_codes(codes, scales, fmt, nm, name):
    if not isinstance(codes, torch.Tensor) or codes.dtype.is_floating_point or codes.dim() != 2 or codes.shape[1] != nm.D:
        raise ValueError(f"{name}_codes must be an integer tensor (L, D={nm.D})")
    if (
        not isinstance(scales, torch.Tensor)
        or scales.dtype.is_floating_point
        or tuple(scales.shape) != (codes.shape[0], nm.nb)
    ):
        raise ValueError(f"{name}_scales must be an integer tensor of shape ({codes.shape[0]}, {nm.nb})")
    c, s = codes.to(torch.int64), scales.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= (1 << fmt.code_width)):
        raise ValueError(f"{name}_codes must be in 0..{(1 << fmt.code_width) - 1} for {fmt.name}")
    if s.numel() and (int(s.min()) < 0 or int(s.max()) > 255):
        raise ValueError(f"{name}_scales must be E8M0 codes in 0..255")
    return c, s


def _token_ints(c, s, fmt, name):
    """(code_to_int values (n, D), scale codes (n, nb)) of tokens that are read; ValueError on NaN/Inf."""
    bad = torch.stack(_special_masks(c, fmt)).any(0).any(-1) | (s == E8M0_NAN).any(-1)
    if bool(bad.any()):
        raise ValueError(f"{name} contains NaN/Inf (scale code 255 or an Inf/NaN element code) in a block that is read")
    return code_to_int(c, fmt), s


def _dot_fixed(qi, qs, ki, ks, nm):
    """q.k for every pair: int64 (nq, nk) in units 2^-dot_frac, overflow bool (nq, nk).

    Identical to fp.dot_exact(q, k, acc_frac=dot_frac, acc_width=dot_width): exact block sums of
    code products, shifted by the block exponent (floor on right shifts), dot_width-bit wrap.
    """
    fq = nm.fq
    nq, nk, nb, B = qi.shape[0], ki.shape[0], nm.nb, nm.block
    qb, kb = qi.reshape(nq, nb, B), ki.reshape(nk, nb, B)
    if product_width(fq, fq) + (B - 1).bit_length() <= 53:  # float64 einsum is exact
        S = torch.einsum("qbi,kbi->qkb", qb.to(torch.float64), kb.to(torch.float64)).to(torch.int64)
    else:
        S = (qb[:, None] * kb[None]).sum(-1)
    E = (qs - E8M0_BIAS)[:, None, :] + (ks - E8M0_BIAS)[None, :, :] - 2 * fq.F
    return _accumulate_blocks(S, E, nm.dot_frac, nm.dot_width)


def _dot_to_score(dot, C, c_frac, nm):
    """s = clamp(round_half_up(dot * C / 2^sh)), sh = dot_frac + c_frac - score_frac in [0, 62].

    round_half_up = (dot * C + 2^(sh-1)) >> sh (arithmetic shift; plain dot * C when sh = 0);
    |dot * C| < 2^(dot_width - 1 + const_bits) <= 2^62. Saturates to [score_min, score_max].
    Returns (s, saturated mask).
    """
    sh = nm.dot_frac + c_frac - nm.score_frac
    prod = dot * C
    s = (prod + (1 << (sh - 1))) >> sh if sh > 0 else prod
    sat = (s < nm.score_min) | (s > nm.score_max)
    return s.clamp(nm.score_min, nm.score_max), sat


def scores_from_codes(q_codes, q_scales, k_codes, k_scales, *, scale=None, numerics: AttnNumerics = AttnNumerics()):
    """Score matrix s (int64 (Lq, Lk), units 2^-score_frac, log2 units) of MX-coded Q and K.

    s = clamp(round_half_up(dot * C * 2^-(dot_frac + c_frac - score_frac))) with dot the
    fp.dot_exact value (acc_frac=dot_frac, acc_width=dot_width) and (C, c_frac) =
    score_constant(scale). Returns (s, dot_overflow bool (Lq, Lk), saturated bool (Lq, Lk)).
    """
    nm = numerics
    scale = 1.0 / math.sqrt(nm.D) if scale is None else scale
    C, c_frac = score_constant(scale, nm)
    qc, qs = _check_token_codes(q_codes, q_scales, nm.fq, nm, "q")
    kc, ks = _check_token_codes(k_codes, k_scales, nm.fq, nm, "k")
    qi, qs = _token_ints(qc, qs, nm.fq, "q")
    ki, ks = _token_ints(kc, ks, nm.fq, "k")
    dot, ovf = _dot_fixed(qi, qs, ki, ks, nm)
    s, sat = _dot_to_score(dot, C, c_frac, nm)
    return s, ovf, sat


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------


def _round_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """round_half_up(num / den) for den > 0: q = floor(num / den), +1 when 2 * rem >= den."""
    q = torch.div(num, den, rounding_mode="floor")
    rem = num - q * den
    return q + (2 * rem >= den).to(torch.int64)


def _check_mask(mask, nQb, nKb):
    if mask is None:
        return torch.ones((nQb, nKb), dtype=torch.bool)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (nQb, nKb):
        raise ValueError(f"mask must be a bool tensor of shape (nQb, nKb) = ({nQb}, {nKb})")
    return mask


def attention_from_codes(
    q_codes,
    q_scales,
    k_codes,
    k_scales,
    v_codes,
    v_scales,
    *,
    scale=None,
    mask=None,
    numerics: AttnNumerics = AttnNumerics(),
) -> AttnResult:
    """The attention core on MX-coded inputs (what the RTL streams): bit-exact specification.

    Inputs: q codes (Lq, D) / scales (Lq, D // block) in qk_fmt, k likewise (Lk rows), v codes
    and scales (Lk rows) in v_fmt. ``scale`` (default 1/sqrt(D)) is folded with log2(e) into
    the constant of score_constant. ``mask``: bool (nQb, nKb), nQb = ceil(Lq / Br), nKb =
    ceil(Lk / Bc); None = dense. The last query tile / key block may be partial: padded keys are
    excluded (no score, no p, no V exponent), not given a zero score.

    Per row (state m = score_min, l = 0, acc = 0, e_b = 0 for each D-block b), for each key
    block j in increasing order whose mask bit (tile of the row, j) is set - K/V of a block
    whose bit is clear for every query tile is never read:

      s_k      = scores of the row against the block's valid keys (scores_from_codes);
      m_new    = max(m, max_k s_k);  alpha = exp2_fixed(m - m_new);  p_k = exp2_fixed(s_k - m_new);
      l        = floor(l * alpha / 2^p_bits) + sum_k p_k                      (l_width bits, unsigned);
      Xt_b     = max_k (scale code of v_k, D-block b)                         (valid keys of the block);
      vfix_kd  = floor(code_int(v_kd) * 2^v_guard / 2^(Xt_b - X_kb))         (arithmetic shift);
      P_d      = sum_k p_k * vfix_kd                                          (exact);
      e_new_b  = max(e_b, Xt_b);
      acc_d    = floor(acc_d * alpha / 2^(p_bits + e_new_b - e_b))
               + floor(P_d / 2^(p_bits - acc_frac + e_new_b - Xt_b))          (acc_width bits, signed);
      m = m_new; e_b = e_new_b.

    Right shifts by >= 63 give the sign fill (0 or -1: floor). When m is unchanged alpha = 2^p_bits
    and the rescale is exact (no drift). After the last block:

      y_d = round_half_up(acc_d * 2^p_bits / l) (exact integer division, ties toward +inf);
      out_d = y_d * 2^(e_b - 127 - F_v - v_guard - acc_frac); y = 0 when l = 0 (fully masked row).

    Overflow: Lk > max_keys(numerics) raises ValueError, so l and acc cannot overflow. A q.k dot
    product that overflows dot_width keeps its wrapped value (stats['dot_overflow'] counts them);
    scores saturate (stats['score_saturated']). NaN/Inf (scale 255 or special element codes) in a
    Q row or in a read K/V block raises ValueError.

    stats: dot_overflow, score_saturated (over computed (row, key) pairs), blocks_computed,
    blocks_skipped ((query tile, key block) pairs), score_constant (C, c_frac).
    """
    nm = numerics
    scale = 1.0 / math.sqrt(nm.D) if scale is None else scale
    C, c_frac = score_constant(scale, nm)
    qc, qs_all = _check_token_codes(q_codes, q_scales, nm.fq, nm, "q")
    kc, ks_all = _check_token_codes(k_codes, k_scales, nm.fq, nm, "k")
    vc, vs_all = _check_token_codes(v_codes, v_scales, nm.fv, nm, "v")
    Lq, Lk = qc.shape[0], kc.shape[0]
    if vc.shape[0] != Lk:
        raise ValueError(f"v_codes must have Lk={Lk} rows like k_codes, got {vc.shape[0]}")
    if Lk > max_keys(nm):
        raise ValueError(f"Lk={Lk} exceeds max_keys={max_keys(nm)} of these numerics (raise acc_width / l_width)")
    nQb, nKb = -(-Lq // nm.Br), -(-Lk // nm.Bc)
    mask = _check_mask(mask, nQb, nKb)
    qi, qs = _token_ints(qc, qs_all, nm.fq, "q")
    fv = nm.fv
    B, nb = nm.block, nm.nb

    m = torch.full((Lq,), nm.score_min, dtype=torch.int64)
    l = torch.zeros(Lq, dtype=torch.int64)
    acc = torch.zeros((Lq, nm.D), dtype=torch.int64)
    e = torch.zeros((Lq, nb), dtype=torch.int64)
    row_tile = torch.arange(Lq) // nm.Br
    stats = {"dot_overflow": 0, "score_saturated": 0, "blocks_computed": int(mask.sum()),
             "blocks_skipped": int((~mask).sum()), "score_constant": (C, c_frac)}

    for j in range(nKb):
        rows = mask[row_tile, j].nonzero().flatten() if Lq else torch.zeros(0, dtype=torch.int64)
        if rows.numel() == 0:
            continue  # block never read
        k0, k1 = j * nm.Bc, min((j + 1) * nm.Bc, Lk)  # valid keys only
        ki, ks = _token_ints(kc[k0:k1], ks_all[k0:k1], nm.fq, "k")
        vi, vs = _token_ints(vc[k0:k1], vs_all[k0:k1], fv, "v")
        dot, ovf = _dot_fixed(qi[rows], qs[rows], ki, ks, nm)
        s, sat = _dot_to_score(dot, C, c_frac, nm)
        stats["dot_overflow"] += int(ovf.sum())
        stats["score_saturated"] += int(sat.sum())

        m_old = m[rows]
        m_new = torch.maximum(m_old, s.amax(dim=1))
        alpha = exp2_fixed(m_old - m_new, nm)  # (r,)
        p = exp2_fixed(s - m_new[:, None], nm)  # (r, bc)
        l[rows] = ((l[rows] * alpha) >> nm.p_bits) + p.sum(dim=1)

        Xt = vs.amax(dim=0)  # (nb,)
        dsh = (Xt[None, :] - vs).clamp(max=63)  # (bc, nb), >= 0
        vfix = ((vi.reshape(-1, nb, B) << nm.v_guard) >> dsh[:, :, None]).reshape(-1, nm.D)
        P = p @ vfix  # (r, D) exact int64 (|P| < 2^62 by construction)
        e_old = e[rows]
        e_new = torch.maximum(e_old, Xt[None, :])
        sh_acc = (nm.p_bits + (e_new - e_old)).clamp(max=63).repeat_interleave(B, dim=1)
        sh_P = (nm.p_bits - nm.acc_frac + (e_new - Xt[None, :])).clamp(max=63).repeat_interleave(B, dim=1)
        acc[rows] = ((acc[rows] * alpha[:, None]) >> sh_acc) + (P >> sh_P)
        m[rows] = m_new
        e[rows] = e_new

    safe_l = torch.where(l > 0, l, torch.ones_like(l))
    y = _round_div(acc << nm.p_bits, safe_l[:, None])
    y = torch.where((l > 0)[:, None], y, torch.zeros_like(y))
    out_exp = e - E8M0_BIAS - fv.F - nm.v_guard - nm.acc_frac
    return AttnResult(
        out_fixed=y,
        out=output_to_float(y, out_exp, nm),
        row_max=m,
        row_sum=l,
        stats=stats,
        out_exp=out_exp,
    )


def output_to_float(out_fixed: torch.Tensor, out_exp: torch.Tensor, numerics: AttnNumerics = AttnNumerics()):
    """out_fixed * 2^out_exp (exponent per D-block) as float64: exact (|y| < 2^53, exponents in range)."""
    nm = numerics
    L = out_fixed.shape[0]
    y = out_fixed.to(torch.float64).reshape(L, nm.nb, nm.block)
    return torch.ldexp(y, out_exp.to(torch.float64)[:, :, None]).reshape(L, nm.D)


def output_mx(result: AttnResult, fmt, block: int = 32):
    """Attention output re-quantized to MX: fp.mx_quantize(result.out, fmt, block).

    result.out is the exact value y * 2^out_exp in float64 and mx_quantize reads float64 bits
    exactly, so this is the hardware quantizer applied to the exact output (RNE, saturating).
    """
    return mx_quantize(result.out, fmt, block)


def attention_exact(
    q_LqD: torch.Tensor,
    k_LkD: torch.Tensor,
    v_LkD: torch.Tensor,
    *,
    scale=None,
    mask=None,
    numerics: AttnNumerics = AttnNumerics(),
) -> AttnResult:
    """Attention through the core: quantize_qkv, then attention_from_codes (see there)."""
    codes = quantize_qkv(q_LqD, k_LkD, v_LkD, numerics)
    return attention_from_codes(*codes, scale=scale, mask=mask, numerics=numerics)


# ----------------------------------------------------------------------------------------------
# Similarity and pivot modes
# ----------------------------------------------------------------------------------------------


def similarity_scores(x_LD: torch.Tensor, numerics: AttnNumerics = AttnNumerics(), *, scale=None) -> torch.Tensor:
    """Token-similarity mode: s = scores_from_codes(x, x) of mx_quantize(x, qk_fmt) (int64 (L, L)).

    The same datapath as the attention scores (dot_exact q.k, times the scale*log2(e) constant,
    round half up to 2^-score_frac, saturate): value s * 2^-score_frac ~= scale * log2(e) * x_i.x_j
    on the quantized tokens. Order-preserving in x_i.x_j (up to rounding), which is all the
    ranking for token aggregation needs. ValueError on NaN/Inf.
    """
    nm = numerics
    if not isinstance(x_LD, torch.Tensor) or not x_LD.dtype.is_floating_point or x_LD.dim() != 2 or x_LD.shape[1] != nm.D:
        raise ValueError(f"x_LD must be a 2-D floating-point tensor (L, D={nm.D})")
    c, s = mx_quantize(x_LD, nm.fq, nm.block)
    sc, _, _ = scores_from_codes(c, s, c, s, scale=scale, numerics=nm)
    return sc


def pivot_scores(x_LD: torch.Tensor, numerics: AttnNumerics = AttnNumerics(), *, return_exponent: bool = False):
    """Pivot mode (FastVAR): squared L2 distance of each token to the mean token, int64 (L,).

    1. x = mx_quantize(x, qk_fmt, block) per token; X_ib its scale codes;
    2. Xg = max over all tokens and blocks of X_ib (one exponent: a pass over the token map);
       xfix_id = floor(code_int(x_id) * 2^v_guard / 2^(Xg - X_ib)) (arithmetic shift),
       units 2^(Xg - 127 - F - v_guard);
    3. mean_d = round_half_up(sum_i xfix_id / L) (exact integer division);
    4. dist_i = sum_d (xfix_id - mean_d)^2, exact, in units 2^(2 (Xg - 127 - F - v_guard)).
    With ``return_exponent`` also returns that power of two (int). L = 0 gives an empty result.
    ValueError on NaN/Inf, or when qk_fmt is too wide for exact int64 sums of squares.
    """
    nm = numerics
    if not isinstance(x_LD, torch.Tensor) or not x_LD.dtype.is_floating_point or x_LD.dim() != 2 or x_LD.shape[1] != nm.D:
        raise ValueError(f"x_LD must be a 2-D floating-point tensor (L, D={nm.D})")
    fq = nm.fq
    wbits = _code_int_bits(fq) + nm.v_guard + 2  # |xfix - mean| < 2^(wbits - 1)
    if 2 * (wbits - 1) + nm.D.bit_length() > 62:
        raise ValueError(f"qk_fmt={fq.name} with v_guard={nm.v_guard} too wide for exact pivot sums of squares")
    L = x_LD.shape[0]
    c, s = mx_quantize(x_LD, fq, nm.block)
    xi, xs = _token_ints(c.to(torch.int64), s.to(torch.int64), fq, "x_LD")
    if L == 0:
        z = torch.zeros(0, dtype=torch.int64)
        return (z, 0) if return_exponent else z
    Xg = int(xs.max())
    dsh = (Xg - xs).clamp(max=63)
    xfix = ((xi.reshape(L, nm.nb, nm.block) << nm.v_guard) >> dsh[:, :, None]).reshape(L, nm.D)
    mean = _round_div(xfix.sum(dim=0), torch.tensor(L, dtype=torch.int64))
    diff = xfix - mean[None, :]
    dist = (diff * diff).sum(dim=1)
    ex = 2 * (Xg - E8M0_BIAS - fq.F - nm.v_guard)
    return (dist, ex) if return_exponent else dist


# ----------------------------------------------------------------------------------------------
# Error model
# ----------------------------------------------------------------------------------------------


def format_rel_error(fmt) -> float:
    """eps_fmt = 2^-(mbits+1) / sqrt(3): the RMS relative error of an MX cast to fmt (upper estimate).

    Derivation: a value x in [2^k, 2^(k+1)) has ulp 2^(k - mbits); RNE leaves an error ~uniform
    on [-ulp/2, ulp/2] with RMS ulp / sqrt(12) = 2^(k - mbits - 1) / sqrt(3); relative to the
    bottom of the binade (2^k) that is 2^-(mbits+1) / sqrt(3) (e4m3: 3.61 %, e3m2 / e5m2:
    7.22 %, e2m3: 3.61 %, e2m1: 14.4 %). Averaged over a binade with x uniform the energy-
    weighted error ||x - Q(x)||_F / ||x||_F is sqrt(3/7) eps_fmt = 0.655 eps_fmt. MX block
    scaling adds clipping: the shared exponent puts the block max in [2^emax, 2^(emax+1)) but
    max_finite < 2^(emax+1) (e4m3: 448 < 512), so a max in [max_finite, 2^(emax+1)) saturates.
    Measured on Gaussian data (blocks of 32): 0.75 .. 0.82 eps_fmt for every format with
    ebits >= 2 (e4m3: 2.93 %). Not meaningful for e1m2 (no exponent range: one binade plus
    subnormals), whose relative error is set by its fixed-point step.
    """
    return 2.0 ** -(get_format(fmt).mbits + 1) / math.sqrt(3.0)


def e2e_error_estimate(qk_fmt, v_fmt, score_std: float) -> float:
    """Predicted relative Frobenius error of quantized-input attention vs float64 inputs.

    Model: o = sum_k p_k v_k. (i) V cast: the error of each output is a p-weighted mean of
    independent per-element cast errors, and o is the same p-weighted mean of the values, so
    (for zero-mean V) the relative error stays ~ the per-element error eps_v = eps_fmt(v_fmt)
    however spread p is. (ii) Q/K casts perturb each score by ds = scale (dq.k + q.dk); for
    scores of standard deviation sigma (nats) std(ds) ~= sqrt(2) eps_fmt(qk_fmt) sigma, and
    dp_k / p_k = ds_k - sum_j p_j ds_j moves o by about std(ds) relative when p is spread
    (less when p is peaked: then only the few top keys' relative shifts matter). Independent
    errors add in quadrature:
        eps_e2e ~= sqrt(eps_v^2 + 2 eps_qk^2 sigma^2).
    Because eps_fmt over-estimates a cast's energy-weighted error (0.75 .. 0.82 of it on Gaussian
    data, see format_rel_error), this is an upper estimate; the hard floor is the V cast alone,
    >= sqrt(3/7) eps_fmt(v_fmt). The datapath itself adds < 1e-3 with the default numerics.
    """
    ev = format_rel_error(v_fmt)
    eq = format_rel_error(qk_fmt)
    return math.sqrt(ev**2 + 2 * (eq * score_std) ** 2)
