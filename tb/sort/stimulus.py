"""Key packets for the sort / top-k testbenches: random, structured, and VAR-like float scores."""

import torch

from golden.numerics import sort as sortnum

__all__ = ["random_keys", "pattern_keys", "logit_keys", "pivot_keys", "PATTERNS", "lengths_for"]

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
