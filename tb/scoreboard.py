"""Scoreboard: compares every DUT output with the golden model and names the first mismatch."""

__all__ = ["Mismatch", "Scoreboard"]


class Mismatch(AssertionError):
    """An output differed from golden; the message names the stream, index and both values."""


class Scoreboard:
    """Collects (got, expected) sequences per named stream and checks them element by element.

    ``check(name, got, expected)`` compares two equal-length sequences of comparable items
    (ints, tuples, dicts). A length difference (lost or duplicated beats) and the first
    differing index are reported with both values; ``summary()`` gives counts for the report.
    """

    def __init__(self, log=None):
        self.log = log
        self.counts = {}

    def check(self, name, got, expected):
        got, expected = list(got), list(expected)
        matched = sum(1 for g, e in zip(got, expected) if g == e)
        total, exact = self.counts.get(name, (0, 0))
        self.counts[name] = (total + len(expected), exact + matched)
        for index, (g, e) in enumerate(zip(got, expected)):
            if g != e:
                raise Mismatch(f"{name}: first mismatch at index {index}: got {g!r}, expected {e!r} "
                               f"({len(expected) - matched} of {len(expected)} differ)")
        if len(got) != len(expected):
            raise Mismatch(f"{name}: got {len(got)} items, expected {len(expected)} "
                           f"(all {min(len(got), len(expected))} compared were equal)")
        if self.log:
            self.log.info("%s: %d of %d exact", name, matched, len(expected))

    def summary(self):
        return {name: {"total": t, "exact": e} for name, (t, e) in self.counts.items()}
