"""Bit-exact model of the radix sort / top-k core (hw/sort): key encoding, LSD radix sort, MSD radix select, VAR top-k/top-p."""

# Conventions the RTL must follow (every function below is the contract for one of them):
#
# * Keys are unsigned integers of ``key_bits`` bits held in int64 tensors. Floats and signed
#   integers are mapped to keys by order-preserving encodings (``float_to_key``,
#   ``int_to_key``); the core itself only ever compares unsigned keys.
# * -0.0 and +0.0 get the same key (they are equal numbers, so they are ties).
# * NaN gets key 0, below -Inf (``nan="last"``): a descending sort or a top-k puts NaN last,
#   so a NaN logit is never sampled ahead of a real one.
# * Ties go to the lower index, in ascending AND descending order: descending is a sort of the
#   complemented key, not a reversed ascending sort.
# * Sorting is an LSD radix sort of ceil(key_bits / radix_bits) stable counting-sort passes;
#   digit p is bits [p*R, (p+1)*R) of the key, so only the most significant digit can be short.
# * Top-k is an MSD radix select over the same digits, then one emission pass: every key above
#   the threshold, plus the lowest-index keys equal to it until k are out.

import math

import torch

__all__ = [
    "STATUS_OK",
    "STATUS_K_ZERO",
    "STATUS_K_CLAMPED",
    "float_to_key",
    "int_to_key",
    "truncate_key",
    "radix_passes",
    "counting_sort_pass",
    "sort",
    "radix_select",
    "topk",
    "clamp_k",
    "topk_topp_mask",
    "sample_from_mask",
]

#: ``clamp_k`` status: k was in range.
STATUS_OK = 0
#: ``clamp_k`` status: k == 0, the core emits no data beats, only its status word.
STATUS_K_ZERO = 1
#: ``clamp_k`` status: k > n, the core emitted all n entries.
STATUS_K_CLAMPED = 2

# (raw-bit view dtype, key width) per supported float dtype.
_FLOAT_FORMATS = {
    torch.float32: (torch.int32, 32),
    torch.float16: (torch.int16, 16),
    torch.bfloat16: (torch.int16, 16),
}

_MAX_KEY_BITS = 63  # unsigned keys must stay non-negative in int64
_MAX_RADIX_BITS = 16  # 2**16 histogram counters per pass is already far beyond an FPGA's BRAM budget


