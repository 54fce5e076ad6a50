"""Top-k core: banked MSD radix select over bucket linked lists, then one wide emission scan."""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.numerics.sort import STATUS_K_CLAMPED, STATUS_K_ZERO, STATUS_OK
from ..common import check_choice, check_int
from ..common.ram import PipelinedRAM
from .radix import RadixSorter, digit_slices

__all__ = ["TopK", "LANES"]

#: Keys per input beat P that TopK accepts.
LANES = (1, 2, 4)

#: Words (of G keys) the emission scan may have in flight or queued: its FIFO depth.
SCAN_FIFO_DEPTH = 16


def _or_all(values, start=None):
    """The bitwise OR of ``values`` (and ``start``, if given) as a balanced tree."""
    values = list(values) if start is None else [start, *values]
    while len(values) > 1:
        values = [a | b for a, b in zip(values[0::2], values[1::2])] + values[len(values) & ~1:]
    return values[0]


class TopK(wiring.Component):
    """Indices of the k largest keys of a packet, bit for bit :func:`golden.numerics.sort.topk`.

    Banks. Key ``i`` of a packet lives in bank ``i mod G`` (``G = banks``) at word ``i // G``:
    every bank has its own key RAM, link RAM and bucket lists. A load takes one beat of P keys
    per cycle (``lanes``, into P different banks); the list walks of the select run in all
    banks at once and the emission scan reads one word of ``G`` keys per cycle, so both cost
    about ``1/G`` of a single-bank core.

    The core is built for clock rate (ECP5 >= 170 MHz at P = 1): every phase is a one-hot flag,
    every RAM read goes through an output register, and no compare feeds an adder in the same
    cycle. Per packet of ``n`` keys and one command ``(k, unordered)``:

    1. **Load** (``ceil(n / P)`` cycles and a few of pipeline): a taken beat is registered,
       then each key is written to its bank's key RAM and pushed onto a list of its most
       significant digit. Every bucket has TWO lists per bank, pushes alternating between
       them (a parity bit per bucket), each with its head in a distributed RAM, and a count
       per bucket; a push reads count and head (X), then writes count + 1, the head and the
       node's link (Y), with a counted correction when the same bucket is still in flight.
       A valid bit per bucket and bank empties every list in one cycle (no clear pass).
    2. **Select** (:func:`golden.numerics.sort.radix_select`, MSD first): per digit, a
       six-stage pipeline visits the non-empty buckets from the top, one a cycle (V0 takes
       the highest remaining bucket, V2 reads every bank's count and heads, V3/V4 add them to
       a running sum, V5 compares it with the keys still needed); the first bucket whose
       running sum reaches them holds the k-th key. Then every bank walks both lists of THAT
       bucket, one in even and one in odd cycles: a node's link returns from the link RAM's
       output register just in time for its list's next turn, so a bank walks one node a
       cycle, pushing each node onto the lists of its next digit. Cost per digit: the
       non-empty buckets visited plus about 8, and the largest bank share of the chosen
       bucket plus about 6; never ``n``. Result: threshold T and ``k_left = k - n_above``.
       ``k >= n`` and ``k = 0`` skip the select.
    3. **Emit**: one scan of the key words in index order, one word a cycle, in a pipeline
       (read, two RAM stages, compare with T, rank the ties in the word, select the keys > T
       and the ties ranked below the tie budget, count, mark the word that holds the k-th
       key) that writes words with selected keys into a FIFO of ``SCAN_FIFO_DEPTH`` words
       (reads are issued against credits, so the FIFO never overflows and the scan never
       waits on a decision made in the same cycle). The scan stops once the k-th key is
       found. The emitter takes up to P selected keys a beat from the FIFO's head word,
       lowest index first (a word costs ``max(1, ceil(selected / P))`` beats).
       ``unordered=1`` streams them straight out (ascending index,
       ``topk(..., sorted=False)``); ``unordered=0`` streams them into an internal
       :class:`~hw.sort.radix.RadixSorter` of P lanes (descending, stable: ties keep the
       lower index first), whose output is the core's output, one key a beat for P = 1 and
       two for P > 1 (``topk(..., sorted=True)``, and :func:`~hw.sort.radix.sorter_cycles`
       of ``k`` keys after the scan).

    Cycles with no stalls, unordered, from the first input beat to the last output beat:
    about ``ceil(n / P) + sum(v_j) + sum(c_j) + max(w, e) + 15 D + 15`` (within a few cycles
    of Amaranth simulation for n = 512 and 1024, P = 1, 2, 4, D = 2 and 4), where ``v_j`` are
    the non-empty buckets visited at digit ``j``, ``c_j`` the largest bank share of the bucket
    chosen at each digit but the last (the walks), ``w`` the words up to the one holding the
    k-th selected key and ``e`` the output beats (the emitter is the bottleneck when the
    selected keys are dense). Sorted mode adds the sorter's passes over the ``k`` selected
    keys. ``sim/bench_sort.py`` measures the full-size cases.

    Overlap: the next packet is loaded while the previous packet is scanned (behind the scan
    pointer, with a three-word margin) and sorted; its select waits for the previous scan to
    end. An unordered packet's scan waits until the sorter has emitted every earlier sorted
    packet (outputs stay in packet order).

    k rules (:func:`golden.numerics.sort.clamp_k`): k = 0 emits no data beat, only a status
    beat with ``code = STATUS_K_ZERO``; k > n emits all n (``code = STATUS_K_CLAMPED``,
    ``k`` = n); otherwise ``code = STATUS_OK``. Every packet gets exactly one status beat,
    produced when its emission starts (before its data beats can complete).

    Parameters
    ----------
    key_bits, radix_bits, max_len
        As for :class:`~hw.sort.radix.RadixSorter` (W 1..32, R 1..8, N 2..65536).
        A packet longer than N is truncated to its first N keys (``overflow`` in the status).
    lanes : int
        Keys per input beat P: 1, 2 or 4. The load takes ``ceil(n / P)`` cycles. Unordered
        output beats carry up to P keys (the selected keys of a scanned word), so 900 of 4096
        leave in about 4096 / G + 900 / P beats. In sorted mode the scan hands them, up to P a
        beat, to a P-lane internal sorter (``RadixSorter(..., partial_beats=True)``), so its
        passes take about ``k / P`` cycles each; its merge emits two keys a beat (count 2,
        1 in the last beat of an odd k).
    banks : int
        G, 1, 2, 4 or 8 (at least P, at most N): keys scanned and list nodes walked per cycle.
        0 (default) = ``min(8, 2 P)``.

    Ports
    -----
    i : In(stream)
        ``key``: W bits; ``last``: the packet's final key. For P > 1, as the sorter's P-lane
        input: ``key`` is an array of P keys (lane ``j`` of beat ``b`` is position ``b P + j``)
        and ``count`` the valid keys (lanes ``0..count-1``) of the LAST beat; on other beats
        ``count`` is ignored and all P lanes are taken, and a last-beat ``count`` of 0 or above
        P also means P.
    cmd : In(stream)
        ``k`` (``max(16, bits(N) + 1)`` bits) and ``unordered`` (0: descending key order,
        1: ascending index order): one beat per packet, in packet order; it is taken after
        the packet's last key has been loaded.
    o : Out(stream)
        ``key``, ``index`` (position in the packet), ``last`` (the beat holding the k-th key):
        exactly ``min(k, n)`` keys per packet. P = 1: one key a beat. P > 1: ``key`` and
        ``index`` are arrays of P lanes and ``count`` (1..P, on every beat) says how many
        lanes hold keys, lanes ``0..count-1`` in output order; the other lanes are don't-care.
    status : Out(stream)
        ``code`` (STATUS_OK / STATUS_K_ZERO / STATUS_K_CLAMPED), ``k`` (effective k),
        ``n`` (keys stored), ``overflow`` (the packet was truncated): one beat per packet.
    """

    def __init__(self, key_bits=16, radix_bits=4, max_len=4096, lanes=1, banks=0):
        self.key_bits = check_int("key_bits", key_bits, 1, 32)
        self.radix_bits = check_int("radix_bits", radix_bits, 1, min(8, key_bits))
        self.max_len = check_int("max_len", max_len, 2, 65536)
        self.lanes = check_choice("lanes", check_int("lanes", lanes), LANES)
        check_int("banks", banks, 0, 8)
        # A beat's P keys go to P different banks of one word: G >= P, both powers of two.
        self.banks = check_int("banks", banks or min(8, 2 * self.lanes), self.lanes, 8, power_of_two=True)
        if self.banks > self.max_len:
            raise ValueError(f"banks must be at most max_len ({self.max_len}), not {self.banks}")
        self.passes = -(-self.key_bits // self.radix_bits)
        self.index_bits = max(1, (self.max_len - 1).bit_length())
        self.count_bits = self.max_len.bit_length()
        self.k_bits = max(16, self.count_bits + 1)
        if self.lanes == 1:
            in_fields = {"key": unsigned(self.key_bits), "last": 1}
        else:
            in_fields = {"key": data.ArrayLayout(unsigned(self.key_bits), self.lanes),
                         "count": unsigned(self.lanes.bit_length()), "last": 1}
        if self.lanes == 1:
            out_fields = {"key": unsigned(self.key_bits), "index": unsigned(self.index_bits), "last": 1}
        else:
            # Unlike the input's, the output's count holds on EVERY beat: a scanned word's
            # selected keys come out up to P a beat, so any beat may be partial.
            out_fields = {"key": data.ArrayLayout(unsigned(self.key_bits), self.lanes),
                          "index": data.ArrayLayout(unsigned(self.index_bits), self.lanes),
                          "count": unsigned(self.lanes.bit_length()), "last": 1}
        super().__init__({
            "i": In(stream.Signature(data.StructLayout(in_fields))),
            "cmd": In(stream.Signature(data.StructLayout({"k": unsigned(self.k_bits), "unordered": 1}))),
            "o": Out(stream.Signature(data.StructLayout(out_fields))),
            "status": Out(stream.Signature(data.StructLayout({
                "code": 2, "k": unsigned(self.count_bits), "n": unsigned(self.count_bits), "overflow": 1}))),
        })

    def elaborate(self, platform):
        m = Module()
        W, R, N, D, G, P = self.key_bits, self.radix_bits, self.max_len, self.passes, self.banks, self.lanes
        B = 1 << R
        IW, CW = self.index_bits, self.count_bits
        GB = (G - 1).bit_length()                # bank bits of a key's position
        NW = -(-N // G)                          # words per bank
        WW = max(1, (NW - 1).bit_length())       # word address bits
        BCW = NW.bit_length()                    # a bank's bucket count
        slices = digit_slices(W, R)
        top_lo, top_hi = slices[-1]
        F = SCAN_FIFO_DEPTH

        # The sorted mode's sorter takes P keys a beat too; the scan hands it 1..P selected keys
        # per beat (whatever a word holds), so beats may be partial anywhere.
        m.submodules.sorter = sorter = RadixSorter(W, R, N, P, index_in=True, partial_beats=P > 1,
                                                   out_lanes=2 if P > 1 else 1)

        # ---------------- phases (one-hot flags) ----------------
        # LOAD -> CMD -> DECIDE -> START -> (SELECT -> CHOOSE -> TRAV) x ... -> EMIT -> LOAD
        s_load = Signal(init=1)
        s_cmd, s_decide, s_start, s_select, s_trav, s_emit = (Signal(name=n) for n in (
            "s_cmd", "s_decide", "s_start", "s_select", "s_trav", "s_emit"))

        # ---------------- per bank: key and link RAMs, bucket lists ----------------
        # Key and link RAM: block RAM with two cycles of read latency (hw/common/ram.py); read
        # enabled every cycle (whatever is read is tracked by valid flags). Bucket lists: every
        # bucket has TWO lists per bank (pushes alternate between them, so their lengths differ
        # by at most one), which a walk follows in alternate cycles: each list's next link is
        # back from the link RAM's output register just in time for its next turn, so a bank
        # walks one node a cycle. A count and the two heads per bucket live in RAMs with an
        # asynchronous read (distributed RAM; one head RAM per list), and a valid bit per bucket
        # empties every list at once.
        keys, links = [], []
        cnt_push_r, head_push_r, cnt_sel_r, head_sel_r, cnt_w, head_w = ([] for _ in range(6))
        valid = []
        for g in range(G):
            keys.append(PipelinedRAM(W, NW, f"keys{g}"))
            links.append(PipelinedRAM(WW, NW, f"links{g}"))
            cmem = Memory(shape=unsigned(BCW), depth=B, init=[])
            hmems = [Memory(shape=unsigned(WW), depth=B, init=[]) for _ in range(2)]
            m.submodules[f"keys{g}"], m.submodules[f"links{g}"] = keys[g], links[g]
            m.submodules[f"count{g}"] = cmem
            m.submodules[f"head{g}_0"], m.submodules[f"head{g}_1"] = hmems
            cnt_push_r.append(cmem.read_port(domain="comb"))
            head_push_r.append([hmem.read_port(domain="comb") for hmem in hmems])
            cnt_sel_r.append(cmem.read_port(domain="comb"))   # the select's own read ports
            head_sel_r.append([hmem.read_port(domain="comb") for hmem in hmems])
            cnt_w.append(cmem.write_port())
            head_w.append([hmem.write_port() for hmem in hmems])
            valid.append(Signal(B, name=f"valid{g}"))
            m.d.comb += [keys[g].r_en.eq(1), links[g].r_en.eq(1)]

        # ---------------- push: s = count[d] mod 2; link[node] = head[d, s]; head[d, s] = node;
        # count[d] += 1 ----------------
        # Three register stages per bank: Q (the request: digit, node), X (the bucket's count
        # and list s's head read; registered) and Y (count + 1, head and link written, valid bit
        # set). X misses Y's write of the same bucket in the same cycle: ``x_meet`` (registered
        # when the request enters X) adds one to the count read. The heads need no such care:
        # back-to-back pushes of one bucket go to different lists. ``x_live`` says whether the
        # RAM's count of the bucket belongs to the current lists when X reads it: its valid
        # bit, or Y setting it in the cycle before (registered in Q). The list s (the count mod
        # 2) is known in Q from a parity bit per bucket, toggled by every push, and the pushes
        # of the same bucket still in X and Y.
        q_v = [Signal(name=f"q_v{g}") for g in range(G)]
        q_d = [Signal(R, name=f"q_d{g}") for g in range(G)]
        q_n = [Signal(WW, name=f"q_n{g}") for g in range(G)]
        x_v = [Signal(name=f"x_v{g}") for g in range(G)]
        x_d = [Signal(R, name=f"x_d{g}") for g in range(G)]
        x_n = [Signal(WW, name=f"x_n{g}") for g in range(G)]
        x_meet = [Signal(name=f"x_meet{g}") for g in range(G)]
        x_live = [Signal(name=f"x_live{g}") for g in range(G)]
        # The valid and parity bits of the request's bucket are selected in two steps: by the
        # digit's high bits in Q (registered: a group of SEL bits), by its low bits in X. A
        # 16:1 select in Q was the critical path (two LUT levels with a route between).
        sel_low = min(R, 2)
        SEL = 1 << sel_low
        x_valid_grp = [Signal(SEL, name=f"x_valid_grp{g}") for g in range(G)]  # valid bits read at Q
        x_par_grp = [Signal(SEL, name=f"x_par_grp{g}") for g in range(G)]      # parity bits read at Q
        x_valid = [Signal(name=f"x_valid{g}") for g in range(G)]
        y_v = [Signal(name=f"y_v{g}") for g in range(G)]
        y_d = [Signal(R, name=f"y_d{g}") for g in range(G)]
        y_n = [Signal(WW, name=f"y_n{g}") for g in range(G)]
        # the count's increment, 1 or (X's push met) 2, registered as an operand: formed in Y from
        # the meet flag, its LUT in front of the adder's carry chain was on the critical path
        y_inc = [Signal(2, name=f"y_inc{g}") for g in range(G)]
        y_count = [Signal(BCW, name=f"y_count{g}") for g in range(G)]  # the count read (0 if stale)
        parity = [Signal(B, name=f"parity{g}") for g in range(G)]     # count mod 2 of every list pair
        x_par = [Signal(name=f"x_par{g}") for g in range(G)]
        x_my = [Signal(name=f"x_my{g}") for g in range(G)]             # Y's push met at Q
        x_sub = [Signal(name=f"x_sub{g}") for g in range(G)]           # the list pushed: count mod 2
        y_sub = [Signal(name=f"y_sub{g}") for g in range(G)]
        y_link = [Signal(WW, name=f"y_link{g}") for g in range(G)]     # ... and its old head
        clear_lists = Signal()      # registered: empty every bank's lists (no push is in flight)

        def select_group(bits, digit):
            return bits if R == sel_low else bits.word_select(digit[sel_low:], SEL)
        for g in range(G):
            meet_x = x_v[g] & (x_d[g] == q_d[g])   # X's push will be in Y with this one in X
            meet_y = y_v[g] & (y_d[g] == q_d[g])   # Y's push is written as this one enters X
            m.d.sync += [x_v[g].eq(q_v[g]), x_d[g].eq(q_d[g]), x_n[g].eq(q_n[g]),
                         x_valid_grp[g].eq(select_group(valid[g], q_d[g])), x_meet[g].eq(meet_x),
                         x_par_grp[g].eq(select_group(parity[g], q_d[g])), x_my[g].eq(meet_y),
                         y_v[g].eq(x_v[g]), y_d[g].eq(x_d[g]), y_n[g].eq(x_n[g]), y_inc[g].eq(Cat(~x_meet[g], x_meet[g])),
                         y_count[g].eq(Mux(x_live[g], cnt_push_r[g].data, 0)), y_sub[g].eq(x_sub[g]),
                         y_link[g].eq(Mux(x_sub[g], head_push_r[g][1].data, head_push_r[g][0].data))]
            # (the parity read and the meets are registered apart and joined here: a 16:1
            # mux and two compares in front of an XOR were too deep for Q; the reads finish here)
            m.d.comb += [x_valid[g].eq(x_valid_grp[g].bit_select(x_d[g][:sel_low], 1)),
                         x_par[g].eq(x_par_grp[g].bit_select(x_d[g][:sel_low], 1))]
            m.d.comb += x_sub[g].eq(x_par[g] ^ x_meet[g] ^ x_my[g])
            # (likewise the valid bit read and Y's meet: their OR in Q was the critical path)
            m.d.comb += x_live[g].eq(x_valid[g] | x_my[g])
            m.d.comb += [cnt_push_r[g].addr.eq(x_d[g]),
                         cnt_w[g].addr.eq(y_d[g]), cnt_w[g].data.eq(y_count[g] + y_inc[g]),
                         cnt_w[g].en.eq(y_v[g]),
                         head_w[g][0].addr.eq(y_d[g]), head_w[g][0].data.eq(y_n[g]), head_w[g][0].en.eq(y_v[g] & ~y_sub[g]),
                         head_w[g][1].addr.eq(y_d[g]), head_w[g][1].data.eq(y_n[g]), head_w[g][1].en.eq(y_v[g] & y_sub[g]),
                         links[g].w_addr.eq(y_n[g]), links[g].w_data.eq(y_link[g]),
                         links[g].w_en.eq(y_v[g])]
            m.d.comb += [head_push_r[g][s].addr.eq(x_d[g]) for s in range(2)]
            with m.If(clear_lists):
                m.d.sync += [valid[g].eq(0), parity[g].eq(0)]
            with m.Elif(y_v[g]):
                m.d.sync += [valid[g].bit_select(y_d[g], 1).eq(1), parity[g].bit_select(y_d[g], 1).eq(~y_sub[g])]
        push_busy = Signal()        # (with a beat registered: it pushes next)

        # ---------------- load ----------------
        in_ready = Signal()
        take = self.i.valid & in_ready
        m.d.comb += self.i.ready.eq(in_ready)
        l_valid = Signal()          # the beat taken last cycle (registered before any use)
        l_keys = [Signal(W, name=f"l_key{j}") for j in range(P)]
        l_n = Signal(range(P + 1))  # keys in it
        lane_ok = Signal(P, init=(1 << P) - 1)  # cnt + j < N: lane j of the next beat is stored
        ok2_init = sum(1 << j for j in range(P) if P + j < N)
        lane_ok2 = Signal(P, init=ok2_init)     # cnt + P + j < N: ... of the beat after it
        l_store = Signal(P)         # registered: lane j of the beat in L is stored
        cnt = Signal(CW)            # keys stored
        ovf = Signal()
        cnt_p3g = Signal(CW + 3, init=3 * G)  # cnt + 3 G: three words ahead (room check)
        room = Signal()
        m.d.sync += l_valid.eq(take)
        m.d.comb += push_busy.eq(Cat(l_valid, *q_v, *x_v, *y_v).any())
        # Which lanes of a beat are stored is decided as it is taken, with the lane_ok that
        # holds when it is in L (updated by the beat in L now, if any), so that the key RAM
        # writes and the pushes are enabled from a register.
        ok_at_l = Mux(l_valid, lane_ok2, lane_ok)
        if P == 1:
            n_in = Const(1, 1)
        else:
            count_in = self.i.payload.count
            n_in = Mux(self.i.payload.last & (count_in >= 1) & (count_in < P), count_in, P)
        m.d.sync += l_store.eq(Cat(*[take & (n_in > j) & ok_at_l[j] for j in range(P)]))
        with m.If(take):
            m.d.sync += l_n.eq(n_in)
            if P == 1:
                m.d.sync += l_keys[0].eq(self.i.payload.key)
            else:
                m.d.sync += [l_keys[j].eq(self.i.payload.key[j]) for j in range(P)]
            with m.If(self.i.payload.last):
                m.d.sync += in_ready.eq(0)
        lane_store = [l_store[j] for j in range(P)]
        n_stored = Signal(range(P + 1))
        m.d.comb += n_stored.eq(sum(lane_store[1:], lane_store[0]))
        load_bank = cnt[:GB] if GB else Const(0, 1)
        load_word = cnt[GB:GB + WW]
        with m.If(l_valid):
            m.d.sync += cnt.eq(cnt + n_stored)
            # (compares with constants; the k rules read ``n_keys``, not cnt, so Yosys no longer
            # shares these compares' carry chains with their adders. Equality tests instead,
            # flags that fall at the first multiple of P reaching the bound, placed no better:
            # a median of 186 against 194 MHz over nextpnr seeds 1, 3, 4, 6 and 7)
            m.d.sync += [lane_ok[j].eq(cnt < N - P - j) for j in range(P)]
            m.d.sync += [lane_ok2[j].eq(cnt < N - 2 * P - j) for j in range(P)]
            m.d.sync += cnt_p3g.eq(cnt_p3g + n_stored)
            with m.If(Cat(*[(l_n > j) & ~lane_ok[j] for j in range(P)]).any()):
                m.d.sync += ovf.eq(1)
        # the key RAMs' write ports are driven by registers (a cycle after the beat's L stage)
        kw_addr = Signal(WW)
        kw_data = [Signal(W, name=f"kw_data{g}") for g in range(G)]
        kw_en = Signal(G)
        m.d.sync += [kw_addr.eq(load_word), kw_en.eq(0)]
        for g in range(G):
            m.d.comb += [keys[g].w_addr.eq(kw_addr), keys[g].w_data.eq(kw_data[g]), keys[g].w_en.eq(kw_en[g])]
            m.d.sync += q_v[g].eq(0)
            for j in range(P):
                # lane j of a beat is position cnt + j: bank cnt mod G + j (cnt is a multiple of
                # P until the last beat, and G of P), word cnt // G
                in_bank = ((load_bank + j)[:GB] == g) if GB else Const(1, 1)
                with m.If(lane_store[j] & in_bank):
                    m.d.sync += [kw_data[g].eq(l_keys[j]), kw_en[g].eq(1),
                                 q_v[g].eq(1), q_d[g].eq(l_keys[j][top_lo:top_hi]), q_n[g].eq(load_word)]

        # ---------------- command and the k rules ----------------
        keff = Signal(CW)
        code = Signal(2)
        unord = Signal()
        cmd_k = Signal(self.k_bits)
        k_zero = Signal()
        k_over = Signal()           # k > cnt
        k_all = Signal()            # k >= cnt
        thr = Signal(W)
        k_left = Signal(CW)
        need = Signal(CW)           # k_left less the keys of the buckets visited above
        level = Signal(range(max(D, 2)))
        level_zero = Signal()
        quiet = Signal()            # last cycle: no push, no walk (registered, see TRAV)

        # ---------------- select: visit the buckets from the top ----------------
        # V0 takes the highest remaining bucket of ``avail`` (one-hot), V1 encodes it, V2 reads
        # every bank's count and head (masked by its valid bit), V3 adds the counts, V4 adds
        # the total to the running sum ``acc`` of the buckets visited (``acc_before`` without
        # it), V5 compares: the first bucket whose running sum reaches ``need`` (k, or k_left of
        # the level above) holds the k-th key, and k_left is need - acc_before. The visit order
        # does not depend on the compares, so every stage runs ahead and is dropped once V5 has
        # chosen; no compare feeds back into an adder.
        avail = Signal(B)
        v1_v, v2_v, v3_v, v4_v = (Signal(name=f"v{i}_v") for i in range(1, 5))  # (V5: v5_v)
        v1_hot = Signal(B)
        v2_in = Signal(G)           # bank g's list of the bucket is valid
        v2_b, v3_b, v4_b = (Signal(R, name=f"v{i}_b") for i in range(2, 5))
        v3_count = [Signal(BCW, name=f"v3_count{g}") for g in range(G)]
        v4_count = [Signal(BCW, name=f"v4_count{g}") for g in range(G)]
        v3_head = [[Signal(WW, name=f"v3_head{g}_{s}") for s in range(2)] for g in range(G)]
        v4_head = [[Signal(WW, name=f"v4_head{g}_{s}") for s in range(2)] for g in range(G)]
        v4_total = Signal(CW)
        v5_v = Signal()
        acc = Signal(CW + 1)
        acc_before = Signal(CW + 1)
        chosen = Signal()
        # SELECT's first cycle (``sel_first``) loads avail from the lists' valid bits; the visits
        # start in the next
        sel_first = Signal()
        visiting = s_select & ~chosen & ~sel_first
        m.d.sync += sel_first.eq(0)
        c_b = Signal(R)
        v4_nz = Signal(G)           # bank g's count of the bucket is >= 1 / >= 2 (its lists' turns)
        v4_ge2 = Signal(G)
        # each list's node count less 2 (list 0 holds ceil(count / 2) nodes, list 1 the rest),
        # so that "more than one left" is a sign bit when the walk issues
        c_t2 = [[Signal(signed(BCW + 1), name=f"c_t2_{g}_{s}") for s in range(2)] for g in range(G)]
        c_head = [[Signal(WW, name=f"c_head{g}_{s}") for s in range(2)] for g in range(G)]
        c_nz = Signal(G)
        c_ge2 = Signal(G)
        # the highest set bit of avail, one-hot: set, and none set above it.
        if B <= 16:
            # Groups of four buckets with a registered "not empty" flag each (``avail_grp``): the
            # top group (none above it) and the top bucket within each group are one LUT each
            avail_grp = Signal(-(-B // 4))
            groups = [(lo, min(lo + 4, B)) for lo in range(0, B, 4)]
            top_grp = [avail_grp[j] & ~avail_grp[j + 1:].any() if j + 1 < len(groups) else avail_grp[j]
                       for j in range(len(groups))]
            top_hot = []
            for j, (lo, hi) in enumerate(groups):
                for b in range(lo, hi):
                    none_above = ~avail[b + 1:hi].any() if b + 1 < hi else Const(1, 1)
                    top_hot.append(top_grp[j] & avail[b] & none_above)
            above = [avail[b] & ~top_hot[b] for b in range(B)]  # (what stays: "above" of the scan below)
            # at most one set: "no two set", a LUT (as x & (x - 1) == 0 Yosys made it a carry
            # chain ahead of two more LUTs, the critical path at some seeds)
            single = [~_or_all([avail[a] & avail[b] for a in range(lo, hi) for b in range(a + 1, hi)])
                      if hi - lo > 1 else Const(1, 1) for lo, hi in groups]
            with m.If(sel_first):
                m.d.sync += avail_grp.eq(Cat(*[_or_all(valid)[lo:hi].any() for lo, hi in groups]))
            with m.Elif(visiting):
                m.d.sync += avail_grp.eq(Cat(*[avail_grp[j] & ~(top_grp[j] & single[j]) for j in range(len(groups))]))
            avail_any = avail_grp.any()
        else:
            # beyond 16 buckets: a log-depth suffix scan of the bits above each position
            suffix = avail
            step = 1
            while step < B:
                scan = Signal(B, name=f"avail_suffix{step}")
                m.d.comb += scan.eq(Cat(*[suffix[i] | suffix[i + step] if i + step < B else suffix[i]
                                          for i in range(B)]))
                suffix, step = scan, step * 2
            above = [suffix[b + 1] for b in range(B - 1)] + [Const(0, 1)]
            top_hot = [avail[b] & ~above[b] for b in range(B)]
            above = [avail[b] & above[b] for b in range(B)]
            avail_any = avail.any()
        m.d.sync += [v1_v.eq(visiting & avail_any), v1_hot.eq(Cat(*top_hot)),
                     v2_v.eq(visiting & v1_v), v2_in.eq(Cat(*[(v1_hot & valid[g]).any() for g in range(G)])),
                     v2_b.eq(_or_all([Mux(v1_hot[b], b, 0) for b in range(1, B)], Const(0, R))),
                     v3_v.eq(visiting & v2_v), v3_b.eq(v2_b),
                     v4_v.eq(visiting & v3_v), v4_b.eq(v3_b)]
        with m.If(sel_first):
            m.d.sync += avail.eq(_or_all(valid))
        with m.Elif(visiting):
            m.d.sync += avail.eq(Cat(*above))  # the top one dropped
        for g in range(G):
            m.d.comb += cnt_sel_r[g].addr.eq(v2_b)
            m.d.comb += [head_sel_r[g][s].addr.eq(v2_b) for s in range(2)]
            m.d.sync += [v3_count[g].eq(Mux(v2_in[g], cnt_sel_r[g].data, 0)), v4_count[g].eq(v3_count[g])]
            m.d.sync += [v3_head[g][s].eq(head_sel_r[g][s].data) for s in range(2)]
            m.d.sync += [v4_head[g][s].eq(v3_head[g][s]) for s in range(2)]
        m.d.sync += [v4_total.eq(sum(v3_count[1:], v3_count[0])),
                     v4_nz.eq(Cat(*[v3_count[g] != 0 for g in range(G)])),
                     v4_ge2.eq(Cat(*[v3_count[g] >= 2 for g in range(G)]))]
        # V5's bucket (v5_*) and, a stage behind, the c_* registers follow the visits until a
        # bucket is chosen and then hold: the chosen bucket (in V5 when ``chosen`` is set) is
        # in c_* one cycle later, when the FSM reads it. A plain clock enable, not the
        # compare's fan-out, and the same for k_left less the buckets above (``kl``).
        v5_b = Signal(R)
        v5_nz, v5_ge2 = Signal(G), Signal(G)
        v5_count = [Signal(BCW, name=f"v5_count{g}") for g in range(G)]
        v5_head = [[Signal(WW, name=f"v5_head{g}_{s}") for s in range(2)] for g in range(G)]
        kl = Signal(CW)
        m.d.sync += v5_v.eq(visiting & v4_v)
        with m.If(~chosen):
            m.d.sync += [v5_b.eq(v4_b), v5_nz.eq(v4_nz), v5_ge2.eq(v4_ge2),
                         c_b.eq(v5_b), c_nz.eq(v5_nz), c_ge2.eq(v5_ge2), kl.eq(need - acc_before)]
            m.d.sync += [v5_count[g].eq(v4_count[g]) for g in range(G)]
            m.d.sync += [v5_head[g][s].eq(v4_head[g][s]) for g in range(G) for s in range(2)]
            for g in range(G):
                wide = Cat(v5_count[g], Const(0, 1)).as_signed()
                # ceil(c / 2) - 2 = (c - 3) >> 1 and floor(c / 2) - 2 = (c - 4) >> 1 (arithmetic)
                m.d.sync += [c_t2[g][0].eq((wide - 3) >> 1), c_t2[g][1].eq((wide - 4) >> 1)]
            m.d.sync += [c_head[g][s].eq(v5_head[g][s]) for g in range(G) for s in range(2)]
            with m.If(v4_v):
                m.d.sync += [acc.eq(acc + v4_total), acc_before.eq(acc)]
        with m.If(visiting & v5_v & (acc >= need)):
            m.d.sync += chosen.eq(1)

        # ---------------- walk: every bank walks both lists of the chosen bucket ----------------
        # List s issues its reads in the cycles where ``phase`` = s. A node's link comes out of
        # the link RAM's output register two cycles after its read, which is that list's next
        # turn, so a bank walks one node a cycle; the link goes straight back into the link
        # RAM's address. The key RAM reads the node a cycle later, from a register (the two
        # block RAMs may sit far apart). Each node's key gives its digit of the next level, and
        # the node is pushed onto that digit's lists.
        phase = Signal()
        m.d.sync += phase.eq(~phase)
        cur = [[Signal(WW, name=f"cur{g}_{s}") for s in range(2)] for g in range(G)]
        trem = [[Signal(signed(BCW + 1), name=f"trem{g}_{s}") for s in range(2)] for g in range(G)]  # left - 2
        trem_nz = [[Signal(name=f"trem_nz{g}_{s}") for s in range(2)] for g in range(G)]
        tq = [Signal(name=f"tq{g}") for g in range(G)]    # a walk read in the RAMs' first stage
        tv = [Signal(name=f"tv{g}") for g in range(G)]    # ... at their output registers
        tk = [Signal(name=f"tk{g}") for g in range(G)]    # ... its key at the key RAM's output
        tnode_q = [Signal(WW, name=f"tnode_q{g}") for g in range(G)]
        tnode_v = [Signal(WW, name=f"tnode_v{g}") for g in range(G)]
        walk_addr = [Signal(WW, name=f"walk_addr{g}") for g in range(G)]
        walk_addr_r = [Signal(WW, name=f"walk_addr_r{g}") for g in range(G)]  # the key RAM's address
        walking = Signal()
        for g in range(G):
            issue = s_trav & Mux(phase, trem_nz[g][1], trem_nz[g][0])
            # the read data at the output was issued two cycles ago by the same list
            m.d.comb += [walk_addr[g].eq(Mux(tv[g], links[g].r_data, Mux(phase, cur[g][1], cur[g][0]))),
                         links[g].r_addr.eq(walk_addr[g])]
            m.d.sync += [tq[g].eq(issue), tv[g].eq(tq[g]), tk[g].eq(tv[g]), walk_addr_r[g].eq(walk_addr[g]),
                         tnode_q[g].eq(walk_addr_r[g]), tnode_v[g].eq(tnode_q[g])]
            for s in range(2):
                with m.If(issue & (phase == s)):
                    # more than one node left before this one: trem (left - 2) is not negative
                    m.d.sync += [trem[g][s].eq(trem[g][s] - 1), trem_nz[g][s].eq(~trem[g][s][-1])]
            if D > 1:
                with m.If(tk[g]):
                    # digit level - 1 (every digit below the top one is R bits wide)
                    digit = Array([keys[g].r_data[lo:hi] for lo, hi in slices[:-1]])[level - 1]
                    m.d.sync += [q_v[g].eq(1), q_d[g].eq(digit), q_n[g].eq(tnode_v[g])]
        m.d.comb += walking.eq(Cat(*[t for tt in trem_nz for t in tt], *tq, *tv, *tk).any())
        m.d.sync += quiet.eq(~walking & ~push_busy)

        # ---------------- emission scan ----------------
        # S0 issues a word read (``sptr``) while the FIFO has a credit for it; the key RAMs'
        # two read stages; K registers the word; C1 compares its keys with T (above, equal);
        # C2 ranks the ties in the word; C3 selects (above, or a tie ranked below the tie
        # budget) and updates the budget; C4 counts the selected keys and the keys still to
        # find (marking the word that holds the k-th); C5 writes words with selected keys into
        # the FIFO (the others give their credit back). The emitter takes up to P selected keys
        # a beat from the head word. FIFO level and credits are thermometer codes (shift
        # registers), so "empty" and "no credit" are single flip-flops.
        scan_active = Signal()
        sptr = Signal(WW + 1)
        s_at_last = Signal()        # sptr is the packet's last word
        last_word_m1 = Signal(WW + 1)
        last_mask = Signal(G)       # keys of the last word that are in the packet
        credits = Signal(F)         # thermometer: credits[i] = more than i credits left
        sq, sv = Signal(), Signal()
        sq_last, sv_last = Signal(), Signal()
        sqw, sw = Signal(WW), Signal(WW)
        k_v, k_last = Signal(), Signal()
        k_w = Signal(WW)
        c_v = [Signal(name=f"c{i}_v") for i in range(6)]      # C1..C5 valid (index 0 unused)
        c_w = [Signal(WW, name=f"c{i}_w") for i in range(6)]
        c_k = [[Signal(W, name=f"c{i}_k{g}") for g in range(G)] for i in range(6)]
        k_k = [Signal(W, name=f"kk{g}") for g in range(G)]
        c1_gt, c1_lt, c1_in, c2_gt, c2_tie = (Signal(G, name=n) for n in ("c1_gt", "c1_lt", "c1_in", "c2_gt",
                                                                          "c2_tie"))
        c2_rank = [Signal(range(G), name=f"c2_rank{g}") for g in range(G)]
        c2_nt = Signal(range(G + 1))
        c3_sel, c4_sel, c5_sel = Signal(G), Signal(G), Signal(G)
        c4_nsel = Signal(range(G + 1))
        c4_any = Signal()
        c5_last = Signal()          # the word holds the k-th key (in C5)
        budget = Signal(signed(CW + 2))  # ties still allowed (may go below zero)
        rem_m1 = Signal(signed(CW + 1))  # selected keys not yet found, less one
        issue_s = Signal()
        # words left to read and the k-th key not yet found: one register, so that a read's
        # issue is two inputs
        scan_go = Signal()
        m.d.comb += [issue_s.eq(scan_go & credits[0])]
        # (the k-th key's word stops the reads a cycle after C5, through ``found_r``; the one or
        # two words read meanwhile have no selected keys and are dropped)
        found_r = Signal()
        with m.If((issue_s & s_at_last) | found_r):
            m.d.sync += scan_go.eq(0)
        with m.If(s_trav):
            m.d.comb += [keys[g].r_addr.eq(walk_addr_r[g]) for g in range(G)]
        with m.Else():
            m.d.comb += [keys[g].r_addr.eq(sptr[:WW]) for g in range(G)]
        with m.If(issue_s):
            m.d.sync += [sptr.eq(sptr + 1), s_at_last.eq(sptr >= last_word_m1)]
        m.d.sync += [sq.eq(issue_s), sq_last.eq(s_at_last), sqw.eq(sptr[:WW]),
                     sv.eq(sq), sv_last.eq(sq_last), sw.eq(sqw),
                     k_v.eq(sv), k_last.eq(sv_last), k_w.eq(sw)]
        m.d.sync += [k_k[g].eq(keys[g].r_data) for g in range(G)]
        # C1: carry-chain compares only, straight into registers
        m.d.sync += [c_v[1].eq(k_v), c_w[1].eq(k_w),
                     # (each a subtraction's borrow: Yosys had derived ">" from "<" and "==")
                     c1_gt.eq(Cat(*[(thr - k_k[g])[W] for g in range(G)])),
                     c1_lt.eq(Cat(*[(k_k[g] - thr)[W] for g in range(G)])),
                     c1_in.eq(Cat(*[~k_last | last_mask[g] for g in range(G)]))]
        m.d.sync += [c_k[1][g].eq(k_k[g]) for g in range(G)]
        # C2: tie ranks within the word (keys of the packet only)
        c1_tie = c1_in & ~c1_gt & ~c1_lt
        m.d.sync += [c_v[2].eq(c_v[1]), c_w[2].eq(c_w[1]), c2_gt.eq(c1_in & c1_gt), c2_tie.eq(c1_tie)]
        ties_before = Const(0, 1)
        for g in range(G):
            m.d.sync += c2_rank[g].eq(ties_before)
            ties_before = ties_before + c1_tie[g]
        m.d.sync += c2_nt.eq(ties_before)
        # C3: selection; the budget less this word's ties for the next word
        m.d.sync += [c_v[3].eq(c_v[2]), c_w[3].eq(c_w[2]),
                     c3_sel.eq(Cat(*[c2_gt[g] | (c2_tie[g] & (c2_rank[g] < budget)) for g in range(G)]))]
        with m.If(c_v[2]):
            m.d.sync += budget.eq(budget - c2_nt)
        # C4: selected keys counted
        n_sel = Const(0, 1)
        for g in range(G):
            n_sel = n_sel + c3_sel[g]
        m.d.sync += [c_v[4].eq(c_v[3]), c_w[4].eq(c_w[3]), c4_sel.eq(c3_sel), c4_nsel.eq(n_sel),
                     c4_any.eq(c3_sel.any())]
        # C5: the keys still to find; the word with the k-th key is marked, and stops the reads.
        # The count left never goes below the word's selected keys, so the word holds the k-th
        # key when the count left after it is 0: the count less one is negative, its sign bit, a
        # register that C4 has just updated (it was a zero test of the count, three LUTs deep
        # ahead of the FIFO's write data: the critical path at some seeds).
        m.d.sync += [c_v[5].eq(c_v[4] & c4_any), c_w[5].eq(c_w[4]), c5_sel.eq(c4_sel)]
        m.d.comb += c5_last.eq(rem_m1[CW])
        m.d.sync += found_r.eq(c_v[5] & c5_last)
        with m.If(c_v[4]):
            m.d.sync += rem_m1.eq(rem_m1 - c4_nsel)
        for i in range(2, 6):
            m.d.sync += [c_k[i][g].eq(c_k[i - 1][g]) for g in range(G)]
        drop = c_v[4] & ~c4_any     # a word without selected keys gives its credit back
        # FIFO of words with selected keys: (keys, word, selection, holds the k-th key)
        fifo_w = G * W + WW + G + 1
        fifo = Memory(shape=unsigned(fifo_w), depth=F, init=[])
        m.submodules.scan_fifo = fifo
        f_wr = fifo.write_port()
        f_rd = fifo.read_port(domain="comb")
        f_wp = Signal(range(F))
        f_rp = Signal(range(F))
        f_fill = Signal(F)          # thermometer: f_fill[i] = more than i words held
        push_f = c_v[5]
        m.d.comb += [f_wr.addr.eq(f_wp), f_wr.en.eq(push_f),
                     f_wr.data.eq(Cat(*c_k[5], c_w[5], c5_sel, c5_last)), f_rd.addr.eq(f_rp)]
        with m.If(push_f):
            m.d.sync += f_wp.eq(f_wp + 1)

        # ---------------- emitter: the head word's selected keys, up to P a beat ----------------
        h_v = Signal()
        h_k = [Signal(W, name=f"h_k{g}") for g in range(G)]
        h_w = Signal(WW)
        h_sel = Signal(G)
        h_last = Signal()
        ov = Signal()
        okey = [Signal(W, name=f"okey{t}") for t in range(P)]
        oidx = [Signal(IW, name=f"oidx{t}") for t in range(P)]
        ocount = Signal(range(P + 1))
        olast = Signal()
        direct = Signal()           # registered: the scan's beats are the core's output
        dst_ready = Mux(unord, self.o.ready, sorter.i.ready)
        # The output register (ov, okey, ...) has a skid register (kv, kkey, ...) behind it: the
        # emitter advances while the skid is empty, a register, so that the FIFO's pop and level
        # do not wait on the destination's ready; a beat made while the output stalls waits in
        # the skid, and moves to the output when it frees.
        kv = Signal()
        kkey = [Signal(W, name=f"kkey{t}") for t in range(P)]
        kidx = [Signal(IW, name=f"kidx{t}") for t in range(P)]
        kcount = Signal(range(P + 1))
        klast = Signal()
        out_free = ~ov | dst_ready
        en = ~kv
        # the lowest P selected keys of the head word leave this beat, in index order
        rank = Const(0, 1)
        taken = []
        for g in range(G):
            taken.append(Signal(name=f"taken{g}"))
            m.d.comb += taken[g].eq(h_sel[g] & (rank < P))
            rank = rank + h_sel[g]
        rest = h_sel & ~Cat(*taken)
        # the head word has at most P selected keys left: this beat finishes it (a register,
        # set from the selection that is loaded)
        h_done = Signal()
        word_done = h_done

        def at_most_p(sel):
            return sum(sel[g] for g in range(G)) <= P
        # f_fill counts the pops a cycle late (``back_pop``, below), so that its update has only
        # registers as inputs and the pop is not on the level's loop (it was the critical
        # path): the words held are f_fill less last cycle's pop.
        back_pop = Signal()
        f_avail = Mux(back_pop, f_fill[1], f_fill[0])
        pop = en & (~h_v | word_done) & f_avail
        beat_keys = [Signal(W, name=f"beat_key{t}") for t in range(P)]
        beat_idx = [Signal(IW, name=f"beat_idx{t}") for t in range(P)]
        rank = Const(0, 1)
        for g in range(G):
            for t in range(P):
                with m.If(taken[g] & (rank == t)):
                    m.d.comb += [beat_keys[t].eq(h_k[g]), beat_idx[t].eq(Cat(Const(g, GB), h_w) if GB else h_w)]
            rank = rank + taken[g]
        n_taken = sum(taken[1:], taken[0])
        beat_last = h_last & word_done
        # kv's next value as one expression, not as branches: Yosys made the branches' clear a
        # synchronous reset (the slice's LSR input, 0.42 ns of setup) behind three LUTs from
        # the destination's ready (the critical path at some seeds)
        m.d.sync += kv.eq(~out_free & (kv | h_v))
        with m.If(out_free):
            with m.If(kv):
                m.d.sync += [ov.eq(1), ocount.eq(kcount), olast.eq(klast)]
                m.d.sync += [okey[t].eq(kkey[t]) for t in range(P)]
                m.d.sync += [oidx[t].eq(kidx[t]) for t in range(P)]
            with m.Else():
                m.d.sync += [ov.eq(h_v), ocount.eq(n_taken), olast.eq(beat_last)]
                m.d.sync += [okey[t].eq(beat_keys[t]) for t in range(P)]
                m.d.sync += [oidx[t].eq(beat_idx[t]) for t in range(P)]
        with m.Elif(~kv):
            m.d.sync += [kcount.eq(n_taken), klast.eq(beat_last)]
            m.d.sync += [kkey[t].eq(beat_keys[t]) for t in range(P)]
            m.d.sync += [kidx[t].eq(beat_idx[t]) for t in range(P)]
        with m.If(en):
            with m.If(h_v & ~word_done):
                m.d.sync += [h_sel.eq(rest), h_done.eq(at_most_p(rest))]
            with m.Elif(pop):
                entry = f_rd.data
                entry_sel = entry[G * W + WW:G * W + WW + G]
                m.d.sync += [h_v.eq(1), h_w.eq(entry[G * W:G * W + WW]), h_sel.eq(entry_sel),
                             h_done.eq(at_most_p(entry_sel)), h_last.eq(entry[-1]), f_rp.eq(f_rp + 1)]
                m.d.sync += [h_k[g].eq(entry[g * W:(g + 1) * W]) for g in range(G)]
            with m.Else():
                m.d.sync += h_v.eq(0)
        up = Cat(Const(1, 1), f_fill[:-1])
        down = Cat(f_fill[1:], Const(0, 1))
        # (credits come back two cycles after a pop at the earliest, so the words held plus
        # last cycle's pop never exceed F and the thermometer cannot overflow)
        m.d.sync += f_fill.eq(Mux(push_f & ~back_pop, up, Mux(back_pop & ~push_f, down, f_fill)))
        # credits: a word read takes one; a dropped word and a popped word give one back. The
        # returns (up to two a cycle, registered) queue in ``retq`` (a thermometer too), which
        # hands back one a cycle: the credits' update then has one return bit and the read's
        # issue as inputs, not three (it was the critical path). Reads and returns both run at
        # most one a cycle, so the queue stays short.
        back_drop = Signal()
        m.d.sync += [back_drop.eq(drop), back_pop.eq(pop)]
        retq = Signal(F)

        def shifted(therm, d):
            width = len(therm)
            if d > 0:
                return Cat(*([Const(1, 1)] * d), therm[:width - d])
            if d < 0:
                return Cat(therm[-d:], Const(0, -d))
            return therm
        ret = retq[0]
        with m.Switch(Cat(ret, back_drop, back_pop)):
            for case in range(8):
                r, b_d, b_p = case & 1, (case >> 1) & 1, (case >> 2) & 1
                with m.Case(case):
                    m.d.sync += retq.eq(shifted(retq, b_d + b_p - r))
        with m.Switch(Cat(issue_s, ret)):
            for case in range(4):
                i_s, r = case & 1, (case >> 1) & 1
                with m.Case(case):
                    m.d.sync += credits.eq(shifted(credits, r - i_s))
        with m.If(ov & dst_ready & olast):  # the k-th key leaves: the scan is over
            m.d.sync += [scan_active.eq(0), direct.eq(0)]

        # ---------------- room for the next packet's load behind the scan ----------------
        # A beat taken at t is written at t + 2 to the word of cnt at t + 1, at most three
        # words past that of cnt at t - 2 (when ``room`` was computed; sptr never falls,
        # scan_active only falls and a scan starts only with the load of a packet), whose read
        # was then issued by t: ready may come late, never early, and a write never meets a
        # read of the same word.
        m.d.sync += room.eq(~scan_active | (cnt_p3g[GB:] < sptr))
        with m.If(s_load & ~(take & self.i.payload.last)):
            m.d.sync += in_ready.eq(room)

        # ---------------- phases ----------------
        st_valid = Signal()
        with m.If(self.status.ready):
            m.d.sync += st_valid.eq(0)
        m.d.comb += self.status.valid.eq(st_valid)
        pending = Signal(range(8))  # packets inside the sorter
        m.d.sync += clear_lists.eq(0)

        with m.If(s_load & take & self.i.payload.last):
            m.d.sync += [s_load.eq(0), s_cmd.eq(1)]
        # the command is taken once the last beat's pushes are done and the previous scan is over
        # (from CMD's second cycle on: ``quiet`` leaves out the beat taken in the cycle before
        # CMD, which is registered in CMD's first)
        # Ready is a register (the conditions only become true while CMD waits, and stay so):
        # a cycle later than they allow, but the take is then two inputs.
        cmd_old = Signal()
        cmd_ok = Signal()
        m.d.sync += [cmd_old.eq(s_cmd),
                     cmd_ok.eq(s_cmd & cmd_old & quiet & ~scan_active & ~(self.cmd.valid & cmd_ok))]
        m.d.comb += self.cmd.ready.eq(cmd_ok)
        with m.If(self.cmd.valid & cmd_ok):
            m.d.sync += [cmd_k.eq(self.cmd.payload.k), unord.eq(self.cmd.payload.unordered), s_cmd.eq(0),
                         s_decide.eq(1)]
        # the scan's view of the packet, ready before EMIT
        e_at_last = Signal()        # one word
        e_words = Signal(WW + 1)    # words (a stage before e_last_m1)
        e_last_m1 = Signal(WW + 1)  # words - 2
        e_last_mask = Signal(G)
        keff_nz = Signal()
        # (from registers that hold still from CMD to EMIT, so computed every cycle, no enable)
        # The k rules in two stages (DECIDE, DECIDE2): compares of k's low bits with cnt, then
        # joined with "k's high bits are not all zero".
        # (">" as a subtraction's borrow and "==" as a LUT tree: Yosys had chained ">=" behind
        # ">")
        # They read ``n_keys``, a copy of cnt a cycle late, not cnt itself: Yosys shared their
        # "cnt + constant" carry chains with the load's lane_ok compares, and the load loop
        # (cnt -> lane_ok) then ran through a chain placed beside these registers (the
        # critical path). cnt is final two cycles after the last beat is taken and holds still
        # until the EMIT start; the command is taken three cycles after that beat at the
        # earliest (cmd_ok waits for cmd_old), so DECIDE, the first reader, sees the final count.
        n_keys = Signal(CW)
        m.d.sync += n_keys.eq(cnt)
        kc_hi, kc_gt, kc_eq, kc_z = (Signal(name=n) for n in ("kc_hi", "kc_gt", "kc_eq", "kc_z"))
        k_low = cmd_k[:CW]
        m.d.sync += [kc_hi.eq(cmd_k[CW:].any()), kc_gt.eq((n_keys - k_low)[CW]), kc_eq.eq(k_low == n_keys),
                     kc_z.eq(k_low == 0),
                     k_zero.eq(~kc_hi & kc_z), k_over.eq(kc_hi | kc_gt), k_all.eq(kc_hi | kc_gt | kc_eq),
                     e_at_last.eq(n_keys <= G), e_words.eq((n_keys + G - 1) >> GB), e_last_m1.eq(e_words - 2),
                     e_last_mask.eq(Mux(n_keys[:GB] == 0, (1 << G) - 1, (Const(1, G + 1) << n_keys[:GB]) - 1)
                                    if GB else 1)]
        s_decide2 = Signal()
        with m.If(s_decide):
            m.d.sync += [s_decide.eq(0), s_decide2.eq(1)]
        with m.If(s_decide2):
            m.d.sync += [s_decide2.eq(0), s_start.eq(1)]
        with m.If(s_start):
            # k rules: k = 0 emits nothing; k >= n every key (threshold 0, every tie allowed)
            m.d.sync += [thr.eq(0), level.eq(D - 1), level_zero.eq(D == 1), s_start.eq(0)]
            m.d.sync += keff_nz.eq(~k_zero)
            with m.If(k_zero):
                m.d.sync += [keff.eq(0), k_left.eq(0), code.eq(STATUS_K_ZERO), s_emit.eq(1)]
            with m.Elif(k_all):
                m.d.sync += [keff.eq(n_keys), k_left.eq(n_keys), code.eq(Mux(k_over, STATUS_K_CLAMPED, STATUS_OK)),
                             s_emit.eq(1)]
            with m.Else():
                m.d.sync += [keff.eq(cmd_k), need.eq(cmd_k), code.eq(STATUS_OK), s_select.eq(1), sel_first.eq(1),
                             chosen.eq(0), acc.eq(0)]
        with m.If(s_select & chosen):
            # the chosen bucket is digit ``level`` of T; its list in every bank is walked next
            m.d.sync += [k_left.eq(kl), need.eq(kl), chosen.eq(0), s_select.eq(0), acc.eq(0)]
            for lv, (lo, hi) in enumerate(slices):
                with m.If(level == lv):
                    m.d.sync += thr[lo:hi].eq(c_b[:hi - lo])
            # (the walk's pointers and counts are loaded at every level, unused at the last:
            # only the flags that start it wait on the level test)
            for g in range(G):
                # list 0 holds the first, third, ... pushes of the bucket: ceil(count / 2)
                m.d.sync += [cur[g][0].eq(c_head[g][0]), cur[g][1].eq(c_head[g][1]),
                             trem[g][0].eq(c_t2[g][0]), trem[g][1].eq(c_t2[g][1])]
            with m.If(level_zero):
                m.d.sync += s_emit.eq(1)
            with m.Else():
                m.d.sync += [clear_lists.eq(1), s_trav.eq(1)]
                m.d.sync += [trem_nz[g][0].eq(c_nz[g]) for g in range(G)]
                m.d.sync += [trem_nz[g][1].eq(c_ge2[g]) for g in range(G)]
        # the walk is over once nothing was walked or pushed last cycle (``quiet``), from the
        # second TRAV cycle on (in the first, quiet still reflects the select)
        trav_old = Signal()
        m.d.sync += trav_old.eq(s_trav)
        with m.If(s_trav & trav_old & quiet):
            m.d.sync += [s_trav.eq(0), s_select.eq(1), sel_first.eq(1), level.eq(level - 1),
                         level_zero.eq(level == 1)]
        # The emission starts (it resets some forty registers) when ``emit_go``, a register, is
        # set: a cycle after EMIT holds with the sorter empty for an unordered packet (no
        # packet enters it while EMIT waits) and once the previous status beat has gone (its
        # level next cycle, from the status ready: as early as a combinational start would
        # take it). The start's condition was two LUTs deep ahead of that wide reset, and the
        # status ready reached every register in it.
        emit_go = Signal()
        m.d.sync += emit_go.eq(s_emit & ~emit_go & (~unord | (pending == 0)) & ~(st_valid & ~self.status.ready))
        # (ov and kv are not cleared here: both are empty once the previous scan's last beat has
        # left, which the command waited for; a clear added the start's condition to their
        # update, which the destination's ready already reaches)
        with m.If(emit_go):
            m.d.sync += [st_valid.eq(1), self.status.payload.code.eq(code), self.status.payload.k.eq(keff),
                         self.status.payload.n.eq(cnt), self.status.payload.overflow.eq(ovf),
                         scan_active.eq(keff_nz), scan_go.eq(keff_nz), direct.eq(keff_nz & unord), sptr.eq(0),
                         s_at_last.eq(e_at_last), last_word_m1.eq(e_last_m1),
                         last_mask.eq(e_last_mask),
                         credits.eq((1 << F) - 1), f_wp.eq(0), f_rp.eq(0), f_fill.eq(0), h_v.eq(0),
                         back_drop.eq(0), back_pop.eq(0), retq.eq(0), sq.eq(0), sv.eq(0), k_v.eq(0),
                         *[v.eq(0) for v in c_v[1:]],
                         budget.eq(k_left), rem_m1.eq(keff - 1),
                         cnt.eq(0), ovf.eq(0), lane_ok.eq((1 << P) - 1), lane_ok2.eq(ok2_init),
                         cnt_p3g.eq(3 * G),
                         room.eq(0), s_emit.eq(0), s_load.eq(1)]
            m.d.sync += clear_lists.eq(1)

        # ---------------- outputs ----------------
        m.d.comb += [
            sorter.i.valid.eq(ov & ~unord & scan_active),
            sorter.i.payload.descending.eq(1), sorter.i.payload.last.eq(olast),
            sorter.o.ready.eq(~direct & self.o.ready),
        ]
        o_key = [self.o.payload.key] if P == 1 else [self.o.payload.key[t] for t in range(P)]
        o_index = [self.o.payload.index] if P == 1 else [self.o.payload.index[t] for t in range(P)]
        with m.If(direct):
            m.d.comb += [self.o.valid.eq(ov), self.o.payload.last.eq(olast)]
            m.d.comb += [o_key[t].eq(okey[t]) for t in range(P)]
            m.d.comb += [o_index[t].eq(oidx[t]) for t in range(P)]
            if P > 1:
                m.d.comb += self.o.payload.count.eq(ocount)
        with m.Else():
            # the sorter's P-way merge emits two (key, index) a beat for P > 1 (lanes 0 and 1;
            # one in the last beat of an odd k), one for P = 1
            m.d.comb += [self.o.valid.eq(sorter.o.valid), self.o.payload.last.eq(sorter.o.payload.last)]
            if P == 1:
                m.d.comb += [o_key[0].eq(sorter.o.payload.key), o_index[0].eq(sorter.o.payload.index)]
            else:
                m.d.comb += [o_key[t].eq(sorter.o.payload.key[t]) for t in range(2)]
                m.d.comb += [o_index[t].eq(sorter.o.payload.index[t]) for t in range(2)]
                m.d.comb += self.o.payload.count.eq(sorter.o.payload.count)
        if P == 1:
            m.d.comb += [sorter.i.payload.key.eq(okey[0]), sorter.i.payload.index.eq(oidx[0])]
        else:
            m.d.comb += [sorter.i.payload.key[t].eq(okey[t]) for t in range(P)]
            m.d.comb += [sorter.i.payload.index[t].eq(oidx[t]) for t in range(P)]
            m.d.comb += sorter.i.payload.count.eq(ocount)
        into = sorter.i.valid & sorter.i.ready & sorter.i.payload.last
        out_of = sorter.o.valid & sorter.o.ready & sorter.o.payload.last
        m.d.sync += pending.eq(pending + into - out_of)
        return m
