"""Constructor parameter checks that raise ``ValueError`` naming the parameter and its range."""

__all__ = ["check_int", "check_choice"]


def check_int(name, value, lo=None, hi=None, *, power_of_two=False):
    """Return ``value`` if it is an int in ``[lo, hi]`` (and a power of two if asked)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"{name} must be in {bounds}, not {value}")
    if power_of_two and value & (value - 1):
        raise ValueError(f"{name} must be a power of two, not {value}")
    return value


def check_choice(name, value, choices):
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, not {value!r}")
    return value
