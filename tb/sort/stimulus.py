"""Key packets for the sort / top-k testbenches: random, structured, and VAR-like float scores."""

import torch

from golden.numerics import sort as sortnum

__all__ = ["random_keys", "pattern_keys", "logit_keys", "pivot_keys", "PATTERNS", "lengths_for", "packet_beats",
           "topk_beats", "topk_items"]

PATTERNS = ["ties", "constant", "sorted", "reverse", "zeros", "ones", "two_values", "alternating"]


def random_keys(gen, n, key_bits):
    """Uniform keys over the whole range."""
    return torch.randint(0, 1 << key_bits, (n,), generator=gen, dtype=torch.int64)


def pattern_keys(gen, kind, n, key_bits):
    """Structured packets: heavy ties, constant, sorted, reverse-sorted, all-zero, all-ones."""
    top = (1 << key_bits) - 1
    if kind == "ties":
        return torch.randint(0, min(4, top + 1), (n,), generator=gen, dtype=torch.int64) * (top // 3 or 1) % (top + 1)
    if kind == "constant":
        return torch.full((n,), int(torch.randint(0, top + 1, (1,), generator=gen)), dtype=torch.int64)
    if kind == "sorted":
        return random_keys(gen, n, key_bits).sort().values
    if kind == "reverse":
        return random_keys(gen, n, key_bits).sort(descending=True).values
    if kind == "zeros":
        return torch.zeros(n, dtype=torch.int64)
    if kind == "ones":
        return torch.full((n,), top, dtype=torch.int64)
    if kind == "two_values":
        return torch.where(torch.rand(n, generator=gen) < 0.5, 0, top).to(torch.int64)
    if kind == "alternating":
        return (torch.arange(n) % 2) * top
    raise ValueError(kind)


def _float_keys(x, key_bits):
    """float32 -> order-preserving 32-bit keys -> their top ``key_bits`` bits (what the core sees)."""
    return sortnum.truncate_key(sortnum.float_to_key(x.to(torch.float32)), 32, key_bits)


def logit_keys(gen, n, key_bits, temperature=None):
    """VAR-head-like logits: Gaussian with a random temperature, a few strong outliers."""
    t = temperature if temperature is not None else float(torch.empty(1).uniform_(0.3, 3.0, generator=gen))
    x = torch.randn(n, generator=gen) * 2.5 / t
    hot = torch.randint(0, n, (max(1, n // 200),), generator=gen)
    x[hot] += 8.0 / t
    return _float_keys(x, key_bits)


def pivot_keys(gen, n, key_bits):
    """FastVAR-like pivot scores: positive chi-square-like floats (sums of squared Gaussians)."""
    dof = int(torch.randint(1, 8, (1,), generator=gen))
    x = (torch.randn(n, dof, generator=gen) ** 2).sum(dim=1) * float(torch.empty(1).uniform_(0.01, 100.0, generator=gen))
    return _float_keys(x, key_bits)


def lengths_for(max_len, gen):
    """Packet lengths that cover 1, 2, small, odd, powers of two, max_len - 1 and max_len."""
    small = [1, 2, 3, 5, 7, 16, 17, 31]
    mid = [int(torch.randint(8, max_len + 1, (1,), generator=gen)) for _ in range(2)]
    return [x for x in small if x <= max_len] + mid + [max_len - 1, max_len]


def packet_beats(keys, descending, lanes=1, rng=None, key_bits=16):
    """Input beats of one sorter packet (a list of keys) for ``lanes`` keys per beat.

    P = 1: ``{"key", "descending", "last"}`` per key (``rng`` unused). P > 1: the key at arrival position
    ``b * P + j`` goes to lane ``j`` of beat ``b`` (fields ``key.j``); ``count`` is the number of
    valid lanes of the last beat. With ``rng`` (a ``random.Random``) everything the core must
    ignore is random: ``count`` of non-last beats, the keys of the lanes past ``count``, and
    ``descending`` after the first beat; a full last beat says ``count`` = P, 0 or a value
    above P at random (all mean P lanes).
    """
    keys = [int(k) for k in keys]
    n = len(keys)
    if lanes == 1:
        return [{"key": k, "descending": int(descending), "last": int(i == n - 1)} for i, k in enumerate(keys)]
    count_max = (1 << lanes.bit_length()) - 1
    beats = []
    for start in range(0, n, lanes):
        last = start + lanes >= n
        valid = n - start if last else lanes
        beat = {"descending": int(descending), "last": int(last), "count": valid}
        if rng is not None:
            if start:
                beat["descending"] = rng.randrange(2)
            if not last:
                beat["count"] = rng.randrange(count_max + 1)
            elif valid == lanes:
                beat["count"] = rng.choice([lanes, 0, rng.randrange(lanes + 1, count_max + 1)])
        for lane in range(lanes):
            if lane < valid:
                beat[f"key.{lane}"] = keys[start + lane]
            else:
                beat[f"key.{lane}"] = rng.randrange(1 << key_bits) if rng is not None else 0
        beats.append(beat)
    return beats


def topk_beats(keys, lanes=1, rng=None, key_bits=16):
    """Input beats of one top-k packet: :func:`packet_beats` without the sort direction (the top-k
    core's ``i`` has no ``descending``), with the same lane packing and ignored-field noise."""
    beats = packet_beats(keys, False, lanes, rng, key_bits)
    for beat in beats:
        del beat["descending"]
    return beats


def sort_items(beats, out_lanes=1):
    """The sorter's output beats as one ``{"key", "index", "overflow", "last"}`` per key, in
    output order. ``out_lanes`` = 2: lanes ``0..count-1`` of each beat; every beat but a
    packet's last must hold 2 keys (``ValueError`` otherwise: the merge never emits a short
    beat mid-packet)."""
    if out_lanes == 1:
        return [{f: b[f] for f in ("key", "index", "overflow", "last")} for b in beats]
    items = []
    for beat in beats:
        count = beat["count"]
        if not (count == 2 or (count == 1 and beat["last"])):
            raise ValueError(f"sorter output beat with count {count} (last = {beat['last']})")
        items += [{"key": beat[f"key.{t}"], "index": beat[f"index.{t}"], "overflow": beat["overflow"],
                   "last": int(beat["last"] and t == count - 1)} for t in range(count)]
    return items


def topk_items(beats, lanes=1):
    """The top-k core's output beats as one ``{"key", "index", "last"}`` per selected key, in
    output order. P > 1: lanes ``0..count-1`` of each beat, ``last`` on the final one of a beat
    with last; a ``count`` outside 1..P is a malformed beat (``ValueError``)."""
    if lanes == 1:
        return [{"key": b["key"], "index": b["index"], "last": b["last"]} for b in beats]
    items = []
    for beat in beats:
        count = beat["count"]
        if not 1 <= count <= lanes:
            raise ValueError(f"top-k output beat with count {count} (must be 1..{lanes})")
        items += [{"key": beat[f"key.{t}"], "index": beat[f"index.{t}"], "last": int(beat["last"] and t == count - 1)}
                  for t in range(count)]
    return items
