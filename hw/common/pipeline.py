"""Valid/ready control for a fixed-latency pipeline with a single stall enable."""

from amaranth.hdl import Signal

__all__ = ["Pipeline"]


class Pipeline:
    """Control of a ``depth``-stage pipeline between an input and an output stream.

    Every stage register loads when ``enable`` is high. ``enable`` is high unless the last
    stage holds a beat that the consumer refuses, so a refused output freezes the whole
    pipeline and nothing is lost or duplicated; the producer sees ``in_ready = enable``.
    This is the simplest correct scheme: bubbles are not squeezed out under backpressure,
    which costs throughput only while the consumer stalls, and it needs no skid buffer.

    Use: ``p = Pipeline(m, depth, in_valid, out_ready)``; register data with
    ``with m.If(p.enable): m.d.sync += stage_reg.eq(...)``; drive ``out.valid`` from
    ``p.out_valid`` and ``in.ready`` from ``p.enable``. ``p.valid[i]`` is the valid bit of
    stage ``i`` (0 = the first register).
    """

    def __init__(self, m, depth, in_valid, out_ready):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, not {depth}")
        self.depth = depth
        self.valid = [Signal(name=f"stage{i}_valid") for i in range(depth)]
        self.enable = Signal()
        self.out_valid = self.valid[-1]
        m.d.comb += self.enable.eq(~self.valid[-1] | out_ready)
        with m.If(self.enable):
            m.d.sync += self.valid[0].eq(in_valid)
            for i in range(1, depth):
                m.d.sync += self.valid[i].eq(self.valid[i - 1])
