"""Registered multiplier: ``p <= a * b`` at each enabled clock edge, as the attention core writes
its products (one register after the multiply).

Why: an ECP5 MULT18X18D used combinationally takes 3.9 ns from its inputs to its outputs in
nextpnr's model, and a product register in the fabric adds the routing out of the DSP block on
top (7.0 ns between two fabric registers in an otherwise empty LFE5U-85F, under 150 MHz).
Yosys' ``synth_ecp5`` neither uses the block's own output register nor folds a following
register into it. With REG_OUTPUT_CLK set the multiply is a setup time at the block's inputs
(3.5 ns) and its clock-to-out is 0.74 ns. So, elaborated for ``SynthTarget("ecp5")`` and for
operands that fit (each a signed 18-bit value: unsigned up to 17 bits, signed up to 18), the
product is a MULT18X18D instance with its output register (clock enable CE0, synchronous reset
RST0 from the domain's reset, as an Amaranth register has); otherwise it is ``a * b`` into a
register. Both have the same cycles and values.

An operand may also pass an input register first (``register_a`` / ``register_b``: loaded at
every clock edge, cleared by the domain's reset, so the product is of that operand's value one
cycle earlier). On ECP5 this is the block's own input register, whose setup is 0.08 ns where the
multiply's is 3.5 ns: a fabric register driving the block's input (one register fanning out to
every rescale multiplier was the attention core's critical path, 4.5 ns of routing into the
3.5 ns setup) then has the whole cycle for its route. Elsewhere it is a fabric register.
"""

from amaranth.hdl import ClockSignal, Const, Instance, ResetSignal, Signal

from ..common.ram import target_family

__all__ = ["registered_product"]

_DSP_BITS = 18


def _fits_dsp(value):
    return len(value) <= (_DSP_BITS if value.shape().signed else _DSP_BITS - 1)


def registered_product(m, platform, a, b, name, en=None, *, register_a=False, register_b=False):
    """A register (a new ``Signal`` named ``name``, shape of ``a * b``) loaded with ``a * b`` at
    each clock edge where ``en`` (default: every edge) is high; with ``register_a`` (or
    ``register_b``) the product takes ``a`` (``b``) as it was at the clock edge before."""
    shape = (a * b).shape()
    p = Signal(shape, name=name)
    if target_family(platform) != "ecp5" or not (_fits_dsp(a) and _fits_dsp(b)) or len(p) > 2 * _DSP_BITS:
        if register_a:
            a_reg = Signal(a.shape(), name=f"{name}_ra")
            m.d.sync += a_reg.eq(a)
            a = a_reg
        if register_b:
            b_reg = Signal(b.shape(), name=f"{name}_rb")
            m.d.sync += b_reg.eq(b)
            b = b_reg
        if en is None:
            m.d.sync += p.eq(a * b)
        else:
            with m.If(en):
                m.d.sync += p.eq(a * b)
        return p
    # Operands sign- or zero-extended to 18 bits, multiplied as signed: the 36-bit product is
    # exact for both, and p takes its low bits.
    a18 = Signal(_DSP_BITS, name=f"{name}_a")
    b18 = Signal(_DSP_BITS, name=f"{name}_b")
    m.d.comb += [a18.eq(a.as_signed() if a.shape().signed else a), b18.eq(b.as_signed() if b.shape().signed else b)]
    out = Signal(2 * _DSP_BITS, name=f"{name}_p36")
    ports = {"p_REG_OUTPUT_CLK": "CLK0", "p_REG_OUTPUT_CE": "CE0", "p_REG_OUTPUT_RST": "RST0",
             "p_GSR": "DISABLED", "p_RESETMODE": "SYNC",
             "i_SIGNEDA": Const(1), "i_SIGNEDB": Const(1), "i_SOURCEA": Const(0), "i_SOURCEB": Const(0),
             "i_CLK0": ClockSignal(), "i_CE0": Const(1) if en is None else en, "i_RST0": ResetSignal()}
    for k in range(1, 4):
        ports[f"i_CLK{k}"] = Const(0)
        ports[f"i_CE{k}"] = Const(0)
        ports[f"i_RST{k}"] = Const(0)
    # Input registers: clock CLK0, always enabled (CE1 tied high), reset with the domain (RST0).
    for port, registered in (("A", register_a), ("B", register_b)):
        if registered:
            ports.update({f"p_REG_INPUT{port}_CLK": "CLK0", f"p_REG_INPUT{port}_CE": "CE1",
                          f"p_REG_INPUT{port}_RST": "RST0"})
    if register_a or register_b:
        ports["i_CE1"] = Const(1)
    for i in range(_DSP_BITS):
        ports[f"i_A{i}"] = a18[i]
        ports[f"i_B{i}"] = b18[i]
        ports[f"i_C{i}"] = Const(0)
    for i in range(2 * _DSP_BITS):
        ports[f"o_P{i}"] = out[i]
    m.submodules[f"{name}_dsp"] = Instance("MULT18X18D", **ports)
    m.d.comb += p.eq(out[:len(p)])
    return p
