"""LSD radix sorter: per-digit histograms while loading, prefix sums, scatter between ping-pong RAMs."""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..common import check_int

__all__ = ["RadixSorter", "digit_slices", "sorter_cycles", "SUPPORTED_LANES"]

#: Lane counts P that RadixSorter and TopK implement (P > 1 is future work, see the docstring).
SUPPORTED_LANES = (1,)


def digit_slices(key_bits, radix_bits):
    """``[(lo, hi)]`` bit ranges of the digits, least significant first (the top one may be short)."""
    passes = -(-key_bits // radix_bits)
    return [(p * radix_bits, min((p + 1) * radix_bits, key_bits)) for p in range(passes)]


def sorter_cycles(n, key_bits, radix_bits, skipped=0):
    """Cycles from the first input beat to the last output beat of one packet of ``n`` keys
    with no stalls and an idle sorter (the measured figure is this, see the class docstring)."""
    passes = -(-key_bits // radix_bits)
    return n + 2 + (1 << radix_bits) + (passes - skipped) * (n + 2) + skipped + n + 1


class RadixSorter(wiring.Component):
    """Stable LSD radix sort of a packet of unsigned keys; emits (key, index) in key order.

    Bit for bit :func:`golden.numerics.sort.sort` with ``key_bits``/``radix_bits`` of the core:
    ascending, or descending (= ascending on the complemented key), ties always lower index first.

    Operation of one packet of ``n`` keys (``D = ceil(key_bits / radix_bits)`` digits,
    ``B = 2**radix_bits`` buckets):

    1. **Load** (``n`` cycles, one key per cycle): the entry ``(key, index)`` is written at
       address ``index`` of the load RAM, and the ``D`` histograms of ALL digits are counted at
       once (a histogram does not depend on the order of the keys, so no pass needs its own
       counting read). A descending packet stores the complemented key.
    2. **Prefix** (``B`` cycles): the ``D`` histograms are turned in place into exclusive
       prefix sums (bucket base addresses) by rotating the counter registers through one adder
       per digit. A digit whose keys all fall in one bucket is marked: its pass would be the
       identity permutation and is skipped (1 cycle instead of ``n + 2``).
    3. **Passes** (``n + 2`` cycles each): digit ``p`` (least significant first) reads the
       source RAM in address order and writes each entry to ``base[digit]++`` of the other RAM
       (ping-pong); stable by construction.
    4. **Emit** (``n`` beats): the RAM holding the result is read out in address order.

    Cycles from the first input beat to the last output beat with no stalls:
    ``n + 2 + B + (D - s) * (n + 2) + s + n + 1`` for ``s`` skipped passes
    (:func:`sorter_cycles`; 16-bit keys, n = 4096: 24 611 for R = 4, 16 647 for R = 8).

    Double buffering: the next packet is loaded while the previous one is emitted, into the
    RAM being read, behind the read pointer (a write to address a waits until a has been read),
    so one packet follows another with the emit phase hidden. Sorting a packet waits until
    the previous packet's emission has finished (the passes use both RAMs).

    Parameters
    ----------
    key_bits : int
        Key width W, 1..32.
    radix_bits : int
        Digit width R, 1..8 (``2**R`` counters per digit, kept in registers), at most W.
    max_len : int
        Largest packet N, 2..65536. A longer packet is truncated: keys after the N-th are
        accepted and dropped, the first N are sorted, and every output beat of that packet has
        ``overflow`` set.
    lanes : int
        Keys per beat P. Only P = 1 is implemented (ValueError otherwise).
    index_in : bool
        The input carries each key's ``index`` (which is stored and emitted instead of the
        arrival position; used by :class:`hw.sort.topk.TopK` to sort its selection).

    Ports
    -----
    i : In(stream)
        ``key``: W bits; ``descending``: sort direction, sampled on the packet's FIRST beat;
        ``last``: the packet's final key (a packet has 1..N keys, more are truncated).
        ``index`` only with ``index_in``.
    o : Out(stream)
        ``key`` (the original key), ``index`` (position of the key in its input packet),
        ``overflow`` (the packet was truncated), ``last`` (the packet's final beat). Exactly
        one beat per stored key.
    """

    def __init__(self, key_bits=16, radix_bits=4, max_len=4096, lanes=1, index_in=False):
        self.key_bits = check_int("key_bits", key_bits, 1, 32)
        self.radix_bits = check_int("radix_bits", radix_bits, 1, min(8, key_bits))
        self.max_len = check_int("max_len", max_len, 2, 65536)
        self.lanes = check_int("lanes", lanes, min(SUPPORTED_LANES), max(SUPPORTED_LANES))
        self.index_in = bool(index_in)
        self.passes = -(-self.key_bits // self.radix_bits)
        self.index_bits = max(1, (self.max_len - 1).bit_length())
        self.count_bits = self.max_len.bit_length()
        fields = {"key": unsigned(self.key_bits), "descending": 1}
        if self.index_in:
            fields["index"] = unsigned(self.index_bits)
        fields["last"] = 1
        out_layout = data.StructLayout({"key": unsigned(self.key_bits), "index": unsigned(self.index_bits),
                                        "overflow": 1, "last": 1})
        super().__init__({"i": In(stream.Signature(data.StructLayout(fields))),
                          "o": Out(stream.Signature(out_layout))})

    def elaborate(self, platform):
        m = Module()
        W, R, N, D = self.key_bits, self.radix_bits, self.max_len, self.passes
        B = 1 << R
        IW, CW = self.index_bits, self.count_bits
        key_mask = (1 << W) - 1
        slices = digit_slices(W, R)

        mems, rds, wrs = [], [], []
        for b in range(2):
            mem = Memory(shape=unsigned(W + IW), depth=N, init=[])
            m.submodules[f"ram{b}"] = mem
            mems.append(mem)
            rds.append(mem.read_port(transparent_for=()))
            wrs.append(mem.write_port())
        for b in range(2):
            m.d.comb += [rds[b].en.eq(0), wrs[b].en.eq(0)]

        # Histograms, turned into bucket base addresses by the prefix phase: one small RAM of
        # B counters per digit with an asynchronous read (distributed RAM), so that a
        # read-modify-write takes one cycle and back-to-back equal digits need no forwarding.
        hrd, hwr = [], []
        for p in range(D):
            mem = Memory(shape=unsigned(CW), depth=B, init=[])
            m.submodules[f"hist{p}"] = mem
            hwr.append(mem.write_port())
            hrd.append(mem.read_port(domain="comb"))
            m.d.comb += hwr[p].en.eq(0)
        skip = Signal(D)

        # ---- load side ----
        lb = Signal()            # RAM the packet loads into (= the RAM being emitted)
        cnt = Signal(CW)         # keys stored
        ovf = Signal()
        desc = Signal()
        # ---- output engine ----
        out_active = Signal()
        out_bank = Signal()
        out_len = Signal(CW)
        out_ptr = Signal(CW)
        out_desc = Signal()
        out_ovf = Signal()
        ov = Signal()
        olast = Signal()

        # ---- load ----
        loading = Signal()
        write_ok = ~out_active | (cnt < out_ptr) | (cnt >= N)
        m.d.comb += self.i.ready.eq(loading & write_ok)
        beat_desc = Mux(cnt == 0, self.i.payload.descending, desc)
        stored_key = self.i.payload.key ^ Mux(beat_desc, key_mask, 0)
        index = self.i.payload.index if self.index_in else cnt[:IW]
        take = self.i.valid & self.i.ready
        store = take & (cnt < N)

        clear_hist = Signal()
        # prefix phase
        prefix_active = Signal()
        pc = Signal(range(B + 1))
        run = [Signal(CW, name=f"run{p}") for p in range(D)]
        # pass phase
        pass_active = Signal()
        pp = Signal(range(D + 1))
        src = Signal()
        j = Signal(CW)
        rv = Signal()
        passes_done = Signal()

        with m.FSM(init="CLEAR"):
            with m.State("CLEAR"):  # zero the histogram RAMs (after reset and after each sort)
                m.d.comb += clear_hist.eq(1)
                m.d.sync += pc.eq(pc + 1)
                with m.If(pc == B - 1):
                    m.d.sync += pc.eq(0)
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += loading.eq(1)
                with m.If(take):
                    with m.If(cnt == 0):
                        m.d.sync += desc.eq(self.i.payload.descending)
                    with m.If(store):
                        m.d.sync += cnt.eq(cnt + 1)
                    with m.Else():
                        m.d.sync += ovf.eq(1)
                    with m.If(self.i.payload.last):
                        m.d.sync += [pc.eq(0), skip.eq(0)] + [r.eq(0) for r in run]
                        m.next = "PREFIX"
            with m.State("PREFIX"):
                m.d.comb += prefix_active.eq(1)
                m.d.sync += pc.eq(pc + 1)
                with m.If(pc == B - 1):
                    m.d.sync += [pp.eq(0), j.eq(0), rv.eq(0), src.eq(lb)]
                    m.next = "PASS"
            with m.State("PASS"):
                with m.If(~out_active):
                    m.d.comb += pass_active.eq(1)
                with m.If(passes_done):
                    m.next = "HANDOVER"
            with m.State("HANDOVER"):
                m.d.sync += [out_active.eq(1), out_bank.eq(src), out_len.eq(cnt), out_ptr.eq(0),
                             out_desc.eq(desc), out_ovf.eq(ovf), lb.eq(src), cnt.eq(0), ovf.eq(0),
                             pc.eq(0)]
                m.next = "CLEAR"

        for b in range(2):
            with m.If(store & (lb == b)):
                m.d.comb += [wrs[b].addr.eq(cnt), wrs[b].data.eq(Cat(stored_key, index)), wrs[b].en.eq(1)]

        # ---- histogram RAMs: count (load), prefix sums, bucket bases (passes), clear ----
        rv_digit = Signal(R)
        for p, (lo, hi) in enumerate(slices):
            digit = stored_key[lo:hi]
            with m.If(clear_hist):
                m.d.comb += [hwr[p].addr.eq(pc), hwr[p].data.eq(0), hwr[p].en.eq(1)]
            with m.Elif(prefix_active):
                count = hrd[p].data
                m.d.comb += [hrd[p].addr.eq(pc), hwr[p].addr.eq(pc), hwr[p].data.eq(run[p]), hwr[p].en.eq(1)]
                m.d.sync += run[p].eq(run[p] + count)
                with m.If(count == cnt):
                    m.d.sync += skip[p].eq(1)
            with m.Elif(store):
                m.d.comb += [hrd[p].addr.eq(digit), hwr[p].addr.eq(digit),
                             hwr[p].data.eq(hrd[p].data + 1), hwr[p].en.eq(1)]
            with m.Elif(pass_active & (pp == p)):
                m.d.comb += [hrd[p].addr.eq(rv_digit), hwr[p].addr.eq(rv_digit),
                             hwr[p].data.eq(hrd[p].data + 1), hwr[p].en.eq(rv)]

        # ---- scatter passes (digit pp) ----
        cur_skip = Array(skip)[pp]
        issue = pass_active & (j < cnt) & ~cur_skip
        for b in range(2):
            with m.If(pass_active & (src == b)):
                m.d.comb += [rds[b].addr.eq(j), rds[b].en.eq(1)]
        entry = Mux(src, rds[1].data, rds[0].data)
        entry_key = entry[:W]
        m.d.comb += rv_digit.eq(Array([entry_key[lo:hi] for lo, hi in slices])[pp])
        dest = Array([hrd[p].data for p in range(D)])[pp]
        with m.If(pass_active):
            m.d.sync += rv.eq(issue)
            with m.If(issue):
                m.d.sync += j.eq(j + 1)
            with m.If(rv):
                for b in range(2):
                    with m.If(src != b):
                        m.d.comb += [wrs[b].addr.eq(dest), wrs[b].data.eq(entry), wrs[b].en.eq(1)]
            with m.If(~issue & ~rv):  # pass complete (or skipped)
                m.d.sync += [j.eq(0), pp.eq(pp + 1)]
                with m.If(~cur_skip):
                    m.d.sync += src.eq(~src)
                with m.If(pp == D - 1):
                    m.d.comb += passes_done.eq(1)

        # ---- output engine: read RAM[out_bank] in order, hold the read data under a stall ----
        advance = ~ov | self.o.ready
        o_issue = out_active & (out_ptr < out_len)
        for b in range(2):
            with m.If(out_active & (out_bank == b)):
                m.d.comb += [rds[b].addr.eq(out_ptr), rds[b].en.eq(advance)]
        with m.If(advance):
            m.d.sync += [ov.eq(o_issue), olast.eq(out_ptr == out_len - 1)]
            with m.If(o_issue):
                m.d.sync += out_ptr.eq(out_ptr + 1)
            with m.Elif(out_active):
                m.d.sync += out_active.eq(0)
        result = Mux(out_bank, rds[1].data, rds[0].data)
        m.d.comb += [
            self.o.valid.eq(ov),
            self.o.payload.key.eq(result[:W] ^ Mux(out_desc, key_mask, 0)),
            self.o.payload.index.eq(result[W:]),
            self.o.payload.overflow.eq(out_ovf),
            self.o.payload.last.eq(olast),
        ]
        return m
