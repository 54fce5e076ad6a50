"""golden.numerics.sort against independent references: numpy stable sorts, ml_dtypes, official-style VAR filtering."""

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from golden.numerics import sort as S

LENGTHS = [1, 2, 17, 255, 4096]
RADIX_BITS = [1, 2, 4, 8, 16]
PATTERNS = ["random", "tied", "constant", "ascending", "descending"]


def _keys(rng, pattern, rows, n, key_bits):
    """int64 keys in [0, 2**key_bits) with the requested structure."""
    top = 1 << key_bits
    if pattern == "random":
        a = rng.integers(0, top, size=(rows, n), dtype=np.int64)
    elif pattern == "tied":
        # a handful of distinct values, including both extremes, so every row is full of ties
        pool = np.unique(np.concatenate([[0, top - 1], rng.integers(0, top, size=3, dtype=np.int64)]))
        a = rng.choice(pool, size=(rows, n))
    elif pattern == "constant":
        a = np.full((rows, n), rng.integers(0, top, dtype=np.int64), dtype=np.int64)
    else:
        a = np.sort(rng.integers(0, top, size=(rows, n), dtype=np.int64), axis=-1)
        if pattern == "descending":
            a = a[:, ::-1].copy()
    return a


def _np_sort(keys, descending):
    """Reference: numpy stable argsort; descending = ascending on the negated key (still stable)."""
    return np.argsort(-keys if descending else keys, axis=-1, kind="stable")


# ---------------------------------------------------------------- key encodings


def _all_16bit_patterns(dtype):
    bits = np.arange(1 << 16, dtype=np.uint16)
    np_dtype = np.float16 if dtype == torch.float16 else ml_dtypes.bfloat16
    with np.errstate(invalid="ignore"):  # signalling-NaN patterns
        values = bits.view(np_dtype).astype(np.float64)
    tensor = torch.from_numpy(bits.view(np.int16).copy()).view(dtype)
    return tensor, values


def _check_order_isomorphism(keys, values):
    """keys order the non-NaN values exactly: sorted by key, values never decrease, and equal
    keys occur exactly for equal values."""
    order = np.argsort(keys, kind="stable")
    k, v = keys[order], values[order]
    assert np.all(np.diff(v) >= 0)
    assert np.array_equal(np.diff(k) == 0, np.diff(v) == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float_to_key_exhaustive_16bit(dtype):
    tensor, values = _all_16bit_patterns(dtype)
    keys = S.float_to_key(tensor).numpy()
    nan = np.isnan(values)
    assert keys.min() >= 0 and keys.max() < 1 << 16
    assert np.all(keys[nan] == 0) and np.all(keys[~nan] > 0)
    _check_order_isomorphism(keys[~nan], values[~nan])
    # the only tie among numbers is -0 / +0, and it sits at the sign bit
    assert len(np.unique(keys[~nan])) == (~nan).sum() - 1
    zeros = S.float_to_key(torch.tensor([0.0, -0.0], dtype=dtype))
    assert zeros.tolist() == [1 << 15, 1 << 15]


def test_float_to_key_float32(seed):
    rng = np.random.default_rng(seed)
    tiny = np.finfo(np.float32).tiny
    specials = np.array(
        [0.0, -0.0, np.inf, -np.inf, tiny, -tiny, np.float32(1e-45), -np.float32(1e-45),
         tiny * (1 - 2.0**-23), -tiny * (1 - 2.0**-23), np.finfo(np.float32).max, -np.finfo(np.float32).max,
         1.0, -1.0], dtype=np.float32)
    raw = rng.integers(0, 1 << 32, size=200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([specials, raw])
    with np.errstate(invalid="ignore"):  # signalling-NaN patterns
        values = x.astype(np.float64)
    keys = S.float_to_key(torch.from_numpy(x.copy())).numpy()
    nan = np.isnan(values)
    assert np.all(keys[nan] == 0) and np.all(keys[~nan] > 0) and keys.max() < 1 << 32
    _check_order_isomorphism(keys[~nan], values[~nan])
    # the two zeros tie; Inf sits at the ends of the number range
    assert keys[0] == keys[1] == 1 << 31
    assert keys[2] == keys[~nan].max() and keys[3] == keys[~nan].min()


def test_float_to_key_nan_modes():
    payloads = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF], dtype=np.uint32)
    nans = torch.from_numpy(payloads.view(np.float32).copy())
    assert S.float_to_key(nans).tolist() == [0, 0, 0, 0]
    neg_inf = S.float_to_key(torch.tensor([-math.inf]))
    assert int(neg_inf) > 0  # NaN strictly below -Inf
    with pytest.raises(ValueError, match="nan"):
        S.float_to_key(torch.tensor([1.0, math.nan]), nan="raise")
    assert S.float_to_key(torch.tensor([1.0]), nan="raise").tolist() == [0xBF800000]
    with pytest.raises(ValueError, match="nan"):
        S.float_to_key(torch.tensor([1.0]), nan="first")
    with pytest.raises(ValueError, match="x"):
        S.float_to_key(torch.tensor([1.0], dtype=torch.float64))