def _check_width(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def _check_keys(keys, key_bits, name="keys"):
    if not isinstance(keys, torch.Tensor) or keys.dtype != torch.int64:
        raise ValueError(f"{name} must be an int64 tensor of unsigned keys")
    if keys.dim() < 1:
        raise ValueError(f"{name} must have at least 1 dimension (sorted along the last)")
    if keys.numel() and (int(keys.min()) < 0 or int(keys.max()) >= 1 << key_bits):
        raise ValueError(f"{name} must lie in [0, 2**{key_bits} - 1] for key_bits={key_bits}")


def float_to_key(x, nan="last"):
    """Map a float32, float16 or bfloat16 tensor to order-preserving unsigned keys.

    Returns an int64 tensor of the same shape: 32-bit keys for float32, 16-bit keys for float16
    and bfloat16. For non-NaN a, b: ``a < b`` iff ``key(a) < key(b)`` and ``a == b`` iff
    ``key(a) == key(b)``; in particular -0.0 and +0.0 share the key of +0.0 (``1 << (W-1)``).
    The encoding is the sign-flip trick on the raw bits: a negative number has all W bits
    inverted, a non-negative one gets its sign bit set. Subnormals and +-Inf need no special
    case.

    NaN (any sign, any payload): ``nan="last"`` maps it to key 0, strictly below -Inf, so a
    descending sort or a top-k emits NaN after every number (and an ascending sort first);
    ``nan="raise"`` raises ValueError instead.
    """
    if not isinstance(x, torch.Tensor) or x.dtype not in _FLOAT_FORMATS:
        raise ValueError("x must be a float32, float16 or bfloat16 tensor")
    if nan not in ("last", "raise"):
        raise ValueError(f"nan must be 'last' or 'raise', got {nan!r}")
    is_nan = torch.isnan(x)
    if nan == "raise" and bool(is_nan.any()):
        raise ValueError("x contains NaN and nan='raise'")
    view_dtype, width = _FLOAT_FORMATS[x.dtype]
    mask = (1 << width) - 1
    sign = 1 << (width - 1)
    bits = x.contiguous().view(view_dtype).to(torch.int64) & mask
    # -0.0 is the lone negative bit pattern equal to a non-negative number: fold it onto +0.0
    # before encoding so that the two compare as ties.
    bits = torch.where(bits == sign, torch.zeros_like(bits), bits)
    key = torch.where(bits & sign != 0, bits ^ mask, bits | sign)
    # Key 0 is otherwise only produced by the all-ones bit pattern, itself a NaN.
    return torch.where(is_nan, torch.zeros_like(key), key)


def int_to_key(x, width, signed):
    """Map a tensor of ``width``-bit integers to order-preserving unsigned ``width``-bit keys.

    Unsigned values (``signed=False``, range [0, 2**width - 1]) are their own keys; signed
    values (range [-2**(width-1), 2**(width-1) - 1]) use offset binary: the two's-complement
    pattern with its sign bit flipped, i.e. ``x + 2**(width-1)``. Width is 1..63; values out
    of range raise ValueError naming ``x``.
    """
    _check_width("width", width, 1, _MAX_KEY_BITS)
    if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError("x must be an integer tensor")
    x = x.to(torch.int64)
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
    if x.numel() and (int(x.min()) < lo or int(x.max()) > hi):
        raise ValueError(f"x must lie in [{lo}, {hi}] for width={width}, signed={bool(signed)}")
    return x + (1 << (width - 1)) if signed else x.clone()


def truncate_key(keys, width, key_bits):
    """Keep the top ``key_bits`` bits of ``width``-bit keys: what a core with narrower keys sees.

    ``1 <= key_bits <= width <= 63``. Truncation is monotone (never reverses an order) but
    merges keys that differ only in the dropped low bits; those become ties and, like all
    ties, go to the lower index first in both sort directions and in top-k. For float keys
    this compares the numbers with their low mantissa bits dropped.
    """
    _check_width("width", width, 1, _MAX_KEY_BITS)
    _check_width("key_bits", key_bits, 1, width)
    _check_keys(keys, width)
    return keys >> (width - key_bits)


def radix_passes(key_bits, radix_bits):
    """Number of LSD counting-sort passes (= MSD select steps): ceil(key_bits / radix_bits)."""
    _check_width("key_bits", key_bits, 1, _MAX_KEY_BITS)
    _check_width("radix_bits", radix_bits, 1, _MAX_RADIX_BITS)
    return -(-key_bits // radix_bits)


def _rank_in_bucket(d, radix_bits, base):
    """For each element, how many earlier elements of its row have the same digit.

    This is the per-bucket write counter of the hardware scatter; ``d`` is (rows, n), ``base``
    the per-row bucket base addresses. Up to 16 buckets it is a one-hot running count (rows *
    buckets * n small counters). Wider digits would make that huge, so their stable order is
    built from two half-width stable passes instead (a stable sort by a digit is unique,
    however it is computed) and the rank read back as position - base. Rows of at most 64
    elements simply compare all pairs.
    """
    m, n = d.shape
    buckets = 1 << radix_bits
    if n > 64 and radix_bits > 4:
        lo_bits = radix_bits // 2
        by_lo = _counting_sort(d & ((1 << lo_bits) - 1), lo_bits)
        by_hi = _counting_sort((d >> lo_bits).gather(1, by_lo), radix_bits - lo_bits)
        order = by_lo.gather(1, by_hi)
        dest = torch.empty_like(d).scatter_(1, order, torch.arange(n, dtype=torch.int64).expand_as(d))
        return dest - base.gather(1, d)
    out = torch.empty_like(d)
    one_hot = n > 64
    chunk = max(1, (1 << 24) // max(1, n * (buckets if one_hot else n)))
    for r0 in range(0, m, chunk):
        rows = d[r0:r0 + chunk]
        if one_hot:
            # (rows, bucket, element): the running count runs along contiguous memory
            hits = rows.unsqueeze(-2) == torch.arange(buckets).unsqueeze(-1)
            # inclusive, so the element itself counts once; the narrowest counter that holds n
            running = hits.cumsum(dim=-1, dtype=torch.int16 if n < 1 << 15 else torch.int32)
            out[r0:r0 + chunk] = running.gather(1, rows.unsqueeze(1)).squeeze(1).to(torch.int64) - 1
        else:
            earlier = torch.arange(n).unsqueeze(0) < torch.arange(n).unsqueeze(1)  # [i, j]: j < i
            same = (rows.unsqueeze(-1) == rows.unsqueeze(-2)) & earlier
            out[r0:r0 + chunk] = same.sum(dim=-1)
    return out


def _counting_sort(d, radix_bits):
    """Stable counting sort of (rows, n) digits, unchecked: see ``counting_sort_pass``."""
    n = d.shape[1]
    hist = torch.zeros(d.shape[0], 1 << radix_bits, dtype=torch.int64).scatter_add_(1, d, torch.ones_like(d))
    base = hist.cumsum(dim=1) - hist  # exclusive prefix sum: each bucket's first address
    dest = base.gather(1, d) + _rank_in_bucket(d, radix_bits, base)
    return torch.empty_like(d).scatter_(1, dest, torch.arange(n, dtype=torch.int64).expand_as(d))


def counting_sort_pass(digits, radix_bits):
    """One stable counting-sort pass: the permutation that sorts ``digits`` along the last dim.

    ``digits`` is int64 in [0, 2**radix_bits). Returns int64 ``perm`` with ``perm[..., j]`` =
    input position of output element j. Exactly the hardware pass: a histogram of the digits,
    its exclusive prefix sum as bucket base addresses, then each element, in input order, is
    written to base[digit] + (earlier elements with that digit): stable by construction.
    """
    _check_width("radix_bits", radix_bits, 1, _MAX_RADIX_BITS)
    _check_keys(digits, radix_bits, name="digits")
    shape = digits.shape
    if digits.numel() == 0:
        return torch.zeros(shape, dtype=torch.int64)
    return _counting_sort(digits.reshape(-1, shape[-1]), radix_bits).reshape(shape)


def sort(keys, descending=False, key_bits=32, radix_bits=8):
    """Stable sort of unsigned keys along the last dim; returns int64 indices.

    ``keys`` is int64 in [0, 2**key_bits) (1 <= key_bits <= 63, 1 <= radix_bits <= 16).
    Ties keep the lower index first in BOTH directions: descending order sorts the
    complemented key ``(2**key_bits - 1) - key`` ascending, so it is not the reverse of the
    ascending order when there are ties. The result is modelled pass by pass as the hardware
    runs: ``radix_passes(key_bits, radix_bits)`` LSD ``counting_sort_pass``es, least
    significant digit first; the stability of each pass makes the whole sort stable.
    """
    _check_width("key_bits", key_bits, 1, _MAX_KEY_BITS)
    _check_width("radix_bits", radix_bits, 1, _MAX_RADIX_BITS)
    _check_keys(keys, key_bits)
    if descending:
        keys = ((1 << key_bits) - 1) - keys
    shape = keys.shape
    n = shape[-1]
    if keys.numel() == 0:
        return torch.zeros(shape, dtype=torch.int64)
    flat = keys.reshape(-1, n)
    order = torch.arange(n, dtype=torch.int64).expand_as(flat).clone()
    digit_mask = (1 << radix_bits) - 1
    for p in range(radix_passes(key_bits, radix_bits)):
        digits = (flat.gather(1, order) >> (p * radix_bits)) & digit_mask
        order = order.gather(1, _counting_sort(digits, radix_bits))
    return order.reshape(shape)


def _check_k(k, n):
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"k must be an integer in [0, {n}] (the row length), got {k!r}")


def radix_select(keys, k, key_bits=32, radix_bits=8):
    """MSD radix select of the k-th largest key of each row (along the last dim).

    Returns ``(threshold, n_above)``, int64 tensors of shape ``keys.shape[:-1]``: the k-th
    largest key (counting duplicates) and how many keys are strictly greater than it
    (``n_above < k <= n_above + count(key == threshold)``). ``1 <= k <= N``, else ValueError
    naming k. Hardware steps, most significant digit first (same digit boundaries as ``sort``,
    so the top digit may be short): histogram the current digit over the still-candidate
    keys, scan buckets from the top to the one where the running count reaches the remaining
    k, add the count above that bucket to n_above, and keep only that bucket's keys.
    """
    _check_width("key_bits", key_bits, 1, _MAX_KEY_BITS)
    _check_width("radix_bits", radix_bits, 1, _MAX_RADIX_BITS)
    _check_keys(keys, key_bits)
    n = keys.shape[-1]
    _check_k(k, n)
    if k == 0:
        raise ValueError(f"k must be an integer in [1, {n}] for radix_select, got 0")
    flat = keys.reshape(-1, n)
    m = flat.shape[0]
    buckets = 1 << radix_bits
    candidate = torch.ones_like(flat, dtype=torch.bool)
    k_left = torch.full((m,), k, dtype=torch.int64)
    n_above = torch.zeros(m, dtype=torch.int64)
    threshold = torch.zeros(m, dtype=torch.int64)
    passes = radix_passes(key_bits, radix_bits)
    for p in reversed(range(passes)):
        shift = p * radix_bits
        digits = (flat >> shift) & (buckets - 1)
        hist = torch.zeros(m, buckets, dtype=torch.int64).scatter_add_(1, digits, candidate.to(torch.int64))
        k_total = candidate.sum(dim=1)
        # keys at or above each bucket = candidates - keys below it (an exclusive prefix sum)
        at_or_above = k_total.unsqueeze(1) - (hist.cumsum(dim=1) - hist)
        # at_or_above is non-increasing in the bucket, so the buckets that still hold k_left
        # keys at or above them form a prefix; the selected bucket is its last one.
        chosen = (at_or_above >= k_left.unsqueeze(1)).sum(dim=1) - 1
        above = (at_or_above.gather(1, chosen.unsqueeze(1)) - hist.gather(1, chosen.unsqueeze(1))).squeeze(1)
        n_above += above
        k_left -= above
        threshold |= chosen << shift
        candidate &= digits == chosen.unsqueeze(1)
    return threshold.reshape(keys.shape[:-1]), n_above.reshape(keys.shape[:-1])


def topk(keys, k, sorted=True, key_bits=32, radix_bits=8):
    """Indices of the k largest keys of each row (along the last dim), shape ``(..., k)``.

    Ties go to the lower index: the emitted set is every key above the ``radix_select``
    threshold plus the lowest-index ``k - n_above`` keys equal to it. ``sorted=True`` orders
    that set by descending key, ties lower index first (what ``sort(descending=True)[..., :k]``
    gives); ``sorted=False`` emits the same set in ascending index order, which is what the
    unordered hardware mode streams out in its single pass over the input.

    ``0 <= k <= N``: k == 0 returns an empty ``(..., 0)`` tensor, k > N or k < 0 raises
    ValueError naming k. The hardware cannot raise: it follows ``clamp_k``.
    """
    _check_width("key_bits", key_bits, 1, _MAX_KEY_BITS)
    _check_width("radix_bits", radix_bits, 1, _MAX_RADIX_BITS)
    _check_keys(keys, key_bits)
    n = keys.shape[-1]
    _check_k(k, n)
    if k == 0:
        return torch.empty(*keys.shape[:-1], 0, dtype=torch.int64)
    threshold, n_above = radix_select(keys, k, key_bits, radix_bits)
    threshold, n_above = threshold.unsqueeze(-1), n_above.unsqueeze(-1)
    tied = keys == threshold
    # inclusive running count of ties: the first (k - n_above) of them, by index, are emitted
    chosen = (keys > threshold) | (tied & (tied.cumsum(dim=-1) <= k - n_above))
    index = torch.arange(n, dtype=torch.int64).expand_as(keys)
    # exactly k per row, and boolean indexing walks rows in index order
    unordered = index[chosen].reshape(*keys.shape[:-1], k)
    if not sorted:
        return unordered
    # a stable sort of the selected keys keeps tied entries in their (ascending) index order
    order = sort(keys.gather(-1, unordered), descending=True, key_bits=key_bits, radix_bits=radix_bits)
    return unordered.gather(-1, order)


def clamp_k(k, n):
    """Recommended hardware rule for a k register outside [1, n]: returns ``(k_eff, status)``.

    The Python API raises on k > n; the core cannot, and a stream cannot carry a zero-length
    packet. So: k == 0 -> ``(0, STATUS_K_ZERO)``, the core emits no data beats for that
    request, only its status word; k > n -> ``(n, STATUS_K_CLAMPED)``, the core emits all n
    entries (the packet's last beat is the n-th) and flags the status word; otherwise
    ``(k, STATUS_OK)``. ``n >= 1``, ``k >= 0`` (a register is unsigned).
    """
    _check_width("n", n, 1, 1 << 62)
    _check_width("k", k, 0, 1 << 62)
    if k == 0:
        return 0, STATUS_K_ZERO
    if k > n:
        return n, STATUS_K_CLAMPED
    return k, STATUS_OK


def topk_topp_mask(logits_BlV, top_k, top_p, radix_bits=8, topk_fn=None):
    """Vocabulary entries kept by VAR's top-k / top-p filter: bool tensor, True = kept.

    Matches the official FoundationVision/VAR ``sample_with_top_k_top_p_`` (models/helpers.py)
    entry for entry on float32 logits of any shape ``(..., V)`` (top_k > V, which the official
    ``topk`` call rejects, raises ValueError naming top_k):

    * ``top_k`` in [0, V], 0 disables it. Kept: every logit >= the k-th largest, so ALL entries
      tied with the k-th value are kept (more than k may survive), as the official
      ``logits < topk(...).amin()`` test does. Ours takes that threshold from ``radix_select``
      and compares keys.
    * ``top_p`` in [0, 1], 0 disables it. On the top-k survivors (others set to -Inf): sort
      ascending, softmax, cumulative sum; drop the positions whose cumulative probability is
      <= ``1 - top_p`` rounded to float32, except the last (largest) one. We sort with our
      stable radix sort in ASCENDING order, not descending: the official result depends on the
      floating-point summation order of softmax and cumsum, and only the same ascending order
      reproduces it bit for bit (a descending cumsum rounds differently). The tie rule that
      follows: among logits tied across the top-p cut, the lower-index ones are dropped first,
      and of logits tied at the maximum the highest index is the one always kept. That is
      the official code run with a stable sort; it calls ``torch.sort`` with the default
      ``stable=False``, which may permute equal logits (torch 2.13 on CPU does, for rows of
      thousands), so on ties across the cut the official choice is unspecified and this one
      pins it. Probabilities are
      ``torch.softmax`` / ``torch.cumsum`` in float32 (host arithmetic, not a core datapath).

    ``topk_fn(logits (R, V) float32, k) -> indices (R, k)``, when given, supplies the top-k
    (descending; e.g. the RTL top-k core): the threshold is then the key of its k-th index,
    which is the radix-select threshold whenever the indices are a correct top-k.

    float16 / bfloat16 logits are filtered with the same rules on their exact float32 values
    (the official code would do the top-p arithmetic in the half type). NaN raises ValueError
    naming logits_BlV: softmax of a NaN row is undefined.
    """
    if not isinstance(logits_BlV, torch.Tensor) or logits_BlV.dtype not in _FLOAT_FORMATS or logits_BlV.dim() < 1:
        raise ValueError("logits_BlV must be a float32, float16 or bfloat16 tensor of shape (..., V)")
    if bool(torch.isnan(logits_BlV).any()):
        raise ValueError("logits_BlV must not contain NaN")
    v = logits_BlV.shape[-1]
    _check_width("top_k", top_k, 0, v)
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be a number in [0, 1], got {top_p!r}")
    _check_width("radix_bits", radix_bits, 1, _MAX_RADIX_BITS)
    width = _FLOAT_FORMATS[logits_BlV.dtype][1]
    keys = float_to_key(logits_BlV, nan="raise")
    keep = torch.ones_like(keys, dtype=torch.bool)
    if top_k > 0:
        if topk_fn is None:
            threshold, _ = radix_select(keys, top_k, key_bits=width, radix_bits=radix_bits)
        else:
            rows = logits_BlV.float().reshape(-1, v)
            idx = torch.as_tensor(topk_fn(rows, top_k), dtype=torch.int64).reshape(-1, top_k)
            threshold = keys.reshape(-1, v).gather(-1, idx[:, -1:]).reshape(keys.shape[:-1])
        keep = keys >= threshold.unsqueeze(-1)
    if top_p > 0:
        filtered = logits_BlV.float().masked_fill(~keep, -math.inf)
        order = sort(float_to_key(filtered), descending=False, key_bits=32, radix_bits=radix_bits)
        probs = torch.softmax(filtered.gather(-1, order), dim=-1)
        cum = torch.cumsum(probs, dim=-1)
        drop_sorted = cum <= torch.tensor(1.0 - top_p, dtype=torch.float32)
        drop_sorted[..., -1] = False  # the largest logit always survives
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        keep &= ~drop
    return keep


def sample_from_mask(logits, mask, generator=None):
    """Draw one vocabulary index per row from softmax(logits) restricted to ``mask``.

    ``logits`` float (..., V), ``mask`` bool of the same shape with at least one True per row
    (``topk_topp_mask`` guarantees that); returns int64 of shape ``logits.shape[:-1]``. Uses
    ``torch.multinomial`` on float32 probabilities, as the official sampler does, so a seeded
    ``generator`` makes it reproducible. Host-side only: no core implements sampling.
    """
    if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point or logits.dim() < 1:
        raise ValueError("logits must be a float tensor of shape (..., V)")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != logits.shape:
        raise ValueError("mask must be a bool tensor of the same shape as logits")
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("mask must keep at least one entry in every row")
    v = logits.shape[-1]
    probs = torch.softmax(logits.float().masked_fill(~mask, -math.inf), dim=-1)
    drawn = torch.multinomial(probs.reshape(-1, v), num_samples=1, generator=generator)
    return drawn.reshape(logits.shape[:-1])
