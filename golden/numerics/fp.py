"""Bit-exact model of the low-bit FP datapath: MX formats, quantizer, LUT multiplier, exact dot product."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

__all__ = [
    "FPFormat",
    "FORMATS",
    "E8M0_BIAS",
    "E8M0_NAN",
    "get_format",
    "quantize_codes",
    "decode",
    "code_to_int",
    "mx_quantize",
    "mx_dequantize",
    "product_frac_bits",
    "product_magnitude_table",
    "product_width",
    "lut_product",
    "dot_exact",
    "acc_to_float",
    "mx_matmul",
    "dual_quantize",
    "dual_dequantize",
    "hadamard_matrix",
    "group_hadamard",
    "fold_hadamard_into_weight",
]

#: E8M0 block scale: code s (uint8) stands for 2^(s - 127); code 255 is NaN.
E8M0_BIAS = 127
E8M0_NAN = 255

# Accumulator width limits of dot_exact: 62 bits keeps every intermediate of the model in int64.
_ACC_WIDTH_MIN = 16
_ACC_WIDTH_MAX = 62


@dataclass(frozen=True)
class FPFormat:
    """A sign / exponent / mantissa element format, codes stored right-aligned in uint8.

    Code layout (MSB to LSB): sign (bit ``code_width - 1``), ``ebits`` exponent field e,
    ``mbits`` mantissa field m. Value of a finite code: e >= 1 (normal):
    (-1)^s * (1 + m / 2^mbits) * 2^(e - bias); e == 0 (subnormal): (-1)^s * (m / 2^mbits) * 2^(1 - bias).

    Special codes: ``has_inf`` means IEEE-like (exponent field all ones is Inf when m == 0,
    NaN otherwise; e5m2). ``has_nan`` without ``has_inf`` means only the all-ones magnitude
    S.1..1.1..1 is NaN (e4m3 "fn"). Formats with neither have only finite codes.

    Derived fields: ``code_width = 1 + ebits + mbits``; ``max_finite`` the largest finite value;
    ``emax`` the unbiased exponent of ``max_finite`` (largest normal exponent);
    ``F = bias + mbits - 1``: every finite value is an integer multiple of 2^-F;
    ``nan_code`` the positive NaN code (None when the format has no NaN).
    """

    name: str
    ebits: int
    mbits: int
    bias: int
    has_inf: bool
    has_nan: bool
    code_width: int
    max_finite: float
    emax: int
    F: int
    nan_code: int | None

    def __post_init__(self):
        if not (1 <= self.ebits <= 5 and 1 <= self.mbits <= 3 and 1 + self.ebits + self.mbits <= 8):
            raise ValueError("ebits/mbits must satisfy 1 <= ebits <= 5, 1 <= mbits <= 3, code_width <= 8")
        if not (1 <= self.bias <= 15):
            raise ValueError(f"bias must be in 1..15, got {self.bias}")
        expected = _derived(self.ebits, self.mbits, self.bias, self.has_inf, self.has_nan)
        got = (self.code_width, self.max_finite, self.emax, self.F, self.nan_code)
        if got != expected:
            raise ValueError(f"derived fields of {self.name} must be {expected}, got {got}")

    @property
    def max_code(self) -> int:
        """Magnitude code (sign bit clear) of ``max_finite``."""
        top_e = (1 << self.ebits) - (2 if self.has_inf else 1)
        top_m = (1 << self.mbits) - (2 if (self.has_nan and not self.has_inf) else 1)
        return (top_e << self.mbits) | top_m

    @property
    def sign_bit(self) -> int:
        return 1 << (self.code_width - 1)


def _derived(ebits, mbits, bias, has_inf, has_nan):
    """(code_width, max_finite, emax, F, nan_code) of a format; see FPFormat."""
    top_e = (1 << ebits) - (2 if has_inf else 1)
    top_m = (1 << mbits) - (2 if (has_nan and not has_inf) else 1)
    emax = top_e - bias
    max_finite = math.ldexp(float((1 << mbits) + top_m), emax - mbits)
    code_width = 1 + ebits + mbits
    nan_code = ((1 << (code_width - 1)) - 1) if has_nan else None
    return code_width, max_finite, emax, bias + mbits - 1, nan_code


def _make_format(name, ebits, mbits, bias, has_inf=False, has_nan=False) -> FPFormat:
    return FPFormat(name, ebits, mbits, bias, has_inf, has_nan, *_derived(ebits, mbits, bias, has_inf, has_nan))


FORMATS: dict[str, FPFormat] = {
    f.name: f
    for f in (
        _make_format("e2m1", 2, 1, 1),  # MXFP4: 0, 0.5 .. 6
        _make_format("e1m2", 1, 2, 1),  # FPQVAR dual-format negative side: 0 .. 1.75 step 0.25
        _make_format("e2m3", 2, 3, 1),  # MXFP6: max 7.5
        _make_format("e3m2", 3, 2, 3),  # MXFP6: max 28
        _make_format("e4m3", 4, 3, 7, has_nan=True),  # MXFP8: max 448, NaN = S.1111.111, no Inf
        _make_format("e5m2", 5, 2, 15, has_inf=True, has_nan=True),  # MXFP8: IEEE-like, max 57344
    )
}


def get_format(fmt: str | FPFormat) -> FPFormat:
    """The FPFormat for a name in FORMATS (or an FPFormat itself); ValueError otherwise."""
    if isinstance(fmt, FPFormat):
        return fmt
    if isinstance(fmt, str) and fmt in FORMATS:
        return FORMATS[fmt]
    raise ValueError(f"fmt must be one of {sorted(FORMATS)} or an FPFormat, got {fmt!r}")


# ----------------------------------------------------------------------------------------------
# Integer helpers
# ----------------------------------------------------------------------------------------------


def _bit_length(v: torch.Tensor) -> torch.Tensor:
    """Bit length of non-negative int64 values (0 -> 0), by binary search on shifts (no floats)."""
    v = v.clone()
    n = torch.zeros_like(v)
    for s in (32, 16, 8, 4, 2, 1):
        big = v >= (1 << s)
        n = torch.where(big, n + s, n)
        v = torch.where(big, v >> s, v)
    return n + (v > 0).to(torch.int64)


def _wrap(v: torch.Tensor, width: int) -> torch.Tensor:
    """v modulo 2^width as a signed two's-complement value in [-2^(width-1), 2^(width-1))."""
    # Callers guarantee |v| < 2^62, so v + 2^(width-1) cannot overflow int64.
    half = 1 << (width - 1)
    return ((v + half) & ((1 << width) - 1)) - half


