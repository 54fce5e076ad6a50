"""golden.numerics.fp against independent references (ml_dtypes casts, float64 / Fraction math)."""

import functools
import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
import torch

from golden.numerics.fp import (
    FORMATS,
    acc_to_float,
    code_to_int,
    decode,
    dot_exact,
    dual_dequantize,
    dual_quantize,
    fold_hadamard_into_weight,
    get_format,
    group_hadamard,
    hadamard_matrix,
    lut_product,
    mx_dequantize,
    mx_matmul,
    mx_quantize,
    product_frac_bits,
    product_magnitude_table,
    product_width,
    quantize_codes,
)

ML_DTYPES = {
    "e2m1": ml_dtypes.float4_e2m1fn,
    "e2m3": ml_dtypes.float6_e2m3fn,
    "e3m2": ml_dtypes.float6_e3m2fn,
    "e4m3": ml_dtypes.float8_e4m3fn,
    "e5m2": ml_dtypes.float8_e5m2,
}
# (ebits, mbits, bias, max, emax, F, nan_code), written out from the OCP MX spec / FPQVAR.
SPEC = {
    "e2m1": (2, 1, 1, 6.0, 2, 1, None),
    "e1m2": (1, 2, 1, 1.75, 0, 2, None),
    "e2m3": (2, 3, 1, 7.5, 2, 3, None),
    "e3m2": (3, 2, 3, 28.0, 4, 4, None),
    "e4m3": (4, 3, 7, 448.0, 8, 9, 0x7F),
    "e5m2": (5, 2, 15, 57344.0, 15, 16, 0x7F),
}
PAIRS = [(a, b) for a in FORMATS for b in FORMATS if not (a == "e5m2" and b == "e5m2")]


# ----------------------------------------------------------------------------------------------
# Independent references
# ----------------------------------------------------------------------------------------------


def ref_decode(code: int, name: str) -> float:
    """Float64 value of one code from the textbook formula (special codes by the spec's rules)."""
    ebits, mbits, bias = SPEC[name][:3]
    width = 1 + ebits + mbits
    s = (code >> (width - 1)) & 1
    e = (code >> mbits) & ((1 << ebits) - 1)
    m = code & ((1 << mbits) - 1)
    sign = -1.0 if s else 1.0
    if name == "e5m2" and e == 31:
        return sign * math.inf if m == 0 else math.nan
    if name == "e4m3" and e == 15 and m == 7:
        return math.nan
    if e == 0:
        return sign * (m / 2**mbits) * 2.0 ** (1 - bias)
    return sign * (1 + m / 2**mbits) * 2.0 ** (e - bias)


@functools.lru_cache(maxsize=None)
def ref_table(name):
    """All codes' float64 values, and the ascending finite positive magnitudes with their codes."""
    width = 1 + SPEC[name][0] + SPEC[name][1]
    vals = np.array([ref_decode(c, name) for c in range(1 << width)])
    pos = [(v, c) for c, v in enumerate(vals[: 1 << (width - 1)]) if np.isfinite(v)]
    pos.sort()
    return vals, np.array([v for v, _ in pos]), np.array([c for _, c in pos])


def ref_quantize(v: np.ndarray, name: str) -> np.ndarray:
    """Brute force RNE cast of float64 values: nearest table value, ties to the even code, saturating."""
    _, mags, codes = ref_table(name)
    width = 1 + SPEC[name][0] + SPEC[name][1]
    v = np.asarray(v, np.float64)
    a = np.abs(v)
    hi = np.searchsorted(mags, a, side="left").clip(1, len(mags) - 1)
    lo = hi - 1
    mid = (mags[lo] + mags[hi]) / 2  # exact: dyadic with few bits
    pick_hi = (a > mid) | ((a == mid) & (codes[hi] % 2 == 0))
    out = np.where(pick_hi, codes[hi], codes[lo])
    out = np.where(a >= mags[-1], codes[-1], out)  # saturate
    out = out | (np.signbit(v).astype(np.int64) << (width - 1))
    return out.astype(np.int64)


def ml_cast_codes(x: np.ndarray, name: str) -> np.ndarray:
    """ml_dtypes RNE cast after clamping to +-max (saturation), as codes."""
    mx = SPEC[name][3]
    c = np.clip(x, -mx, mx).astype(ML_DTYPES[name]).view(np.uint8).astype(np.int64)
    return c