@pytest.mark.parametrize("width", [1, 3, 8, 16, 32, 63])
@pytest.mark.parametrize("signed", [False, True])
def test_int_to_key(seed, width, signed):
    rng = np.random.default_rng(seed)
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
    x = np.concatenate([[lo, hi, lo, hi], rng.integers(lo, hi, size=2000, endpoint=True, dtype=np.int64)])
    if signed:
        x = np.concatenate([x, [0, -1]])
    keys = S.int_to_key(torch.from_numpy(x), width, signed).numpy()
    assert keys.min() >= 0 and keys.max() < 1 << width
    assert keys[0] == 0 and keys[1] == (1 << width) - 1
    _check_order_isomorphism(keys, x.astype(object))
    for bad in (hi + 1, lo - 1):
        if -(1 << 63) <= bad < 1 << 63:  # else not even an int64 tensor
            with pytest.raises(ValueError, match="x"):
                S.int_to_key(torch.tensor([bad]), width, signed)


def test_int_to_key_signed_is_offset_binary():
    x = torch.tensor([-128, -1, 0, 1, 127])
    assert S.int_to_key(x, 8, True).tolist() == [0x00, 0x7F, 0x80, 0x81, 0xFF]
    # offset binary = two's complement with its sign bit flipped
    assert S.int_to_key(x, 8, True).tolist() == [((v & 0xFF) ^ 0x80) for v in x.tolist()]
    for bad in (0, 64):
        with pytest.raises(ValueError, match="width"):
            S.int_to_key(x, bad, True)


@pytest.mark.parametrize("width,key_bits", [(16, 8), (16, 16), (32, 12), (32, 1), (8, 3)])
def test_truncate_key_and_its_ties(seed, width, key_bits):
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 1 << width, size=(3, 1000), dtype=np.int64)
    t = S.truncate_key(torch.from_numpy(keys), width, key_bits)
    expected = keys // (1 << (width - key_bits))
    assert np.array_equal(t.numpy(), expected)
    # monotone: sorting by the truncated key never reverses the full-key order of two entries
    # it separates, and merged keys are ties resolved by index in both directions
    for desc in (False, True):
        got = S.sort(t, descending=desc, key_bits=key_bits, radix_bits=4).numpy()
        assert np.array_equal(got, _np_sort(expected, desc))
    for bad in (0, width + 1):
        with pytest.raises(ValueError, match="key_bits"):
            S.truncate_key(t, width, bad)


# ---------------------------------------------------------------- radix sort


def test_radix_passes():
    assert S.radix_passes(32, 8) == 4
    assert S.radix_passes(16, 16) == 1
    assert S.radix_passes(32, 16) == 2
    assert S.radix_passes(7, 3) == 3
    assert S.radix_passes(1, 16) == 1
    assert S.radix_passes(63, 1) == 63
    with pytest.raises(ValueError, match="radix_bits"):
        S.radix_passes(32, 0)
    with pytest.raises(ValueError, match="radix_bits"):
        S.radix_passes(32, 17)
    with pytest.raises(ValueError, match="key_bits"):
        S.radix_passes(64, 8)


@pytest.mark.parametrize("radix_bits", [1, 3, 8])
def test_counting_sort_pass_is_stable_digit_sort(seed, radix_bits):
    rng = np.random.default_rng(seed)
    for n in (1, 5, 300, 4096):
        digits = rng.integers(0, 1 << radix_bits, size=(2, n), dtype=np.int64)
        perm = S.counting_sort_pass(torch.from_numpy(digits), radix_bits).numpy()
        assert np.array_equal(perm, np.argsort(digits, axis=-1, kind="stable"))


