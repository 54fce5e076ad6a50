"""Low-bit floating-point multiplier whose magnitude product is read from a lookup table."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.numerics import fp as fpnum
from ..common import Pipeline, check_choice, check_int

__all__ = ["LUTMultiplier", "product_layout", "magnitude_product", "special_code"]


def special_code(m, code, fmt):
    """A 1-bit signal that is high when ``code`` is an Inf or NaN pattern of ``fmt``.

    Only E4M3 (S.1111.111 = NaN) and E5M2 (exponent all ones = Inf/NaN) have such codes.
    """
    flag = Signal(name="special")
    if fmt.has_nan or fmt.has_inf:
        exp = code[fmt.mbits:fmt.mbits + fmt.ebits]
        man = code[:fmt.mbits]
        if fmt.has_inf:  # IEEE-like: exponent all ones is Inf or NaN
            m.d.comb += flag.eq(exp == (1 << fmt.ebits) - 1)
        else:  # OCP E4M3: only the all-ones pattern is NaN
            m.d.comb += flag.eq((exp == (1 << fmt.ebits) - 1) & (man == (1 << fmt.mbits) - 1))
    return flag


def _decoded_magnitude(mag, fmt):
    """Integer magnitude of a code in units of 2^-F: ``sig << (max(e, 1) - 1)`` (a shifter)."""
    exp = mag[fmt.mbits:]
    normal = exp.any()
    sig = Cat(mag[:fmt.mbits], normal)
    return sig << Mux(normal, exp - 1, 0).as_unsigned()[:len(exp)]


def magnitude_product(m, mag_a, fmt_a, mag_b, fmt_b, table_max_bits=6):
    """Combinational exact magnitude product of two magnitude codes, in units of 2^-(F_a+F_b).

    Returns ``(table_value, shift)``: the product is ``table_value << shift``. When the two
    magnitude codes together have at most ``table_max_bits`` bits, the whole product is one
    table (a LUT6 per output bit for E2M1 x E2M1) and ``shift`` is 0. Otherwise the table holds
    only the significand product (implicit bit included, subnormals have none) and the exponent
    fields are added to give ``shift``: the magnitude of a code is ``sig << (max(e, 1) - 1)``.
    """
    in_bits = (fmt_a.code_width - 1) + (fmt_b.code_width - 1)
    if in_bits <= table_max_bits:
        table = fpnum.product_magnitude_table(fmt_a, fmt_b)
        width = fpnum.product_width(fmt_a, fmt_b)
        value = Signal(width, name="mag_product")
        index = Cat(mag_b, mag_a)
        with m.Switch(index):
            for ia in range(table.shape[0]):
                for ib in range(table.shape[1]):
                    entry = int(table[ia, ib])
                    if entry:
                        with m.Case(ia << (fmt_b.code_width - 1) | ib):
                            m.d.comb += value.eq(entry)
        return value, Const(0, 1)

    def split(mag, fmt):
        exp = mag[fmt.mbits:]
        normal = exp.any()
        sig = Cat(mag[:fmt.mbits], normal)
        shift = Mux(normal, exp - 1, 0)
        return sig, shift

    sig_a, shift_a = split(mag_a, fmt_a)
    sig_b, shift_b = split(mag_b, fmt_b)
    sig_width = fmt_a.mbits + fmt_b.mbits + 2
    value = Signal(sig_width, name="sig_product")
    with m.Switch(Cat(sig_b, sig_a)):
        for sa in range(1 << (fmt_a.mbits + 1)):
            for sb in range(1 << (fmt_b.mbits + 1)):
                if sa * sb:
                    with m.Case(sa << (fmt_b.mbits + 1) | sb):
                        m.d.comb += value.eq(sa * sb)
    max_shift = ((1 << fmt_a.ebits) - 2) + ((1 << fmt_b.ebits) - 2)
    shift = Signal(range(max_shift + 1), name="exp_shift")
    m.d.comb += shift.eq(shift_a + shift_b)
    return value, shift


def product_layout(fmt_a, fmt_b, lanes, signmag):
    """Output payload layout of :class:`LUTMultiplier` (see there)."""
    width = fpnum.product_width(fmt_a, fmt_b)
    if signmag:
        lane = data.StructLayout({"mag": unsigned(width), "neg": 1})
    else:
        lane = signed(width + 1)
    return data.StructLayout({"p": data.ArrayLayout(lane, lanes), "invalid": 1, "last": 1})


class LUTMultiplier(wiring.Component):
    """Exact product of low-bit FP codes, one product per lane per cycle.

    The magnitude product comes from a lookup table: a full table over both magnitude codes
    when they have at most ``table_max_bits`` bits together (E2M1 x E2M1: 6 inputs, so each
    product bit is one LUT6), else a significand table plus an exponent adder and a shifter
    (E4M3 x E4M3). The result is exact: a signed integer in units of ``2^-F`` with
    ``F = F_a + F_b`` (:func:`golden.numerics.fp.product_frac_bits`), bit for bit
    :func:`golden.numerics.fp.lut_product`.

    Parameters
    ----------
    fmt_a, fmt_b : str
        Element formats (``"e2m1"``, ``"e1m2"``, ``"e2m3"``, ``"e3m2"``, ``"e4m3"``, ``"e5m2"``);
        the pair ``e5m2 x e5m2`` is refused (its product needs 64 magnitude bits).
    lanes : int
        Products per beat, 1..64.
    signmag : bool
        Output sign-magnitude (``mag``, ``neg = sign_a ^ sign_b``) instead of two's complement;
        an adder tree absorbs the sign for free, so this is the cheapest form.
    table_max_bits : int
        Largest number of magnitude input bits that get a full product table (2..12).
    method : str
        ``"lut"`` (the design) or ``"naive"``: decode to fixed point and multiply with ``*``,
        the baseline that the synthesis benchmark compares against. Both are exact.

    Ports
    -----
    i : In(stream)
        Payload ``a``: array of ``lanes`` codes of ``fmt_a``; ``b``: same for ``fmt_b``;
        ``last``: passed through unchanged.
    o : Out(stream)
        Payload ``p``: array of ``lanes`` products (``signed(W+1)``, or ``mag``/``neg``);
        ``invalid``: high when any lane had an Inf or NaN operand (those lanes output 0);
        ``last``. Latency 2 cycles; a refused output stalls the pipeline (nothing is lost).
    """

    def __init__(self, fmt_a="e2m1", fmt_b="e2m1", lanes=1, signmag=False, table_max_bits=6, method="lut"):
        self.method = check_choice("method", method, {"lut", "naive"})
        self.fmt_a = fpnum.get_format(fmt_a)
        self.fmt_b = fpnum.get_format(fmt_b)
        self.lanes = check_int("lanes", lanes, 1, 64)
        self.table_max_bits = check_int("table_max_bits", table_max_bits, 2, 12)
        self.signmag = bool(signmag)
        if self.signmag and self.method == "naive":
            raise ValueError("signmag must be False with method='naive' (it outputs two's complement)")
        try:
            self.frac_bits = fpnum.product_frac_bits(self.fmt_a, self.fmt_b)
            self.width = fpnum.product_width(self.fmt_a, self.fmt_b)
        except ValueError as error:
            raise ValueError(f"fmt_a/fmt_b: {error}") from None
        in_layout = data.StructLayout({
            "a": data.ArrayLayout(self.fmt_a.code_width, self.lanes),
            "b": data.ArrayLayout(self.fmt_b.code_width, self.lanes),
            "last": 1,
        })
        super().__init__({
            "i": In(stream.Signature(in_layout)),
            "o": Out(stream.Signature(product_layout(self.fmt_a, self.fmt_b, self.lanes, self.signmag))),
        })

    def elaborate(self, platform):
        m = Module()
        fa, fb = self.fmt_a, self.fmt_b
        pipe = Pipeline(m, 2, self.i.valid, self.o.ready)
        m.d.comb += [self.i.ready.eq(pipe.enable), self.o.valid.eq(pipe.out_valid)]

        # Stage 0: table lookup straight from the input codes, registered.
        stage0 = []
        any_special = []
        for lane in range(self.lanes):
            a, b = self.i.payload.a[lane], self.i.payload.b[lane]
            special = special_code(m, a, fa) | special_code(m, b, fb)
            any_special.append(special)
            if self.method == "naive":
                # The baseline the LUT design is measured against: decode both operands to
                # signed fixed point, then one generic multiplier (what `a * b` synthesizes to).
                def signed_value(code, fmt):
                    mag = _decoded_magnitude(code[:fmt.code_width - 1], fmt)
                    return Mux(code[fmt.code_width - 1], -mag, mag)
                value = Signal(signed(self.width + 1), name=f"l{lane}_naive")
                m.d.comb += value.eq(signed_value(a, fa) * signed_value(b, fb))
                shift = Const(0, 1)
            else:
                value, shift = magnitude_product(m, a[:fa.code_width - 1], fa, b[:fb.code_width - 1], fb,
                                                 self.table_max_bits)
            r_value = Signal.like(value, name=f"l{lane}_value")
            r_shift = Signal(max(len(shift), 1), name=f"l{lane}_shift")
            r_neg = Signal(name=f"l{lane}_neg")
            with m.If(pipe.enable):
                m.d.sync += [
                    r_value.eq(Mux(special, 0, value)),
                    r_shift.eq(shift),
                    r_neg.eq(a[fa.code_width - 1] ^ b[fb.code_width - 1]),
                ]
            stage0.append((r_value, r_shift, r_neg))
        r_invalid = Signal()
        r_last = Signal()
        with m.If(pipe.enable):
            m.d.sync += [r_invalid.eq(Cat(*any_special).any()), r_last.eq(self.i.payload.last)]

        # Stage 1: exponent shift and sign, registered into the output payload.
        with m.If(pipe.enable):
            for lane, (value, shift, neg) in enumerate(stage0):
                magnitude = (value << shift)[:self.width]
                if self.method == "naive":
                    m.d.sync += self.o.payload.p[lane].eq(value)
                elif self.signmag:
                    m.d.sync += [self.o.payload.p[lane].mag.eq(magnitude),
                                 self.o.payload.p[lane].neg.eq(neg)]
                else:
                    m.d.sync += self.o.payload.p[lane].eq(Mux(neg, -magnitude, magnitude))
            m.d.sync += [self.o.payload.invalid.eq(r_invalid), self.o.payload.last.eq(r_last)]
        return m
