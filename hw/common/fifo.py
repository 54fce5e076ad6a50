"""Stream FIFO whose flags are flip-flops, and the skid buffer (its two-entry case).

Why: a unit that takes a stream beat decides it from the beat's ``valid`` and its own state,
and the decision fans out to counters, memory write enables and state. With a ``valid`` derived
combinationally from a level counter (Amaranth's ``SyncFIFO``: the level waits for the pop,
which the consumer decides from that flag) or taken straight from outside the core (possibly
routed from far away), the flag was in front of the attention core's loader, row update and
similarity output on their critical paths. Here ``o.valid`` (not empty) and ``i.ready`` (not
full) are register bits of a thermometer-coded level, and the entries are written at a write
pointer and read at a read pointer: the data's write enable is the registered not-full flag, so
no handshake reaches a data bit. One beat per cycle through, in order, nothing lost or
duplicated under any stall pattern, one cycle from input to output.

Storage: two entries are two registers and a 2:1 select by the read pointer (a LUT RAM cell
holds 16 words of 4 bits); deeper FIFOs use a memory read asynchronously (LUT RAM on FPGAs).
"""

from amaranth.hdl import Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["RegisteredFlagFifo", "SkidBuffer"]


class RegisteredFlagFifo(wiring.Component):
    """``i`` -> ``o``, payload ``shape``, ``depth`` entries (a power of two, at least 2).
    ``o.valid`` and ``i.ready`` are registers; ``o.payload`` is the entry at the read pointer
    (a register pointer: for two entries a select of registers, deeper an asynchronous read)."""

    def __init__(self, shape, depth):
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 2 or depth & (depth - 1):
            self._MustUse__silence = True   # refused: no "created but never used" warning for it
            raise ValueError(f"depth must be a power of two of at least 2, not {depth!r}")
        self.depth = depth
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        incoming = Value.cast(self.i.payload)
        wptr = Signal(range(self.depth), name="wptr")
        rptr = Signal(range(self.depth), name="rptr")
        nonempty, full = Signal(name="nonempty"), Signal(name="full")
        push = self.i.valid & ~full
        pop = self.o.ready & nonempty
        m.d.comb += [self.i.ready.eq(~full), self.o.valid.eq(nonempty)]
        # The entry at the write pointer is free whenever the FIFO is not full, so it loads the
        # incoming payload at every such edge, beat or not (without a beat the pointer stays
        # and the next payload overwrites it): the input's valid reaches only the pointers and
        # the level.
        if self.depth == 2:
            entries = [Signal(len(incoming), name=f"entry{k}") for k in range(2)]
            for k, entry in enumerate(entries):
                with m.If(~full & (wptr == k)):
                    m.d.sync += entry.eq(incoming)
            m.d.comb += self.o.payload.eq(Mux(rptr, entries[1], entries[0]))
        else:
            m.submodules.storage = storage = Memory(shape=len(incoming), depth=self.depth, init=[])
            write, read = storage.write_port(), storage.read_port(domain="comb")
            m.d.comb += [write.addr.eq(wptr), write.data.eq(incoming), write.en.eq(~full),
                         read.addr.eq(rptr), self.o.payload.eq(read.data)]
        with m.If(push):
            m.d.sync += wptr.eq(wptr + 1)   # wraps: the depth is a power of two
        with m.If(pop):
            m.d.sync += rptr.eq(rptr + 1)
        # The level as a thermometer code, fill[j] = (level > j): each bit moves to its
        # neighbour's value on a push without a pop or a pop without a push, one LUT of the
        # handshakes and three register bits, and the flags are two of its bits. With a binary
        # level, its adder and the compares behind it were in series with the handshakes (the
        # similarity score FIFO's flags on the late-endpoint list).
        fill = Signal(self.depth, name="fill")
        grow, shrink = push & ~pop, pop & ~push
        for j in range(self.depth):
            below = fill[j - 1] if j else 1
            above = fill[j + 1] if j + 1 < self.depth else 0
            with m.If(grow):
                m.d.sync += fill[j].eq(below)
            with m.Elif(shrink):
                m.d.sync += fill[j].eq(above)
        m.d.comb += [nonempty.eq(fill[0]), full.eq(fill[-1])]
        return m


class SkidBuffer(RegisteredFlagFifo):
    """Two entries: puts registers between a stream's producer and its consumer in both
    directions (``o.valid``, ``o.payload`` and ``i.ready``) at full throughput."""

    def __init__(self, shape):
        super().__init__(shape, depth=2)