@pytest.mark.parametrize("radix_bits", RADIX_BITS)
@pytest.mark.parametrize("key_bits", [5, 16, 32])
def test_sort_matches_numpy_stable(seed, radix_bits, key_bits):
    rng = np.random.default_rng(seed)
    for pattern in PATTERNS:
        for n in LENGTHS:
            rows = 2 if n == 4096 else 3
            keys = _keys(rng, pattern, rows, n, key_bits)
            kt = torch.from_numpy(keys)
            for desc in (False, True):
                got = S.sort(kt, descending=desc, key_bits=key_bits, radix_bits=radix_bits)
                assert got.dtype == torch.int64 and got.shape == kt.shape
                assert np.array_equal(got.numpy(), _np_sort(keys, desc)), (pattern, n, desc)


def test_sort_wide_keys_and_shapes(seed):
    rng = np.random.default_rng(seed)
    keys = _keys(rng, "random", 4, 100, 63).reshape(2, 2, 100)
    keys[0, 0, :10] = keys[0, 0, 50]  # ties among 63-bit keys
    for radix_bits in (1, 7, 16):
        for desc in (False, True):
            got = S.sort(torch.from_numpy(keys), descending=desc, key_bits=63, radix_bits=radix_bits)
            assert np.array_equal(got.numpy(), _np_sort(keys, desc))
    empty = S.sort(torch.zeros(3, 0, dtype=torch.int64))
    assert empty.shape == (3, 0)


def test_descending_is_not_reversed_ascending():
    keys = torch.tensor([5, 7, 5, 7, 5])
    assert S.sort(keys, key_bits=3).tolist() == [0, 2, 4, 1, 3]
    assert S.sort(keys, descending=True, key_bits=3).tolist() == [1, 3, 0, 2, 4]


