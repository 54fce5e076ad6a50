"""Top-k core: MSD radix select over bucket linked lists, then one emission scan (+ radix sort)."""

from amaranth.hdl import Array, Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.numerics.sort import STATUS_K_CLAMPED, STATUS_K_ZERO, STATUS_OK
from ..common import check_int
from .radix import RadixSorter, digit_slices

__all__ = ["TopK"]


class TopK(wiring.Component):
    """Indices of the k largest keys of a packet, bit for bit :func:`golden.numerics.sort.topk`.

    Per packet of ``n`` keys and one command ``(k, unordered)``:

    1. **Load** (``n`` cycles): key ``i`` is written at address ``i`` of the key RAM and pushed
       onto the linked list of its most significant digit (``link[i] = head[d]; head[d] = i``,
       one link RAM of ``n`` pointers) while the digit's histogram is counted.
    2. **Select** (:func:`golden.numerics.sort.radix_select`, MSD first): per digit, scan the
       buckets from the top (one bucket per cycle, stopping at the chosen one) to the bucket
       that holds the remaining k-th key, then walk only THAT bucket's list (one node per
       cycle), rebuilding lists and histogram for the next digit. Cost per digit: the buckets
       scanned + the size of the chosen bucket, not ``n`` (for VAR logits the chosen
       bucket holds a few % of the keys). Result: threshold T and ``k_left = k - n_above``.
       ``k >= n`` and ``k = 0`` skip the select.
    3. **Emit**: one scan of the key RAM in index order selects every key > T and the first
       ``k_left`` keys == T, and stops once ``k`` are out. ``unordered=1`` streams them
       straight out (ascending index, ``topk(..., sorted=False)``); ``unordered=0`` streams them
       into an internal :class:`~hw.sort.radix.RadixSorter` (descending, stable: ties keep
       the lower index first), whose output is the core's output (``topk(..., sorted=True)``).

    Cycles with no stalls (``B = 2**radix_bits``, ``D`` digits, ``b_j`` buckets scanned and
    ``c_j`` keys in the chosen bucket at digit ``j``, ``m`` = index of the k-th selected key):
    unordered ``n + 1 + sum(b_j + 1) + sum(c_j + 1) + (m + 1) + 3``; sorted adds the sorter
    after the scan: ``B + (D - s) * (k + 2) + s + k + ~3``. Measured by sim/bench_sort.py.

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
    key_bits, radix_bits, max_len, lanes
        As for :class:`~hw.sort.radix.RadixSorter` (W 1..32, R 1..8, N 2..65536, P = 1 only).
        A packet longer than N is truncated to its first N keys (``overflow`` in the status).

    Ports
    -----
    i : In(stream)
        ``key``: W bits; ``last``: the packet's final key.
    cmd : In(stream)
        ``k`` (``max(16, bits(N) + 1)`` bits) and ``unordered`` (0: descending key order,
        1: ascending index order): one beat per packet, in packet order; it is taken after
        the packet's last key has been loaded.
    o : Out(stream)
        ``key``, ``index`` (position in the packet), ``last`` (the k-th beat): exactly
        ``min(k, n)`` beats per packet.
    status : Out(stream)
        ``code`` (STATUS_OK / STATUS_K_ZERO / STATUS_K_CLAMPED), ``k`` (effective k),
        ``n`` (keys stored), ``overflow`` (the packet was truncated): one beat per packet.
    """

    def __init__(self, key_bits=16, radix_bits=4, max_len=4096, lanes=1):
        self.key_bits = check_int("key_bits", key_bits, 1, 32)
        self.radix_bits = check_int("radix_bits", radix_bits, 1, min(8, key_bits))
        self.max_len = check_int("max_len", max_len, 2, 65536)
        self.lanes = check_int("lanes", lanes, 1, 1)
        self.passes = -(-self.key_bits // self.radix_bits)
        self.index_bits = max(1, (self.max_len - 1).bit_length())
        self.count_bits = self.max_len.bit_length()
        self.k_bits = max(16, self.count_bits + 1)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"key": unsigned(self.key_bits), "last": 1}))),
            "cmd": In(stream.Signature(data.StructLayout({"k": unsigned(self.k_bits), "unordered": 1}))),
            "o": Out(stream.Signature(data.StructLayout({
                "key": unsigned(self.key_bits), "index": unsigned(self.index_bits), "last": 1}))),
            "status": Out(stream.Signature(data.StructLayout({
                "code": 2, "k": unsigned(self.count_bits), "n": unsigned(self.count_bits), "overflow": 1}))),
        })

    def elaborate(self, platform):
        m = Module()
        W, R, N, D = self.key_bits, self.radix_bits, self.max_len, self.passes
        B = 1 << R
        IW, CW = self.index_bits, self.count_bits
        slices = digit_slices(W, R)
        top_lo, top_hi = slices[-1]

        m.submodules.keys = keymem = Memory(shape=unsigned(W), depth=N, init=[])
        m.submodules.links = linkmem = Memory(shape=unsigned(IW), depth=N, init=[])
        krd, kwr = keymem.read_port(transparent_for=()), keymem.write_port()
        lrd, lwr = linkmem.read_port(transparent_for=()), linkmem.write_port()
        m.submodules.sorter = sorter = RadixSorter(W, R, N, 1, index_in=True)
        m.d.comb += [krd.en.eq(0), kwr.en.eq(0), lrd.en.eq(0)]

        # Bucket lists: a counter and a head pointer per bucket, in RAMs with an asynchronous
        # read (distributed RAM), so that a push (link[node] = head[d]; head[d] = node;
        # hist[d] += 1) takes one cycle. One push port, shared by the load and the list walk;
        # the RAMs are cleared (B cycles) before each rebuild.
        m.submodules.hist = hist_mem = Memory(shape=unsigned(CW), depth=B, init=[])
        m.submodules.head = head_mem = Memory(shape=unsigned(IW), depth=B, init=[])
        hist_w, head_w = hist_mem.write_port(), head_mem.write_port()
        hist_r, head_r = hist_mem.read_port(domain="comb"), head_mem.read_port(domain="comb")
        clear_lists = Signal()
        clr = Signal(range(B + 1))
        push = Signal()
        push_d = Signal(R)
        push_node = Signal(IW)
        m.d.comb += [lwr.addr.eq(push_node), lwr.data.eq(head_r.data), lwr.en.eq(push)]
        with m.If(clear_lists):
            m.d.comb += [hist_w.addr.eq(clr), hist_w.data.eq(0), hist_w.en.eq(1),
                         head_w.addr.eq(clr), head_w.data.eq(0), head_w.en.eq(1)]
        with m.Elif(push):
            m.d.comb += [hist_r.addr.eq(push_d), head_r.addr.eq(push_d),
                         hist_w.addr.eq(push_d), hist_w.data.eq(hist_r.data + 1), hist_w.en.eq(1),
                         head_w.addr.eq(push_d), head_w.data.eq(push_node), head_w.en.eq(1)]

        cnt = Signal(CW)
        ovf = Signal()
        # per-packet select results (shared with the scan: the next select waits for it)
        keff = Signal(CW)
        code = Signal(2)
        unord = Signal()
        thr = Signal(W)
        k_left = Signal(CW)
        level = Signal(range(max(D, 2)))
        bsel = Signal(R)
        above = Signal(CW)
        cur = Signal(IW)
        trem = Signal(CW)
        tv = Signal()
        tnode = Signal(IW)
        # scan engine
        scan_active = Signal()
        sptr = Signal(CW)
        sn = Signal(CW)
        sv = Signal()
        sidx = Signal(IW)
        ties = Signal(CW)
        emitted = Signal(CW)
        ov = Signal()
        okey = Signal(W)
        oidx = Signal(IW)
        olast = Signal()
        # status slot
        st_valid = Signal()
        pending = Signal(range(8))  # packets inside the sorter

        # ---------------- load ----------------
        loading = Signal()
        write_ok = ~scan_active | (cnt < sptr) | (cnt >= N)
        m.d.comb += self.i.ready.eq(loading & write_ok)
        take = self.i.valid & self.i.ready
        store = take & (cnt < N)
        key_in = self.i.payload.key
        d_top = key_in[top_lo:top_hi]

        status_free = ~st_valid | self.status.ready
        with m.If(self.status.ready):
            m.d.sync += st_valid.eq(0)

        with m.FSM(init="CLEAR"):
            with m.State("CLEAR"):  # after reset and after each packet's select
                m.d.comb += clear_lists.eq(1)
                m.d.sync += clr.eq(clr + 1)
                with m.If(clr == B - 1):
                    m.d.sync += clr.eq(0)
                    m.next = "LOAD"
            with m.State("CLEARL"):  # before each list walk
                m.d.comb += clear_lists.eq(1)
                m.d.sync += clr.eq(clr + 1)
                with m.If(clr == B - 1):
                    m.d.sync += clr.eq(0)
                    m.next = "TRAV"
            with m.State("LOAD"):
                m.d.comb += loading.eq(1)
                with m.If(store):
                    m.d.comb += [kwr.addr.eq(cnt), kwr.data.eq(key_in), kwr.en.eq(1),
                                 push.eq(1), push_d.eq(d_top), push_node.eq(cnt)]
                    m.d.sync += cnt.eq(cnt + 1)
                with m.If(take & ~store):
                    m.d.sync += ovf.eq(1)
                with m.If(take & self.i.payload.last):
                    m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += self.cmd.ready.eq(~scan_active)
                with m.If(self.cmd.valid & ~scan_active):
                    k = self.cmd.payload.k
                    m.d.sync += [unord.eq(self.cmd.payload.unordered), thr.eq(0), above.eq(0),
                                 level.eq(D - 1), bsel.eq((1 << (top_hi - top_lo)) - 1)]
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
                m.d.comb += [hist_r.addr.eq(bsel), head_r.addr.eq(bsel)]
                h = hist_r.data
                with m.If(above + h >= k_left):
                    m.d.sync += [k_left.eq(k_left - above), cur.eq(head_r.data), trem.eq(h), tv.eq(0)]
                    for lv, (lo, hi) in enumerate(slices):
                        with m.If(level == lv):
                            m.d.sync += thr[lo:hi].eq(bsel[:hi - lo])
                    with m.If(level == 0):
                        m.next = "EMIT"
                    with m.Else():
                        m.next = "CLEARL"
                with m.Else():
                    m.d.sync += [above.eq(above + h), bsel.eq(bsel - 1)]
            with m.State("TRAV"):
                issue = trem != 0
                addr = Mux(tv, lrd.data, cur)
                m.d.comb += [krd.addr.eq(addr), krd.en.eq(1), lrd.addr.eq(addr), lrd.en.eq(1)]
                m.d.sync += [tv.eq(issue), tnode.eq(addr)]
                with m.If(issue):
                    m.d.sync += trem.eq(trem - 1)
                with m.If(tv):
                    digit = Array([krd.data[lo:hi] for lo, hi in slices])[level - 1][:R]
                    m.d.comb += [push.eq(1), push_d.eq(digit), push_node.eq(tnode)]
                with m.If(~issue & ~tv):
                    m.d.sync += [level.eq(level - 1), bsel.eq(B - 1), above.eq(0)]
                    m.next = "SELECT"
            with m.State("EMIT"):
                with m.If(status_free & (~unord | (pending == 0))):
                    m.d.sync += [st_valid.eq(1),
                                 self.status.payload.code.eq(code), self.status.payload.k.eq(keff),
                                 self.status.payload.n.eq(cnt), self.status.payload.overflow.eq(ovf),
                                 scan_active.eq(keff != 0), sptr.eq(0), sn.eq(cnt), sv.eq(0),
                                 ties.eq(0), emitted.eq(0), ov.eq(0), cnt.eq(0), ovf.eq(0)]
                    m.next = "CLEAR"
        m.d.comb += self.status.valid.eq(st_valid)

        # ---------------- emission scan ----------------
        direct = scan_active & unord
        dst_ready = Mux(unord, self.o.ready, sorter.i.ready)
        en = ~ov | dst_ready
        done = emitted == keff
        s_issue = scan_active & (sptr < sn) & ~done
        with m.If(scan_active):
            m.d.comb += [krd.addr.eq(sptr), krd.en.eq(en)]
            with m.If(en):
                skey = krd.data
                sel = sv & ~done & ((skey > thr) | ((skey == thr) & (ties < k_left)))
                m.d.sync += [sv.eq(s_issue), sidx.eq(sptr[:IW]), ov.eq(sel), okey.eq(skey), oidx.eq(sidx),
                             olast.eq(emitted == keff - 1)]
                with m.If(s_issue):
                    m.d.sync += sptr.eq(sptr + 1)
                with m.If(sv & (skey == thr)):
                    m.d.sync += ties.eq(ties + 1)
                with m.If(sel):
                    m.d.sync += emitted.eq(emitted + 1)
                with m.If(done | ((sptr == sn) & ~sv)):
                    m.d.sync += [scan_active.eq(0), ov.eq(0), sv.eq(0)]

        # ---------------- outputs ----------------
        m.d.comb += [
            sorter.i.valid.eq(ov & ~unord & scan_active),
            sorter.i.payload.key.eq(okey), sorter.i.payload.index.eq(oidx),
            sorter.i.payload.descending.eq(1), sorter.i.payload.last.eq(olast),
            sorter.o.ready.eq(~direct & self.o.ready),
        ]
        with m.If(direct):
            m.d.comb += [self.o.valid.eq(ov), self.o.payload.key.eq(okey), self.o.payload.index.eq(oidx),
                         self.o.payload.last.eq(olast)]
        with m.Else():
            m.d.comb += [self.o.valid.eq(sorter.o.valid), self.o.payload.key.eq(sorter.o.payload.key),
                         self.o.payload.index.eq(sorter.o.payload.index),
                         self.o.payload.last.eq(sorter.o.payload.last)]
        into = sorter.i.valid & sorter.i.ready & sorter.i.payload.last
        out_of = sorter.o.valid & sorter.o.ready & sorter.o.payload.last
        m.d.sync += pending.eq(pending + into - out_of)
        return m
