"""Skid buffer: a two-entry stream buffer whose ``o.valid`` and ``i.ready`` come straight from
flip-flops and whose ``o.payload`` is a 2:1 select of registers by a register.

Why: a core that takes a stream beat decides it from the beat's ``valid`` and from its own state,
and the decision fans out to counters, memory write enables and state. With the stream's
``valid`` from outside the core, that input (possibly routed from far away) was in front of the
attention core's loader logic on its critical path. Behind this buffer the core sees a
registered ``valid`` and drives a registered ``ready`` back.

The entries are written at a write pointer and read at a read pointer, so the data registers'
enables depend on the buffer's own registers alone: a register slice whose output register loads
when the consumer takes a beat put the consumer's decision in front of every data bit's enable
(a critical path of its own). One beat per cycle through, in order, nothing lost or duplicated
under any stall pattern, one cycle of latency.
"""

from amaranth.hdl import Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """``i`` -> ``o``, payload ``shape``; ``o.valid`` and ``i.ready`` are registers, ``o.payload``
    a select of registers by a register."""

    def __init__(self, shape):
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        incoming = Value.cast(self.i.payload)
        entries = [Signal(len(incoming), name=f"entry{k}") for k in range(2)]
        wptr, rptr = Signal(), Signal()
        level = Signal(range(3))
        nonempty, full = Signal(), Signal()
        push = self.i.valid & ~full
        pop = self.o.ready & nonempty
        m.d.comb += [self.i.ready.eq(~full), self.o.valid.eq(nonempty),
                     self.o.payload.eq(Mux(rptr, entries[1], entries[0]))]
        # The entry at the write pointer is free whenever the buffer is not full, so it loads
        # the incoming payload at every such edge, beat or not (without a beat the pointer stays
        # and the next payload overwrites it): its enable comes from registers, and the input's
        # valid reaches only the pointers and the level.
        for k, entry in enumerate(entries):
            with m.If(~full & (wptr == k)):
                m.d.sync += entry.eq(incoming)
        with m.If(push):
            m.d.sync += wptr.eq(~wptr)
        with m.If(pop):
            m.d.sync += rptr.eq(~rptr)
        level_next = Signal(range(3))
        m.d.comb += level_next.eq(level + push - pop)
        m.d.sync += [level.eq(level_next), nonempty.eq(level_next != 0), full.eq(level_next == 2)]
        return m