def _float_reference(values, descending):
    """Stable order by float value independent of the key trick: NaN below every number,
    -0 == +0 (numpy compares them equal); np.lexsort is stable."""
    nan = np.isnan(values)
    filled = np.where(nan, 0.0, values)
    if descending:
        return np.lexsort((-filled, nan), axis=-1)
    return np.lexsort((filled, ~nan), axis=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("radix_bits", [2, 8, 16])
def test_sort_floats_with_specials(seed, dtype, radix_bits):
    g = torch.Generator().manual_seed(seed)
    width = 32 if dtype == torch.float32 else 16
    finfo = torch.finfo(dtype)
    specials = torch.tensor(
        [0.0, -0.0, math.inf, -math.inf, math.nan, -math.nan, finfo.tiny, -finfo.tiny,
         finfo.tiny / 4, -finfo.tiny / 4, finfo.max, -finfo.max, 1.0, -1.0], dtype=torch.float32).to(dtype)
    for n in (1, 9, 1000, 4096):
        rows = 2
        x = (torch.randn(rows, n, generator=g) * 3).to(dtype)
        # sprinkle specials (several copies each, so they tie) and subnormals
        pos = torch.randint(0, n, (rows, max(1, n // 8)), generator=g)
        pick = torch.randint(0, len(specials), pos.shape, generator=g)
        x.scatter_(1, pos, specials[pick])
        sub = torch.rand(rows, n, generator=g) < 0.05
        x = torch.where(sub, (torch.randn(rows, n, generator=g) * finfo.tiny / 2).to(dtype), x)
        values = x.float().numpy().astype(np.float64)
        keys = S.float_to_key(x)
        for desc in (False, True):
            got = S.sort(keys, descending=desc, key_bits=width, radix_bits=radix_bits).numpy()
            assert np.array_equal(got, _float_reference(values, desc)), (n, desc)


def test_sort_bad_parameters():
    k = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="radix_bits"):
        S.sort(k, radix_bits=0)
    with pytest.raises(ValueError, match="radix_bits"):
        S.sort(k, radix_bits=17)
    with pytest.raises(ValueError, match="key_bits"):
        S.sort(k, key_bits=0)
    with pytest.raises(ValueError, match="key_bits"):
        S.sort(k, key_bits=64)
    with pytest.raises(ValueError, match="keys"):
        S.sort(torch.tensor([8]), key_bits=3)
    with pytest.raises(ValueError, match="keys"):
        S.sort(torch.tensor([-1]), key_bits=3)
    with pytest.raises(ValueError, match="keys"):
        S.sort(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="keys"):
        S.sort(torch.tensor(3))


# ---------------------------------------------------------------- radix select / top-k


@pytest.mark.parametrize("key_bits,radix_bits", [(7, 3), (16, 1), (16, 4), (32, 8), (32, 16), (63, 16)])
def test_radix_select_every_k(seed, key_bits, radix_bits):
    rng = np.random.default_rng(seed)
    for pattern in ("random", "tied", "constant"):
        keys = _keys(rng, pattern, 3, 33, key_bits)
        desc = -np.sort(-keys, axis=-1)
        ks = {1, 2, 3, 16, 17, 31, 32, 33} | set(rng.integers(1, 34, size=6).tolist())
        for k in sorted(ks):
            thr, above = S.radix_select(torch.from_numpy(keys), k, key_bits, radix_bits)
            assert np.array_equal(thr.numpy(), desc[:, k - 1])
            assert np.array_equal(above.numpy(), (keys > desc[:, k - 1:k]).sum(-1))


def _np_topk(keys, k):
    return _np_sort(keys, True)[..., :k]


@pytest.mark.parametrize("radix_bits", [1, 4, 8, 16])
def test_topk_matches_numpy(seed, radix_bits):
    rng = np.random.default_rng(seed)
    cases = [(n, k) for n in (1, 2, 17, 300) for k in sorted({1, n // 2 or 1, n})]
    cases += [(4096, 900), (4096, 1), (4096, 4096)]
    for pattern in ("random", "tied", "constant", "descending"):
        for n, k in cases:
            keys = _keys(rng, pattern, 2, n, 16)
            kt = torch.from_numpy(keys)
            ref = _np_topk(keys, k)
            got = S.topk(kt, k, key_bits=16, radix_bits=radix_bits)
            assert got.shape == (2, k) and np.array_equal(got.numpy(), ref), (pattern, n, k)
            unordered = S.topk(kt, k, sorted=False, key_bits=16, radix_bits=radix_bits)
            assert np.array_equal(unordered.numpy(), np.sort(ref, axis=-1)), (pattern, n, k)


def test_topk_float_logits_with_nan(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4096, generator=g)
    x[:, ::7] = math.nan
    x[:, 5] = -math.inf
    keys = S.float_to_key(x)
    got = S.topk(keys, 900).numpy()
    assert not np.isnan(x.numpy()[np.arange(3)[:, None], got]).any()  # NaN goes last
    ref = _float_reference(x.numpy().astype(np.float64), True)[:, :900]
    assert np.array_equal(got, ref)
    everything = S.topk(keys, 4096).numpy()
    assert np.isnan(x.numpy()[np.arange(3)[:, None], everything[:, -(4096 // 7 + 1):]]).all()


def test_topk_k_rules():
    keys = torch.tensor([[3, 1, 2], [0, 0, 1]])
    assert S.topk(keys, 0).shape == (2, 0)
    assert S.topk(keys, 0, sorted=False).shape == (2, 0)
    for bad in (4, -1):
        with pytest.raises(ValueError, match="k"):
            S.topk(keys, bad)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="k"):
            S.radix_select(keys, bad)
    with pytest.raises(ValueError, match="k"):
        S.topk(keys, 1.5)
    assert S.topk(keys, 3, key_bits=2).tolist() == [[0, 2, 1], [2, 0, 1]]
    assert S.clamp_k(0, 5) == (0, S.STATUS_K_ZERO)
    assert S.clamp_k(3, 5) == (3, S.STATUS_OK)
    assert S.clamp_k(5, 5) == (5, S.STATUS_OK)
    assert S.clamp_k(9, 5) == (5, S.STATUS_K_CLAMPED)
    with pytest.raises(ValueError, match="n"):
        S.clamp_k(1, 0)
    with pytest.raises(ValueError, match="k"):
        S.clamp_k(-1, 4)


# ---------------------------------------------------------------- VAR top-k / top-p filter


def _official_style_kept(logits_BlV, top_k, top_p):
    """Independent re-implementation of VAR's sample_with_top_k_top_p_ filtering (the part before
    multinomial), written the official way with torch.topk / torch.sort; True = kept. The sort
    is asked to be stable: the official default (stable=False) may permute equal logits, which
    leaves its choice among logits tied across the top-p cut unspecified."""
    logits = logits_BlV.clone()
    removed = torch.zeros_like(logits, dtype=torch.bool)
    if top_k > 0:
        idx_to_remove = logits < logits.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits.masked_fill_(idx_to_remove, -torch.inf)
        removed |= idx_to_remove
    if top_p > 0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False, stable=True)
        sorted_idx_to_remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        sorted_idx_to_remove[..., -1:] = False
        idx = sorted_idx_to_remove.scatter(sorted_idx.ndim - 1, sorted_idx, sorted_idx_to_remove)
        logits.masked_fill_(idx, -torch.inf)
        removed |= idx
    return ~removed


@pytest.mark.parametrize("top_k", [0, 1, 5, 900])
@pytest.mark.parametrize("top_p", [0.0, 0.5, 0.95])
def test_topk_topp_mask_matches_official(seed, top_k, top_p):
    g = torch.Generator().manual_seed(seed)
    for temperature in (0.3, 1.0, 4.0):
        logits = torch.randn(2, 4, 4096, generator=g) * temperature
        # a quantized copy is full of ties at the top-k threshold and across the top-p cut
        tied = torch.round(logits * 2) / 2
        for x in (logits, tied):
            got = S.topk_topp_mask(x, top_k, top_p)
            ref = _official_style_kept(x, top_k, top_p)
            assert got.dtype == torch.bool and torch.equal(got, ref), temperature
            if top_k > 0:
                assert (got.sum(-1) >= 1).all() and (got.sum(-1) <= (x >= torch.topk(x, top_k).values[..., -1:]).sum(-1)).all()


def test_topk_topp_mask_ties_and_edges():
    # every entry tied with the k-th value survives top-k, as in the official code
    x = torch.tensor([[1.0, 3.0, 2.0, 2.0, 2.0, 0.0]])
    assert S.topk_topp_mask(x, 2, 0.0).tolist() == [[False, True, True, True, True, False]]
    # -0 and +0 tie at the threshold
    z = torch.tensor([[-0.0, 1.0, 0.0, -1.0]])
    assert S.topk_topp_mask(z, 2, 0.0).tolist() == [[True, True, True, False]]
    # of logits tied at the maximum, a tiny top_p keeps only the highest index (official, stable sort)
    t = torch.tensor([[5.0, 0.0, 5.0, 5.0, -1.0]])
    assert S.topk_topp_mask(t, 0, 0.01).tolist() == [[False, False, False, True, False]]
    assert torch.equal(S.topk_topp_mask(t, 0, 0.01), _official_style_kept(t, 0, 0.01))
    # both filters off: everything kept; top_k = V: everything kept
    assert S.topk_topp_mask(x, 0, 0.0).all() and S.topk_topp_mask(x, 6, 0.0).all()
    with pytest.raises(ValueError, match="top_k"):
        S.topk_topp_mask(x, 7, 0.0)
    with pytest.raises(ValueError, match="top_k"):
        S.topk_topp_mask(x, -1, 0.0)
    with pytest.raises(ValueError, match="top_p"):
        S.topk_topp_mask(x, 0, 1.5)
    with pytest.raises(ValueError, match="logits_BlV"):
        S.topk_topp_mask(torch.tensor([[1.0, math.nan]]), 1, 0.0)
    with pytest.raises(ValueError, match="logits_BlV"):
        S.topk_topp_mask(x.double(), 1, 0.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_topk_topp_mask_half_logits(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(3, 4096, generator=g) * 2).to(dtype)
    for top_k, top_p in ((900, 0.0), (5, 0.0), (900, 0.95), (0, 0.5)):
        got = S.topk_topp_mask(x, top_k, top_p)
        # top-k alone compares in the half type; top-p is the float32 arithmetic on exact values
        ref = _official_style_kept(x if top_p == 0 else x.float(), top_k, top_p)
        assert torch.equal(got, ref), (top_k, top_p)


def test_sample_from_mask(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 8, 4096, generator=g)
    mask = S.topk_topp_mask(logits, 900, 0.95)
    drawn = S.sample_from_mask(logits, mask, torch.Generator().manual_seed(seed))
    assert drawn.shape == (2, 8)
    assert mask.gather(-1, drawn.unsqueeze(-1)).all()
    again = S.sample_from_mask(logits, mask, torch.Generator().manual_seed(seed))
    assert torch.equal(drawn, again)
    only = torch.zeros_like(mask)
    only[..., 17] = True
    assert (S.sample_from_mask(logits, only, g) == 17).all()
    with pytest.raises(ValueError, match="mask"):
        S.sample_from_mask(logits, torch.zeros_like(mask), g)
