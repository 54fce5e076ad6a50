"""LSD radix sorter: per-digit histograms while loading, prefix sums, scatter between ping-pong RAMs."""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..common import check_choice, check_int
from ..common.ram import PipelinedRAM

__all__ = ["RadixSorter", "digit_slices", "sorter_cycles", "SUPPORTED_LANES"]

#: Lane counts P that RadixSorter implements (TopK checks its own: P = 1 only).
SUPPORTED_LANES = (1, 2, 4)


def digit_slices(key_bits, radix_bits):
    """``[(lo, hi)]`` bit ranges of the digits, least significant first (the top one may be short)."""
    passes = -(-key_bits // radix_bits)
    return [(p * radix_bits, min((p + 1) * radix_bits, key_bits)) for p in range(passes)]


def _check_out_lanes(out_lanes, lanes):
    """``out_lanes`` (keys per output beat): 1, or 2 with ``lanes`` > 1; ValueError otherwise."""
    if isinstance(out_lanes, bool) or out_lanes not in (1, 2) or (out_lanes == 2 and lanes == 1):
        raise ValueError(f"out_lanes must be 1, or 2 with lanes > 1, not {out_lanes!r}")
    return out_lanes


def sorter_cycles(n, key_bits, radix_bits, skipped=0, lanes=1, out_lanes=1):
    """Cycles from the first input beat to the last output beat of one packet of ``n`` keys
    with no stalls and an idle sorter (the measured figure is this, see the class docstring).

    ``skipped`` passes are skipped (for P > 1: skipped in every lane); ``lanes`` is P;
    ``out_lanes`` the keys per output beat (2 only for P > 1)."""
    check_choice("lanes", lanes, SUPPORTED_LANES)
    _check_out_lanes(out_lanes, lanes)
    passes = -(-key_bits // radix_bits)
    if lanes == 1:
        return n + 8 + (1 << radix_bits) + (passes - skipped) * (n + 10) + skipped + n + 2
    beats = -(-n // lanes)
    return beats + 2 + (1 << radix_bits) + (passes - skipped) * (beats + 2) + skipped + -(-n // out_lanes) + 3


def _digit_histograms(m, rd, wr, slices, *, clear, prefix, pc, run, stored, constant, store, key, pass_on,
                      pp, pass_digit, pass_valid):
    """The D histogram RAMs of one bank (read ports ``rd``, write ports ``wr``, one per digit), in
    the four uses of a packet: ``clear`` zeroes bucket ``pc``; ``prefix`` turns bucket ``pc``
    into its base address (``run[p]`` is the running sum) and sets ``constant[p]`` when one
    bucket holds all ``stored`` keys (that pass is the identity); ``store`` counts the digits of
    ``key``; pass ``pp`` increments the base of ``pass_digit`` when ``pass_valid``. Every RAM
    does one read-modify-write per cycle through its asynchronous read port."""
    for p, (lo, hi) in enumerate(slices):
        with m.If(clear):
            m.d.comb += [wr[p].addr.eq(pc), wr[p].data.eq(0), wr[p].en.eq(1)]
        with m.Elif(prefix):
            m.d.comb += [rd[p].addr.eq(pc), wr[p].addr.eq(pc), wr[p].data.eq(run[p]), wr[p].en.eq(1)]
            m.d.sync += run[p].eq(run[p] + rd[p].data)
            with m.If(rd[p].data == stored):
                m.d.sync += constant[p].eq(1)
        with m.Elif(store):
            digit = key[lo:hi]
            m.d.comb += [rd[p].addr.eq(digit), wr[p].addr.eq(digit), wr[p].data.eq(rd[p].data + 1), wr[p].en.eq(1)]
        with m.Elif(pass_on & (pp == p)):
            m.d.comb += [rd[p].addr.eq(pass_digit), wr[p].addr.eq(pass_digit), wr[p].data.eq(rd[p].data + 1),
                         wr[p].en.eq(pass_valid)]


class RadixSorter(wiring.Component):
    """Stable LSD radix sort of a packet of unsigned keys; emits (key, index) in key order.

    Bit for bit :func:`golden.numerics.sort.sort` with ``key_bits``/``radix_bits`` of the core:
    ascending, or descending (= ascending on the complemented key), ties always lower index first.

    Operation of one packet of ``n`` keys (``D = ceil(key_bits / radix_bits)`` digits,
    ``B = 2**radix_bits`` buckets):

    1. **Load** (``n`` cycles, one key per cycle, plus four for the last key's pipeline): a
       taken beat is registered, then its entry ``(key, index)`` is written at address
       ``index`` of the load RAM and the ``D`` histograms of ALL digits count it at once (a
       histogram does not depend on the order of the keys, so no pass needs its own counting
       read). A descending packet stores the complemented key.
    2. **Prefix** (``B + 2`` cycles): the ``D`` histograms are turned in place into exclusive
       prefix sums (bucket base addresses), one bucket a cycle per digit (read, add, write
       back in three register stages). A digit whose keys all fall in one bucket is marked:
       its pass would be the identity permutation and is skipped (1 cycle instead of
       ``n + 10``).
    3. **Passes** (``n + 10`` cycles each): digit ``p`` (least significant first) reads the
       source RAM in address order and writes each entry to ``base[digit]++`` of the other RAM
       (ping-pong); stable by construction. From the read to the scatter write an entry takes
       seven register stages (the RAM and its output register, the entry, the histogram read,
       the base plus its correction, the write registers, the write), a pass one cycle to
       start and two to see its pipeline empty.
    4. **Emit** (``n`` beats): the RAM holding the result is read out in address order
       (two cycles of read latency, paid once).

    Every histogram update (count, bucket base) is a read-modify-write in three register
    stages, read, add, write, so that no adder follows a RAM read in the same cycle. A read
    misses the updates of the same counter still in the later stages (equal digits close
    together); each of those is +1, so the read adds how many there are (0..2, known from
    registered address compares) instead of forwarding values. All this, one-hot phase flags
    a registered input ready, and a skid register at the output (the emission advances while
    it is empty, so the destination's ready reaches no RAM enable) keep every
    register-to-register path within a few LUT levels or one carry chain: 169.0 MHz on an
    ECP5 LFE5U-85F placed with I/O pins (``varaccel synth sort --family ecp5``, nextpnr seed
    1, where the input handshake's LUT sits by its pin) and 214.6 MHz placed out of context
    (as inside a larger design), against 127.9 MHz for the previous two-stage version.

    Cycles from the first input beat to the last output beat with no stalls:
    ``n + 8 + B + (D - s) * (n + 10) + s + n + 2`` for ``s`` skipped passes
    (:func:`sorter_cycles`; 16-bit keys, n = 4096: 24 642 for R = 4, 16 670 for R = 8).

    Double buffering: the next packet is loaded while the previous one is emitted, into the
    RAM being read, behind the read pointer (a write to address a waits until a has been read;
    the registered ready checks it with a margin of three entries), so one packet follows
    another with the emit phase hidden. Sorting a packet waits until
    the previous packet's emission has finished (the passes use both RAMs).

    **Lanes P = 2, 4** (P keys per input beat, still one (key, index) per output beat). The
    key in lane ``j`` of input beat ``b`` has arrival position (index) ``b * P + j``. The
    packet is striped over P independent banks: bank ``l`` holds the keys at the positions
    ``= l mod P``, in its own ping-pong pair of ``ceil(N / P)``-deep RAMs, with its own ``D``
    histograms. Load, prefix and passes are the steps above, run in all banks at once on the
    bank's own keys, so load and every pass take ``m = ceil(n / P)`` cycles (P elements per
    cycle): each bank ends up holding its stripe stably sorted. A pass is skipped only if
    its digit is constant within EVERY bank (then it is the identity in all of them, and all
    banks keep one shared ping-pong phase); the passes of the banks run in step.

    4. **Merge** (instead of Emit; ``ceil(n / out_lanes)`` beats): a P-way merge of the
       sorted stripes emits the smallest ``(stored key, index)`` among the P stripe heads
       each beat, and with ``out_lanes = 2`` the next smallest as well (the smallest of the
       other heads and the winner's second entry). Equal keys thus come out lower index
       first across stripes, as within a stripe (the passes are stable and a stripe's
       indices increase with its addresses): the golden stable order. Each RAM is split into
       an even-address and an odd-address half, so a stripe reads an aligned pair of entries
       a cycle; it keeps two pairs in registers behind its RAMs' read registers and shows its
       next two entries, so a stripe that wins every key of every beat never bubbles.

    Cycles with no stalls for P > 1: ``m + 2 + B + (D - s) * (m + 2) + s + ceil(n / OL) + 3``
    for ``s`` passes skipped in every bank and ``OL = out_lanes`` (16-bit keys, n = 4096,
    OL = 1: R = 4: 14 365 (P = 2), 9 245 (P = 4); R = 8: 10 505 (P = 2), 7 433 (P = 4); OL = 2
    saves 2 048). The emission of OL keys per beat bounds it below by ``n / OL``. Double buffering works as for P = 1, per bank: the next packet's lane ``l`` is
    written behind bank ``l``'s merge read pointer (so the load goes at the merge's pace), and
    its passes wait for the merge to end; back to back, a packet every ``B + D * (m + 2) + n``
    cycles or so.

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
        Keys per input beat P: 1, 2 or 4 (:data:`SUPPORTED_LANES`; ValueError otherwise).
    index_in : bool
        The input carries each key's ``index`` (which is stored and emitted instead of the
        arrival position; used by :class:`hw.sort.topk.TopK` to sort its selection). Ties are
        broken by this index; for P > 1 the result is the stable order only if the indices of
        each lane increase with arrival (as arrival positions do).
    partial_beats : bool
        P > 1 only: ``count`` is honoured on EVERY beat, not just the last (1..P keys in lanes
        0..count-1; 0 or above P still means P). The key of arrival position p goes to bank
        p mod P, i.e. lane j of a beat whose first key is at position ``pos`` goes to bank
        ``(pos + j) mod P``: one rotation mux per bank in front of the load. The top-k core
        feeds its selection this way (a word of its scan holds 1..P selected keys).

    Ports
    -----
    i : In(stream)
        ``key``: W bits; ``descending``: sort direction, sampled on the packet's FIRST beat;
        ``last``: the packet's final key (a packet has 1..N keys, more are truncated).
        ``index`` only with ``index_in``.
        For P > 1: ``key`` (and ``index``) are arrays of P lanes, and ``count`` (``P.bit_length()``
        bits) is the number of valid keys, in lanes ``0..count-1``, of the packet's LAST beat.
        Only the last beat may be partial: on any other beat ``count`` is ignored and all P lanes
        are taken; on the last beat a ``count`` of 0 or above P also means all P lanes. Lanes
        past ``count`` are ignored. A packet is truncated after its N-th key even mid-beat.
    out_lanes : int
        Keys per output beat OL: 1, or 2 with P > 1 (ValueError otherwise).
    o : Out(stream)
        ``key`` (the original key), ``index`` (position of the key in its input packet),
        ``overflow`` (the packet was truncated), ``last`` (the packet's final beat). Exactly
        one beat per stored key. ``out_lanes = 2``: ``key`` and ``index`` are arrays of 2 lanes
        and ``count`` (1 or 2) the keys in lanes ``0..count-1``; every beat but a packet's last
        holds 2 keys (the last holds 1 when the packet has an odd number of keys).
    """

    def __init__(self, key_bits=16, radix_bits=4, max_len=4096, lanes=1, index_in=False, partial_beats=False,
                 out_lanes=1):
        self.key_bits = check_int("key_bits", key_bits, 1, 32)
        self.radix_bits = check_int("radix_bits", radix_bits, 1, min(8, key_bits))
        self.max_len = check_int("max_len", max_len, 2, 65536)
        self.lanes = check_choice("lanes", check_int("lanes", lanes), SUPPORTED_LANES)
        self.index_in = bool(index_in)
        if partial_beats not in (False, True) or (partial_beats and self.lanes == 1):
            raise ValueError(f"partial_beats must be a bool, and True only with lanes > 1, not {partial_beats!r}")
        self.partial_beats = partial_beats
        self.out_lanes = _check_out_lanes(out_lanes, self.lanes)
        self.passes = -(-self.key_bits // self.radix_bits)
        self.index_bits = max(1, (self.max_len - 1).bit_length())
        self.count_bits = self.max_len.bit_length()
        #: Depth of each RAM: ceil(N / P) (bank l holds the arrival positions = l mod P).
        self.bank_depth = -(-self.max_len // self.lanes)
        P = self.lanes
        if P == 1:
            fields = {"key": unsigned(self.key_bits), "descending": 1}
            if self.index_in:
                fields["index"] = unsigned(self.index_bits)
        else:
            fields = {"key": data.ArrayLayout(unsigned(self.key_bits), P), "descending": 1}
            if self.index_in:
                fields["index"] = data.ArrayLayout(unsigned(self.index_bits), P)
            fields["count"] = unsigned(P.bit_length())
        fields["last"] = 1
        if self.out_lanes == 1:
            out_layout = data.StructLayout({"key": unsigned(self.key_bits), "index": unsigned(self.index_bits),
                                            "overflow": 1, "last": 1})
        else:
            out_layout = data.StructLayout({"key": data.ArrayLayout(unsigned(self.key_bits), 2),
                                            "index": data.ArrayLayout(unsigned(self.index_bits), 2),
                                            "count": 2, "overflow": 1, "last": 1})
        super().__init__({"i": In(stream.Signature(data.StructLayout(fields))),
                          "o": Out(stream.Signature(out_layout))})

    def elaborate(self, platform):
        m = Module()
        if self.lanes == 1:
            self._elaborate_single(m)
        else:
            self._elaborate_lanes(m)
        return m

    def _elaborate_single(self, m):
        """P = 1: one pair of ping-pong RAMs, emission reads the result RAM in address order.

        Timing discipline (for 200 MHz on an ECP5): a beat is registered before anything uses
        it; every RAM port (block RAM address, data and enables; histogram read address, write
        address, data and enable) is driven by a register or by one level of logic on
        registers; a RAM's read data goes straight into a register (the block RAMs' own output
        register, the histograms' ``x_raw``); the phases are one-hot flags, and every decision
        that fans out (pass end, last read, room to load) is a registered flag or a carry-chain
        compare."""
        W, R, N, D = self.key_bits, self.radix_bits, self.max_len, self.passes
        B = 1 << R
        IW, CW = self.index_bits, self.count_bits
        EW = W + IW
        ALL = (1 << D) - 1
        key_mask = (1 << W) - 1
        slices = digit_slices(W, R)

        def digits(key):
            return [key[lo:hi] for lo, hi in slices]

        # ---- phases, one-hot: CLEAR -> LOAD -> COUNT -> PREFIX -> (SETUP -> PASS) x D ->
        # HANDOVER -> CLEAR. ``pc`` counts the cycles of CLEAR, COUNT and PREFIX. ----
        s_clear = Signal(init=1)
        s_load, s_count, s_prefix, s_setup, s_pass, s_hand = (Signal(name=n) for n in (
            "s_load", "s_count", "s_prefix", "s_setup", "s_pass", "s_hand"))
        pc = Signal(range(B + 2))

        # ---- ping-pong RAMs (two cycles of read latency: RAM + output register). Their write
        # ports are driven by one set of registers that the load and the passes share; their
        # read address is one pointer that the passes and the emission share (never active
        # together: a pass waits for the previous packet's emission to end). ----
        rams = [PipelinedRAM(EW, N, f"ram{b}") for b in range(2)]
        w_addr = Signal(IW)
        w_data = Signal(EW)
        w_en = Signal(2)
        rptr = Signal(CW)
        rptr_clear = Signal()       # rptr: 0 (a pass or an emission starts) ...
        rptr_step = Signal()        # ... or + 1 (a read issued); one clock enable for both
        with m.If(rptr_clear | rptr_step):
            m.d.sync += rptr.eq(Mux(rptr_clear, 0, rptr + 1))
        r_en = Signal(2)
        for b in range(2):
            m.submodules[f"ram{b}"] = rams[b]
            m.d.comb += [rams[b].w_addr.eq(w_addr), rams[b].w_data.eq(w_data), rams[b].w_en.eq(w_en[b]),
                         rams[b].r_addr.eq(rptr[:IW]), rams[b].r_en.eq(r_en[b])]

        # ---- histograms: one distributed RAM of B counters per digit (asynchronous read) ----
        # A count or bucket-base update (+1) is a read-modify-write in three stages: X reads
        # the counter at ``h_addr`` into ``x_raw``; Y1 adds ``y1_corr + 1`` into ``y2_data``;
        # Y2 writes it back (address, data and enable all registers). The RAM read in X misses
        # the updates of the same counter still in Y1 and Y2 (equal digits close together),
        # each exactly +1, so ``y1_corr`` (0..2, from flags registered when the update entered
        # X) counts them. Y2 also writes 0 (CLEAR) and the exclusive running sum ``acc``
        # (PREFIX).
        hrd, hwr = [], []
        for p in range(D):
            mem = Memory(shape=unsigned(CW), depth=B, init=[])
            m.submodules[f"hist{p}"] = mem
            hwr.append(mem.write_port())
            hrd.append(mem.read_port(domain="comb"))
        h_addr = [Signal(R, name=f"h_addr{p}") for p in range(D)]
        meet_y1 = Signal(D)         # the update entering X meets the same counter in Y1 / Y2
        meet_y2 = Signal(D)
        x_valid = Signal()          # X holds an update: a loaded key (x_load) or a pass entry
        x_load = Signal()
        x_mask = Signal(D)          # ... counted in these histograms (all: load; pass_sel: pass)
        x_raw = [Signal(CW, name=f"x_raw{p}") for p in range(D)]
        y1_valid = Signal()
        y1_load = Signal()
        y1_mask = Signal(D)
        y1_addr = [Signal(R, name=f"y1_addr{p}") for p in range(D)]
        y1_corr = [Signal(2, name=f"y1_corr{p}") for p in range(D)]       # updates missed
        y1_corr_p1 = [Signal(2, name=f"y1_corr_p1{p}") for p in range(D)]  # ... plus this one
        y2_data = [Signal(CW, name=f"y2_data{p}") for p in range(D)]
        y2_raw = Signal(CW)         # Y2 of a pass: the count read of pass_sel's histogram ...
        y2_corr = Signal(2)         # ... and its correction (their sum is the entry's address)
        y2_addr = [Signal(R, name=f"y2_addr{p}") for p in range(D)]
        y2_en = Signal(D)
        pfx_y1 = Signal()           # Y1 holds a prefix bucket: Y2 writes acc
        acc = [Signal(CW, name=f"acc{p}") for p in range(D)]
        pass_sel = Signal(D)        # one-hot digit of the current pass
        for p in range(D):
            m.d.comb += [hrd[p].addr.eq(h_addr[p]),
                         hwr[p].addr.eq(y2_addr[p]), hwr[p].en.eq(y2_en[p]), hwr[p].data.eq(y2_data[p])]
            # one adder, from registers (a count plus a 2-bit correction)
            m.d.sync += [x_raw[p].eq(hrd[p].data),
                         y2_data[p].eq(Mux(s_clear, 0, Mux(pfx_y1, acc[p], x_raw[p] + y1_corr_p1[p])))]
        raw_sel, corr_sel = 0, 0
        for p in range(D):
            raw_sel = raw_sel | Mux(pass_sel[p], x_raw[p], 0)
            corr_sel = corr_sel | Mux(pass_sel[p], y1_corr[p], 0)
        m.d.sync += [y2_raw.eq(raw_sel), y2_corr.eq(corr_sel)]
        skip = Signal(D)            # digit p is the same for every key: its pass is the identity
        cur_skip = Signal()         # ... for the digit of pass_sel
        next_skip = Signal()        # ... for the next digit (registered: right once a pass runs)
        skip_y2 = Signal(D)         # Y2 of the prefix: that bucket holds every key

        # ---- load side ----
        in_ready = Signal()         # the input's ready is a flip-flop (set only while loading)
        l_valid = Signal()          # the beat taken last cycle, registered before any use
        l_key = Signal(W)
        l_index = Signal(IW)
        l_desc = Signal()           # its packet's direction
        first = Signal(init=1)      # no beat of the packet taken yet
        desc = Signal()
        lb = Signal()               # RAM the packet loads into (= the RAM being emitted)
        cnt = Signal(CW)            # keys stored
        cnt_p1 = Signal(CW, init=1)  # cnt + 1 and cnt + 3, so that no count needs an adder
        cnt_p3 = Signal(CW, init=3)
        room = Signal()             # the RAM being emitted has room (see below)
        last_addr = Signal(IW)      # cnt - 1, once the packet is loaded
        last_m1 = Signal(IW)        # cnt - 2
        single = Signal()           # cnt == 1
        full = Signal()             # cnt == N: further keys are dropped
        ovf = Signal()
        # ---- passes ----
        src = Signal()
        issue = Signal()            # the read at rptr this cycle belongs to the pass
        at_last = Signal()          # ... and rptr is the packet's last address
        rq, rv = Signal(), Signal()  # a pass read in the RAM's first stage, at its output register
        e_valid = Signal()          # the read entry, registered off the RAM
        e_entry = Signal(EW)
        x_entry = Signal(EW)        # ... in X, Y1, Y2 beside its bucket's base
        y1_entry = Signal(EW)
        y2_valid = Signal()
        y2_entry = Signal(EW)
        w_valid = Signal()          # the RAM write registers hold a scattered entry
        pass_end = Signal()         # last cycle: in PASS, nothing issued or in flight (and not ending)
        # ---- prefix ----
        pfx_start = Signal()        # COUNT's last cycle: the prefix reads from bucket 0 next
        pfx_end = Signal()          # PREFIX's last cycle
        # ---- output engine ----
        out_active = Signal()
        out_bank = Signal()
        out_more = Signal()         # entries left to read
        out_at_last = Signal()      # rptr is the packet's last address
        out_last_m1 = Signal(IW)
        out_desc = Signal()
        out_ovf = Signal()
        oq = Signal()               # an entry in the RAM's first read stage (``oq_last``: the last)
        oq_last = Signal()
        ov = Signal()
        olast = Signal()

        # ---- input: a taken beat goes into the l_* registers ----
        m.d.comb += self.i.ready.eq(in_ready)
        take = self.i.valid & in_ready
        m.d.sync += l_valid.eq(take)
        with m.If(take):
            m.d.sync += [l_key.eq(self.i.payload.key), l_desc.eq(Mux(first, self.i.payload.descending, desc)),
                         first.eq(0)]
            if self.index_in:
                m.d.sync += l_index.eq(self.i.payload.index)
            with m.If(first):
                m.d.sync += desc.eq(self.i.payload.descending)
            with m.If(self.i.payload.last):
                m.d.sync += in_ready.eq(0)
        # Room to write address cnt of the RAM being emitted: the emission has read it. A beat
        # taken at t is written at t + 2 to the address cnt has at t + 1, at most cnt + 3 of
        # cnt at t - 2, when ``room`` was computed (rptr never falls, out_active only falls
        # and full only rises while loading): ready may come late, never early, and a write
        # never meets a read of the same address.
        m.d.sync += room.eq(~out_active | (cnt_p3 < rptr) | full)
        with m.If(s_load & ~(take & self.i.payload.last)):
            m.d.sync += in_ready.eq(room)

        # ---- a registered beat is stored: RAM write registers, histogram updates enter X ----
        stored_key = l_key ^ Mux(l_desc, key_mask, 0)
        index = l_index if self.index_in else cnt[:IW]
        store = l_valid & ~full
        with m.If(l_valid):
            with m.If(store):
                m.d.sync += [cnt.eq(cnt_p1), cnt_p1.eq(cnt_p1 + 1), cnt_p3.eq(cnt_p3 + 1),
                             full.eq(cnt_p1 >= N),
                             w_addr.eq(cnt[:IW]), w_data.eq(Cat(stored_key, index)), w_en.eq(Mux(lb, 0b10, 0b01))]
            with m.Else():
                m.d.sync += ovf.eq(1)

        # Updates entering X: a stored key (every digit) or a pass entry (its pass's digit).
        # The histogram addresses load every cycle (from a registered beat, else from the pass
        # entry; counting up in PREFIX); they only matter with a valid update.
        next_digits = [Mux(l_valid, a, b) for a, b in zip(digits(stored_key), digits(e_entry[:W]))]
        m.d.sync += [x_valid.eq(store | e_valid), x_load.eq(store),
                     x_mask.eq(Mux(store, ALL, Mux(e_valid, pass_sel, 0))), x_entry.eq(e_entry),
                     y1_valid.eq(x_valid), y1_load.eq(x_load), y1_mask.eq(x_mask), y1_entry.eq(x_entry),
                     y2_valid.eq(y1_valid & ~y1_load), y2_en.eq(y1_mask), y2_entry.eq(y1_entry),
                     w_valid.eq(0)]
        with m.If(~store):
            m.d.sync += w_en.eq(0)
        for p in range(D):
            with m.If(s_prefix):
                m.d.sync += h_addr[p].eq(h_addr[p] + 1)
            with m.Elif(pfx_start):
                m.d.sync += h_addr[p].eq(0)
            with m.Else():
                m.d.sync += h_addr[p].eq(next_digits[p])
            m.d.sync += [y1_addr[p].eq(h_addr[p]), y2_addr[p].eq(Mux(s_clear, pc, y1_addr[p])),
                         meet_y1[p].eq(x_mask[p] & (next_digits[p] == h_addr[p])),
                         meet_y2[p].eq(y1_mask[p] & (next_digits[p] == y1_addr[p])),
                         y1_corr[p].eq(meet_y1[p] + meet_y2[p]),
                         y1_corr_p1[p].eq(meet_y1[p] + meet_y2[p] + 1)]
        # Y2 of a pass: the RAM write registers take the base of the entry's bucket
        with m.If(y2_valid):
            m.d.sync += [w_addr.eq((y2_raw + y2_corr)[:IW]), w_data.eq(y2_entry), w_en.eq(Mux(src, 0b01, 0b10)),
                         w_valid.eq(1)]

        # ---- phases ----
        m.d.sync += [pfx_y1.eq(0), skip_y2.eq(0), pfx_start.eq(0), pfx_end.eq(0),
                     next_skip.eq(((pass_sel << 1) & skip).any())]
        with m.If(s_clear):
            # zero the histogram RAMs (after reset and after each sort): Y2 writes 0 at pc
            m.d.sync += [pc.eq(pc + 1), y2_en.eq(ALL)]
            with m.If(pc == B - 1):
                m.d.sync += [pc.eq(0), s_clear.eq(0), s_load.eq(1), in_ready.eq(room)]
        with m.If(s_load & take & self.i.payload.last):
            m.d.sync += [s_load.eq(0), s_count.eq(1)]
        with m.If(s_count):
            # the last beat passes L, X, Y1 and Y2 (4 cycles); h_addr and acc start the prefix
            m.d.sync += [pc.eq(pc + 1), last_addr.eq(cnt - 1), last_m1.eq(cnt - 2), single.eq(cnt == 1),
                         skip.eq(0), pfx_start.eq(pc == 2)]
            m.d.sync += [acc[p].eq(0) for p in range(D)]
            with m.If(pc == 3):
                m.d.sync += [pc.eq(0), s_count.eq(0), s_prefix.eq(1)]
        with m.If(s_prefix):
            # X reads count[pc] (pc < B); Y1 makes acc, the sum of the buckets below, the value
            # Y2 writes (the bucket's base), adds the count to acc and tests it against cnt
            # (every key in one bucket: a constant digit, whose pass is skipped); Y2 writes
            m.d.sync += [pc.eq(pc + 1), pfx_y1.eq(pc < B), skip.eq(skip | skip_y2), pfx_end.eq(pc == B)]
            with m.If(pfx_y1):
                m.d.sync += y2_en.eq(ALL)  # at y1_addr, the bucket X read
                m.d.sync += [acc[p].eq(acc[p] + x_raw[p]) for p in range(D)]
                # a bucket never holds more than cnt keys: ">=" is "==" here, on a carry chain
                m.d.sync += skip_y2.eq(Cat(*[x_raw[p] >= cnt for p in range(D)]))
            with m.If(pfx_end):
                m.d.sync += [s_prefix.eq(0), s_setup.eq(1), pass_sel.eq(1), src.eq(lb),
                             cur_skip.eq(skip[0] | skip_y2[0])]
        with m.If(s_setup & ~out_active):
            # a pass uses both RAMs: it starts once the previous packet is out
            with m.If(cur_skip):
                # the identity permutation: skipped, the data stays where it is
                m.d.sync += [pass_sel.eq(pass_sel << 1), cur_skip.eq(((pass_sel << 1) & skip).any())]
                with m.If(pass_sel[D - 1]):
                    m.d.sync += [s_setup.eq(0), s_hand.eq(1)]
            with m.Else():
                m.d.comb += rptr_clear.eq(1)
                m.d.sync += [issue.eq(1), at_last.eq(single), s_setup.eq(0), s_pass.eq(1)]
        # (one register for the pass's end: PASS, its reads all issued and none in flight; it
        # is first set in the cycle after PASS's first, where ``issue`` is still set)
        m.d.sync += pass_end.eq(s_pass & ~pass_end & ~issue & ~rq & ~rv & ~e_valid & ~x_valid & ~y1_valid
                                & ~y2_valid & ~w_valid)
        with m.If(pass_end):
            m.d.sync += [src.eq(~src), pass_sel.eq(pass_sel << 1), cur_skip.eq(next_skip), s_pass.eq(0)]
            with m.If(pass_sel[D - 1]):
                m.d.sync += s_hand.eq(1)
            with m.Else():
                m.d.sync += s_setup.eq(1)
        with m.If(s_hand):
            m.d.comb += rptr_clear.eq(1)
            m.d.sync += [out_active.eq(1), out_bank.eq(src), out_last_m1.eq(last_m1), out_more.eq(1),
                         out_at_last.eq(single), out_desc.eq(desc), out_ovf.eq(ovf), lb.eq(src), pass_sel.eq(0),
                         cnt.eq(0), cnt_p1.eq(1), cnt_p3.eq(3), full.eq(0), first.eq(1), ovf.eq(0), pc.eq(0),
                         s_hand.eq(0), s_clear.eq(1)]

        # ---- scatter pass: read at rptr -> rq -> rv (entry at the RAM's output register) ->
        # e_entry -> X (bucket base read) -> Y1 (base + corr) -> Y2 (base + 1 written back; the
        # RAM write registers take base and entry) -> RAM write ----
        with m.If(issue):
            m.d.comb += rptr_step.eq(1)
            # rptr never passes the last address: ">=" is "==" here, on a carry chain
            m.d.sync += at_last.eq(rptr[:IW] >= last_m1)
            with m.If(at_last):
                m.d.sync += issue.eq(0)
        entry = Mux(src, rams[1].r_data, rams[0].r_data)
        m.d.sync += [rq.eq(issue), rv.eq(rq), e_valid.eq(rv), e_entry.eq(entry)]

        # ---- output engine: read RAM[out_bank] in order, hold the read data under a stall ----
        # The RAM's two read stages are the engine's two stages (``oq``, then ``ov`` with the
        # entry in the RAM's output register), both loaded when the output may advance.
        # A skid register (kv, k_*) behind it: the engine advances while the skid is empty (a
        # register), not on the destination's ready, which would otherwise reach the RAMs' read
        # enables; a beat refused at the output is kept in the skid, which the output shows
        # first. With no stalls the skid stays empty and costs no cycle.
        kv, k_key, k_index, k_last, k_ovf = Signal(), Signal(W), Signal(IW), Signal(), Signal()
        advance = ~kv
        o_issue = out_active & out_more
        m.d.comb += r_en.eq(Mux(out_active, Mux(advance, Mux(out_bank, 0b10, 0b01), 0), 0b11))
        with m.If(advance & out_active):
            m.d.sync += [oq.eq(o_issue), oq_last.eq(out_at_last), ov.eq(oq), olast.eq(oq_last)]
            with m.If(o_issue):
                m.d.comb += rptr_step.eq(1)
                m.d.sync += out_at_last.eq(rptr[:IW] >= out_last_m1)
                with m.If(out_at_last):
                    m.d.sync += out_more.eq(0)
            with m.Elif(~oq):
                m.d.sync += out_active.eq(0)
        result = Mux(out_bank, rams[1].r_data, rams[0].r_data)
        r_key = result[:W] ^ Mux(out_desc, key_mask, 0)
        with m.If(kv):
            with m.If(self.o.ready):
                m.d.sync += kv.eq(0)
        with m.Elif(ov & ~self.o.ready):
            m.d.sync += [kv.eq(1), k_key.eq(r_key), k_index.eq(result[W:]), k_last.eq(olast), k_ovf.eq(out_ovf)]
        m.d.comb += [
            self.o.valid.eq(kv | ov),
            self.o.payload.key.eq(Mux(kv, k_key, r_key)),
            self.o.payload.index.eq(Mux(kv, k_index, result[W:])),
            self.o.payload.overflow.eq(Mux(kv, k_ovf, out_ovf)),
            self.o.payload.last.eq(Mux(kv, k_last, olast)),
        ]

    def _elaborate_lanes(self, m):
        """P > 1: P banks sorted side by side, then a P-way merge (see the class docstring)."""
        W, R, N, D, P = self.key_bits, self.radix_bits, self.max_len, self.passes, self.lanes
        B = 1 << R
        IW, CW = self.index_bits, self.count_bits
        M = self.bank_depth
        LW = M.bit_length()  # a lane's key count 0..M (also its histogram counters)
        key_mask = (1 << W) - 1
        slices = digit_slices(W, R)
        # A stored entry is Cat(index, key): as an unsigned number it orders by key, then by
        # index, which is exactly the golden stable order, so the merge compares whole entries.
        EW = W + IW

        def entry_digit(entry, p):
            lo, hi = slices[p]
            return entry[IW + lo:IW + hi]

        # Bank l holds the keys at arrival positions l, l + P, l + 2P, ... (ping-pong pair).
        # Each RAM of a pair is two half RAMs, even addresses in half 0 and odd ones in half 1
        # (at address // 2): a load or pass still writes and reads one entry a cycle, and the
        # merge reads two consecutive entries of a bank a cycle (needed for two keys a beat).
        rds = [[[None, None], [None, None]] for _ in range(P)]
        wrs = [[[None, None], [None, None]] for _ in range(P)]
        for lane in range(P):
            for b in range(2):
                for h in range(2):
                    mem = Memory(shape=unsigned(EW), depth=max(1, -(-M // 2)), init=[])
                    m.submodules[f"ram{lane}_{b}_{h}"] = mem
                    rds[lane][b][h] = mem.read_port(transparent_for=())
                    wrs[lane][b][h] = mem.write_port()
                    m.d.comb += [rds[lane][b][h].en.eq(0), wrs[lane][b][h].en.eq(0)]

        def ram_write(lane, b, addr, value):
            for h in range(2):
                port = wrs[lane][b][h]
                m.d.comb += [port.addr.eq(addr >> 1), port.data.eq(value), port.en.eq(addr[0] == h)]

        # Per lane and digit a histogram RAM with an asynchronous read, as for P = 1.
        hrd = [[None] * D for _ in range(P)]
        hwr = [[None] * D for _ in range(P)]
        for lane in range(P):
            for p in range(D):
                mem = Memory(shape=unsigned(LW), depth=B, init=[])
                m.submodules[f"hist{lane}_{p}"] = mem
                hwr[lane][p] = mem.write_port()
                hrd[lane][p] = mem.read_port(domain="comb")
                m.d.comb += hwr[lane][p].en.eq(0)
        # one[l][p]: all of lane l's keys have the same digit p. A pass is skipped when that
        # holds in EVERY lane (the pass is then the identity in every bank), so all banks stay
        # in step and one bit says which RAM of each pair holds the current data.
        one = [Signal(D, name=f"one{lane}") for lane in range(P)]
        skip = Signal(D)
        for p in range(D):
            m.d.comb += skip[p].eq(Cat(*[one[lane][p] for lane in range(P)]).all())

        # ---- load side ----
        lb = Signal()                        # RAM of each pair the packet loads into
        cnt = [Signal(LW, name=f"cnt{lane}") for lane in range(P)]
        pos = Signal(range(N + P))           # arrival position of lane 0 of the next beat
        ovf = Signal()
        desc = Signal()
        # ---- merge / output side ----
        out_active = Signal()                # keys of the emitted packet still in RAM or heads
        out_bank = Signal()
        out_len = [Signal(LW, name=f"out_len{lane}") for lane in range(P)]
        rptr = [Signal(range(M + 2), name=f"rptr{lane}") for lane in range(P)]  # next entry to read (even)
        rvn = [Signal(range(3), name=f"rvn{lane}") for lane in range(P)]   # entries in the read data (0..2)
        an = [Signal(range(3), name=f"an{lane}") for lane in range(P)]     # entries in pair A (see the merge)
        bn = [Signal(range(3), name=f"bn{lane}") for lane in range(P)]     # ... in pair B
        off = [Signal(name=f"off{lane}") for lane in range(P)]             # next entry's place in A
        out_total = Signal(CW)
        out_seen = Signal(CW)
        out_desc = Signal()
        out_ovf = Signal()
        ov = Signal()
        OL = self.out_lanes
        o_key = [Signal(W, name=f"o_key{t}") for t in range(OL)]
        o_index = [Signal(IW, name=f"o_index{t}") for t in range(OL)]
        o_count = Signal(2)
        o_ovf = Signal()
        o_last = Signal()

        # ---- load ----
        loading = Signal()
        # Double buffering: lane l of the next packet is written at address cnt[l] of the RAM
        # being merged out, which is free once the merge has read it (or lies past its data).
        write_ok = Cat(*[(cnt[lane] < rptr[lane]) | (cnt[lane] >= out_len[lane]) for lane in range(P)]).all()
        m.d.comb += self.i.ready.eq(loading & (~out_active | write_ok))
        payload = self.i.payload
        beat_desc = Mux(pos == 0, payload.descending, desc)
        take = self.i.valid & self.i.ready
        # Keys taken from this beat: all P, except on the last beat with 1 <= count < P (with
        # partial_beats: on every beat). Bank l takes the key of arrival position = l mod P,
        # i.e. lane (l - pos) mod P of the beat; without partial_beats pos is a multiple of P
        # and that is lane l.
        n_in = Signal(range(P + 1))
        partial_ok = payload.last if not self.partial_beats else 1
        m.d.comb += n_in.eq(Mux(partial_ok & (payload.count >= 1) & (payload.count < P), payload.count, P))
        if self.partial_beats:
            lane_of = [Signal(range(P), name=f"lane_of{bank}") for bank in range(P)]
            m.d.comb += [lane_of[bank].eq(bank - pos) for bank in range(P)]  # mod P: truncated
            keys_of = [Array(payload.key[j] for j in range(P))[lane_of[bank]] for bank in range(P)]
            given = [Array(payload.index[j] for j in range(P))[lane_of[bank]] if self.index_in else None
                     for bank in range(P)]
        else:
            lane_of = list(range(P))
            keys_of = [payload.key[lane] for lane in range(P)]
            given = [payload.index[lane] if self.index_in else None for lane in range(P)]
        lane_in = [take & (n_in > lane_of[bank]) for bank in range(P)]
        store = [lane_in[bank] & (pos + lane_of[bank] < N) for bank in range(P)]
        dropped = Cat(*[lane_in[bank] & (pos + lane_of[bank] >= N) for bank in range(P)]).any()
        stored_key = [keys_of[bank] ^ Mux(beat_desc, key_mask, 0) for bank in range(P)]
        index = [given[bank] if self.index_in else (pos + lane_of[bank])[:IW] for bank in range(P)]

        clear_hist = Signal()
        prefix_active = Signal()
        pc = Signal(range(B + 1))
        run = [[Signal(LW, name=f"run{lane}_{p}") for p in range(D)] for lane in range(P)]
        pass_active = Signal()
        pp = Signal(range(D + 1))
        src = Signal()
        j = Signal(LW)
        prv = [Signal(name=f"prv{lane}") for lane in range(P)]  # pass read data valid
        passes_done = Signal()

        with m.FSM(init="CLEAR"):
            with m.State("CLEAR"):
                m.d.comb += clear_hist.eq(1)
                m.d.sync += pc.eq(pc + 1)
                with m.If(pc == B - 1):
                    m.d.sync += pc.eq(0)
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += loading.eq(1)
                with m.If(take):
                    with m.If(pos == 0):
                        m.d.sync += desc.eq(payload.descending)
                    with m.If(pos < N):
                        m.d.sync += pos.eq(pos + (n_in if self.partial_beats else P))
                    with m.If(dropped):
                        m.d.sync += ovf.eq(1)
                    with m.If(payload.last):
                        m.d.sync += [pc.eq(0)] + [o.eq(0) for o in one] + [r.eq(0) for rr in run for r in rr]
                        m.next = "PREFIX"
            with m.State("PREFIX"):
                m.d.comb += prefix_active.eq(1)
                m.d.sync += pc.eq(pc + 1)
                with m.If(pc == B - 1):
                    m.d.sync += [pp.eq(0), j.eq(0), src.eq(lb)] + [v.eq(0) for v in prv]
                    m.next = "PASS"
            with m.State("PASS"):
                with m.If(~out_active):
                    m.d.comb += pass_active.eq(1)
                with m.If(passes_done):
                    m.next = "HANDOVER"
            with m.State("HANDOVER"):
                m.d.sync += [out_active.eq(1), out_bank.eq(src), out_desc.eq(desc), out_ovf.eq(ovf),
                             out_total.eq(sum(cnt)), out_seen.eq(0), lb.eq(src), pos.eq(0), ovf.eq(0),
                             pc.eq(0)]
                for lane in range(P):
                    m.d.sync += [out_len[lane].eq(cnt[lane]), rptr[lane].eq(0), rvn[lane].eq(0),
                                 an[lane].eq(0), bn[lane].eq(0), off[lane].eq(0), cnt[lane].eq(0)]
                m.next = "CLEAR"

        for lane in range(P):
            with m.If(store[lane]):
                m.d.sync += cnt[lane].eq(cnt[lane] + 1)
                for b in range(2):
                    with m.If(lb == b):
                        ram_write(lane, b, cnt[lane], Cat(index[lane], stored_key[lane]))

        # ---- scatter passes: every bank runs digit pp at once, address j in step ----
        cur_skip = Array(skip)[pp]
        issue = [pass_active & (j < cnt[lane]) & ~cur_skip for lane in range(P)]
        any_issue = Cat(*issue).any()
        any_prv = Cat(*prv).any()
        j_odd = Signal()  # the half RAM that holds the entry read last cycle
        with m.If(pass_active):
            m.d.sync += j_odd.eq(j[0])
        entry = [Mux(src, Mux(j_odd, rds[lane][1][1].data, rds[lane][1][0].data),
                     Mux(j_odd, rds[lane][0][1].data, rds[lane][0][0].data)) for lane in range(P)]
        for lane in range(P):
            for b in range(2):
                with m.If(pass_active & (src == b)):
                    for h in range(2):
                        m.d.comb += [rds[lane][b][h].addr.eq(j >> 1), rds[lane][b][h].en.eq(1)]

        # ---- histogram RAMs: count (load), prefix sums, bucket bases (passes), clear ----
        for lane in range(P):
            rv_digit = Signal(R, name=f"rv_digit{lane}")
            m.d.comb += rv_digit.eq(Array([entry_digit(entry[lane], p) for p in range(D)])[pp])
            _digit_histograms(m, hrd[lane], hwr[lane], slices, clear=clear_hist, prefix=prefix_active, pc=pc,
                              run=run[lane], stored=cnt[lane], constant=one[lane], store=store[lane],
                              key=stored_key[lane], pass_on=pass_active, pp=pp, pass_digit=rv_digit,
                              pass_valid=prv[lane])
            dest = Array([hrd[lane][p].data for p in range(D)])[pp]
            with m.If(pass_active):
                m.d.sync += prv[lane].eq(issue[lane])
                with m.If(prv[lane]):
                    for b in range(2):
                        with m.If(src != b):
                            ram_write(lane, b, dest, entry[lane])
        with m.If(pass_active):
            with m.If(any_issue):
                m.d.sync += j.eq(j + 1)
            with m.If(~any_issue & ~any_prv):  # pass complete (or skipped)
                m.d.sync += [j.eq(0), pp.eq(pp + 1)]
                with m.If(~cur_skip):
                    m.d.sync += src.eq(~src)
                with m.If(pp == D - 1):
                    m.d.comb += passes_done.eq(1)

        # ---- P-way merge of the sorted banks ----
        # The merge reads a bank in aligned pairs (entries 2i, 2i + 1: one from each half RAM;
        # only a bank's last pair may hold one entry). Per bank a window of two pairs, A and B
        # (``an``, ``bn`` entries valid), plus the pair in the RAMs' read registers, C (``rvn``
        # entries; a read port holds its data while not enabled). ``off`` is the next entry's
        # place in A: the bank shows h0 = A[off] and h1 = A[1] or, for off = 1, B[0].
        # A beat takes the OL smallest shown entries: the smallest h0, then (OL = 2) the smallest
        # of the other banks' h0 and the winner's h1. Once A is used up it is refilled from B
        # (or C), B from C; C moves into a free place and the next pair is read in the same cycle,
        # so a bank that wins both keys of every beat moves one pair a cycle and never bubbles.
        # A beat needs every bank to show OL entries or all of its remaining ones (then the OL
        # smallest remaining entries are among those shown). That needs no check: every bank
        # reads its first pair in the cycle after the handover, so all windows fill together
        # (nothing fires before A holds a pair); from then on C holds a pair whenever the bank
        # has entries past A and B (a pair is read whenever C moves on), so B is filled whenever
        # off becomes 1. So every beat but a packet's last holds exactly OL keys.
        win_a = [[Signal(EW, name=f"a{lane}_{t}") for t in range(2)] for lane in range(P)]
        win_b = [[Signal(EW, name=f"b{lane}_{t}") for t in range(2)] for lane in range(P)]
        rdata = [[Mux(out_bank, rds[lane][1][h].data, rds[lane][0][h].data) for h in range(2)] for lane in range(P)]
        h0 = [Mux(off[lane], win_a[lane][1], win_a[lane][0]) for lane in range(P)]
        h0_none = [an[lane] <= off[lane] for lane in range(P)]
        h1 = [Mux(off[lane], win_b[lane][0], win_a[lane][1]) for lane in range(P)]
        h1_none = [Mux(off[lane], bn[lane] == 0, an[lane] != 2) for lane in range(P)]
        # (not "A holds a pair": a bank whose last pair B held one entry, taken with A's last,
        # keeps that pair in A for a cycle with nothing to show)
        any_shown = Cat(*[~h0_none[lane] for lane in range(P)]).any()

        def tournament(cands, tag):
            """(index, Cat(entry, empty)) of the smallest candidate: an empty one compares above
            every entry, and two valid ones never tie (distinct indices)."""
            level = 0
            while len(cands) > 1:
                nxt = []
                for (ia, ca), (ib, cb) in zip(cands[0::2], cands[1::2]):
                    lt = cb < ca
                    win_i = Signal(range(P), name=f"{tag}_i{level}_{len(nxt)}")
                    win_c = Signal(EW + 1, name=f"{tag}_c{level}_{len(nxt)}")
                    m.d.comb += [win_i.eq(Mux(lt, ib, ia)), win_c.eq(Mux(lt, cb, ca))]
                    nxt.append((win_i, win_c))
                cands, level = nxt, level + 1
            return cands[0]

        first, first_c = tournament([(Const(lane, range(P)), Cat(h0[lane], h0_none[lane])) for lane in range(P)],
                                    "win1")
        picks = [(first, first_c)]
        if OL == 2:
            second, second_c = tournament(
                [(Const(lane, range(P)),
                  Mux(first == lane, Cat(h1[lane], h1_none[lane]), Cat(h0[lane], h0_none[lane])))
                 for lane in range(P)], "win2")
            picks.append((second, second_c))
        has_second = ~picks[-1][1][EW] if OL == 2 else Const(0)

        advance = ~ov | self.o.ready
        fire = out_active & advance & any_shown
        with m.If(advance):
            m.d.sync += ov.eq(fire)
            with m.If(fire):
                for t, (_, c) in enumerate(picks):
                    m.d.sync += [o_key[t].eq(c[IW:EW] ^ Mux(out_desc, key_mask, 0)), o_index[t].eq(c[:IW])]
                m.d.sync += [o_ovf.eq(out_ovf), o_count.eq(1 + has_second),
                             o_last.eq(out_seen + 1 + has_second == out_total),
                             out_seen.eq(out_seen + 1 + has_second)]
        for lane in range(P):
            taken = Signal(range(3), name=f"taken{lane}")
            pos = Signal(range(4), name=f"pos{lane}")     # off + taken
            a_free = Signal(name=f"a_free{lane}")         # A is empty or used up after this beat
            c_moves = Signal(name=f"c_moves{lane}")       # C goes into A or B
            m.d.comb += [taken.eq(Mux(fire & (first == lane), 1, 0)
                                  + (Mux(fire & has_second & (picks[-1][0] == lane), 1, 0) if OL == 2 else 0)),
                         pos.eq(off[lane] + taken),
                         a_free.eq((an[lane] == 0) | (pos >= an[lane])),
                         c_moves.eq(a_free | (bn[lane] == 0))]
            ren = out_active & (rptr[lane] < out_len[lane]) & ((rvn[lane] == 0) | c_moves)
            for b in range(2):
                with m.If(out_active & (out_bank == b)):
                    for h in range(2):
                        m.d.comb += [rds[lane][b][h].addr.eq(rptr[lane] >> 1), rds[lane][b][h].en.eq(ren)]
            with m.If(out_active):
                with m.If(ren):
                    m.d.sync += [rptr[lane].eq(rptr[lane] + 2),
                                 rvn[lane].eq(Mux(rptr[lane] + 1 < out_len[lane], 2, 1))]
                with m.Elif(c_moves):
                    m.d.sync += rvn[lane].eq(0)
                with m.If(a_free):
                    # (pos - 2: a used-up pair of 2 leaves the offset past it; one of 1 ends the bank)
                    m.d.sync += off[lane].eq(Mux(an[lane] == 2, pos - 2, 0))
                    with m.If(bn[lane] != 0):
                        m.d.sync += [an[lane].eq(bn[lane]), bn[lane].eq(rvn[lane])]
                        m.d.sync += [win_a[lane][t].eq(win_b[lane][t]) for t in range(2)]
                        m.d.sync += [win_b[lane][t].eq(rdata[lane][t]) for t in range(2)]
                    with m.Else():
                        m.d.sync += an[lane].eq(rvn[lane])
                        m.d.sync += [win_a[lane][t].eq(rdata[lane][t]) for t in range(2)]
                with m.Else():
                    m.d.sync += off[lane].eq(pos)
                    with m.If(bn[lane] == 0):
                        m.d.sync += bn[lane].eq(rvn[lane])
                        m.d.sync += [win_b[lane][t].eq(rdata[lane][t]) for t in range(2)]
        with m.If(out_active & Cat(*[(rptr[lane] >= out_len[lane]) & (rvn[lane] == 0) & (an[lane] == 0)
                                     for lane in range(P)]).all()):
            m.d.sync += out_active.eq(0)
        m.d.comb += [
            self.o.valid.eq(ov),
            self.o.payload.overflow.eq(o_ovf),
            self.o.payload.last.eq(o_last),
        ]
        if OL == 1:
            m.d.comb += [self.o.payload.key.eq(o_key[0]), self.o.payload.index.eq(o_index[0])]
        else:
            m.d.comb += [self.o.payload.count.eq(o_count)]
            m.d.comb += [self.o.payload.key[t].eq(o_key[t]) for t in range(OL)]
            m.d.comb += [self.o.payload.index[t].eq(o_index[t]) for t in range(OL)]
