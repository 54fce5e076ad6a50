"""Skid buffer: a stream register slice whose outputs (``o.valid``, ``o.payload``) and input
ready (``i.ready``) all come straight from flip-flops.

Why: a core that takes a stream beat decides it from the beat's ``valid`` and from its own state,
and the decision fans out to counters, memory write enables and state. With the stream's
``valid`` from outside the core, that input (possibly routed from far away) was in front of the
attention core's loader logic on its critical path. Behind a skid buffer the core sees a
registered ``valid`` and drives a registered ``ready`` back.

Two entries (``main`` drives the output, ``skid`` catches the beat that arrives in the cycle
where the output stalls): one beat per cycle through, in order, nothing lost or duplicated
under any stall pattern, one cycle of latency.
"""

from amaranth.hdl import Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """``i`` -> ``o``, payload ``shape``; ``o.valid``, ``o.payload`` and ``i.ready`` are
    registers."""

    def __init__(self, shape):
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        incoming = Value.cast(self.i.payload)
        width = len(incoming)
        main_valid, skid_valid = Signal(), Signal()
        main_data, skid_data = Signal(width), Signal(width)
        m.d.comb += [self.i.ready.eq(~skid_valid), self.o.valid.eq(main_valid),
                     self.o.payload.eq(main_data)]
        with m.If(~main_valid | self.o.ready):
            # main is free (or handed on) this cycle: it takes the skid entry if there is one
            # (then i.ready was low), else the incoming beat if any
            m.d.sync += [main_valid.eq(skid_valid | self.i.valid),
                         main_data.eq(Mux(skid_valid, skid_data, incoming)), skid_valid.eq(0)]
        with m.Elif(self.i.valid & ~skid_valid):
            # main holds a refused beat: the incoming one waits in the skid entry
            m.d.sync += [skid_valid.eq(1), skid_data.eq(incoming)]
        return m
