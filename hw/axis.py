"""AXI4-Stream top-level wrapper: flattens a stream Component's ports to vendor-friendly names."""

from dataclasses import dataclass

from amaranth.hdl import Elaboratable, Module, Shape, Signal, ClockDomain
from amaranth.lib import data, stream, wiring

__all__ = ["FieldSpec", "StreamPort", "AXIStreamTop"]


@dataclass(frozen=True)
class FieldSpec:
    """One field of a stream's ``tdata`` word: ``name`` at bits ``[offset, offset + width)``."""

    name: str
    offset: int
    width: int
    signed: bool = False


@dataclass(frozen=True)
class StreamPort:
    """A stream port of an emitted top.

    ``prefix`` is the Verilog name prefix (``s_axis_<member>`` for inputs, ``m_axis_<member>``
    for outputs); ``fields`` describes how the payload is packed into ``<prefix>_tdata``;
    ``has_last`` tells whether ``<prefix>_tlast`` exists (the payload had a ``last`` field).
    """

    member: str
    prefix: str
    direction: str  # "in" (slave, s_axis) or "out" (master, m_axis)
    data_width: int
    fields: tuple
    has_last: bool


def _flatten_fields(shape, base=0, prefix=""):
    """Fields of a payload shape as (name, offset, width, signed), nested layouts dotted."""
    if isinstance(shape, data.StructLayout):
        out = []
        for name, field in shape:
            out += _flatten_fields(field.shape, base + field.offset, prefix + name + ".")
        return out
    if isinstance(shape, data.ArrayLayout):
        out = []
        for index in range(shape.length):
            out += _flatten_fields(shape.elem_shape, base + index * Shape.cast(shape.elem_shape).width,
                                   f"{prefix}{index}.")
        return out
    cast = Shape.cast(shape)
    return [(prefix.rstrip("."), base, cast.width, cast.signed)]


class AXIStreamTop(Elaboratable):
    """Wraps ``core`` so that its stream members become AXI4-Stream ports.

    Every ``In(stream.Signature(...))`` member ``x`` becomes ``s_axis_x_tvalid``,
    ``s_axis_x_tready``, ``s_axis_x_tdata`` (and ``s_axis_x_tlast`` when the payload is a
    ``StructLayout`` with a 1-bit ``last`` field; ``tdata`` then holds the other fields in their
    layout order, packed from bit 0). ``Out`` streams become ``m_axis_x_*`` likewise. Any other
    port keeps its member name. The clock and the active-high synchronous reset are ``clk`` and
    ``rst``. ``ports`` lists the top's Verilog ports; ``stream_ports`` describes the packing so
    that testbenches and the CLI can pack and unpack ``tdata`` without knowing the core.
    """

    def __init__(self, core: wiring.Component):
        self.core = core
        self.stream_ports = []
        self._connections = []  # (top signal, core value, direction)
        self.ports = []
        for member_name, member in core.signature.members.items():
            interface = getattr(core, member_name)
            if member.is_signature and isinstance(member.signature.flip() if member.flow == wiring.In
                                                  else member.signature, stream.Signature):
                self._wrap_stream(member_name, member, interface)
            elif member.is_port:
                direction = "in" if member.flow == wiring.In else "out"
                top = Signal(Shape.cast(member.shape), name=member_name)
                self._connections.append((top, interface, direction))
                self.ports.append(top)
            else:
                raise TypeError(f"member {member_name!r} is neither a stream nor a port")

    def _wrap_stream(self, member_name, member, interface):
        is_input = member.flow == wiring.In
        prefix = ("s_axis_" if is_input else "m_axis_") + member_name
        payload = interface.payload
        shape = payload.shape() if isinstance(payload, data.View) else Shape.cast(payload.shape())
        has_last = (isinstance(shape, data.StructLayout) and "last" in shape.members
                    and Shape.cast(shape.members["last"]).width == 1)
        fields = []
        data_parts = []  # (core value) packed from bit 0 upwards
        offset = 0
        if isinstance(shape, data.StructLayout):
            for name, field in shape:
                if has_last and name == "last":
                    continue
                value = payload[name]
                for sub, sub_off, width, signed in _flatten_fields(field.shape):
                    fields.append(FieldSpec(name + ("." + sub if sub else ""), offset + sub_off, width, signed))
                data_parts.append(value)
                offset += Shape.cast(field.shape).width
        else:
            for sub, sub_off, width, signed in _flatten_fields(shape):
                fields.append(FieldSpec(sub or "data", sub_off, width, signed))
            data_parts.append(payload)
            offset = Shape.cast(shape).width
        width = max(offset, 1)
        tvalid = Signal(name=prefix + "_tvalid")
        tready = Signal(name=prefix + "_tready")
        tdata = Signal(width, name=prefix + "_tdata")
        tops = [tvalid, tready, tdata]
        conns = [(tvalid, interface.valid, "in" if is_input else "out"),
                 (tready, interface.ready, "out" if is_input else "in")]
        bit = 0
        for part in data_parts:
            w = len(part.as_value()) if isinstance(part, data.View) else len(part)
            conns.append((tdata[bit:bit + w], part, "in" if is_input else "out"))
            bit += w
        if has_last:
            tlast = Signal(name=prefix + "_tlast")
            tops.append(tlast)
            conns.append((tlast, payload["last"], "in" if is_input else "out"))
        self._connections += conns
        self.ports += tops
        self.stream_ports.append(StreamPort(member_name, prefix, "in" if is_input else "out",
                                            width, tuple(fields), has_last))

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = self.core
        for top, inner, direction in self._connections:
            if direction == "in":
                m.d.comb += inner.eq(top)
            else:
                m.d.comb += top.eq(inner)
        return m