def hw_dot_reference(a_codes, a_scales, fa, b_codes, b_scales, fb, block, acc_frac, acc_width):
    """The dot_exact definition with Python Fractions and big ints, one vector at a time.

    Returns (acc list, overflow list, exact list, true sum list of Fractions) over the flattened
    vectors; exact means no block term was truncated and nothing overflowed.
    """
    va = {c: Fraction(v) for c, v in enumerate(ref_table(fa)[0]) if np.isfinite(v)}
    vb = {c: Fraction(v) for c, v in enumerate(ref_table(fb)[0]) if np.isfinite(v)}
    A, B = np.asarray(a_codes), np.asarray(b_codes)
    SA, SB = np.asarray(a_scales), np.asarray(b_scales)
    A, B = np.broadcast_arrays(A, B)
    SA, SB = np.broadcast_arrays(SA, SB)
    K = A.shape[-1]
    A, B = A.reshape(-1, K), B.reshape(-1, K)
    SA, SB = SA.reshape(-1, K // block), SB.reshape(-1, K // block)
    lo, hi = -(2 ** (acc_width - 1)), 2 ** (acc_width - 1) - 1
    accs, ovfs, exacts, sums = [], [], [], []
    for i in range(A.shape[0]):
        acc, ovf, exact, total = 0, False, True, Fraction(0)
        for b in range(K // block):
            s = sum(va[int(A[i, k])] * vb[int(B[i, k])] for k in range(b * block, (b + 1) * block))
            blk = s * Fraction(2) ** (int(SA[i, b]) - 127 + int(SB[i, b]) - 127)
            total += blk
            scaled = blk * 2**acc_frac
            term = math.floor(scaled)
            exact &= term == scaled
            if not lo <= term <= hi:
                ovf = True
            term = (term - lo) % 2**acc_width + lo
            acc += term
            if not lo <= acc <= hi:
                ovf = True
            acc = (acc - lo) % 2**acc_width + lo
        accs.append(acc)
        ovfs.append(ovf)
        exacts.append(exact and not ovf)
        sums.append(total)
    return accs, ovfs, exacts, sums


# ----------------------------------------------------------------------------------------------
# Formats, decode, code_to_int
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPEC))
def test_format_table(name):
    f = FORMATS[name]
    ebits, mbits, bias, mx, emax, F, nan_code = SPEC[name]
    assert (f.ebits, f.mbits, f.bias, f.max_finite, f.emax, f.F, f.nan_code) == (ebits, mbits, bias, mx, emax, F, nan_code)
    assert f.code_width == 1 + ebits + mbits
    assert get_format(name) is f and get_format(f) is f
    vals, mags, _ = ref_table(name)
    assert mags[-1] == mx
    assert f.has_inf == bool(np.isinf(vals).any()) and f.has_nan == bool(np.isnan(vals).any())


def test_get_format_rejects():
    with pytest.raises(ValueError, match="fmt must be one of"):
        get_format("e3m4")
    with pytest.raises(ValueError, match="fmt must be one of"):
        quantize_codes(torch.zeros(2), "fp4")


def test_e1m2_values():
    _, mags, _ = ref_table("e1m2")
    assert mags.tolist() == [0.25 * i for i in range(8)]


@pytest.mark.parametrize("name", list(SPEC))
def test_decode_all_codes(name):
    f = FORMATS[name]
    codes = torch.arange(1 << f.code_width, dtype=torch.uint8)
    got = decode(codes, name).numpy().astype(np.float64)
    ref = np.array([ref_decode(c, name) for c in range(1 << f.code_width)])
    np.testing.assert_array_equal(got, ref)  # NaN positions must agree too
    assert (np.signbit(got) == np.signbit(ref))[~np.isnan(ref)].all()
    if name in ML_DTYPES:
        ml = codes.numpy().view(ML_DTYPES[name]).astype(np.float64)
        np.testing.assert_array_equal(got, ml)
    finite = np.isfinite(ref)
    ints = code_to_int(codes[torch.from_numpy(finite)], name).numpy()
    np.testing.assert_array_equal(ints * 2.0 ** -f.F, ref[finite])
    if not finite.all():
        with pytest.raises(ValueError, match="Inf/NaN"):
            code_to_int(codes, name)


def test_codes_out_of_range_rejected():
    with pytest.raises(ValueError, match="codes"):
        decode(torch.tensor([16], dtype=torch.uint8), "e2m1")
    with pytest.raises(ValueError, match="codes"):
        code_to_int(torch.tensor([1.0]), "e2m1")


