"""Top-k core: banked MSD radix select over bucket linked lists, then one wide emission scan."""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.numerics.sort import STATUS_K_CLAMPED, STATUS_K_ZERO, STATUS_OK
from ..common import check_choice, check_int
from ..common.ram import PipelinedRAM
from .radix import RadixSorter, digit_slices

__all__ = ["TopK", "highest_set", "LANES"]

#: Keys per input beat P that TopK accepts.
LANES = (1, 2, 4)


def highest_set(bits):
    """``(any, index)`` of the highest set bit of ``bits`` as a balanced tree of 2:1 choices
    (depth log2(len), not a chain of len muxes). ``index`` is 0 when no bit is set."""
    width = len(bits)
    if width == 1:
        return bits[0], Const(0, 1)
    half = 1 << ((width - 1).bit_length() - 1)
    lo_any, lo_idx = highest_set(bits[:half])
    hi_any, hi_idx = highest_set(bits[half:])
    idx_bits = (width - 1).bit_length()
    return lo_any | hi_any, Mux(hi_any, hi_idx + half, lo_idx)[:idx_bits]


class TopK(wiring.Component):
    """Indices of the k largest keys of a packet, bit for bit :func:`golden.numerics.sort.topk`.

    Banks. Key ``i`` of a packet lives in bank ``i mod G`` (``G = banks``) at word ``i // G``:
    every bank has its own key RAM, link RAM and bucket lists. A load takes one beat of P keys
    per cycle (``lanes``, into P different banks), but the list walks of the select run in all banks at once, and the emission scan
    reads one word of ``G`` keys per cycle, so both cost about ``1/G`` of a single-bank core.

    Per packet of ``n`` keys and one command ``(k, unordered)``:

    1. **Load** (``ceil(n / P)`` cycles): key ``i`` is written to its bank and pushed onto that bank's
       linked list of its most significant digit (``link[w] = head[d]; head[d] = w``) while the
       bank's count of the digit is incremented.
    2. **Select** (:func:`golden.numerics.sort.radix_select`, MSD first): per digit, visit the
       non-empty buckets from the top (one per cycle; a priority encoder skips empty ones),
       adding the banks' counts, up to the bucket that holds the remaining k-th key; then every
       bank walks its own list of THAT bucket (one node every other cycle per bank: a node's
       link comes out of the link RAM's output register two cycles after its read), rebuilding
       its lists and counts for the next digit. Cost per digit: the non-empty buckets visited
       (plus one: a visit's counts are registered before their compare) + twice the largest
       bank share of the chosen bucket, not ``n``. Result: threshold T and
       ``k_left = k - n_above``. ``k >= n`` and ``k = 0`` skip the select.
       Bucket lists are emptied in one cycle by a valid bit per bucket and bank (no clear pass).
    3. **Emit**: one scan of the key words in index order; in each word the keys > T and the
       keys == T whose rank among the ties so far is < ``k_left`` are selected, and the selected
       keys of a word leave up to P a cycle, lowest index first (a word costs
       ``max(1, ceil(selected / P))`` cycles). The scan
       stops once ``k`` are out. ``unordered=1`` streams them straight out, up to P a beat
       (ascending index, ``topk(..., sorted=False)``); ``unordered=0`` streams them into an internal
       :class:`~hw.sort.radix.RadixSorter` of P lanes (descending, stable: ties keep the lower
       index first), whose output is the core's output, one key a beat
       (``topk(..., sorted=True)``).

    Cycles with no stalls (``v_j`` non-empty buckets visited and ``c_j`` the largest bank share
    of the chosen bucket at digit ``j``, ``w`` = words up to the k-th selected key, ``x`` = the
    extra cycles of words with more than P selected keys, sum of ``ceil(s / P) - 1``): unordered
    ``ceil(n / P) + 1 + sum(v_j + 1) + sum(2 c_j + 3) + w + x + 5`` (for Fmax the key and link RAMs
    read through an output register, two cycles of latency, and the walk's push and the scan's
    selection each sit one register stage behind that); sorted adds the sorter after the scan:
    ``B + (D - s) * (m + 5) + s + k + ~7`` with ``m = k`` at P = 1 and
    ``B + (D - s) * (m + 2) + s + k + ~3`` with ``m = ceil(k / P)`` lanes' worth at P > 1
    (:func:`~hw.sort.radix.sorter_cycles`). Measured by ``sim/bench_sort.py``.

    Overlap: the next packet is loaded while the previous packet is scanned (behind the scan
    pointer) and sorted; its select waits for the previous scan to end. An unordered packet's
    scan waits until the sorter has emitted every earlier sorted packet (outputs stay in
    packet order).

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
        passes take about ``k / P`` cycles each; its merge emits one key a beat (count 1).
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
        W, R, N, D, G = self.key_bits, self.radix_bits, self.max_len, self.passes, self.banks
        B = 1 << R
        IW, CW = self.index_bits, self.count_bits
        GB = (G - 1).bit_length()                # bank bits of a key's position
        NW = -(-N // G)                          # words per bank
        WW = max(1, (NW - 1).bit_length())       # word address bits
        BCW = NW.bit_length()                    # a bank's bucket count
        slices = digit_slices(W, R)
        top_lo, top_hi = slices[-1]

        P = self.lanes
        # The sorted mode's sorter takes P keys a beat too; the scan hands it 1..P selected keys
        # per beat (whatever a word holds), so beats may be partial anywhere.
        m.submodules.sorter = sorter = RadixSorter(W, R, N, P, index_in=True, partial_beats=P > 1)

        # Per bank: key RAM and link RAM (block RAM, two-cycle read), and the bucket lists: a
        # counter and a head pointer per bucket in RAMs with an asynchronous read (distributed
        # RAM) so that a push (link[w] = head[d]; head[d] = w; count[d] += 1) takes one cycle,
        # plus a valid bit per bucket that empties all lists at once.
        krd, kwr, lrd, lwr, hist_r, hist_w, head_r, head_w, valid = ([] for _ in range(9))
        hist_s, head_s = [], []  # the select's own read ports: keeps the push path off its adders
        push, push_d, push_node = [], [], []
        for g in range(G):
            # two cycles of read latency (RAM + output register): see hw/common/ram.py
            keymem = PipelinedRAM(W, NW, f"keys{g}")
            linkmem = PipelinedRAM(WW, NW, f"links{g}")
            histmem = Memory(shape=unsigned(BCW), depth=B, init=[])
            headmem = Memory(shape=unsigned(WW), depth=B, init=[])
            m.submodules[f"keys{g}"], m.submodules[f"links{g}"] = keymem, linkmem
            m.submodules[f"hist{g}"], m.submodules[f"head{g}"] = histmem, headmem
            krd.append(keymem.read)
            kwr.append(keymem.write)
            lrd.append(linkmem.read)
            lwr.append(linkmem.write)
            hist_r.append(histmem.read_port(domain="comb"))
            hist_w.append(histmem.write_port())
            head_r.append(headmem.read_port(domain="comb"))
            head_w.append(headmem.write_port())
            hist_s.append(histmem.read_port(domain="comb"))
            head_s.append(headmem.read_port(domain="comb"))
            valid.append(Signal(B, name=f"valid{g}"))
            push.append(Signal(name=f"push{g}"))
            push_d.append(Signal(R, name=f"push_d{g}"))
            push_node.append(Signal(WW, name=f"push_node{g}"))
            m.d.comb += [krd[g].en.eq(0), kwr[g].en.eq(0), lrd[g].en.eq(0)]
            was = valid[g].bit_select(push_d[g], 1)
            m.d.comb += [lwr[g].addr.eq(push_node[g]), lwr[g].data.eq(head_r[g].data), lwr[g].en.eq(push[g])]
            with m.If(push[g]):
                m.d.comb += [hist_r[g].addr.eq(push_d[g]), head_r[g].addr.eq(push_d[g]),
                             hist_w[g].addr.eq(push_d[g]), hist_w[g].en.eq(1),
                             hist_w[g].data.eq(Mux(was, hist_r[g].data, 0) + 1),
                             head_w[g].addr.eq(push_d[g]), head_w[g].data.eq(push_node[g]), head_w[g].en.eq(1)]
                m.d.sync += valid[g].bit_select(push_d[g], 1).eq(1)
        any_valid = Signal(B)
        or_valid = valid[0]
        for g in range(1, G):
            or_valid = or_valid | valid[g]
        m.d.comb += any_valid.eq(or_valid)

        cnt = Signal(CW)
        ovf = Signal()
        # per-packet select results (shared with the scan: the next select waits for it)
        keff = Signal(CW)
        code = Signal(2)
        unord = Signal()
        thr = Signal(W)
        k_left = Signal(CW)
        level = Signal(range(max(D, 2)))
        avail = Signal(B)        # buckets of this digit not visited yet
        # k_left less the keys of the buckets visited above the chosen one, so the visit's test
        # is one compare of the bucket's total (not an add and a compare)
        need = Signal(CW)
        cur = [Signal(WW, name=f"cur{g}") for g in range(G)]
        trem = [Signal(BCW, name=f"trem{g}") for g in range(G)]
        tq = [Signal(name=f"tq{g}") for g in range(G)]  # a walk read in the RAMs' first stage
        tv = [Signal(name=f"tv{g}") for g in range(G)]  # ... at the RAMs' output (node ``tnode``)
        tnode = [Signal(WW, name=f"tnode{g}") for g in range(G)]
        # Every push is registered (digit and node) and done the cycle after its key arrives (a
        # load beat, or a walked node's key read): keeps the key RAM's clock-to-out and the
        # load's handshake and bounds compares off the bucket lists' read-add-write.
        pv = [Signal(name=f"pv{g}") for g in range(G)]
        pdig = [Signal(R, name=f"pdig{g}") for g in range(G)]
        pnode = [Signal(WW, name=f"pnode{g}") for g in range(G)]
        # scan engine
        scan_active = Signal()
        sptr = Signal(WW + 1)    # next word to read
        swords = Signal(WW + 1)  # words of the packet being scanned
        sn = Signal(CW)
        sq = Signal()            # the key RAMs' first read stage holds word ``sqw``
        sqw = Signal(WW)
        sv = Signal()            # the key RAMs' read data (output register) hold word ``sw``
        sw = Signal(WW)
        # The word under selection is one register stage behind the key RAMs (``bv``, word ``bw``):
        # its keys and their compares with T were registered off the RAM outputs, so the RAM's
        # 5.8 ns clock-to-out and the key compares are not on the path to the next read enable.
        bv = Signal()
        bw = Signal(WW)
        bkey = [Signal(W, name=f"bkey{g}") for g in range(G)]
        bgt = Signal(G)          # key > T (and in the packet)
        btie = Signal(G)         # key == T (and in the packet)
        btb = [Signal(range(G), name=f"btb{g}") for g in range(G)]  # ties before it in the word
        bties = Signal(range(G + 1))  # ties in the word
        fresh = Signal()         # ... and it has not been looked at yet
        rem = Signal(G)          # selected keys of word ``bw`` still to emit
        # ties still allowed: max(0, k_left - ties so far), so a tie's test is a compare with its
        # rank in the word (< G), not an add of the running tie count
        tbudget = Signal(CW)
        left = Signal(CW)        # keys still to emit: keff - emitted
        ov = Signal()
        okey = [Signal(W, name=f"okey{t}") for t in range(P)]     # output beat: P lanes, ocount valid
        oidx = [Signal(IW, name=f"oidx{t}") for t in range(P)]
        ocount = Signal(range(P + 1))
        olast = Signal()
        # status slot
        st_valid = Signal()
        pending = Signal(range(8))  # packets inside the sorter

        # ---------------- load ----------------
        loading = Signal()
        write_ok = ~scan_active | (cnt < (sptr << GB)) | (cnt >= N)
        m.d.comb += self.i.ready.eq(loading & write_ok)
        take = self.i.valid & self.i.ready
        # Lane j of a beat is the key at position cnt + j. cnt is a multiple of P until the
        # packet's last beat and G a multiple of P, so a beat's keys share one word and land in
        # P different banks (bank cnt mod G + j).
        if P == 1:
            keys_in, n_in = [self.i.payload.key], 1
        else:
            keys_in = [self.i.payload.key[j] for j in range(P)]
            count = self.i.payload.count
            n_in = Mux(self.i.payload.last & (count >= 1) & (count < P), count, P)
        lane_in = [take & (n_in > j) for j in range(P)]
        lane_store = [lane_in[j] & (cnt + j < N) for j in range(P)]
        n_stored = sum(lane_store[1:], lane_store[0])
        load_word = cnt[GB:GB + WW]
        load_bank = cnt[:GB] if GB else Const(0, 1)

        status_free = ~st_valid | self.status.ready
        with m.If(self.status.ready):
            m.d.sync += st_valid.eq(0)

        # the bucket visited this cycle of SELECT: the highest not yet visited non-empty one, a
        # register found from ``avail`` whenever that changes, so the priority encoder is not in
        # front of the count reads
        bucket = Signal(R)
        avail_next = avail & ~(Const(1, B) << bucket)
        counts = [Mux(valid[g].bit_select(bucket, 1), hist_s[g].data, 0) for g in range(G)]
        m.d.comb += [hist_s[g].addr.eq(bucket) for g in range(G)]
        m.d.comb += [head_s[g].addr.eq(bucket) for g in range(G)]
        total = counts[0]
        for g in range(1, G):
            total = total + counts[g]
        # The visit is two stages: the bucket's counts, heads and their total are registered
        # (``sel_*``), then compared with ``need``. The buckets' order does not depend on the
        # compare, so the first stage runs one bucket ahead (dropped when the compare chooses):
        # the bucket-list reads and the adder are off the compare and its wide fan-out.
        sel_v = Signal()
        sel_bucket = Signal(R)
        sel_total = Signal(CW)
        sel_count = [Signal(BCW, name=f"sel_count{g}") for g in range(G)]
        sel_head = [Signal(WW, name=f"sel_head{g}") for g in range(G)]

        for g in range(G):
            m.d.sync += pv[g].eq(0)  # set again by a load beat or a walked key, below
            with m.If(pv[g]):
                m.d.comb += [push[g].eq(1), push_d[g].eq(pdig[g]), push_node[g].eq(pnode[g])]
        with m.FSM(init="LOAD"):
            with m.State("LOAD"):
                m.d.comb += loading.eq(1)
                for j in range(P):
                    for g in range(G):
                        with m.If(lane_store[j] & (load_bank + j == g)):
                            m.d.comb += [kwr[g].addr.eq(load_word), kwr[g].data.eq(keys_in[j]), kwr[g].en.eq(1)]
                            m.d.sync += [pv[g].eq(1), pdig[g].eq(keys_in[j][top_lo:top_hi]),
                                         pnode[g].eq(load_word)]
                m.d.sync += cnt.eq(cnt + n_stored)
                with m.If(Cat(*[lane_in[j] & ~lane_store[j] for j in range(P)]).any()):
                    m.d.sync += ovf.eq(1)
                with m.If(take & self.i.payload.last):
                    m.next = "CMD"
            with m.State("CMD"):
                # (and after the last beat's push: the select reads the lists' valid bits)
                cmd_ok = ~scan_active & ~Cat(*pv).any()
                m.d.comb += self.cmd.ready.eq(cmd_ok)
                with m.If(self.cmd.valid & cmd_ok):
                    k = self.cmd.payload.k
                    m.d.sync += [unord.eq(self.cmd.payload.unordered), thr.eq(0), need.eq(k),
                                 level.eq(D - 1), avail.eq(any_valid), bucket.eq(highest_set(any_valid)[1]),
                                 sel_v.eq(0)]
                    with m.If(k == 0):
                        m.d.sync += [keff.eq(0), k_left.eq(0), code.eq(STATUS_K_ZERO)]
                        m.next = "EMIT"
                    with m.Elif(k >= cnt):
                        # every key is selected: threshold 0, all of its ties allowed
                        m.d.sync += [keff.eq(cnt), k_left.eq(cnt),
                                     code.eq(Mux(k > cnt, STATUS_K_CLAMPED, STATUS_OK))]
                        m.next = "EMIT"
                    with m.Else():
                        m.d.sync += [keff.eq(k), k_left.eq(k), code.eq(STATUS_OK)]
                        m.next = "SELECT"
            with m.State("SELECT"):
                # k_left <= keys in the current set, so the chosen bucket comes before avail empties
                m.d.sync += [sel_v.eq(1), sel_bucket.eq(bucket), sel_total.eq(total),
                             avail.eq(avail_next), bucket.eq(highest_set(avail_next)[1])]
                m.d.sync += [sel_count[g].eq(counts[g]) for g in range(G)]
                m.d.sync += [sel_head[g].eq(head_s[g].data) for g in range(G)]
                with m.If(sel_v & (sel_total >= need)):
                    m.d.sync += k_left.eq(need)
                    for g in range(G):
                        m.d.sync += [cur[g].eq(sel_head[g]), trem[g].eq(sel_count[g]), tq[g].eq(0), tv[g].eq(0),
                                     valid[g].eq(0)]
                    for lv, (lo, hi) in enumerate(slices):
                        with m.If(level == lv):
                            m.d.sync += thr[lo:hi].eq(sel_bucket[:hi - lo])
                    with m.If(level == 0):
                        m.next = "EMIT"
                    with m.Else():
                        m.next = "TRAV"
                with m.Elif(sel_v):
                    m.d.sync += need.eq(need - sel_total)
            with m.State("TRAV"):
                busy = []
                for g in range(G):
                    # A node's link (the next address) arrives two cycles after its read, so a
                    # bank walks one node every other cycle: the RAMs' output register keeps
                    # their clock-to-out off the address path.
                    issue = (trem[g] != 0) & ~tq[g]
                    addr = Mux(tv[g], lrd[g].data, cur[g])
                    m.d.comb += [krd[g].addr.eq(addr), krd[g].en.eq(1), lrd[g].addr.eq(addr), lrd[g].en.eq(1)]
                    m.d.sync += [tq[g].eq(issue), tv[g].eq(tq[g]), pv[g].eq(tv[g])]
                    with m.If(issue):
                        m.d.sync += [trem[g].eq(trem[g] - 1), tnode[g].eq(addr)]
                    with m.If(tv[g]):
                        digit = Array([krd[g].data[lo:hi] for lo, hi in slices])[level - 1][:R]
                        m.d.sync += [pdig[g].eq(digit), pnode[g].eq(tnode[g])]
                    busy.append(issue | tq[g] | tv[g] | pv[g])
                with m.If(~Cat(*busy).any()):
                    m.d.sync += [level.eq(level - 1), avail.eq(any_valid), bucket.eq(highest_set(any_valid)[1]),
                                 sel_v.eq(0)]
                    m.next = "SELECT"
            with m.State("EMIT"):
                with m.If(status_free & (~unord | (pending == 0))):
                    m.d.sync += [st_valid.eq(1),
                                 self.status.payload.code.eq(code), self.status.payload.k.eq(keff),
                                 self.status.payload.n.eq(cnt), self.status.payload.overflow.eq(ovf),
                                 scan_active.eq(keff != 0), sptr.eq(0), swords.eq((cnt + G - 1) >> GB),
                                 sn.eq(cnt), sq.eq(0), sv.eq(0), bv.eq(0), fresh.eq(0), rem.eq(0),
                                 tbudget.eq(k_left), left.eq(keff), ov.eq(0), cnt.eq(0), ovf.eq(0)]
                    m.d.sync += [valid[g].eq(0) for g in range(G)]
                    m.next = "LOAD"
        m.d.comb += self.status.valid.eq(st_valid)

        # ---------------- emission scan: one word of G keys per cycle ----------------
        # Three stages: the key RAMs' two read stages (words ``sqw``, then ``sw`` in their output
        # registers), the RAMs' outputs compared with T and registered (word ``bw``); the selected
        # keys of the registered word leave from there. All advance together (``adv``, also the
        # RAMs' read enable) when the registered word is empty or fully taken.
        direct = scan_active & unord
        dst_ready = Mux(unord, self.o.ready, sorter.i.ready)
        en = ~ov | dst_ready
        done = left == 0
        s_issue = scan_active & (sptr < swords) & ~done
        a_gt, a_tie = [], []
        for g in range(G):
            kg = krd[g].data
            in_packet = Cat(Const(g, GB), sw) < sn if GB else sw < sn
            a_gt.append(in_packet & (kg > thr))
            a_tie.append(in_packet & (kg == thr))
        # selection of the registered word (its tie ranks continue the earlier words' ties)
        sel = Signal(G)
        for g in range(G):
            m.d.comb += sel[g].eq(bgt[g] | (btie[g] & (btb[g] < tbudget)))
        mask = Mux(fresh, sel, rem) & Mux(bv, (1 << G) - 1, 0)
        # The lowest P set bits of the mask leave this cycle, in index order: to the output
        # (unordered) or to the sorter (sorted), as one beat of up to P lanes either way.
        rank = Const(0, 1)
        taken = []
        for g in range(G):
            taken.append(Signal(name=f"taken{g}"))
            m.d.comb += taken[g].eq(mask[g] & (rank < P))
            rank = rank + mask[g]
        n_taken = sum(taken[1:], taken[0])
        rest = mask & ~Cat(*taken)
        # output lane t gets the taken key of rank t
        beat_keys = [Signal(W, name=f"beat_key{t}") for t in range(P)]
        beat_idx = [Signal(IW, name=f"beat_idx{t}") for t in range(P)]
        rank = Const(0, 1)
        for g in range(G):
            for t in range(P):
                with m.If(taken[g] & (rank == t)):
                    m.d.comb += [beat_keys[t].eq(bkey[g]), beat_idx[t].eq(Cat(Const(g, GB), bw) if GB else bw)]
            rank = rank + taken[g]
        adv = ~bv | (en & (rest == 0))
        with m.If(scan_active):
            m.d.comb += [krd[g].addr.eq(sptr[:WW]) for g in range(G)]
            with m.If(en):
                m.d.sync += [ov.eq(mask.any()), ocount.eq(n_taken), olast.eq(n_taken == left)]
                m.d.sync += [okey[t].eq(beat_keys[t]) for t in range(P)]
                m.d.sync += [oidx[t].eq(beat_idx[t]) for t in range(P)]
                m.d.sync += left.eq(left - n_taken)
                with m.If(fresh & bv):
                    m.d.sync += tbudget.eq(Mux(tbudget > bties, tbudget - bties, 0))
                with m.If(rest != 0):
                    m.d.sync += [rem.eq(rest), fresh.eq(0)]
            with m.If(adv):  # word done (or none held): take the RAMs' word, read the next one
                m.d.comb += [krd[g].en.eq(1) for g in range(G)]
                m.d.sync += [sq.eq(s_issue), sqw.eq(sptr[:WW]), sv.eq(sq), sw.eq(sqw),
                             bv.eq(sv), bw.eq(sw), fresh.eq(1),
                             bgt.eq(Cat(*a_gt)), btie.eq(Cat(*a_tie))]
                m.d.sync += [bkey[g].eq(krd[g].data) for g in range(G)]
                n_before = Const(0, 1)
                for g in range(G):
                    m.d.sync += btb[g].eq(n_before)
                    n_before = n_before + a_tie[g]
                m.d.sync += bties.eq(n_before)
                with m.If(s_issue):
                    m.d.sync += sptr.eq(sptr + 1)
            # under ``en``: the last beat is out before the scan ends
            with m.If(en & (done | ((sptr == swords) & ~sq & ~sv & ~bv))):
                m.d.sync += [scan_active.eq(0), ov.eq(0), sq.eq(0), sv.eq(0), bv.eq(0)]

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
            # the sorter's P-way merge emits one (key, index) a beat: lane 0, count 1
            m.d.comb += [self.o.valid.eq(sorter.o.valid), o_key[0].eq(sorter.o.payload.key),
                         o_index[0].eq(sorter.o.payload.index), self.o.payload.last.eq(sorter.o.payload.last)]
            if P > 1:
                m.d.comb += self.o.payload.count.eq(1)
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
