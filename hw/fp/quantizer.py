"""Float16/bfloat16/float32 -> low-bit FP quantizer, element-wise or OCP MX (E8M0 block scale)."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.numerics import fp as fpnum
from ..common import Pipeline, check_choice, check_int

__all__ = ["Quantizer", "IN_FORMATS", "quantizer_layouts"]

#: Input float formats: (exponent bits, mantissa bits, exponent bias).
IN_FORMATS = {"f32": (8, 23, 127), "f16": (5, 10, 15), "bf16": (8, 7, 127)}

# Width of the signed exponents k = floor(log2|x|) (|k| <= 150) and of k - X (|k - X| <= 277).
_KW = 10
_KPW = 11
# Stands for "no non-zero element" in the block maximum; below every real k.
_K_NONE = -(1 << (_KW - 1))


def quantizer_layouts(fmt, in_format, lanes, mx):
    """(input payload layout, output payload layout) of :class:`Quantizer` (see there)."""
    fmt = fpnum.get_format(fmt)
    ie, im, _ = IN_FORMATS[in_format]
    in_layout = data.StructLayout({"x": data.ArrayLayout(1 + ie + im, lanes), "last": 1})
    fields = {"codes": data.ArrayLayout(fmt.code_width, lanes)}
    if mx:
        fields["scale"] = 8
    fields["nan"] = 1
    fields["last"] = 1
    return in_layout, data.StructLayout(fields)


class _Lane:
    """Decoded input element: |x| = 1.frac * 2^k unless ``zero``; ``inf``/``nan`` flags."""

    def __init__(self, im, name):
        self.sign = Signal(name=f"{name}_sign")
        self.frac = Signal(im, name=f"{name}_frac")
        self.k = Signal(signed(_KW), name=f"{name}_k")
        self.zero = Signal(name=f"{name}_zero")
        self.inf = Signal(name=f"{name}_inf")
        self.nan = Signal(name=f"{name}_nan")

    def fields(self):
        return [self.sign, self.frac, self.k, self.zero, self.inf, self.nan]

    def eq(self, other):
        return [a.eq(b) for a, b in zip(self.fields(), other.fields())]


def _decode(m, bits, ie, im, bias, name):
    """Combinational decode of raw IEEE bits into a normalized :class:`_Lane`.

    Normals: frac = M, k = E - bias. Subnormals (E == 0, M != 0): with lz leading zeros in M,
    the leading one is dropped by shifting M left by lz + 1, and k = -bias - lz (the exact
    floor(log2|x|)). The value 1.frac * 2^k is then the input value exactly.
    """
    lane = _Lane(im, name)
    man = bits[:im]
    exp = bits[im:im + ie]
    lz = Signal(range(im + 1), name=f"{name}_lz")
    m.d.comb += lz.eq(im)
    for i in range(im):  # priority encoder: the highest set bit wins (last assignment)
        with m.If(man[i]):
            m.d.comb += lz.eq(im - 1 - i)
    sub = exp == 0
    norm_man = Signal(im, name=f"{name}_nman")
    m.d.comb += norm_man.eq((man << (lz + 1))[:im])
    m.d.comb += [
        lane.sign.eq(bits[im + ie]),
        lane.frac.eq(Mux(sub, norm_man, man)),
        lane.k.eq(Mux(sub, -bias - lz, exp - bias)),
        lane.zero.eq(sub & (man == 0)),
        lane.inf.eq((exp == (1 << ie) - 1) & (man == 0)),
        lane.nan.eq((exp == (1 << ie) - 1) & (man != 0)),
    ]
    return lane


class _Aligned:
    """An element after alignment to the target quantum: integer part ``r``, guard and sticky
    bits, biased-exponent-minus-one field ``efm1``, ``big`` (|x / 2^X| >= 2^(emax + 1)), and
    the flags that the rounding stage needs."""

    def __init__(self, fmt, name):
        self.r = Signal(fmt.mbits + 1, name=f"{name}_r")
        self.guard = Signal(name=f"{name}_guard")
        self.sticky = Signal(name=f"{name}_sticky")
        self.efm1 = Signal(fmt.ebits, name=f"{name}_efm1")
        self.big = Signal(name=f"{name}_big")
        self.sign = Signal(name=f"{name}_sign")
        self.zero = Signal(name=f"{name}_zero")
        self.inf = Signal(name=f"{name}_inf")
        self.nan = Signal(name=f"{name}_nan")

    def fields(self):
        return [self.r, self.guard, self.sticky, self.efm1, self.big, self.sign, self.zero,
                self.inf, self.nan]

    def eq(self, other):
        return [a.eq(b) for a, b in zip(self.fields(), other.fields())]


def _align(m, lane, X, fmt, im, name):
    """Combinational alignment of a decoded element divided by 2^X (X signed, 0 in element mode).

    With k' = k - X and emin = 1 - bias of the target, the target quantum is
    2^(max(k', emin) - mbits), so the element in quantum units is 1.frac / 2^(im - mbits + d),
    d = max(0, emin - k') (the denormalization in the target's subnormal range). d is capped
    at mbits + 2, beyond which the value is below half a quantum and rounds to 0.
    """
    out = _Aligned(fmt, name)
    mb = fmt.mbits
    emin = 1 - fmt.bias
    kp = Signal(signed(_KPW), name=f"{name}_kp")
    m.d.comb += kp.eq(lane.k - X)
    dd = Signal(range(mb + 3), name=f"{name}_dd")
    m.d.comb += dd.eq(Mux(kp <= emin - (mb + 2), mb + 2, Mux(kp < emin, emin - kp, 0)))
    ext = Signal(mb + 2 + im + 1, name=f"{name}_ext")
    m.d.comb += ext.eq(Cat(Const(0, mb + 2), lane.frac, Const(1, 1)) >> dd)
    m.d.comb += [
        out.r.eq(ext[im + 2:]),
        out.guard.eq(ext[im + 1]),
        out.sticky.eq(ext[:im + 1].any()),
        out.efm1.eq(Mux(kp < emin, 0, kp - emin)),
        out.big.eq(kp > fmt.emax),
        out.sign.eq(lane.sign),
        out.zero.eq(lane.zero),
        out.inf.eq(lane.inf),
        out.nan.eq(lane.nan),
    ]
    return out


def _round_pack(m, a, fmt, bad, name):
    """Combinational RNE, saturation and code packing of an :class:`_Aligned` element."""
    mb = fmt.mbits
    cw = fmt.code_width
    n = Signal(mb + 2, name=f"{name}_n")
    m.d.comb += n.eq(a.r + (a.guard & (a.sticky | a.r[0])))
    mag = Signal(fmt.ebits + mb + 1, name=f"{name}_mag")
    m.d.comb += mag.eq((a.efm1 << mb) + n)
    sat = a.big | a.inf | (mag > fmt.max_code)
    code = Signal(cw, name=f"{name}_code")
    # Muxes rather than If/Elif: no overlapping casez in the Verilog (Verilator -Wall clean).
    mag_out = Mux(a.zero, 0, Mux(sat, fmt.max_code, mag))[:cw - 1]
    m.d.comb += code.eq(Mux(bad, 0, Mux(a.nan, fmt.nan_code if fmt.has_nan else 0,
                                        Cat(mag_out, a.sign))))
    return code


def _max(m, a, b, name):
    out = Signal(signed(_KW), name=name)
    m.d.comb += out.eq(Mux(a > b, a, b))
    return out


class Quantizer(wiring.Component):
    """Cast of IEEE floats to a low-bit FP format, one element per lane per cycle.

    Bit for bit :func:`golden.numerics.fp.quantize_codes` (element mode) or
    :func:`golden.numerics.fp.mx_quantize` (MX mode) on the same float bits: round to nearest,
    ties to even (also in the target's subnormal range), sign kept on zero, finite overflow
    and +-Inf saturate to +-max_finite, NaN -> the format's positive NaN code (0 when the
    format has none). Computed from the bit fields with integer arithmetic: input subnormals
    are normalized by a leading-zero count, so no float operation and no double rounding.

    Parameters
    ----------
    fmt : str
        Element format (``"e2m1"``, ``"e1m2"``, ``"e2m3"``, ``"e3m2"``, ``"e4m3"``, ``"e5m2"``).
    in_format : str
        Input float format: ``"f32"``, ``"f16"`` or ``"bf16"`` (raw IEEE bits).
    lanes : int
        Elements per beat, 1..32; in MX mode it must divide ``block``.
    mx : bool
        MX mode: one E8M0 shared scale per block of ``block`` consecutive elements.
    block : int
        MX block size, a power of two in 2..256 (checked always, used only in MX mode).

    Ports
    -----
    i : In(stream)
        Payload ``x``: array of ``lanes`` raw float bits (``in_format``); ``last``: packet end.
    o : Out(stream)
        Payload ``codes``: array of ``lanes`` codes of ``fmt``; ``scale`` (MX mode only): the
        E8M0 code of the beat's block (X + 127, or 255 for a block with any NaN or +-Inf, whose
        codes are then all 0); ``nan``: the beat had a NaN input lane; ``last``: passed through.
    nan_seen : Out(1)
        Sticky: set one cycle after a beat with a NaN lane is accepted; cleared only by reset.

    Element mode: a 3-stage pipeline (decode/normalize, align, round/pack), latency 3 cycles,
    one beat per cycle; a refused output freezes the pipeline (nothing lost or duplicated).

    MX mode: a decode stage feeds a ping-pong buffer of two blocks (one ``Memory`` of
    ``2 * block / lanes`` entries of decoded elements: one write and one read port). While a
    block is written, its max floor(log2|x|) over the non-zero elements (kmax) and an
    any-NaN/Inf flag are accumulated; the shared exponent is X = clamp(kmax - emax, -127, 127)
    (-127 for an all-zero block). A full block is read out through align (k - X: exact
    division by 2^X) and round/pack stages while the next block is written into the other
    bank, so blocks stream back to back at one beat per cycle. Latency: ``block / lanes + 4``
    cycles for the first beat of a block (the whole block must have arrived), 5 for its last.
    A refused output freezes the read side; the write side fills the free bank and then
    refuses input. Blocks are counted in beats from reset; a packet should end (``last``) on
    a block end. If ``last`` comes earlier, the block is closed there: its scale is computed
    from the elements received (as if the block were padded with zeros), only the received
    beats come out, and the next beat starts a new block.
    """

    def __init__(self, fmt="e2m1", in_format="f32", lanes=1, mx=False, block=32):
        self.fmt = fpnum.get_format(fmt)
        self.in_format = check_choice("in_format", in_format, IN_FORMATS)
        self.lanes = check_int("lanes", lanes, 1, 32)
        if not isinstance(mx, bool):
            raise ValueError(f"mx must be a boolean, not {mx!r}")
        self.mx = mx
        self.block = check_int("block", block, 2, 256, power_of_two=True)
        if mx and block % lanes:
            raise ValueError(f"lanes must divide block in mx mode: lanes={lanes}, block={block}")
        self.beats_per_block = block // lanes
        in_layout, out_layout = quantizer_layouts(self.fmt, in_format, self.lanes, mx)
        super().__init__({
            "i": In(stream.Signature(in_layout)),
            "o": Out(stream.Signature(out_layout)),
            "nan_seen": Out(1),
        })

    # -- shared pieces ------------------------------------------------------------------

    def _decode_stage(self, m, enable, in_valid):
        """Stage 0 registers: decoded lanes, beat ``nan`` and ``last``; returns them."""
        ie, im, bias = IN_FORMATS[self.in_format]
        s0 = [_Lane(im, f"s0_l{n}") for n in range(self.lanes)]
        s0_last = Signal(name="s0_last")
        s0_nan = Signal(name="s0_nan")
        s0_valid = Signal(name="s0_valid")
        decoded = [_decode(m, self.i.payload.x[n], ie, im, bias, f"dec_l{n}")
                   for n in range(self.lanes)]
        with m.If(enable):
            for reg, comb in zip(s0, decoded):
                m.d.sync += reg.eq(comb)
            m.d.sync += [
                s0_last.eq(self.i.payload.last),
                s0_nan.eq(Cat(*[d.nan for d in decoded]).any()),
                s0_valid.eq(in_valid),
            ]
        return s0, s0_last, s0_nan, s0_valid

    def elaborate(self, platform):
        m = Module()
        if self.mx:
            s0_valid, s0_nan = self._elaborate_mx(m)
        else:
            s0_valid, s0_nan = self._elaborate_elementwise(m)
        with m.If(s0_valid & s0_nan):
            m.d.sync += self.nan_seen.eq(1)
        return m

    # -- element mode -------------------------------------------------------------------

    def _elaborate_elementwise(self, m):
        fmt = self.fmt
        pipe = Pipeline(m, 3, self.i.valid, self.o.ready)
        m.d.comb += [self.i.ready.eq(pipe.enable), self.o.valid.eq(pipe.out_valid)]
        s0, s0_last, s0_nan, s0_valid = self._decode_stage(m, pipe.enable, self.i.valid)

        # Stage 1: align to the target quantum.
        s1 = [_Aligned(fmt, f"s1_l{n}") for n in range(self.lanes)]
        s1_last = Signal(name="s1_last")
        s1_nan = Signal(name="s1_nan")
        with m.If(pipe.enable):
            for n, (reg, lane) in enumerate(zip(s1, s0)):
                m.d.sync += reg.eq(_align(m, lane, Const(0, signed(2)), fmt,
                                          IN_FORMATS[self.in_format][1], f"al_l{n}"))
            m.d.sync += [s1_last.eq(s0_last), s1_nan.eq(s0_nan)]

        # Stage 2: round, saturate, pack into the output payload.
        with m.If(pipe.enable):
            for n, a in enumerate(s1):
                m.d.sync += self.o.payload.codes[n].eq(_round_pack(m, a, fmt, Const(0, 1), f"rp_l{n}"))
            m.d.sync += [self.o.payload.last.eq(s1_last), self.o.payload.nan.eq(s1_nan)]
        return s0_valid, s0_nan

    # -- MX mode ------------------------------------------------------------------------

    def _elaborate_mx(self, m):
        fmt = self.fmt
        ie, im, bias = IN_FORMATS[self.in_format]
        nbeats = self.beats_per_block
        ibits = max(1, (nbeats - 1).bit_length())

        # Write side: stage 0 decodes; its beat is written when the current bank is free.
        wb = Signal(name="wr_bank")
        wi = Signal(ibits, name="wr_index")
        full = Signal(2, name="bank_full")
        w_ok = Signal(name="wr_ok")
        m.d.comb += w_ok.eq(~full.bit_select(wb, 1))
        s0_valid_w = Signal()
        in_ready = Signal(name="in_ready")
        m.d.comb += [in_ready.eq(~s0_valid_w | w_ok), self.i.ready.eq(in_ready)]
        s0, s0_last, s0_nan, s0_valid = self._decode_stage(m, in_ready, self.i.valid)
        m.d.comb += s0_valid_w.eq(s0_valid)
        w_fire = Signal(name="wr_fire")
        m.d.comb += w_fire.eq(s0_valid & w_ok)

        # Buffer entry: per lane sign, frac, k, zero; then the beat's nan and last.
        lane_w = 1 + im + _KW + 1
        width = lane_w * self.lanes + 2
        mem = Memory(shape=unsigned(width), depth=2 * nbeats, init=[])
        m.submodules.buffer = mem
        wp = mem.write_port()
        rp = mem.read_port(domain="sync")
        m.d.comb += [
            wp.addr.eq(Cat(wi[:max(0, (nbeats - 1).bit_length())], wb)),
            wp.data.eq(Cat(*[Cat(l.sign, l.frac, l.k, l.zero) for l in s0], s0_nan, s0_last)),
            wp.en.eq(w_fire),
        ]

        # Block max of floor(log2|x|) over non-zero lanes and the NaN/Inf flag.
        keys = [Mux(l.zero, _K_NONE, l.k) for l in s0]
        level = 0
        while len(keys) > 1:
            nxt = [_max(m, keys[j], keys[j + 1], f"kmax{level}_{j // 2}")
                   for j in range(0, len(keys) - 1, 2)]
            if len(keys) % 2:
                nxt.append(keys[-1])
            keys, level = nxt, level + 1
        beat_max = Signal(signed(_KW), name="beat_kmax")
        m.d.comb += beat_max.eq(keys[0])
        beat_bad = Cat(*[l.inf | l.nan for l in s0]).any()
        run_max = Signal(signed(_KW), name="run_kmax")
        run_bad = Signal(name="run_bad")
        first = wi == 0
        new_max = Signal(signed(_KW), name="new_kmax")
        new_bad = Signal(name="new_bad")
        m.d.comb += [
            new_max.eq(Mux(first | (beat_max > run_max), beat_max, run_max)),
            new_bad.eq(beat_bad | (~first & run_bad)),
        ]
        bank_kmax = [Signal(signed(_KW), name=f"bank{b}_kmax") for b in range(2)]
        bank_bad = [Signal(name=f"bank{b}_bad") for b in range(2)]
        bank_end = [Signal(ibits, name=f"bank{b}_end") for b in range(2)]
        full_set = Signal(2)
        full_clr = Signal(2)
        m.d.sync += full.eq((full & ~full_clr) | full_set)
        with m.If(w_fire):
            m.d.sync += [run_max.eq(new_max), run_bad.eq(new_bad)]
            with m.If((wi == nbeats - 1) | s0_last):
                m.d.comb += full_set.eq(Mux(wb, 0b10, 0b01))
                for b in range(2):
                    with m.If(wb == b):
                        m.d.sync += [bank_kmax[b].eq(new_max), bank_bad[b].eq(new_bad),
                                     bank_end[b].eq(wi)]
                m.d.sync += [wb.eq(~wb), wi.eq(0)]
            with m.Else():
                m.d.sync += wi.eq(wi + 1)

        # Read side: R0 = buffer read (+ block scale), R1 = align, R2 = round/pack.
        rb = Signal(name="rd_bank")
        ri = Signal(ibits, name="rd_index")
        r_avail = Signal(name="rd_avail")
        m.d.comb += r_avail.eq(full.bit_select(rb, 1))
        pipe = Pipeline(m, 3, r_avail, self.o.ready)
        m.d.comb += self.o.valid.eq(pipe.out_valid)
        m.d.comb += [
            rp.addr.eq(Cat(ri[:max(0, (nbeats - 1).bit_length())], rb)),
            rp.en.eq(pipe.enable),
        ]
        cur_kmax = Mux(rb, bank_kmax[1], bank_kmax[0])
        cur_bad = Mux(rb, bank_bad[1], bank_bad[0])
        cur_end = Mux(rb, bank_end[1], bank_end[0])
        kd = Signal(signed(_KPW), name="kmax_minus_emax")
        m.d.comb += kd.eq(cur_kmax - fmt.emax)
        x_new = Signal(signed(8), name="x_new")
        m.d.comb += x_new.eq(Mux(kd < -127, -127, Mux(kd > 127, 127, kd)))
        r0_x = Signal(signed(8), name="r0_x")
        r0_bad = Signal(name="r0_bad")
        with m.If(pipe.enable):
            m.d.sync += [r0_x.eq(x_new), r0_bad.eq(cur_bad)]
            with m.If(r_avail):
                with m.If(ri == cur_end):
                    m.d.comb += full_clr.eq(Mux(rb, 0b10, 0b01))
                    m.d.sync += [rb.eq(~rb), ri.eq(0)]
                with m.Else():
                    m.d.sync += ri.eq(ri + 1)

        r0 = []
        for n in range(self.lanes):
            word = rp.data[n * lane_w:(n + 1) * lane_w]
            lane = _Lane(im, f"r0_l{n}")
            m.d.comb += [
                lane.sign.eq(word[0]),
                lane.frac.eq(word[1:1 + im]),
                lane.k.eq(word[1 + im:1 + im + _KW].as_signed()),
                lane.zero.eq(word[1 + im + _KW]),
                lane.inf.eq(0),
                lane.nan.eq(0),
            ]
            r0.append(lane)
        r0_nan = rp.data[width - 2]
        r0_last = rp.data[width - 1]

        r1 = [_Aligned(fmt, f"r1_l{n}") for n in range(self.lanes)]
        r1_last = Signal(name="r1_last")
        r1_nan = Signal(name="r1_nan")
        r1_bad = Signal(name="r1_bad")
        r1_scale = Signal(8, name="r1_scale")
        with m.If(pipe.enable):
            for n, (reg, lane) in enumerate(zip(r1, r0)):
                m.d.sync += reg.eq(_align(m, lane, r0_x, fmt, im, f"al_l{n}"))
            m.d.sync += [
                r1_last.eq(r0_last), r1_nan.eq(r0_nan), r1_bad.eq(r0_bad),
                r1_scale.eq(Mux(r0_bad, fpnum.E8M0_NAN, r0_x + fpnum.E8M0_BIAS)),
            ]

        with m.If(pipe.enable):
            for n, a in enumerate(r1):
                m.d.sync += self.o.payload.codes[n].eq(_round_pack(m, a, fmt, r1_bad, f"rp_l{n}"))
            m.d.sync += [self.o.payload.last.eq(r1_last), self.o.payload.nan.eq(r1_nan),
                         self.o.payload.scale.eq(r1_scale)]
        return s0_valid, s0_nan