# ----------------------------------------------------------------------------------------------
# quantize_codes
# ----------------------------------------------------------------------------------------------


def _all_finite_f16():
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    return x[np.isfinite(x)]


@pytest.mark.parametrize("name", list(ML_DTYPES))
def test_quantize_all_float16_vs_ml_dtypes(name):
    x16 = _all_finite_f16()
    got = quantize_codes(torch.from_numpy(x16), name).numpy().astype(np.int64)
    ref = ml_cast_codes(x16.astype(np.float32), name)
    np.testing.assert_array_equal(got, ref)
    dec = decode(torch.from_numpy(got.astype(np.uint8)), name).numpy()
    refv = np.clip(x16.astype(np.float32), -SPEC[name][3], SPEC[name][3]).astype(ML_DTYPES[name]).astype(np.float32)
    np.testing.assert_array_equal(dec, refv)
    np.testing.assert_array_equal(np.signbit(dec), np.signbit(refv))


@pytest.mark.parametrize("name", list(SPEC))
def test_quantize_all_float16_vs_bruteforce(name):
    x16 = _all_finite_f16()
    got = quantize_codes(torch.from_numpy(x16), name).numpy().astype(np.int64)
    np.testing.assert_array_equal(got, ref_quantize(x16.astype(np.float64), name))