def _float_fields(x: torch.Tensor):
    """Split floats into exact integer fields: |x| = sig * 2^e2 (sig >= 0 int64, e2 int64).

    float16 / bfloat16 are upcast to float32 (exact). float32 uses the float32 bit layout
    (the hardware input); float64 uses the float64 layout, so float64 input is also exact.
    Returns (sign bool, sig, e2, k, is_inf bool, is_nan bool) with k = floor(log2 |x|) for
    x != 0 (exact: biased exponent - bias for normals; bit_length(mantissa) - 1 + e2 for
    subnormals); k is meaningless where sig == 0.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.to(torch.float32)
    if x.dtype == torch.float32:
        bits = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
        sign = (bits >> 31) != 0
        ef = (bits >> 23) & 0xFF
        man = bits & ((1 << 23) - 1)
        sig = torch.where(ef > 0, man | (1 << 23), man)
        e2 = ef.clamp(min=1) - (127 + 23)
        k = ef - 127
        special = ef == 0xFF
    elif x.dtype == torch.float64:
        bits = x.contiguous().view(torch.int64)
        sign = bits < 0
        ef = (bits >> 52) & 0x7FF
        man = bits & ((1 << 52) - 1)
        sig = torch.where(ef > 0, man | (1 << 52), man)
        e2 = ef.clamp(min=1) - (1023 + 52)
        k = ef - 1023
        special = ef == 0x7FF
    else:
        raise ValueError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    sub = (ef == 0) & (man != 0)
    if bool(sub.any()):  # subnormal inputs: floor(log2) from the mantissa's bit length
        k = k.clone()
        k[sub] = _bit_length(man[sub]) - 1 + e2[sub]
    is_inf = special & (man == 0)
    is_nan = special & (man != 0)
    return sign, sig, e2, k, is_inf, is_nan


def _round_fields(sign, sig, e2, k, is_inf, is_nan, fmt: FPFormat, strict: bool) -> torch.Tensor:
    """RNE + saturating cast of (-1)^sign * sig * 2^e2 (k = floor(log2 of it)) to fmt codes.

    See quantize_codes for the rules; mx_quantize calls it with e2 - X and k - X.
    """
    if strict and bool(is_nan.any()):
        raise ValueError("x contains NaN and strict=True")
    mb = fmt.mbits
    emin = 1 - fmt.bias  # exponent of the smallest normal; below it the quantum stays 2^(emin-mb)
    q = torch.maximum(k, torch.full_like(k, emin)) - mb  # log2 of the target quantum (ulp)
    shift = q - e2  # value / 2^q = sig / 2^shift
    # shift > 0: round sig / 2^shift to nearest, ties to even. sig < 2^53, so a shift of 62
    # already yields 0 with remainder < half: clamping is exact.
    sr = shift.clamp(1, 62)
    r = sig >> sr
    rem = sig - (r << sr)
    half = torch.ones_like(sr) << (sr - 1)
    up = (rem > half) | ((rem == half) & ((r & 1) == 1))
    n_right = r + up.to(torch.int64)
    # shift <= 0 happens only when the value is exactly representable (n < 2^(mb+1)).
    n_left = sig << (-shift).clamp(0, 62)
    n = torch.where(shift > 0, n_right, n_left)  # value ~= n * 2^q
    # Code magnitude = ((biased_exp - 1) << mb) + n: this also handles the carry of a round-up
    # (n == 2^(mb+1) -> next binade, m = 0) and subnormal -> normal (n == 2^mb at ef == 1).
    ef = torch.clamp(k + fmt.bias, min=1)
    mag = ((ef - 1) << mb) + n
    mag = torch.where(sig == 0, torch.zeros_like(mag), mag)
    # Codes are monotone in value up to max_code, so saturation is a clamp of the code.
    mag = torch.where(is_inf, torch.full_like(mag, fmt.max_code), mag.clamp(max=fmt.max_code))
    code = mag | (sign.to(torch.int64) << (fmt.code_width - 1))
    code = torch.where(is_nan, torch.full_like(code, fmt.nan_code if fmt.has_nan else 0), code)
    return code.to(torch.uint8)


def _check_codes(codes: torch.Tensor, fmt: FPFormat, name: str = "codes") -> torch.Tensor:
    """Codes as int64, after checking they are integers in 0 .. 2^code_width - 1."""
    if not isinstance(codes, torch.Tensor) or codes.dtype.is_floating_point or codes.dtype.is_complex:
        raise ValueError(f"{name} must be an integer tensor (uint8 codes)")
    c = codes.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= (1 << fmt.code_width)):
        raise ValueError(f"{name} must be in 0..{(1 << fmt.code_width) - 1} for {fmt.name}")
    return c


def _special_masks(c: torch.Tensor, fmt: FPFormat):
    """(is_inf, is_nan) of int64 codes."""
    mag = c & (fmt.sign_bit - 1)
    if fmt.has_inf:
        exp_all_ones = (mag >> fmt.mbits) == (1 << fmt.ebits) - 1
        man = mag & ((1 << fmt.mbits) - 1)
        return exp_all_ones & (man == 0), exp_all_ones & (man != 0)
    if fmt.has_nan:
        return torch.zeros_like(c, dtype=torch.bool), mag == fmt.sign_bit - 1
    z = torch.zeros_like(c, dtype=torch.bool)
    return z, z


def _magnitude_int(mag: torch.Tensor, fmt: FPFormat) -> torch.Tensor:
    """|value| / 2^-F of magnitude codes: (2^mbits + m) << (e - 1) if e >= 1, else m."""
    e = mag >> fmt.mbits
    m = mag & ((1 << fmt.mbits) - 1)
    return torch.where(e == 0, m, ((1 << fmt.mbits) + m) << (e - 1).clamp(min=0))


# ----------------------------------------------------------------------------------------------
# Element casts
# ----------------------------------------------------------------------------------------------


def quantize_codes(x: torch.Tensor, fmt: str | FPFormat, *, strict: bool = False) -> torch.Tensor:
    """Element-wise cast of floats to ``fmt`` codes (uint8, same shape): the hardware quantizer.

    Input: float32 (the hardware input), float16 / bfloat16 (upcast to float32, exact), or
    float64 (handled exactly from its own bits, no intermediate float32 rounding).
    Rules, computed with integer arithmetic on the IEEE bit fields:

    - round to nearest, ties to even (on the target mantissa LSB), with the same quantum
      2^(1 - bias - mbits) throughout the subnormal range;
    - the sign is kept on zero: -0.0 and negative values that round to zero give the code
      with only the sign bit set;
    - finite values beyond ``max_finite`` (after rounding) and +-Inf saturate to the
      +-max_finite code (never Inf/NaN codes);
    - NaN (any sign / payload) -> ``fmt.nan_code`` (positive sign) when the format has a NaN,
      else code 0; with ``strict=True`` any NaN raises ValueError.

    Integer algorithm (what the RTL implements), for a finite float32 with fields (s, E, M):
    sig = E ? 2^23 | M : M, e2 = max(E, 1) - 150, k = floor(log2 |x|) (E - 127, or
    bit_length(M) - 150 for subnormals); q = max(k, 1 - bias) - mbits (log2 of the target ulp);
    shift = q - e2 (>= 23 - mbits > 0 for float32 input); n = sig >> shift rounded half-to-even
    using the dropped bits; magnitude code = ((max(k + bias, 1) - 1) << mbits) + n (the carry
    of a round-up moves into the exponent field by itself), 0 if x == 0, then clamped to the
    max_finite code; code = magnitude | s << (code_width - 1).
    """
    f = get_format(fmt)
    if not isinstance(x, torch.Tensor):
        raise ValueError("x must be a torch.Tensor")
    return _round_fields(*_float_fields(x), f, strict)


def decode(codes: torch.Tensor, fmt: str | FPFormat) -> torch.Tensor:
    """Codes -> float32 values (exact). Inf codes give +-inf, NaN codes give nan; sign of zero kept."""
    f = get_format(fmt)
    c = _check_codes(codes, f)
    neg = (c & f.sign_bit) != 0
    val = _magnitude_int(c & (f.sign_bit - 1), f).to(torch.float64) * 2.0 ** -f.F  # exact
    val = torch.where(neg, -val, val)
    is_inf, is_nan = _special_masks(c, f)
    val = torch.where(is_inf, torch.where(neg, -math.inf, math.inf), val)
    val = torch.where(is_nan, torch.full_like(val, math.nan), val)
    return val.to(torch.float32)


def code_to_int(codes: torch.Tensor, fmt: str | FPFormat) -> torch.Tensor:
    """Signed exact value of finite codes in units of 2^-F (int64); ValueError on Inf/NaN codes.

    Both zeros give 0.
    """
    f = get_format(fmt)
    c = _check_codes(codes, f)
    is_inf, is_nan = _special_masks(c, f)
    if bool((is_inf | is_nan).any()):
        raise ValueError(f"codes contain Inf/NaN codes of {f.name}; they have no integer value")
    mag = _magnitude_int(c & (f.sign_bit - 1), f)
    return torch.where((c & f.sign_bit) != 0, -mag, mag)


# ----------------------------------------------------------------------------------------------
# MX block quantization (OCP Microscaling v1.0)
# ----------------------------------------------------------------------------------------------


def _check_block(block, K: int, name: str = "block") -> None:
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ValueError(f"{name} must be a positive int, got {block!r}")
    if K % block:
        raise ValueError(f"{name} must divide the last dimension: K={K} is not a multiple of {name}={block}")


def mx_quantize(x: torch.Tensor, fmt: str | FPFormat, block: int = 32):
    """MX-quantize along the last dim: returns (codes uint8 (..., K), scales uint8 (..., K // block)).

    Per block of ``block`` consecutive elements (K must be a multiple of ``block``):

    - kmax = floor(log2(max |x|)) over the block, computed exactly from the float bits
      (float32: biased exponent - 127 for normals, bit_length(mantissa) - 150 for subnormals;
      float16/bfloat16 are upcast to float32 exactly; float64 is read from its own bits);
    - shared exponent X = kmax - fmt.emax, clamped to [-127, 127]; an all-zero block
      (+-0 only) gets X = -127; the scale code is X + 127 (E8M0, value 2^X);
    - element codes = quantize_codes(x / 2^X): the division is exact, done by subtracting X
      from the integer exponent of each element before the RNE/saturating cast (no float op).
      Unlike a plain float32 cast, the rounding shift can then be <= 0 (float32 subnormals
      scaled up): the element is exact and no rounding happens;
    - a block containing any NaN or +-Inf gets scale code 255 (NaN) and all element codes 0;
      the hardware does the same.
    """
    f = get_format(fmt)
    if not isinstance(x, torch.Tensor):
        raise ValueError("x must be a torch.Tensor")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the block dimension K)")
    K = x.shape[-1]
    _check_block(block, K)
    sign, sig, e2, k_el, is_inf, is_nan = _float_fields(x)
    lead = x.shape[:-1]
    nb = K // block
    sig_b = sig.reshape(*lead, nb, block)
    e2_b = e2.reshape(*lead, nb, block)
    # floor(log2|x|) per element; zeros get a sentinel below any real value.
    k_b = k_el.reshape(*lead, nb, block)
    k = torch.where(sig_b > 0, k_b, torch.full_like(sig_b, -(1 << 20)))
    kmax = k.amax(dim=-1)
    X = torch.where(kmax > -(1 << 20), kmax - f.emax, torch.full_like(kmax, -127)).clamp(-127, 127)
    codes = _round_fields(
        sign.reshape(*lead, nb, block),
        sig_b,
        e2_b - X.unsqueeze(-1),
        k_b - X.unsqueeze(-1),
        torch.zeros_like(sig_b, dtype=torch.bool),
        torch.zeros_like(sig_b, dtype=torch.bool),
        f,
        False,
    )
    bad = (is_inf | is_nan).reshape(*lead, nb, block).any(dim=-1)
    codes = torch.where(bad.unsqueeze(-1), torch.zeros_like(codes), codes)
    scales = torch.where(bad, torch.full_like(X, E8M0_NAN), X + E8M0_BIAS).to(torch.uint8)
    return codes.reshape(*lead, K), scales


def _check_scales(scales: torch.Tensor, shape, name: str) -> torch.Tensor:
    if not isinstance(scales, torch.Tensor) or scales.dtype.is_floating_point or scales.dtype.is_complex:
        raise ValueError(f"{name} must be an integer tensor of E8M0 codes")
    s = scales.to(torch.int64)
    if s.numel() and (int(s.min()) < 0 or int(s.max()) > 255):
        raise ValueError(f"{name} must be E8M0 codes in 0..255")
    if tuple(s.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (codes shape with K // block), got {tuple(s.shape)}")
    return s


def mx_dequantize(codes: torch.Tensor, scales: torch.Tensor, fmt: str | FPFormat, block: int = 32) -> torch.Tensor:
    """Inverse of mx_quantize: decode(codes) * 2^(scale - 127) -> float32 (..., K).

    The product is exact in float64 and then rounded to float32 (RNE; beyond the float32 range
    it becomes +-inf). A NaN scale (255) makes its whole block NaN; Inf/NaN element codes decode
    to inf/nan.
    """
    f = get_format(fmt)
    c = _check_codes(codes, f)
    K = c.shape[-1] if c.dim() else 0
    _check_block(block, K)
    s = _check_scales(scales, (*c.shape[:-1], K // block), "scales")
    vals = decode(codes, f).to(torch.float64).reshape(*c.shape[:-1], K // block, block)
    scaled = torch.ldexp(vals, (s - E8M0_BIAS).to(torch.float64).unsqueeze(-1))
    scaled = torch.where((s == E8M0_NAN).unsqueeze(-1), torch.full_like(scaled, math.nan), scaled)
    return scaled.reshape(c.shape).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# LUT multiplier
# ----------------------------------------------------------------------------------------------


def product_frac_bits(fmt_a: str | FPFormat, fmt_b: str | FPFormat) -> int:
    """F_a + F_b: products of finite codes are integers in units of 2^-(F_a + F_b)."""
    return get_format(fmt_a).F + get_format(fmt_b).F


def _check_pair(fa: FPFormat, fb: FPFormat) -> None:
    if fa.name == "e5m2" and fb.name == "e5m2":
        raise ValueError("fmt_a/fmt_b pair e5m2 x e5m2 is not supported: its products (~2^64) overflow int64")


@functools.lru_cache(maxsize=None)
def _table(fa: FPFormat, fb: FPFormat) -> torch.Tensor:
    ma = torch.arange(fa.sign_bit, dtype=torch.int64)
    mb = torch.arange(fb.sign_bit, dtype=torch.int64)
    ia = _magnitude_int(ma, fa)
    ib = _magnitude_int(mb, fb)
    # Inf/NaN magnitude codes hold 0: the hardware flags them separately (see dot_exact).
    ia = torch.where(torch.stack(_special_masks(ma, fa)).any(0), 0, ia)
    ib = torch.where(torch.stack(_special_masks(mb, fb)).any(0), 0, ib)
    return ia[:, None] * ib[None, :]


def product_magnitude_table(fmt_a: str | FPFormat, fmt_b: str | FPFormat) -> torch.Tensor:
    """The hardware LUT: int64 [2^(code_width_a - 1), 2^(code_width_b - 1)].

    Entry [i, j] = |value(i)| * |value(j)| / 2^-(F_a + F_b) for magnitude codes i, j (sign bit
    clear); rows/columns of Inf/NaN magnitude codes hold 0. ValueError for e5m2 x e5m2.
    """
    fa, fb = get_format(fmt_a), get_format(fmt_b)
    _check_pair(fa, fb)
    return _table(fa, fb).clone()


def product_width(fmt_a: str | FPFormat, fmt_b: str | FPFormat) -> int:
    """Bit length of the largest entry of product_magnitude_table (unsigned LUT output width)."""
    return int(product_magnitude_table(fmt_a, fmt_b).max()).bit_length()


def lut_product(a_codes: torch.Tensor, fmt_a, b_codes: torch.Tensor, fmt_b) -> torch.Tensor:
    """Exact signed products of finite codes in units of 2^-(F_a + F_b), int64, broadcast shape.

    Magnitude from the LUT (product_magnitude_table), sign = sign_a XOR sign_b; a product with
    a zero is 0 (no negative zero in the integer domain). ValueError on Inf/NaN codes and for
    the pair e5m2 x e5m2.
    """
    fa, fb = get_format(fmt_a), get_format(fmt_b)
    _check_pair(fa, fb)
    ca, cb = _check_codes(a_codes, fa, "a_codes"), _check_codes(b_codes, fb, "b_codes")
    for c, f, name in ((ca, fa, "a_codes"), (cb, fb, "b_codes")):
        is_inf, is_nan = _special_masks(c, f)
        if bool((is_inf | is_nan).any()):
            raise ValueError(f"{name} contain Inf/NaN codes of {f.name}")
    mag = _table(fa, fb)[ca & (fa.sign_bit - 1), cb & (fb.sign_bit - 1)]
    neg = ((ca & fa.sign_bit) != 0) ^ ((cb & fb.sign_bit) != 0)
    return torch.where(neg, -mag, mag)


# ----------------------------------------------------------------------------------------------
# Exact dot product unit
# ----------------------------------------------------------------------------------------------


def _check_acc(acc_frac, acc_width) -> None:
    if not isinstance(acc_width, int) or isinstance(acc_width, bool) or not (_ACC_WIDTH_MIN <= acc_width <= _ACC_WIDTH_MAX):
        raise ValueError(f"acc_width must be an int in {_ACC_WIDTH_MIN}..{_ACC_WIDTH_MAX}, got {acc_width!r}")
    if not isinstance(acc_frac, int) or isinstance(acc_frac, bool) or not (0 <= acc_frac < acc_width):
        raise ValueError(f"acc_frac must be an int in 0..acc_width-1 = 0..{acc_width - 1}, got {acc_frac!r}")


def _accumulate_blocks(S: torch.Tensor, E: torch.Tensor, acc_frac: int, acc_width: int):
    """Shift block sums S (int64 (..., nb), |S| < 2^62) by E + acc_frac and accumulate; see dot_exact."""
    W = acc_width
    lo, hi = -(1 << (W - 1)), (1 << (W - 1)) - 1
    sh = E + acc_frac
    nb = S.shape[-1]
    if nb == 0:
        return torch.zeros(S.shape[:-1], dtype=torch.int64), torch.zeros(S.shape[:-1], dtype=torch.bool)
    s_bits = int(S.abs().max()).bit_length()
    if int(sh.max()) + s_bits <= 62:
        # Common case: every shifted term fits in int64 exactly (left shift, or arithmetic
        # right shift = floor; |S| < 2^62 so a right shift of 63 is enough).
        sh_min = int(sh.min())
        if sh_min >= 0:
            t = S << sh
        elif int(sh.max()) < 0:
            t = S >> (-sh).clamp(max=63)
        else:
            t = torch.where(sh >= 0, S << sh.clamp(0, 62), S >> (-sh).clamp(0, 63))
        term_ovf = (t < lo) | (t > hi)
        term = _wrap(t, W)
    else:
        # Left shifts (sh >= 0) of up to hundreds of bits: term = S * 2^sh modulo 2^W, and it
        # fits iff S >> (W-1-sh) is 0 or -1 (for sh <= W-1); for larger shifts only S == 0 fits.
        shl = sh.clamp(0, W)
        low_bits = S & ((torch.ones_like(shl) << (W - shl)) - 1)  # S mod 2^(W - sh)
        left = torch.where(sh >= W, torch.zeros_like(S), _wrap(low_bits << shl, W))
        top = S >> (W - 1 - sh).clamp(0, 63)
        left_fits = torch.where(sh <= W - 1, (top == 0) | (top == -1), S == 0)
        right_exact = S >> (-sh).clamp(0, 63)
        right_fits = (right_exact >= lo) & (right_exact <= hi)
        term = torch.where(sh >= 0, left, _wrap(right_exact, W))
        term_ovf = torch.where(sh >= 0, ~left_fits, ~right_fits)
    overflow = term_ovf.any(dim=-1)
    if W - 1 + nb.bit_length() <= 62:
        # Block-order accumulation without a loop: as long as nothing has overflowed, the W-bit
        # accumulator equals the exact prefix sum, so the first out-of-range partial sum of the
        # wrapped accumulator is the first out-of-range exact prefix sum (overflow is sticky),
        # and the final wrapped value is the exact sum modulo 2^W. The bound keeps the int64
        # prefix sums exact.
        prefix = torch.cumsum(term, dim=-1)
        overflow = overflow | ((prefix < lo) | (prefix > hi)).any(dim=-1)
        return _wrap(prefix[..., -1], W), overflow
    acc = torch.zeros(S.shape[:-1], dtype=torch.int64)
    # Literal block-order loop: one W-bit two's-complement add per block; both operands are
    # below 2^(W-1) in magnitude, so the exact sum fits in int64 before wrapping.
    for b in range(nb):
        exact = acc + term[..., b]
        overflow = overflow | (exact < lo) | (exact > hi)
        acc = _wrap(exact, W)
    return acc, overflow


def dot_exact(
    a_codes: torch.Tensor,
    a_scales: torch.Tensor,
    fmt_a,
    b_codes: torch.Tensor,
    b_scales: torch.Tensor,
    fmt_b,
    *,
    block: int = 32,
    acc_frac: int = 24,
    acc_width: int = 48,
    nan_ok: bool = False,
):
    """Bit-exact model of the hardware DotProductUnit along the last dim.

    Inputs: MX vectors a (codes (..., K), E8M0 scales (..., K // block)) and b likewise;
    K must be a multiple of ``block``; leading dims broadcast. Returns
    (acc int64 (...), overflow bool (...)), acc in units of 2^-acc_frac.

    Definition:

    1. p_k = lut_product(a_k, b_k): exact, units of 2^-(F_a + F_b);
    2. S_b = sum of p_k over block b (exact, int64);
    3. E_b = (sa_b - 127) + (sb_b - 127) - (F_a + F_b);
    4. term_b = S_b * 2^(E_b + acc_frac) as an integer: a left shift when E_b + acc_frac >= 0,
       else an arithmetic right shift (floor, rounding toward -inf; no sticky/round bits);
    5. acc = 0; for b in block order: acc = (acc + term_b) wrapped to acc_width-bit two's
       complement (modulo 2^acc_width). The returned acc is that wrapped value;
    6. overflow is sticky: True if any term_b or any partial sum acc + term_b lies outside
       [-2^(acc_width-1), 2^(acc_width-1) - 1]. A term that does not fit enters the adder
       already wrapped (term_b mod 2^acc_width, whatever the shift).

    Parameters: 16 <= acc_width <= 62, 0 <= acc_frac < acc_width (ValueError otherwise).
    Special values: any NaN scale (255) or Inf/NaN element code in a vector of a or b raises
    ValueError, unless ``nan_ok=True``: then that vector's acc is 0 and its overflow is True.
    """
    fa, fb = get_format(fmt_a), get_format(fmt_b)
    _check_pair(fa, fb)
    _check_acc(acc_frac, acc_width)
    ca, cb = _check_codes(a_codes, fa, "a_codes"), _check_codes(b_codes, fb, "b_codes")
    if ca.dim() == 0 or cb.dim() == 0 or ca.shape[-1] != cb.shape[-1]:
        raise ValueError("a_codes and b_codes must have the same last dimension K")
    K = ca.shape[-1]
    _check_block(block, K)
    nb = K // block
    sa = _check_scales(a_scales, (*ca.shape[:-1], nb), "a_scales")
    sb = _check_scales(b_scales, (*cb.shape[:-1], nb), "b_scales")

    bad_a = torch.stack(_special_masks(ca, fa)).any(0).any(-1) | (sa == E8M0_NAN).any(-1)
    bad_b = torch.stack(_special_masks(cb, fb)).any(0).any(-1) | (sb == E8M0_NAN).any(-1)
    bad = bad_a | bad_b
    if bool(bad.any()) and not nan_ok:
        raise ValueError("NaN scale (255) or Inf/NaN element in a vector (pass nan_ok=True to flag it instead)")
    # Neutralise specials so the LUT lookup is defined; those vectors are overwritten below.
    ca = torch.where(torch.stack(_special_masks(ca, fa)).any(0), torch.zeros_like(ca), ca)
    cb = torch.where(torch.stack(_special_masks(cb, fb)).any(0), torch.zeros_like(cb), cb)

    p = lut_product(ca, fa, cb, fb)
    S = p.reshape(*p.shape[:-1], nb, block).sum(dim=-1)
    E = (sa - E8M0_BIAS) + (sb - E8M0_BIAS) - (fa.F + fb.F)
    S, E = torch.broadcast_tensors(S, E)
    acc, overflow = _accumulate_blocks(S, E, acc_frac, acc_width)
    acc = torch.where(bad, torch.zeros_like(acc), acc)
    overflow = overflow | bad
    return acc, overflow


def acc_to_float(acc: torch.Tensor, acc_frac: int) -> torch.Tensor:
    """acc * 2^-acc_frac as float64: exact for |acc| < 2^53 (wider values round to nearest even)."""
    if not isinstance(acc_frac, int) or isinstance(acc_frac, bool) or acc_frac < 0:
        raise ValueError(f"acc_frac must be a non-negative int, got {acc_frac!r}")
    return acc.to(torch.float64) * 2.0 ** -acc_frac


def mx_matmul(
    x: torch.Tensor,
    w: torch.Tensor,
    fmt_x,
    fmt_w,
    block: int = 32,
    *,
    acc_frac: int = 24,
    acc_width: int = 48,
    nan_ok: bool = False,
    return_overflow: bool = False,
    chunk_elems: int = 1 << 22,
):
    """x @ w.T through the hardware path: MX-quantize x (..., K) and w (N, K) along K, run dot_exact.

    Returns float64 (..., N) = acc_to_float(dot_exact(...)) (and the overflow mask (..., N) when
    ``return_overflow``). Identical, bit for bit, to dot_exact on mx_quantize outputs; block
    sums are computed by a float64 einsum when every partial sum is below 2^53 (exact), else
    by int64 products. Work is chunked over the rows of x to about ``chunk_elems`` block sums.
    """
    fx, fw = get_format(fmt_x), get_format(fmt_w)
    _check_pair(fx, fw)
    _check_acc(acc_frac, acc_width)
    if w.dim() != 2 or x.dim() < 1 or x.shape[-1] != w.shape[-1]:
        raise ValueError("x must be (..., K) and w (N, K) with the same K")
    K, N = w.shape[1], w.shape[0]
    _check_block(block, K)
    nb = K // block
    lead = x.shape[:-1]
    xq, xs = mx_quantize(x.reshape(-1, K), fx, block)
    wq, ws = mx_quantize(w, fw, block)
    bad_x, bad_w = (xs == E8M0_NAN).any(-1), (ws == E8M0_NAN).any(-1)
    if not nan_ok and bool(bad_x.any() or bad_w.any()):
        raise ValueError("x or w contains NaN/Inf (pass nan_ok=True to flag it instead)")
    xi = code_to_int(xq, fx).reshape(-1, nb, block)
    wi = code_to_int(wq, fw).reshape(N, nb, block)
    xe = xs.to(torch.int64) - E8M0_BIAS
    we = ws.to(torch.int64) - E8M0_BIAS
    use_f64 = product_width(fx, fw) + (block - 1).bit_length() <= 53
    M = xi.shape[0]
    rows = max(1, chunk_elems // max(1, N * nb * (1 if use_f64 else block)))
    accs, ovfs = [], []
    for r0 in range(0, M, rows):
        xc = xi[r0 : r0 + rows]
        if use_f64:
            S = torch.einsum("mbk,nbk->mnb", xc.to(torch.float64), wi.to(torch.float64)).to(torch.int64)
        else:
            S = (xc[:, None] * wi[None]).sum(dim=-1)
        E = xe[r0 : r0 + rows, None, :] + we[None, :, :] - (fx.F + fw.F)
        acc, ovf = _accumulate_blocks(S, E, acc_frac, acc_width)
        bad = bad_x[r0 : r0 + rows, None] | bad_w[None, :]
        accs.append(torch.where(bad, torch.zeros_like(acc), acc))
        ovfs.append(ovf | bad)
    acc = torch.cat(accs) if accs else torch.zeros((0, N), dtype=torch.int64)
    ovf = torch.cat(ovfs) if ovfs else torch.zeros((0, N), dtype=torch.bool)
    out = acc_to_float(acc, acc_frac).reshape(*lead, N)
    return (out, ovf.reshape(*lead, N)) if return_overflow else out


# ----------------------------------------------------------------------------------------------
# FPQVAR dual format (post-GELU FFN input)
# ----------------------------------------------------------------------------------------------


def dual_quantize(x: torch.Tensor, block: int = 32):
    """FPQVAR dual-format quantization along the last dim.

    Returns (neg_codes e1m2, neg_scales, pos_codes e2m1, pos_scales), codes (..., K) uint8 and
    E8M0 scales (..., K // block):

    - negative stream = mx_quantize(where(x < 0 or isnan(x), x, +0.0), "e1m2", block):
      each block's scale comes from the absmax of its negative elements only; its codes carry
      the sign bit; entries that are >= 0 (including -0.0) hold code 0;
    - positive stream = mx_quantize(where(x > 0 or isnan(x), x, +0.0), "e2m1", block), likewise;
    - NaN goes to both streams (both block scales become 255); -Inf to the negative stream and
      +Inf to the positive one (their block scale becomes 255, as in mx_quantize).
    """
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise ValueError("x must be a floating-point torch.Tensor")
    nan = torch.isnan(x)
    zero = torch.zeros_like(x)
    neg_codes, neg_scales = mx_quantize(torch.where((x < 0) | nan, x, zero), "e1m2", block)
    pos_codes, pos_scales = mx_quantize(torch.where((x > 0) | nan, x, zero), "e2m1", block)
    return neg_codes, neg_scales, pos_codes, pos_scales


def dual_dequantize(neg_codes, neg_scales, pos_codes, pos_scales, block: int = 32) -> torch.Tensor:
    """x_hat = mx_dequantize(pos, "e2m1") + mx_dequantize(neg, "e1m2"), float32 (..., K).

    The sum is exact (one side of each element is zero) except for NaN propagation.
    """
    return mx_dequantize(pos_codes, pos_scales, "e2m1", block) + mx_dequantize(neg_codes, neg_scales, "e1m2", block)


# ----------------------------------------------------------------------------------------------
# Group-wise Hadamard transformation (FPQVAR GHT)
# ----------------------------------------------------------------------------------------------


def hadamard_matrix(n: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Sylvester Hadamard matrix of order n (power of two) scaled by 1/sqrt(n): symmetric, orthogonal."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or (n & (n - 1)):
        raise ValueError(f"n must be a power of two >= 1, got {n!r}")
    h = torch.ones((1, 1), dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(n)).to(dtype)


def group_hadamard(x: torch.Tensor, group: int = 128) -> torch.Tensor:
    """Block-diagonal Hadamard rotation along the last dim: each group g of ``group`` elements
    becomes H @ x_g (H = hadamard_matrix(group), symmetric), i.e. y = x @ B^T with
    B = blockdiag(H, ..., H). K must be a multiple of ``group``. Computed in x's dtype."""
    if not isinstance(group, int) or isinstance(group, bool) or group < 1 or (group & (group - 1)):
        raise ValueError(f"group must be a power of two >= 1, got {group!r}")
    K = x.shape[-1]
    if K % group:
        raise ValueError(f"group must divide the last dimension: K={K} is not a multiple of group={group}")
    h = hadamard_matrix(group, dtype=x.dtype)
    xg = x.reshape(*x.shape[:-1], K // group, group)
    return (xg @ h.T).reshape(x.shape)


def fold_hadamard_into_weight(w_OutIn: torch.Tensor, group: int = 128) -> torch.Tensor:
    """Weight w' (Out, In) such that group_hadamard(x) @ w'.T == x @ w.T.

    With y = x @ B^T and B orthogonal, w'^T = B w^T, i.e. w' = w @ B^T = group_hadamard(w):
    the same group rotation applied along the input dim of the weight.
    """
    if w_OutIn.dim() != 2:
        raise ValueError("w_OutIn must be 2-D (Out, In)")
    return group_hadamard(w_OutIn, group)
