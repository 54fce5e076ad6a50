"""Block RAM with a registered read (two cycles of read latency) and the synthesis target that
picks its implementation.

Why: an ECP5 DP16KD read without its output register has a 5.8 ns clock-to-out in nextpnr's
model (``python -m sim.synth_probe``), more than a whole 200 MHz cycle, and Yosys' ``synth_ecp5``
neither uses the output register (REGMODE OUTREG, 0.96 ns) nor folds a following register into
it. :class:`PipelinedRAM` therefore has the output register in its behaviour (the same in every
flow, so simulation is bit-exact with what an FPGA runs), and when elaborated for an ECP5 target
it instantiates the DP16KD primitives with REGMODE OUTREG itself.
"""

from dataclasses import dataclass
from types import SimpleNamespace

from amaranth.hdl import ClockSignal, Const, Elaboratable, Instance, Module, Signal, unsigned
from amaranth.lib.memory import Memory

__all__ = ["SynthTarget", "PipelinedRAM", "target_family"]


@dataclass(frozen=True)
class SynthTarget:
    """The ``platform`` object handed to elaboration for a vendor synthesis flow
    (``hw.emit.emit_core(..., target=SynthTarget("ecp5"))``, used by ``sim/synth.py``).

    ``family``: ``"ecp5"`` makes :class:`PipelinedRAM` instantiate DP16KD primitives; any other
    value (and no target at all, as for ``varaccel verilog`` and simulation) keeps the generic
    Amaranth ``Memory``, which every flow infers. It deliberately has no ``get_memory``
    method: Amaranth would hand every ``Memory`` to it."""

    family: str


def target_family(platform):
    """The family of a :class:`SynthTarget` passed as ``platform``, or ``None``."""
    return getattr(platform, "family", None) if isinstance(platform, SynthTarget) else None


# DP16KD aspect ratios: (data width, depth); address bits sit at the top of the 14-bit ADx bus.
_DP16KD_CONFIGS = ((18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))


class PipelinedRAM(Elaboratable):
    """Simple dual-port RAM (one write port, one read port, one clock domain ``sync``) whose
    read data passes an output register: two cycles of read latency.

    Write: ``mem[w_addr] <= w_data`` at a clock edge with ``w_en``.

    Read: both read stages load at a clock edge with ``r_en`` (one enable, so a stalled consumer
    freezes the pair): stage 1 takes ``mem[r_addr]``, stage 2 (``r_data``) takes stage 1. So
    ``r_data`` shows the word addressed two enabled edges ago. Stage 1 reads the memory before
    a write of the same edge takes effect (read first) in the generic model; the DP16KD leaves a
    read of the word that its other port writes at the same edge undefined, so a user must never
    use read data of an address written at the edge that read it (the cores here never read a
    word in the cycle it is written).

    ``platform``: a :class:`SynthTarget` of family ``"ecp5"`` gives DP16KD tiles with REGMODE
    OUTREG (CEB = stage 1 enable, OCEB = stage 2 enable), up to 16384 words deep; anything else
    gives an Amaranth ``Memory`` with a synchronous read port followed by a register.
    """

    def __init__(self, width, depth, name):
        self.width, self.depth, self.name = width, depth, name
        self.w_addr = Signal(range(max(depth, 2)), name=f"{name}_w_addr")
        self.w_data = Signal(width, name=f"{name}_w_data")
        self.w_en = Signal(name=f"{name}_w_en")
        self.r_addr = Signal(range(max(depth, 2)), name=f"{name}_r_addr")
        self.r_en = Signal(name=f"{name}_r_en")
        self.r_data = Signal(width, name=f"{name}_r_data")
        # port views shaped like an Amaranth Memory's ports (addr / en / data)
        self.read = SimpleNamespace(addr=self.r_addr, en=self.r_en, data=self.r_data)
        self.write = SimpleNamespace(addr=self.w_addr, data=self.w_data, en=self.w_en)

    def elaborate(self, platform):
        m = Module()
        if target_family(platform) == "ecp5" and self.depth <= _DP16KD_CONFIGS[-1][1]:
            self._dp16kd(m)
            return m
        m.submodules.mem = mem = Memory(shape=unsigned(self.width), depth=self.depth, init=[])
        rd = mem.read_port(transparent_for=())
        wr = mem.write_port()
        m.d.comb += [rd.addr.eq(self.r_addr), rd.en.eq(self.r_en),
                     wr.addr.eq(self.w_addr), wr.data.eq(self.w_data), wr.en.eq(self.w_en)]
        with m.If(self.r_en):
            m.d.sync += self.r_data.eq(rd.data)
        return m

    def _dp16kd(self, m):
        # the widest aspect ratio that holds the depth, tiled across the data width
        cw, cdepth = next((w, d) for w, d in _DP16KD_CONFIGS if d >= self.depth)
        abits = (cdepth - 1).bit_length()
        low = 14 - abits  # address bits below the word address (byte enables at x18)
        for t in range(-(-self.width // cw)):
            lo, hi = t * cw, min((t + 1) * cw, self.width)
            dout = Signal(cw, name=f"{self.name}_dob{t}")
            ports = {"p_DATA_WIDTH_A": cw, "p_DATA_WIDTH_B": cw,
                     "p_REGMODE_A": "NOREG", "p_REGMODE_B": "OUTREG",
                     "p_RESETMODE": "SYNC", "p_WRITEMODE_A": "NORMAL", "p_WRITEMODE_B": "NORMAL",
                     "p_CSDECODE_A": "0b000", "p_CSDECODE_B": "0b000",
                     "i_CLKA": ClockSignal(), "i_CEA": Const(1), "i_OCEA": Const(1), "i_RSTA": Const(0),
                     "i_WEA": self.w_en,
                     "i_CLKB": ClockSignal(), "i_CEB": self.r_en, "i_OCEB": self.r_en, "i_RSTB": Const(0),
                     "i_WEB": Const(0)}
            for c in range(3):
                ports[f"i_CSA{c}"] = ports[f"i_CSB{c}"] = Const(0)
            for a in range(14):
                if a >= low:
                    ports[f"i_ADA{a}"] = self.w_addr[a - low] if a - low < len(self.w_addr) else Const(0)
                    ports[f"i_ADB{a}"] = self.r_addr[a - low] if a - low < len(self.r_addr) else Const(0)
                else:
                    # x18: ADA1..0 are the write byte enables (both bytes); otherwise unused
                    ports[f"i_ADA{a}"] = Const(1 if cw == 18 and a < 2 else 0)
                    ports[f"i_ADB{a}"] = Const(0)
            for b in range(18):
                ports[f"i_DIA{b}"] = self.w_data[lo + b] if b < hi - lo else Const(0)
                ports[f"i_DIB{b}"] = Const(0)
                if b < cw:
                    ports[f"o_DOB{b}"] = dout[b]
            m.submodules[f"{self.name}_{t}"] = Instance("DP16KD", **ports)
            m.d.comb += self.r_data[lo:hi].eq(dout[:hi - lo])
