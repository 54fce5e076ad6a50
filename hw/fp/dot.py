"""Exact MX dot-product unit: LUT multipliers, adder tree, E8M0 block scaling, fixed-point accumulator."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.numerics import fp as fpnum
from ..common import check_int
from .lutmul import magnitude_product, special_code

__all__ = ["DotProductUnit"]


class DotProductUnit(wiring.Component):
    """Dot products of MX vectors, bit for bit :func:`golden.numerics.fp.dot_exact`.

    Each beat carries ``lanes`` element pairs; ``block // lanes`` beats make one MX block,
    whose E8M0 scales travel with its beats. Per block the unit forms the exact integer sum
    ``S_b`` of the LUT products (units of ``2^-F``, ``F = F_a + F_b``), shifts it by
    ``E_b + acc_frac`` with ``E_b = (sa - 127) + (sb - 127) - F`` (left shift, or arithmetic
    right shift = floor), and adds it to a two's complement accumulator of ``acc_width`` bits
    that wraps; ``overflow`` is sticky over the vector and is set when a shifted block term or
    a partial sum leaves the accumulator's range. The vector ends with the beat that has
    ``last`` set; one result beat per vector comes out. Fully pipelined: one beat per cycle,
    latency ``6 + ceil(log2(lanes))`` cycles from the vector's last beat.

    Parameters
    ----------
    fmt_a, fmt_b : str
        Element formats of the two operands (any pair but ``e5m2 x e5m2``).
    lanes : int
        Products per cycle, a power of two, 1..64, dividing ``block``.
    block : int
        MX block size (elements sharing one scale), a power of two 1..256.
    acc_frac, acc_width : int
        The accumulator holds ``acc_width`` bits (16..62) with ``acc_frac`` fraction bits
        (``0 <= acc_frac < acc_width``): its LSB weighs ``2^-acc_frac``.

    Ports
    -----
    i : In(stream)
        ``a``, ``b``: arrays of ``lanes`` codes; ``sa``, ``sb``: E8M0 scale codes of the block
        the beat belongs to (the values on the block's last beat are used); ``last``: the
        vector's final beat. A ``last`` in the middle of a block closes that block early.
    o : Out(stream)
        ``acc``: ``signed(acc_width)``, units of ``2^-acc_frac``; ``overflow``: sticky range
        flag of the vector; ``invalid``: the vector had an Inf/NaN code or a NaN scale (255),
        in which case ``acc`` is 0 and ``overflow`` is 1 (``dot_exact(..., nan_ok=True)``).
    """

    def __init__(self, fmt_a="e2m1", fmt_b="e2m1", lanes=32, block=32, acc_frac=24, acc_width=48):
        self.fmt_a = fpnum.get_format(fmt_a)
        self.fmt_b = fpnum.get_format(fmt_b)
        self.block = check_int("block", block, 1, 256, power_of_two=True)
        self.lanes = check_int("lanes", lanes, 1, 64, power_of_two=True)
        if self.block % self.lanes:
            raise ValueError(f"lanes must divide block ({block}), not {lanes}")
        self.acc_width = check_int("acc_width", acc_width, 16, 62)
        self.acc_frac = check_int("acc_frac", acc_frac, 0, acc_width - 1)
        try:
            self.frac_bits = fpnum.product_frac_bits(self.fmt_a, self.fmt_b)
            self.product_width = fpnum.product_width(self.fmt_a, self.fmt_b)
        except ValueError as error:
            raise ValueError(f"fmt_a/fmt_b: {error}") from None
        in_layout = data.StructLayout({
            "a": data.ArrayLayout(self.fmt_a.code_width, self.lanes),
            "b": data.ArrayLayout(self.fmt_b.code_width, self.lanes),
            "sa": 8,
            "sb": 8,
            "last": 1,
        })
        out_layout = data.StructLayout({"acc": signed(self.acc_width), "overflow": 1, "invalid": 1})
        super().__init__({"i": In(stream.Signature(in_layout)), "o": Out(stream.Signature(out_layout))})

    def elaborate(self, platform):
        m = Module()
        fa, fb = self.fmt_a, self.fmt_b
        W = self.acc_width
        # One enable for every stage: the pipeline moves unless a result waits for the consumer.
        enable = Signal()
        m.d.comb += [enable.eq(~self.o.valid | self.o.ready), self.i.ready.eq(enable)]

        def stage(value, name, shape=None):
            reg = Signal(shape if shape is not None else value.shape(), name=name)
            with m.If(enable):
                m.d.sync += reg.eq(value)
            return reg

        def stage_valid(value, name):
            reg = Signal(name=name)
            with m.If(enable):
                m.d.sync += reg.eq(value)
            return reg

        # Stage 0: table lookups (magnitude or significand product, exponent shift, sign).
        payload = self.i.payload
        v0 = stage_valid(self.i.valid, "s0_valid")
        lanes0 = []
        specials = []
        for lane in range(self.lanes):
            a, b = payload.a[lane], payload.b[lane]
            specials.append(special_code(m, a, fa) | special_code(m, b, fb))
            value, shift = magnitude_product(m, a[:fa.code_width - 1], fa, b[:fb.code_width - 1], fb)
            lanes0.append((stage(value, f"s0_value{lane}"), stage(shift, f"s0_shift{lane}"),
                           stage(a[-1] ^ b[-1], f"s0_neg{lane}")))
        scale_nan = (payload.sa == 0xFF) | (payload.sb == 0xFF)
        bad0 = stage(Cat(*specials).any(), "s0_special")
        # The scale arithmetic of the term stage (shift of the block sum onto the accumulator
        # grid) depends only on sa and sb: it is done here and in stage 1, beside the products,
        # so the term stage holds only the shifter (it set the ECP5 Fmax when done there).
        offset = self.acc_frac - self.frac_bits - 254
        shift0 = stage(payload.sa + payload.sb + offset, "s0_shift_total", signed(11))
        nan0 = stage(scale_nan, "s0_scale_nan")
        last0 = stage(payload.last, "s0_last")

        # Stage 1: exact signed products.
        pw = self.product_width
        v1 = stage_valid(v0, "s1_valid")
        products = []
        for lane, (value, shift, neg) in enumerate(lanes0):
            magnitude = (value << shift)[:pw]
            products.append(stage(Mux(neg, -magnitude, magnitude), f"s1_p{lane}", signed(pw + 1)))
        # Every block sum fits block_bits (exact sums of `lanes` products over block // lanes beats).
        tree_bits = pw + 1 + max(self.lanes - 1, 0).bit_length()
        block_bits = tree_bits + max(self.block // self.lanes - 1, 0).bit_length()
        shift_kind = Mux(shift0 >= W, 2, Mux(shift0 >= 0, 1, 0))  # 2: beyond the grid, 1: left, 0: right
        left_amount1 = Signal(range(W), name="s1_left_amount_c")
        m.d.comb += left_amount1.eq(shift0[:len(left_amount1)])
        right_amount1 = Signal(range(block_bits + 1), name="s1_right_amount_c")
        m.d.comb += right_amount1.eq(Mux(-shift0 > block_bits, block_bits, -shift0))
        side1 = [stage(x, f"s1_{n}") for x, n in ((bad0, "special"), (shift_kind, "shift_kind"),
                                                    (left_amount1, "left_amount"), (right_amount1, "right_amount"),
                                                    (nan0, "scale_nan"), (last0, "last"))]

        # Adder tree, one register level per halving: exact, widths grow by one bit a level.
        level, valid, side, depth = products, v1, side1, 0
        while len(level) > 1:
            depth += 1
            width = len(level[0]) + 1
            level = [stage(level[i] + level[i + 1], f"t{depth}_{i // 2}", signed(width))
                     for i in range(0, len(level), 2)]
            valid = stage_valid(valid, f"t{depth}_valid")
            side = [stage(x, f"t{depth}_side{k}") for k, x in enumerate(side)]
        beat_sum = level[0]
        special, kind, left_amount, right_amount, scale_nan, last = side

        # Block stage: exact block sum S_b over block // lanes beats.
        beats_per_block = self.block // self.lanes
        assert block_bits == len(beat_sum) + max(beats_per_block - 1, 0).bit_length()
        block_sum = Signal(signed(block_bits))
        beat_index = Signal(range(max(beats_per_block, 2)))
        block_end = Signal()
        m.d.comb += block_end.eq((beat_index == beats_per_block - 1) | last)
        acc_in = Mux(beat_index == 0, 0, block_sum) + beat_sum
        bv = Signal(name="blk_valid")
        b_sum = Signal(signed(block_bits), name="blk_sum")
        b_kind = Signal(2, name="blk_shift_kind")
        b_left = Signal(range(W), name="blk_left_amount")
        b_right = Signal(range(block_bits + 1), name="blk_right_amount")
        b_bad, b_last = Signal(name="blk_bad"), Signal(name="blk_last")
        beat_bad = special | scale_nan
        block_bad = Signal()  # an Inf/NaN code seen earlier in this block
        with m.If(enable):
            m.d.sync += bv.eq(valid & block_end)
            with m.If(valid):
                m.d.sync += [block_sum.eq(acc_in), beat_index.eq(Mux(block_end, 0, beat_index + 1)),
                             block_bad.eq(Mux(block_end, 0, block_bad | special))]
                with m.If(block_end):
                    m.d.sync += [b_sum.eq(acc_in), b_kind.eq(kind), b_left.eq(left_amount), b_right.eq(right_amount),
                                 b_bad.eq(block_bad | beat_bad), b_last.eq(last)]

        # Term stage: shift the block sum onto the accumulator grid and check it fits.
        lo, hi = -(1 << (W - 1)), (1 << (W - 1)) - 1
        left_wide = b_sum << b_left
        right = b_sum >> b_right
        term_value = Signal(signed(W + 1))
        term_fits = Signal()
        with m.If(b_kind == 2):
            m.d.comb += [term_value.eq(0), term_fits.eq(b_sum == 0)]
        with m.Elif(b_kind == 1):
            m.d.comb += [term_value.eq(left_wide[:W].as_signed()),
                         term_fits.eq((left_wide >= lo) & (left_wide <= hi))]
        with m.Else():
            m.d.comb += [term_value.eq(right[:W].as_signed()), term_fits.eq((right >= lo) & (right <= hi))]
        tv = stage_valid(bv, "term_valid")
        t_value = stage(term_value, "term_value", signed(W + 1))
        t_ovf = stage(~term_fits, "term_ovf")
        t_bad, t_last = stage(b_bad, "term_bad"), stage(b_last, "term_last")

        # Accumulate stage: wrap at W bits, sticky overflow, one result per vector.
        acc = Signal(signed(W))
        acc_ovf = Signal()
        acc_bad = Signal()
        first = Signal(init=1)  # the next term starts a new vector
        total = Mux(first, 0, acc) + t_value[:W].as_signed()
        partial_ovf = (total < lo) | (total > hi)
        new_ovf = Mux(first, 0, acc_ovf) | t_ovf | partial_ovf
        new_bad = Mux(first, 0, acc_bad) | t_bad
        with m.If(enable):
            m.d.sync += self.o.valid.eq(tv & t_last)
            with m.If(tv):
                m.d.sync += [acc.eq(total[:W].as_signed()), acc_ovf.eq(new_ovf), acc_bad.eq(new_bad),
                             first.eq(t_last)]
                with m.If(t_last):
                    m.d.sync += [self.o.payload.acc.eq(Mux(new_bad, 0, total[:W].as_signed())),
                                 self.o.payload.overflow.eq(new_ovf | new_bad),
                                 self.o.payload.invalid.eq(new_bad)]
        return m