def _random_float32(rng, n):
    bits = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    # A quarter as float32 subnormals, a quarter in the formats' working range.
    bits[: n // 4] &= np.uint32(0x807FFFFF)
    sub = bits[n // 4 : n // 2]
    bits[n // 4 : n // 2] = (sub & np.uint32(0x807FFFFF)) | (rng.integers(100, 150, size=sub.size).astype(np.uint32) << 23)
    x = bits.view(np.float32)
    return x[np.isfinite(x)]


@pytest.mark.parametrize("name", list(SPEC))
def test_quantize_random_float32(name, seed):
    rng = np.random.default_rng(seed)
    x = _random_float32(rng, 100_000)
    got = quantize_codes(torch.from_numpy(x), name).numpy().astype(np.int64)
    np.testing.assert_array_equal(got, ref_quantize(x.astype(np.float64), name))
    if name in ML_DTYPES:
        np.testing.assert_array_equal(got, ml_cast_codes(x, name))


@pytest.mark.parametrize("name", list(SPEC))
def test_quantize_random_float64_and_bf16(name, seed):
    rng = np.random.default_rng(seed)
    _, mags, _ = ref_table(name)
    # float64 values near every grid point, at midpoints and one float64 ulp around them: no
    # float32 pre-rounding may happen.
    mids = (mags[:-1] + mags[1:]) / 2
    base = np.concatenate([mids, np.nextafter(mids, 0), np.nextafter(mids, np.inf), mags])
    noise = rng.standard_normal(20_000) * 2.0 ** rng.integers(-30, 20, 20_000)
    x = np.concatenate([base, -base, noise, mids * (1 + 2.0**-40)])
    got = quantize_codes(torch.from_numpy(x), name).numpy().astype(np.int64)
    np.testing.assert_array_equal(got, ref_quantize(x, name))
    xb = torch.from_numpy(noise.astype(np.float32)).to(torch.bfloat16)
    np.testing.assert_array_equal(quantize_codes(xb, name).numpy(), quantize_codes(xb.to(torch.float32), name).numpy())


@pytest.mark.parametrize("name", list(SPEC))
def test_quantize_ties_to_even(name):
    f = FORMATS[name]
    _, mags, codes = ref_table(name)
    mids = ((mags[:-1] + mags[1:]) / 2).astype(np.float32)
    assert (mids.astype(np.float64) == (mags[:-1] + mags[1:]) / 2).all()
    for sign in (1.0, -1.0):
        got = quantize_codes(torch.from_numpy(sign * mids), name).numpy().astype(np.int64)
        mag = got & (f.sign_bit - 1)
        assert (mag % 2 == 0).all()
        assert np.isin(mag, np.stack([codes[:-1], codes[1:]])).all()
        assert ((mag == codes[:-1]) | (mag == codes[1:])).all()
        assert ((got >> (f.code_width - 1)) == (sign < 0)).all()
        up = quantize_codes(torch.from_numpy(sign * np.nextafter(mids, np.float32(np.inf))), name).numpy()
        down = quantize_codes(torch.from_numpy(sign * np.nextafter(mids, np.float32(0))), name).numpy()
        assert ((up.astype(np.int64) & (f.sign_bit - 1)) == codes[1:]).all()
        assert ((down.astype(np.int64) & (f.sign_bit - 1)) == codes[:-1]).all()


@pytest.mark.parametrize("name", list(SPEC))
def test_quantize_specials(name):
    f = FORMATS[name]
    x = torch.tensor([math.inf, -math.inf, 1e30, -1e30, 0.0, -0.0, -1e-30, 1e-30], dtype=torch.float32)
    got = quantize_codes(x, name).tolist()
    mc = f.sign_bit - 1 if not f.has_nan else None
    top = ref_quantize(np.array([f.max_finite]), name)[0]
    assert mc is None or top == mc
    assert got == [top, top | f.sign_bit, top, top | f.sign_bit, 0, f.sign_bit, f.sign_bit, 0]
    nans = torch.tensor([math.nan, -math.nan], dtype=torch.float32)
    nans = torch.cat([nans, torch.tensor([0x7FC00001, -1], dtype=torch.int32).view(torch.float32)])
    expect = f.nan_code if f.has_nan else 0
    assert quantize_codes(nans, name).tolist() == [expect] * 4
    assert quantize_codes(nans.double(), name).tolist() == [expect] * 4
    with pytest.raises(ValueError, match="NaN"):
        quantize_codes(nans, name, strict=True)
    quantize_codes(x, name, strict=True)  # no NaN: fine
    with pytest.raises(ValueError, match="x must be"):
        quantize_codes(torch.zeros(2, dtype=torch.int32), name)


# ----------------------------------------------------------------------------------------------
# LUT products
# ----------------------------------------------------------------------------------------------


def _finite_codes(name):
    vals, _, _ = ref_table(name)
    return torch.from_numpy(np.nonzero(np.isfinite(vals))[0].astype(np.uint8))


@pytest.mark.parametrize("fa,fb", PAIRS)
def test_lut_product_exhaustive(fa, fb):
    ca, cb = _finite_codes(fa), _finite_codes(fb)
    got = lut_product(ca[:, None], fa, cb[None, :], fb)
    assert got.dtype == torch.int64 and got.shape == (len(ca), len(cb))
    va = np.array([ref_decode(int(c), fa) for c in ca])
    vb = np.array([ref_decode(int(c), fb) for c in cb])
    ref = np.outer(va, vb) * 2.0 ** (SPEC[fa][5] + SPEC[fb][5])  # exact in float64
    assert product_frac_bits(fa, fb) == SPEC[fa][5] + SPEC[fb][5]
    np.testing.assert_array_equal(got.numpy().astype(np.float64), ref)
    table = product_magnitude_table(fa, fb)
    fA, fB = FORMATS[fa], FORMATS[fb]
    assert table.shape == (fA.sign_bit, fB.sign_bit) and table.dtype == torch.int64
    ma, mb = ca[ca < fA.sign_bit].long(), cb[cb < fB.sign_bit].long()
    np.testing.assert_array_equal(table[ma[:, None], mb[None, :]].numpy(), lut_product(ma[:, None], fa, mb[None, :], fb).numpy())
    assert product_width(fa, fb) == int(np.abs(ref).max()).bit_length()


def test_lut_product_rejects():
    with pytest.raises(ValueError, match="e5m2 x e5m2"):
        lut_product(torch.tensor([1], dtype=torch.uint8), "e5m2", torch.tensor([1], dtype=torch.uint8), "e5m2")
    with pytest.raises(ValueError, match="e5m2 x e5m2"):
        product_magnitude_table("e5m2", "e5m2")
    with pytest.raises(ValueError, match="Inf/NaN"):
        lut_product(torch.tensor([0x7F], dtype=torch.uint8), "e4m3", torch.tensor([1], dtype=torch.uint8), "e2m1")
    assert product_width("e2m1", "e2m1") == 8  # 6 * 6 * 2^2 = 144


# ----------------------------------------------------------------------------------------------
# MX quantization
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPEC))
def test_mx_quantize_scale_rule(name, seed):
    f = FORMATS[name]
    g = torch.Generator().manual_seed(seed)
    nb, block = 400, 32
    exps = torch.randint(-150, 125, (nb, 1), generator=g).double()
    x = (torch.randn(nb, block, generator=g, dtype=torch.float64) * torch.exp2(exps)).float()
    x[3] = 0.0
    x[4] = -0.0
    x = x.reshape(4, nb * block // 4)
    codes, scales = mx_quantize(x, name, block=block)
    assert codes.dtype == torch.uint8 and scales.dtype == torch.uint8 and scales.shape == (4, nb // 4)
    xb = x.double().numpy().reshape(nb, block)
    Xs = []
    for i in range(nb):
        amax = np.abs(xb[i]).max()
        X = -127 if amax == 0 else min(127, max(-127, math.frexp(amax)[1] - 1 - f.emax))
        if amax:
            assert math.floor(np.log2(amax)) == math.frexp(amax)[1] - 1
        Xs.append(X)
    np.testing.assert_array_equal(scales.reshape(-1).numpy().astype(np.int64), np.array(Xs) + 127)
    ref = ref_quantize(np.ldexp(xb, -np.array(Xs)[:, None]), name)  # exact in float64
    np.testing.assert_array_equal(codes.reshape(nb, block).numpy().astype(np.int64), ref)
    # float16 / bfloat16 inputs upcast exactly
    for dt in (torch.float16, torch.bfloat16):
        xs = (torch.randn(2, 64, generator=g) * 30).to(dt)
        c1, s1 = mx_quantize(xs, name)
        c2, s2 = mx_quantize(xs.float(), name)
        assert torch.equal(c1, c2) and torch.equal(s1, s2)


@pytest.mark.parametrize("name", list(SPEC))
def test_mx_roundtrip_bound(name, seed):
    f = FORMATS[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 128, generator=g) * torch.exp2(torch.randint(-20, 20, (64, 1), generator=g).float())
    codes, scales = mx_quantize(x, name)
    xh = mx_dequantize(codes, scales, name)
    X = scales.double() - 127
    bound = torch.maximum(torch.exp2(X + f.emax - f.mbits - 1), torch.exp2(X) * (2.0 ** (f.emax + 1) - f.max_finite))
    err = (x.double() - xh.double()).abs().reshape(64, 4, 32)
    assert (err <= bound[..., None]).all()


def test_mx_special_blocks():
    x = torch.randn(4, 96, generator=torch.Generator().manual_seed(0))
    x[0, 5] = math.nan
    x[1, 40] = math.inf
    x[2, 95] = -math.inf
    x[3, 32:64] = 0.0
    x[3, 33] = -0.0
    codes, scales = mx_quantize(x, "e4m3")
    assert scales[0, 0] == 255 and scales[1, 1] == 255 and scales[2, 2] == 255
    assert (codes[0, :32] == 0).all() and (codes[1, 32:64] == 0).all() and (codes[2, 64:] == 0).all()
    assert scales[0, 1] != 255 and scales[3].tolist()[1] == 0
    assert codes[3, 33] == 0x80 and codes[3, 34] == 0
    ref_c, ref_s = mx_quantize(x[0:1, 32:], "e4m3")
    assert torch.equal(codes[0:1, 32:], ref_c) and torch.equal(scales[0:1, 1:], ref_s)
    xh = mx_dequantize(codes, scales, "e4m3")
    assert torch.isnan(xh[0, :32]).all() and not torch.isnan(xh[0, 32:]).any()


def test_mx_bad_block():
    with pytest.raises(ValueError, match="block"):
        mx_quantize(torch.zeros(2, 48), "e2m1", block=32)
    with pytest.raises(ValueError, match="block"):
        mx_quantize(torch.zeros(2, 32), "e2m1", block=0)
    with pytest.raises(ValueError, match="scales"):
        mx_dequantize(torch.zeros(2, 32, dtype=torch.uint8), torch.zeros(2, 2, dtype=torch.uint8), "e2m1")


# ----------------------------------------------------------------------------------------------
# Exact dot product
# ----------------------------------------------------------------------------------------------


def _data(kind, shape, g, rng):
    if kind == "gauss":
        return torch.randn(*shape, generator=g)
    if kind == "student":
        return torch.from_numpy(np.clip(rng.standard_t(3, size=shape), -300, 300).astype(np.float32))
    return torch.nn.functional.gelu(torch.randn(*shape, generator=g) * 2)


DOT_CASES = [
    ("e2m1", "e2m1", "gauss", "gauss"),
    ("e2m1", "e2m1", "student", "gelu"),
    ("e4m3", "e4m3", "gauss", "student"),
    ("e2m3", "e3m2", "gelu", "gauss"),
    ("e5m2", "e4m3", "gauss", "gauss"),
    ("e1m2", "e2m1", "gelu", "student"),
    ("e3m2", "e5m2", "student", "gauss"),
]


@pytest.mark.parametrize("fa,fb,da,db", DOT_CASES)
def test_dot_exact_vs_fraction(fa, fb, da, db, seed):
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    K = 96
    a = _data(da, (2, 1, K), g, rng)
    b = _data(db, (1, 3, K), g, rng)
    ac, as_ = mx_quantize(a, fa)
    bc, bs = mx_quantize(b, fb)
    E = (as_.long() - 127) + (bs.long() - 127) - product_frac_bits(fa, fb)
    acc_frac = int(min(61, max(0, -int(E.min()))))
    acc, ovf = dot_exact(ac, as_, fa, bc, bs, fb, acc_frac=acc_frac, acc_width=62)
    assert acc.shape == (2, 3) and ovf.shape == (2, 3)
    r_acc, r_ovf, r_exact, r_sum = hw_dot_reference(ac, as_, fa, bc, bs, fb, 32, acc_frac, 62)
    assert acc.reshape(-1).tolist() == r_acc and ovf.reshape(-1).tolist() == r_ovf
    if da == "gauss" or db == "gauss" or fa in ("e2m1", "e1m2"):
        assert all(r_exact), "test configuration must be exact"
    for i, ex in enumerate(r_exact):
        if ex:
            assert Fraction(int(acc.reshape(-1)[i])) / 2**acc_frac == r_sum[i]
            assert float(acc_to_float(acc.reshape(-1)[i : i + 1], acc_frac)) == float(r_sum[i])
    # Reference for the dequantized values, independent of the block bookkeeping.
    ref = mx_dequantize(ac, as_, fa).double() @ mx_dequantize(bc, bs, fb).double().transpose(-1, -2)
    diag = torch.stack([ref[0, 0, :], ref[1, 0, :]])
    exact_mask = torch.tensor(r_exact).reshape(2, 3)
    mag = (mx_dequantize(ac, as_, fa).double().abs() @ mx_dequantize(bc, bs, fb).double().abs().transpose(-1, -2))[:, 0, :]
    err = (acc_to_float(acc, acc_frac) - diag).abs()
    assert (err[exact_mask] <= 1e-13 * mag[exact_mask]).all()


@pytest.mark.parametrize("acc_frac,acc_width", [(0, 16), (3, 20), (8, 24), (24, 48), (40, 62), (15, 16)])
def test_dot_exact_truncation_and_wrap_fuzz(acc_frac, acc_width, seed):
    g = torch.Generator().manual_seed(seed)
    for fa, fb in [("e2m1", "e2m1"), ("e4m3", "e2m3"), ("e5m2", "e4m3"), ("e1m2", "e3m2")]:
        fin_a, fin_b = _finite_codes(fa), _finite_codes(fb)
        n, K = 6, 128
        ac = fin_a[torch.randint(len(fin_a), (n, K), generator=g)]
        bc = fin_b[torch.randint(len(fin_b), (n, K), generator=g)]
        # Scales from narrow (mostly truncation) to the full E8M0 range (huge shifts, wrap).
        lo_s, hi_s = [(120, 135), (100, 155), (0, 255)][int(torch.randint(3, (1,), generator=g))]
        as_ = torch.randint(lo_s, hi_s, (n, K // 32), generator=g).to(torch.uint8)
        bs = torch.randint(lo_s, hi_s, (n, K // 32), generator=g).to(torch.uint8)
        acc, ovf = dot_exact(ac, as_, fa, bc, bs, fb, acc_frac=acc_frac, acc_width=acc_width)
        r_acc, r_ovf, _, _ = hw_dot_reference(ac, as_, fa, bc, bs, fb, 32, acc_frac, acc_width)
        assert acc.tolist() == r_acc, (fa, fb)
        assert ovf.tolist() == r_ovf, (fa, fb)
        assert ((acc >= -(2 ** (acc_width - 1))) & (acc < 2 ** (acc_width - 1))).all()


def test_dot_exact_floor_and_wrap_examples():
    def vec(codes, K=32):
        c = torch.zeros(K, dtype=torch.uint8)
        c[: len(codes)] = torch.tensor(codes, dtype=torch.uint8)
        return c

    one = torch.tensor([127], dtype=torch.uint8)
    # -0.5 * 0.5 = -0.25 with acc_frac=1: -0.5 LSB -> floor -> -1 (toward -inf), not 0.
    acc, ovf = dot_exact(vec([0x9]), one, "e2m1", vec([0x1]), one, "e2m1", acc_frac=1, acc_width=16)
    assert acc.item() == -1 and not ovf.item()
    acc, _ = dot_exact(vec([0x1]), one, "e2m1", vec([0x1]), one, "e2m1", acc_frac=1, acc_width=16)
    assert acc.item() == 0
    # 6 * 6 * 2^(127 + 127) in a 16-bit accumulator: the term is 0 mod 2^16, flagged.
    big = torch.tensor([254], dtype=torch.uint8)
    acc, ovf = dot_exact(vec([0x7]), big, "e2m1", vec([0x7]), big, "e2m1", acc_frac=0, acc_width=16)
    assert acc.item() == 0 and ovf.item()
    # Partial-sum overflow: 32 * 36 * 2^4 = 18432; 2 blocks -> 36864 wraps in 16 bits.
    s = torch.tensor([131, 131], dtype=torch.uint8)
    a = torch.full((64,), 0x7, dtype=torch.uint8)
    acc, ovf = dot_exact(a, s, "e2m1", a, torch.tensor([127, 127], dtype=torch.uint8), "e2m1", acc_frac=0, acc_width=16)
    assert ovf.item() and acc.item() == 36864 - 65536
    # Overflow is sticky even when the wrapped sum comes back in range.
    b = a.clone()
    b[32:] = 0xF
    acc, ovf = dot_exact(a, torch.tensor([132, 132], dtype=torch.uint8), "e2m1", b, torch.tensor([127, 127], dtype=torch.uint8), "e2m1", acc_frac=0, acc_width=16)
    assert acc.item() == 0 and ovf.item()


def test_dot_exact_params_and_specials():
    c = torch.zeros(2, 64, dtype=torch.uint8)
    s = torch.full((2, 2), 127, dtype=torch.uint8)
    for kw, word in [
        (dict(acc_width=15), "acc_width"),
        (dict(acc_width=63), "acc_width"),
        (dict(acc_frac=-1), "acc_frac"),
        (dict(acc_frac=48, acc_width=48), "acc_frac"),
        (dict(block=0), "block"),
        (dict(block=48), "block"),
    ]:
        with pytest.raises(ValueError, match=word):
            dot_exact(c, s, "e4m3", c, s, "e4m3", **kw)
    with pytest.raises(ValueError, match="b_scales"):
        dot_exact(c, s, "e4m3", c, s[:, :1], "e4m3")
    with pytest.raises(ValueError, match="fmt must be one of"):
        dot_exact(c, s, "fp8", c, s, "e4m3")
    with pytest.raises(ValueError, match="e5m2 x e5m2"):
        dot_exact(c, s, "e5m2", c, s, "e5m2")
    s_nan = s.clone()
    s_nan[1, 1] = 255
    with pytest.raises(ValueError, match="NaN"):
        dot_exact(c, s_nan, "e4m3", c, s, "e4m3")
    c1 = torch.full((2, 64), 0x38, dtype=torch.uint8)  # 1.0 in e4m3
    acc, ovf = dot_exact(c1, s_nan, "e4m3", c1, s, "e4m3", nan_ok=True, acc_frac=4)
    assert acc.tolist() == [64 * 16, 0] and ovf.tolist() == [False, True]
    c_nan = c1.clone()
    c_nan[0, 3] = 0xFF
    with pytest.raises(ValueError, match="NaN"):
        dot_exact(c_nan, s, "e4m3", c1, s, "e4m3")
    c_inf = torch.zeros(2, 64, dtype=torch.uint8)
    c_inf[1, 0] = 0x7C  # +Inf in e5m2
    acc, ovf = dot_exact(c1, s, "e4m3", c_inf, s, "e5m2", nan_ok=True)
    assert ovf.tolist() == [False, True] and acc.tolist() == [0, 0]


@pytest.mark.parametrize("fx,fw", [("e2m1", "e2m1"), ("e4m3", "e4m3"), ("e5m2", "e4m3"), ("e3m2", "e2m3")])
def test_mx_matmul_matches_dot_exact(fx, fw, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 96, generator=g) * 3
    w = torch.randn(7, 96, generator=g)
    out, ovf = mx_matmul(x, w, fx, fw, return_overflow=True, chunk_elems=40)
    xc, xs = mx_quantize(x, fx)
    wc, ws = mx_quantize(w, fw)
    acc, ovf_ref = dot_exact(xc[..., None, :], xs[..., None, :], fx, wc, ws, fw)
    assert out.dtype == torch.float64 and out.shape == (2, 5, 7)
    assert torch.equal(out, acc_to_float(acc, 24)) and torch.equal(ovf, ovf_ref)
    ref = mx_dequantize(xc, xs, fx).double() @ mx_dequantize(wc, ws, fw).double().T
    assert (out - ref).abs().max() <= 96 / 32 * 2.0**-24 + 1e-12
    with pytest.raises(ValueError, match="NaN"):
        x2 = x.clone()
        x2[0, 0, 0] = math.nan
        mx_matmul(x2, w, fx, fw)


# ----------------------------------------------------------------------------------------------
# Dual format, Hadamard
# ----------------------------------------------------------------------------------------------


def test_dual_format(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.gelu(torch.randn(8, 128, generator=g) * 3)
    x[0, :32] = torch.linspace(-0.1, 0.0, 32)
    x[0, 5] = 40.0  # a big positive must not change the negative side's scale
    x[1, 7] = -0.0
    nc, ns, pc, ps = dual_quantize(x)
    assert nc.shape == pc.shape == x.shape and ns.shape == ps.shape == (8, 4)
    neg_only = torch.where(x < 0, x, torch.zeros_like(x))
    pos_only = torch.where(x > 0, x, torch.zeros_like(x))
    assert torch.equal(ns, mx_quantize(neg_only, "e1m2")[1]) and torch.equal(nc, mx_quantize(neg_only, "e1m2")[0])
    assert torch.equal(ps, mx_quantize(pos_only, "e2m1")[1]) and torch.equal(pc, mx_quantize(pos_only, "e2m1")[0])
    assert int(ns[0, 0]) - 127 == -4  # floor(log2(0.1)) - emax(e1m2) = -4 - 0, despite the 40.0
    assert (pc & 0x8 == 0).all() and (nc[x >= 0] == 0).all() and (pc[x <= 0] == 0).all()
    assert nc[1, 7] == 0 and pc[1, 7] == 0
    assert ((nc[x < 0] & 0x8) != 0).all()  # negatives keep the sign, even when rounded to zero
    xh = dual_dequantize(nc, ns, pc, ps)
    assert torch.equal(xh, mx_dequantize(pc, ps, "e2m1") + mx_dequantize(nc, ns, "e1m2"))
    assert ((xh > 0) <= (x > 0)).all() and ((xh < 0) <= (x < 0)).all()
    # Error bound per side: max(half an ulp of the top binade, saturation gap 2^(emax+1) - max).
    Xn = (ns.double() - 127).repeat_interleave(32, -1)
    Xp = (ps.double() - 127).repeat_interleave(32, -1)
    bound = torch.where(x < 0, torch.exp2(Xn + 0 - 2) * 1.0, torch.maximum(torch.exp2(Xp + 2 - 1 - 1), torch.exp2(Xp) * 2))
    assert ((x.double() - xh.double()).abs() <= bound).all()
    xn = x.clone()
    xn[2, 3] = math.nan
    nc, ns, pc, ps = dual_quantize(xn)
    assert ns[2, 0] == 255 and ps[2, 0] == 255


def test_hadamard_matrix():
    for n in (1, 2, 8, 128):
        h = hadamard_matrix(n)
        i = torch.arange(n)
        pop = torch.tensor([bin(int(v)).count("1") for v in (i[:, None] & i[None, :]).reshape(-1)]).reshape(n, n)
        assert torch.allclose(h, torch.where(pop % 2 == 0, 1.0, -1.0).double() / math.sqrt(n), atol=0, rtol=1e-15)
        assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-13, rtol=0)
    for bad in (0, 3, 96, 2.0):
        with pytest.raises(ValueError, match="n must be"):
            hadamard_matrix(bad)


@pytest.mark.parametrize("group", [64, 128])
def test_group_hadamard_fold(group, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 256, generator=g, dtype=torch.float64)
    w = torch.randn(7, 256, generator=g, dtype=torch.float64)
    h = hadamard_matrix(group)
    B = torch.block_diag(*[h] * (256 // group))
    y = group_hadamard(x, group)
    assert torch.allclose(y, x @ B.T, atol=1e-12, rtol=0)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-12, rtol=0)
    wf = fold_hadamard_into_weight(w, group)
    assert torch.allclose(y @ wf.T, x @ w.T, atol=1e-11, rtol=0)
    with pytest.raises(ValueError, match="group"):
        group_hadamard(torch.zeros(2, 96), 64)
    with pytest.raises(ValueError, match="group"):
        group_hadamard(torch.zeros(2, 96), 48)
