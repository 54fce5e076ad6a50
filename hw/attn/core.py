"""Unified attention core: MX q.k scores, FlashAttention-2 online softmax, block-sparse skipping.

Two modes, chosen per job by ``cmd.mode``:

* **attention** (0): bit for bit :func:`golden.numerics.attention.attention_from_codes` (read its
  docstring for every rounding step); rows out on ``o``.
* **similarity** (1): the raw scaled score matrix of the query rows against the keys, bit for
  bit the first return value of :func:`golden.numerics.attention.scores_from_codes` (saturation
  included), computed by the same score unit (A) and streamed out on ``s``, one score per beat;
  softmax and P.V (B, U, divider) stay idle. Token similarity (``similarity_scores``) is the
  case where the host streams the same tokens as q and as k.

The pivot mode of the golden model (``pivot_scores``, FastVAR) is **not built**: it needs a
global exponent and a mean over all tokens before any distance, i.e. two extra passes, squarers
and a reduction across D that this datapath does not have. ``mode`` 2 (reserved for it) and 3
are taken and dropped like an empty command.

This file says how the datapath is organised in hardware and what the host must stream.

Organisation (one job = one head: ``Lq`` queries against ``Lk`` keys)
--------------------------------------------------------------------
The queries are processed in tiles of ``Br`` rows, the keys in blocks of ``Bc``. For each
query tile the core holds the tile's Q rows in an on-chip memory; each *kept* key block of that
tile is streamed in once (K and V into a double-buffered on-chip block memory, so the next
block loads while the current one is computed) and used by all rows of the tile. Skipped blocks
cost one cycle of mask scanning in the loader and nothing else: their K/V are never sent.

Four units work concurrently, connected by small buffers:

* **Loader**: command, per-tile mask, Q rows, K/V blocks into two banks; it also forms the
  V tile exponents ``Xt_b`` (running max of the V scale codes per D-block) as V arrives.
* **Score unit (A)**: one (row, key) pair per cycle: ``D`` LUT multipliers (hw/fp/lutmul),
  exact adder tree per MX block, block exponent shift onto the ``2^-dot_frac`` grid (floor),
  ``dot_width``-bit wrapping sum, times the constant ``C``, rounding shift, saturation; writes
  the row's ``Bc`` scores into a ring of 4 score slots and tracks the row's block max.
* **Softmax / P.V unit (B)**: one (row, key) pair per cycle, running one row behind A on the
  same block: ``m_new = max(m, block max)`` (running max kept in a small register file),
  ``p = exp2(s - m_new)`` (256-entry table + rounding shift), V aligned to ``Xt_b`` (floor shift),
  ``D`` multipliers ``p * vfix`` into exact per-row sums ``P_d``; ``alpha = exp2(m - m_new)``.
* **Row update (U)**: per (row, block), 11 cycles: ``l``, ``acc_d`` and ``e_b`` of the row (row-state
  memory) are rescaled by ``alpha`` and the block sum is added with the exponent alignment of the
  golden model: the FIFO entry into registers, the state read at its row (two cycles, the RAM's
  output register), the rescale in three stages (operands into the multipliers' input
  registers, multiplier pieces, their sum; the exponent differences and then the shift amounts
  are formed beside them), the shift amounts copied to every lane, the aligned terms in two
  shifts, their sum, the write-back. After the row's last kept block the result goes to the
  divider instead.
* **Divider**: ``D`` restoring dividers give ``y_d = round_half_up(acc_d * 2^p_bits / l)``, one
  quotient bit per cycle (``out_width`` cycles), then a rounding step (one more iteration) and a
  sign cycle; one output beat per query row.

With ``2 * D`` multipliers (``D`` for q.k, ``D`` for p.V) a dense job needs ``Lq * Lk`` cycles
at 100 % MAC utilisation; A and B each take one key per cycle and run back to back across
rows and blocks, so the overhead is per-tile (Q load, pipeline fill) and per-row only when a
block holds fewer keys than the row update / divider need (a few keys).

In similarity mode the loader and A run exactly as in a dense attention job, except that A
does not wait for score slots but for room in the score FIFO in front of ``s`` (so a stalled
``s`` stalls A, never loses a score), and A itself frees each K bank after its last row (B
would otherwise). A dense similarity job of ``Lq x Lk`` takes ``Lq * Lk`` cycles plus the
per-tile Q load and pipeline fill, like attention.

Host streaming protocol
-----------------------
1. ``cmd``: one beat per job: ``lq``, ``lk``, ``c`` (the constant C of
   :func:`~golden.numerics.attention.score_constant`), ``shift`` = ``dot_frac + c_frac -
   score_frac`` (0..62), ``mode`` (0 attention, 1 similarity; 2 and 3 reserved). A new command
   is taken once the previous job's last output beat (``o`` or ``s``) is taken. A command with
   ``lq = 0``, a similarity command with ``lk = 0``, or a reserved mode is taken and dropped:
   no other beat is pulled and nothing comes out.
2. ``mask`` (attention only): one beat per query tile ``t`` (``ceil(Lq / Br)`` beats): ``bits``
   bit ``j`` = keep key block ``j`` for this tile (``ceil(Lk / Bc) <= max_kblocks``; bits beyond
   are ignored). All ones = dense. Similarity jobs are dense and take no mask beat.
3. ``q``: the Q rows in order, one token per beat (``codes`` D element codes, ``scales`` D/block
   E8M0 codes); rows of every tile, also fully masked ones.
4. ``k`` and ``v``: for each tile ``t`` in order, for each kept block ``j`` of it in increasing
   order, the block's valid keys (``min(Bc, Lk - j Bc)``), one token per beat on each stream.
   So a key block is streamed once per query tile that keeps it, and never for a tile that
   skips it. The core takes K and V beats together (both valid). Similarity jobs take ``k``
   only (every block for every tile) and no ``v`` beat.
5. ``o`` (attention): one beat per query row, in order: ``y`` (D signed mantissas), ``exp`` (per
   D-block power of two: value = ``y * 2^exp``), ``masked`` (row had no kept block: y = 0),
   ``last`` on the job's final row.
6. ``s`` (similarity): one beat per (row, key) pair, ``Lq * Lk`` beats: ``score`` (signed
   ``score_width`` bits, units 2^-score_frac, saturated), ``last`` on the job's final pair. The
   order is the one the score unit computes in: query tile ``t``, then key block ``j``, then row
   of the tile, then key of the block; i.e. score (r, k) is beat
   ``T(t) + Br_t * j * Bc + (r - t Br) * n_j + (k - j Bc)`` with ``t = r // Br``, ``j = k // Bc``,
   ``Br_t`` the rows of tile t, ``n_j`` the keys of block j and ``T(t) = t * Br * Lk``.

The streams are independent: the host may queue all of them at once, jobs of either mode back
to back (the core pulls each in the order above); every stream may stall at any time.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.numerics import fp as fpnum
from golden.numerics.attention import E8M0_BIAS, AttnNumerics, exp2_table
from ..common import check_int
from ..common.fanout import fanout_copy
from ..common.ram import PipelinedRAM
from ..common.fifo import RegisteredFlagFifo, SkidBuffer
from .dsp import registered_product

__all__ = ["AttentionCore", "MODE_ATTENTION", "MODE_SIMILARITY"]

N_SLOTS = 4  # score-buffer rows between the score unit and the softmax unit

MODE_ATTENTION = 0   # cmd.mode: online-softmax attention, rows out on ``o``
MODE_SIMILARITY = 1  # cmd.mode: raw scores out on ``s`` (token similarity); 2 (pivot) and 3 reserved


def _code_int_bits(f):
    return int(round(f.max_finite * 2**f.F)).bit_length()


def _bits(n):
    """Bits to count 0..n-1 (at least 1)."""
    return max((n - 1).bit_length(), 1)


def slices_17(x):
    """``(slice, offset)`` of ``x`` cut into 17-bit slices from bit 0: unsigned, but the top slice
    of a signed ``x`` is signed. A slice times an unsigned operand of at most 17 bits is one ECP5
    MULT18X18D (18 x 18 signed)."""
    bounds = list(range(0, len(x), 17)) + [len(x)]
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        piece = x[lo:hi]
        if x.shape().signed and hi == len(x):
            piece = piece.as_signed()
        out.append((piece, lo))
    return out


def split_product(m, platform, x, y, name, en=None, *, register_x=False, register_y=False):
    """``x * y`` as registered slice products ``(register, offset)`` (registered_product: one
    MULT18X18D with its output register each on ECP5); ``join_pieces`` adds them a stage later.
    ``register_x`` / ``register_y``: that operand passes each block's input register first (its
    value one cycle earlier is multiplied)."""
    return [(registered_product(m, platform, piece, y, f"{name}_p{n}", en,
                                register_a=register_x, register_b=register_y), lo)
            for n, (piece, lo) in enumerate(slices_17(x))]


class OneHot:
    """One-hot state register of a sequencer (one flip-flop per state, the first one set at
    reset): testing a state is reading a register, where a binary-coded Amaranth FSM decodes its
    state in front of every enable (the row update's and the divider's were critical paths)."""

    def __init__(self, names, name):
        self.bits = {n: Signal(init=int(k == 0), name=f"{name}_{n}") for k, n in enumerate(names)}

    def __getitem__(self, state):
        return self.bits[state]

    def go(self, cur, nxt):
        """Statements (sync) that move from state ``cur`` to ``nxt``."""
        return [self.bits[cur].eq(0), self.bits[nxt].eq(1)]


def join_pieces(pieces):
    """Sum of the registered slice products, each at its offset. When the other operand has at
    most 17 bits a product of a 17-bit slice has at most 34 bits, so pieces 0, 2, 4, ... do not
    overlap and are joined by concatenation, likewise 1, 3, 5, ... (only the top piece can be
    signed, and it is the last of its group): one adder. Summed one after another, three pieces
    were two adders in series."""
    groups = [g for g in (pieces[0::2], pieces[1::2]) if g]
    if not all(not p.shape().signed and lo + len(p) <= g[k + 1][1]
               for g in groups for k, (p, lo) in enumerate(g[:-1])):
        return sum(p << lo for p, lo in pieces)

    def placed(group):
        parts, pos = [], 0
        for p, lo in group:
            if lo > pos:
                parts.append(Const(0, lo - pos))
            parts.append(p)
            pos = lo + len(p)
        value = Cat(*parts)
        return value.as_signed() if group[-1][0].shape().signed else value
    return sum(placed(g) for g in groups)


class AttentionCore(wiring.Component):
    """Attention over a KV cache, bit for bit ``golden.numerics.attention.attention_from_codes``.

    Parameters: ``D`` head dim, ``block`` MX block (divides D), ``Br`` query tile rows, ``Bc`` keys
    per block, ``lanes`` multipliers per unit (0 = D; only D is built), the numerics of
    :class:`~golden.numerics.attention.AttnNumerics` (``qk_fmt``, ``v_fmt``, ``dot_frac``,
    ``dot_width``, ``const_bits``, ``score_frac``, ``score_width``, ``exp_bits``, ``p_bits``,
    ``l_width``, ``v_guard``, ``acc_frac``, ``acc_width``), ``max_kblocks`` (mask bits per tile:
    Lk <= max_kblocks * Bc), ``len_bits`` (width of lq / lk). All are checked: a bad one raises ``ValueError`` naming it.

    Streams (payload fields; protocol and beat order in the module docstring):

    * ``cmd`` (in): ``lq``, ``lk`` (``len_bits`` each: query rows, keys), ``c`` (``const_bits``:
      the score constant C), ``shift`` (6 bits: dot_frac + c_frac - score_frac), ``mode``
      (2 bits: 0 attention, 1 similarity, 2 / 3 reserved and dropped).
    * ``mask`` (in, attention only): ``bits`` (``max_kblocks``): kept key blocks of one query tile.
    * ``q``, ``k`` (in): one token: ``codes`` (D x qk_fmt codes), ``scales`` (D/block E8M0 codes).
    * ``v`` (in, attention only): one token: ``codes`` (D x v_fmt codes), ``scales`` (D/block E8M0).
    * ``o`` (out, attention): ``y`` (D signed ``out_width``-bit mantissas), ``exp`` (D/block signed
      10-bit powers of two), ``masked`` (1: the row had no kept block), ``last`` (job's final row).
    * ``s`` (out, similarity): ``score`` (signed ``score_width`` bits, 2^-score_frac units),
      ``last`` (job's final score).
    """

    def __init__(self, D=64, block=32, Br=64, Bc=64, lanes=0, qk_fmt="e4m3", v_fmt="e4m3", dot_frac=16,
                 dot_width=40, const_bits=16, score_frac=10, score_width=24, exp_bits=8, p_bits=15,
                 l_width=32, v_guard=2, acc_frac=4, acc_width=40, max_kblocks=64, len_bits=16):
        check_int("D", D, 1, 256)
        check_int("block", block, 1, 256)
        check_int("Br", Br, 1, 1024)
        check_int("Bc", Bc, 1, 1024)
        self.nm = AttnNumerics(D=D, qk_fmt=qk_fmt, v_fmt=v_fmt, block=block, Br=Br, Bc=Bc, dot_frac=dot_frac,
                               dot_width=dot_width, const_bits=const_bits, score_frac=score_frac,
                               score_width=score_width, exp_bits=exp_bits, p_bits=p_bits, l_width=l_width,
                               v_guard=v_guard, acc_frac=acc_frac, acc_width=acc_width)
        check_int("lanes", lanes, 0, D)
        if lanes not in (0, D):
            raise ValueError(f"lanes must be 0 or D ({D}): this version builds D multipliers per unit, not {lanes}")
        self.lanes = D
        self.max_kblocks = check_int("max_kblocks", max_kblocks, 1, 4096)
        self.len_bits = check_int("len_bits", len_bits, 1, 24)
        nm = self.nm
        fq, fv = nm.fq, nm.fv
        self.out_width = nm.out_width
        self.out_exp_offset = -E8M0_BIAS - fv.F - nm.v_guard - nm.acc_frac
        self.q_layout = data.StructLayout({"codes": data.ArrayLayout(fq.code_width, D),
                                           "scales": data.ArrayLayout(8, nm.nb)})
        self.v_layout = data.StructLayout({"codes": data.ArrayLayout(fv.code_width, D),
                                           "scales": data.ArrayLayout(8, nm.nb)})
        # ``mode`` is the last field so that the attention fields keep their tdata offsets.
        cmd_layout = data.StructLayout({"lq": len_bits, "lk": len_bits, "c": const_bits, "shift": 6, "mode": 2})
        mask_layout = data.StructLayout({"bits": max_kblocks})
        out_layout = data.StructLayout({"y": data.ArrayLayout(signed(self.out_width), D),
                                        "exp": data.ArrayLayout(signed(10), nm.nb),
                                        "masked": 1, "last": 1})
        score_layout = data.StructLayout({"score": signed(nm.score_width), "last": 1})
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout)),
            "mask": In(stream.Signature(mask_layout)),
            "q": In(stream.Signature(self.q_layout)),
            "k": In(stream.Signature(self.q_layout)),
            "v": In(stream.Signature(self.v_layout)),
            "o": Out(stream.Signature(out_layout)),
            "s": Out(stream.Signature(score_layout)),
        })

    # ------------------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        nm = self.nm
        D, B, nb, Br, Bc = nm.D, nm.block, nm.nb, nm.Br, nm.Bc
        fq, fv = nm.fq, nm.fv
        W = nm.dot_width
        SW = nm.score_width
        smin, smax = nm.score_min, nm.score_max
        PB = nm.p_bits
        PW = PB + 1
        vbits = _code_int_bits(fv)
        VFW = vbits + nm.v_guard + 1              # signed aligned V
        PRW = PW + VFW + 1                        # signed p * vfix
        PSW = PRW + (Bc - 1).bit_length()         # signed block sum P_d
        PSUMW = PW + Bc.bit_length()              # unsigned sum of p over a block
        AW, LW = nm.acc_width, nm.l_width
        LB = self.len_bits
        KB = self.max_kblocks

        def reg(value, name, shape=None):
            r = Signal(shape if shape is not None else value.shape(), name=name)
            m.d.sync += r.eq(value)
            return r

        # ---------------------------------------------------------------- memories
        q_width = data.Layout.cast(self.q_layout).size
        v_width = data.Layout.cast(self.v_layout).size
        # Block RAMs read through an output register (PipelinedRAM: two cycles of read latency,
        # always enabled; DP16KD with REGMODE OUTREG on ECP5). A DP16KD without it has a 5.8 ns
        # clock-to-out (sim/synth_probe.py), which alone would fill most of a 150 MHz cycle.
        # None of them is read at an address written at the same edge: the loader writes a bank
        # (or the Q rows) only while no unit reads it, A and B use different score slots, and the
        # row update reads the row state in U1 and writes it back in U3.
        m.submodules.qmem = qmem = PipelinedRAM(q_width, Br, "qmem")
        m.submodules.kmem = kmem = PipelinedRAM(q_width, 2 * Bc, "kmem")
        m.submodules.vmem = vmem = PipelinedRAM(v_width, 2 * Bc, "vmem")
        m.submodules.sbuf = sbuf = PipelinedRAM(SW, N_SLOTS * Bc, "sbuf")
        m.submodules.mreg = mreg = Memory(shape=signed(SW), depth=Br, init=[])
        state_layout = data.StructLayout({"acc": data.ArrayLayout(signed(AW), D), "l": unsigned(LW),
                                          "e": data.ArrayLayout(8, nb)})
        state_width = data.Layout.cast(state_layout).size
        m.submodules.smem = smem = PipelinedRAM(state_width, Br, "smem")
        table = [int(x) for x in exp2_table(nm)]
        # The exp2 table in parts (4, by the index's top two bits), read side by side and the
        # part selected a stage later (b3m): one function of all index bits per output bit was
        # too deep for the cycle, and halves still were. The parts stay in LUTs (rom_style
        # "logic"): with their registered outputs Yosys would otherwise infer DP16KDs without the
        # output register (5.8 ns clock-to-out).
        part_bits = min(2, nm.exp_bits)
        part_len = len(table) >> part_bits
        roms = [Memory(shape=unsigned(PW), depth=part_len, init=table[h * part_len:(h + 1) * part_len],
                       attrs={"rom_style": "logic"}) for h in range(1 << part_bits)]
        for h, r in enumerate(roms):
            m.submodules[f"exp2_rom{h}"] = r

        q_wr, k_wr, v_wr = qmem.write, kmem.write, vmem.write
        q_rd, k_rd, v_rd = qmem.read, kmem.read, vmem.read
        s_wr, s_rd = sbuf.write, sbuf.read
        m_wr, m_rd = mreg.write_port(), mreg.read_port(domain="comb")
        st_wr, st_rd = smem.write, smem.read
        m.d.comb += [ram.r_en.eq(1) for ram in (qmem, kmem, vmem, sbuf, smem)]
        rom_p = [r.read_port(domain="comb") for r in roms]   # p's lookup in each part
        rom_a = [r.read_port(domain="comb") for r in roms]   # alpha's

        # ---------------------------------------------------------------- job registers
        c_reg = Signal(nm.const_bits)
        sh_reg = Signal(6)
        lk_reg = Signal(LB)
        lq_left = Signal(LB)
        valid_bits = Signal(KB)
        # The current job is a similarity job (mode 1: scores out on ``s``), in a register copy
        # for each unit that tests it: the loader's mask step (ld_sim) and K/V take (kv_sim), the
        # score unit's issue (a_sim), the softmax unit's (b_sim), and A's end and the score
        # FIFO's (e_sim). One register at all of them was up to 3.4 ns of routing in front of
        # the loader's K/V take, the score FIFO's flags and the slots' busy requests.
        ld_sim, kv_sim, a_sim, b_sim, e_sim = (fanout_copy(1, f"{unit}_sim") for unit in ("ld", "kv", "a", "b", "e"))
        job_done = Signal()

        # ---------------------------------------------------------------- bank descriptors
        def bank_sig(shape, name):
            return [Signal(shape, name=f"bank{b}_{name}") for b in range(2)]
        bk_full = bank_sig(1, "full")
        bk_adone = bank_sig(1, "adone")
        # A bank's keys and rows as the units test them: empty (no key), the index of its last
        # key and of its last row, set by the loader with the bank (a subtract and a compare
        # of the count at every issue were on the score and softmax units' issue paths).
        bk_empty = bank_sig(1, "empty")
        bk_lastkey = bank_sig(range(Bc), "lastkey")
        bk_lastrow = bank_sig(range(Br), "lastrow")
        bk_tiny = bank_sig(1, "tiny")   # at most two rows (see b_hold)
        # lastkey == 0 and lastrow == 0, set with them: the units' flags for a bank's first key
        # and row are then a select of registers, not a compare behind it
        bk_onekey = [Signal(init=1, name=f"bank{b}_onekey") for b in range(2)]   # as lastkey, 0 at reset
        bk_onerow = [Signal(init=1, name=f"bank{b}_onerow") for b in range(2)]
        # A bank's full flag is set and cleared a cycle after the event, from requests in
        # registers (full_set: the loader's last take, or the description of an empty bank;
        # full_clr: the bank's last (row, key) pair issued by B, or by A in similarity mode):
        # behind the loader's take and both units' issue decisions, the flag's update was on
        # the late-endpoint list. The delay only postpones the refill and the units' start by
        # a cycle. An empty bank (a tile with no kept block) thus becomes full a cycle after the
        # loader describes it, like a loaded one (whose keys take at least that cycle): the
        # units' registered last-key / last-row flags (issue_flags) see the new indices first.
        # The loader cannot come back to a bank before its set request is applied (it loads the
        # other bank in between), and a bank is only cleared when full: the two never meet.
        full_set = bank_sig(1, "full_set")
        full_clr = bank_sig(1, "full_clr")
        for b in range(2):
            m.d.sync += [full_set[b].eq(0), full_clr[b].eq(0)]
            with m.If(full_set[b]):
                m.d.sync += bk_full[b].eq(1)
            with m.Elif(full_clr[b]):
                m.d.sync += bk_full[b].eq(0)
        bk_first = bank_sig(1, "first")
        bk_final = bank_sig(1, "final")
        bk_lastjob = bank_sig(1, "lastjob")
        bk_xt = [[Signal(8, name=f"bank{b}_xt{i}") for i in range(nb)] for b in range(2)]

        def pick(sigs, ptr):
            return Mux(ptr, sigs[1], sigs[0])

        def issue_flags(issue, ptr, key, row, name):
            """Registered ``key == last key`` and ``row == last row`` of the bank at ``ptr`` for a
            unit that issues one (row, key) pair a cycle (A or B): the compares with the bank's
            indices sat between the issue decision and every counter it updates. Each cycle the
            flags are formed for the position after this cycle, from registers only: after an
            issue from the candidates (next key, first key of the next row, first key of the
            other bank), else from the present position, so that a bank the loader has just
            described is seen a cycle later (it becomes full no earlier than that, see
            ``full_set``). An empty bank (no key: each row a single masked pair) has last key
            index 0, so its key flag is always set: a pair is a row's last exactly when the key
            flag is set, and the units need not test the bank's empty flag for it."""
            key_last = Signal(init=1, name=f"{name}_key_last")
            row_last = Signal(init=1, name=f"{name}_row_last")
            # key + 1 and row + 1 kept in registers beside the unit's own (they move as the unit
            # moves key and row, see its issue): an increment in front of the compares was on
            # the flags' critical path
            key1 = Signal(range(Bc + 1), init=1, name=f"{name}_key1")
            row1 = Signal(range(Br + 1), init=1, name=f"{name}_row1")
            with m.If(issue & key_last):
                m.d.sync += key1.eq(1)
                with m.If(row_last):
                    m.d.sync += row1.eq(1)
                with m.Else():
                    m.d.sync += row1.eq(row1 + 1)
            with m.Elif(issue):
                m.d.sync += key1.eq(key1 + 1)

            def at(sel, f):
                return Mux(sel, f(1), f(0))
            now_key = at(ptr, lambda b: key == bk_lastkey[b])
            now_row = at(ptr, lambda b: row == bk_lastrow[b])
            next_key = at(ptr, lambda b: key1 == bk_lastkey[b])
            next_row = at(ptr, lambda b: row1 == bk_lastrow[b])
            first_key_same = at(ptr, lambda b: bk_onekey[b])
            first_key_other = at(ptr, lambda b: bk_onekey[1 - b])
            first_row_other = at(ptr, lambda b: bk_onerow[1 - b])
            with m.If(issue & key_last):
                with m.If(row_last):
                    m.d.sync += [key_last.eq(first_key_other), row_last.eq(first_row_other)]
                with m.Else():
                    m.d.sync += [key_last.eq(first_key_same), row_last.eq(next_row)]
            with m.Elif(issue):
                m.d.sync += key_last.eq(next_key)
            with m.Else():
                m.d.sync += [key_last.eq(now_key), row_last.eq(now_row)]
            return key_last, row_last

        q_busy = Signal()  # the tile's Q rows are still needed by the score unit

        # ---------------------------------------------------------------- loader
        ld_bank = Signal()
        nr_reg = Signal(range(Br + 1))
        nr_last = Signal(range(Br))   # nr_reg - 1
        lastjob_reg = Signal()
        rem_bits = Signal(KB)
        seen_kept = Signal()
        keys_left = Signal(signed(LB + 2))
        qcnt = Signal(range(Br))
        kcnt = Signal(range(Bc))
        ld_last = Signal(range(Bc))   # index of the block's last key (its key count - 1)
        kv_first = Signal()           # kcnt == 0: the block's first key is next
        kv_last = Signal()            # kcnt == ld_last: the block's last key is next
        kcnt1 = Signal(range(Bc + 1))  # kcnt + 1, kept beside it (no increment before kv_last's compare)
        # Registered tests on rem_bits and keys_left, kept with them, so that the block scan
        # decides from single bits: a wide zero test and a compare were in front of the loader's
        # and the bank descriptors' updates. rem_bits' tests come from its suffix OR, rem_any[j] =
        # (rem_bits[j:] != 0), which shifts with rem_bits: it is formed once a tile, in two
        # stages (QWAIT: the OR within each group of 4 bits; QLOAD: across the groups), where
        # the scan's zero tests across all max_kblocks bits were late endpoints.
        rem_any = Signal(KB + 1)      # the top bit stays 0
        rem_within = Signal(KB)       # rem_bits' suffix OR within each group of 4 bits
        rem_zero = ~rem_any[0]        # rem_bits == 0
        rem_last = ~rem_any[1]        # rem_bits[1:] == 0
        keys_big = Signal()           # keys_left > Bc
        keys_one = Signal()           # keys_left == 1

        # The block scan moves past a loaded block in the KVEND state after it, not at its last
        # key's take: behind the take (from the K and V buffers' valids) the scan's updates (a
        # 62-bit zero test among them) were a critical path.
        def scan_next_block():
            """rem_bits and keys_left move on by one key block (with their tests)."""
            return [rem_bits.eq(rem_bits >> 1), rem_any.eq(rem_any >> 1),
                    keys_left.eq(keys_left - Bc), keys_big.eq(keys_left > 2 * Bc),
                    keys_one.eq(keys_left == Bc + 1)]
        ld_final = Signal()

        # Q, K and V reach the loader through skid buffers (registered valid, payload and
        # ready): from the input ports, the streams' valids were in front of the loader's take
        # decision and everything it enables (RAM write enables, counters, state).
        skids = {}
        for name, layout in (("q", self.q_layout), ("k", self.q_layout), ("v", self.v_layout)):
            skid = m.submodules[f"{name}_skid"] = SkidBuffer(layout)
            wiring.connect(m, wiring.flipped(getattr(self, name)), skid.i)
            skids[name] = skid.o
        q_in, k_in, v_in = skids["q"], skids["k"], skids["v"]
        vpay = data.View(self.v_layout, v_in.payload.as_value())
        # The RAM write addresses and data do not depend on the loader's state (only the write
        # enables do): decoding the state in front of every data bit was a critical path.
        kv_addr = Mux(ld_bank, Bc, 0) + kcnt
        m.d.comb += [q_wr.addr.eq(qcnt), q_wr.data.eq(q_in.payload.as_value()),
                     k_wr.addr.eq(kv_addr), k_wr.data.eq(k_in.payload.as_value()),
                     v_wr.addr.eq(kv_addr), v_wr.data.eq(v_in.payload.as_value())]
        ld_fsm = OneHot(["IDLE", "MASK", "QWAIT", "QLOAD", "BLK", "KVLOAD", "KVEND", "NEXT", "DONE"], "loader")
        with m.If(ld_fsm["IDLE"]):
            m.d.comb += self.cmd.ready.eq(1)
            p = self.cmd.payload
            # Commands that produce nothing are taken and dropped: lq = 0 in any mode, a
            # similarity job without keys (it would have no beat to carry ``last``), and the
            # reserved modes 2 (pivot, not built) and 3.
            is_attn, is_sim = p.mode == MODE_ATTENTION, p.mode == MODE_SIMILARITY
            # The job registers load the command port in every IDLE cycle, beat or not (the
            # last one loaded is the taken command's): in IDLE every unit is idle (the loader
            # leaves DONE only when the job's last beat has been taken), so nothing reads them,
            # and their ~100 bits need the state bit alone as their enable (behind the
            # command's valid and its length and mode tests, that enable was a late endpoint).
            m.d.sync += [c_reg.eq(p.c), sh_reg.eq(p.shift), lk_reg.eq(p.lk), lq_left.eq(p.lq),
                         ld_sim.eq(is_sim), kv_sim.eq(is_sim), a_sim.eq(is_sim), b_sim.eq(is_sim), e_sim.eq(is_sim),
                         valid_bits.eq(Cat(*[p.lk > j * Bc for j in range(KB)]))]
            with m.If(self.cmd.valid & (p.lq != 0) & (is_attn | (is_sim & (p.lk != 0)))):
                m.d.sync += ld_fsm.go("IDLE", "MASK")
        with m.If(ld_fsm["MASK"]):
            # Similarity jobs are dense and take no mask beat: every valid key block is kept.
            m.d.comb += self.mask.ready.eq(~ld_sim)
            with m.If(self.mask.valid | ld_sim):
                kept = Mux(ld_sim, valid_bits, self.mask.payload.bits & valid_bits)
                m.d.sync += [rem_bits.eq(kept),
                             seen_kept.eq(0),
                             keys_left.eq(lk_reg), keys_big.eq(lk_reg > Bc), keys_one.eq(lk_reg == 1),
                             nr_reg.eq(Mux(lq_left > Br, Br, lq_left)),
                             nr_last.eq(Mux(lq_left > Br, Br - 1, lq_left - 1)), lastjob_reg.eq(lq_left <= Br)]
                m.d.sync += ld_fsm.go("MASK", "QWAIT")
        with m.If(ld_fsm["QWAIT"]):
            # rem_bits' suffix OR within each group of 4 bits (QWAIT and QLOAD each last at
            # least a cycle, and rem_bits holds from MASK until BLK)
            m.d.sync += [rem_within[j].eq(rem_bits[j:min(KB, (j // 4 + 1) * 4)].any()) for j in range(KB)]
            with m.If(~q_busy):
                m.d.sync += qcnt.eq(0)
                m.d.sync += ld_fsm.go("QWAIT", "QLOAD")
        with m.If(ld_fsm["QLOAD"]):
            # rem_bits' suffix OR from the groups' (see rem_any)
            group_any = [rem_within[g] for g in range(0, KB, 4)]
            m.d.sync += [rem_any[j].eq(rem_within[j] | Cat(*group_any[j // 4 + 1:], Const(0, 1)).any())
                         for j in range(KB)]
            # Q's RAM is written in every QLOAD cycle, as K's and V's in KVLOAD (the tile's rows
            # are not read before QLOAD ends: the loader waits in QWAIT until A is done with them).
            m.d.comb += [q_in.ready.eq(1), q_wr.en.eq(1)]
            with m.If(q_in.valid):
                m.d.sync += qcnt.eq(qcnt + 1)
                with m.If(qcnt == nr_last):
                    m.d.sync += q_busy.eq(1)
                    m.d.sync += ld_fsm.go("QLOAD", "BLK")
        with m.If(ld_fsm["BLK"]):
            bank_free = ~pick(bk_full, ld_bank)
            alloc = Signal()
            with m.If(rem_zero):
                # Only reachable when no block of the tile is kept: an empty bank makes every
                # row of the tile flow through as a fully masked row (y = 0).
                with m.If(bank_free):
                    m.d.comb += alloc.eq(1)
                    for b in range(2):
                        with m.If(ld_bank == b):
                            m.d.sync += [bk_empty[b].eq(1), bk_lastkey[b].eq(0), bk_onekey[b].eq(1),
                                         bk_first[b].eq(1), bk_final[b].eq(1),
                                         full_set[b].eq(1)] + [x.eq(0) for x in bk_xt[b]]
                    m.d.sync += ld_bank.eq(~ld_bank)
                    m.d.sync += ld_fsm.go("BLK", "NEXT")
            with m.Elif(~rem_bits[0]):
                m.d.sync += scan_next_block()
            with m.Elif(bank_free):
                m.d.comb += alloc.eq(1)
                last_key = Mux(keys_big, Bc - 1, keys_left - 1)
                final = rem_last
                one_key = Mux(keys_big, Bc == 1, keys_one)   # last_key == 0
                m.d.sync += [ld_last.eq(last_key), ld_final.eq(final), kcnt.eq(0), kcnt1.eq(1), kv_first.eq(1),
                             kv_last.eq(one_key)]
                for b in range(2):
                    with m.If(ld_bank == b):
                        m.d.sync += [bk_empty[b].eq(0), bk_lastkey[b].eq(last_key), bk_onekey[b].eq(one_key),
                                     bk_first[b].eq(~seen_kept),
                                     bk_final[b].eq(final)]
                m.d.sync += ld_fsm.go("BLK", "KVLOAD")
            with m.If(alloc):
                for b in range(2):
                    with m.If(ld_bank == b):
                        m.d.sync += [bk_lastrow[b].eq(nr_last), bk_tiny[b].eq(nr_last <= 1), bk_onerow[b].eq(nr_last == 0),
                                     bk_lastjob[b].eq(lastjob_reg), bk_adone[b].eq(0)]
        # The V tile exponents (the running max of the block's V scale codes) are updated a
        # cycle after each take, from registers (behind the take, the buffer's output select,
        # the compare and the select were a critical path). B reads a bank's exponents no earlier
        # than four cycles after its last take (KVEND, then the full flag's set request, and
        # B sees the flag a cycle late).
        xt_update = Signal()
        xt_go, xt_bank, xt_first = Signal(name="xt_go"), Signal(name="xt_bank"), Signal(name="xt_first")
        xt_scale = [Signal(8, name=f"xt_scale{i}") for i in range(nb)]
        m.d.sync += [xt_go.eq(xt_update), xt_bank.eq(ld_bank), xt_first.eq(kv_first)]
        m.d.sync += [r.eq(vpay.scales[i]) for i, r in enumerate(xt_scale)]
        with m.If(xt_go):
            for b in range(2):
                with m.If(xt_bank == b):
                    for i in range(nb):
                        sc = xt_scale[i]
                        m.d.sync += bk_xt[b][i].eq(Mux(xt_first | (sc > bk_xt[b][i]), sc, bk_xt[b][i]))
        with m.If(ld_fsm["KVLOAD"]):
            # Similarity jobs stream no V: K alone paces the load (the V bank is left stale,
            # and B, which would read it, is idle).
            # The K and V RAMs are written in every KVLOAD cycle, at the next key's address,
            # with whatever the buffers show: the take's write is the last at that address
            # before kcnt moves on, and the bank being loaded is read by no unit until it is
            # full. So the write enable is the state bit (behind the take and the buffers'
            # valids it was on the late-endpoint list); in similarity jobs V's bank gets stale
            # words, which B, idle, never reads.
            take = k_in.valid & (v_in.valid | kv_sim)
            m.d.comb += [k_in.ready.eq(take), v_in.ready.eq(take & ~kv_sim),
                         k_wr.en.eq(1), v_wr.en.eq(1)]
            with m.If(take):
                m.d.sync += [kcnt.eq(kcnt1), kcnt1.eq(kcnt1 + 1), kv_first.eq(0), kv_last.eq(kcnt1 == ld_last)]
                m.d.comb += xt_update.eq(1)
                with m.If(kv_last):
                    m.d.sync += ld_fsm.go("KVLOAD", "KVEND")
        with m.If(ld_fsm["KVEND"]):
            # The block's bookkeeping a cycle after its last take (one loader cycle a block):
            # behind the take (from the buffers' valids) these updates were the late endpoints.
            for b in range(2):
                with m.If(ld_bank == b):
                    m.d.sync += full_set[b].eq(1)
            m.d.sync += [ld_bank.eq(~ld_bank), seen_kept.eq(1)] + scan_next_block()
            with m.If(ld_final):
                m.d.sync += ld_fsm.go("KVEND", "NEXT")
            with m.Else():
                m.d.sync += ld_fsm.go("KVEND", "BLK")
        with m.If(ld_fsm["NEXT"]):
            m.d.sync += lq_left.eq(lq_left - nr_reg)
            with m.If(lastjob_reg):
                m.d.sync += ld_fsm.go("NEXT", "DONE")
            with m.Else():
                m.d.sync += ld_fsm.go("NEXT", "MASK")
        with m.If(ld_fsm["DONE"]):
            with m.If(job_done):
                m.d.sync += ld_fsm.go("DONE", "IDLE")

        # ---------------------------------------------------------------- score unit (A): issue
        slot_busy = Array([Signal(name=f"slot{i}_busy") for i in range(N_SLOTS)])
        slot_ready = Array([Signal(name=f"slot{i}_ready") for i in range(N_SLOTS)])
        slot_bmax = Array([Signal(signed(SW), name=f"slot{i}_bmax") for i in range(N_SLOTS)])

        a_ptr = Signal()
        a_row = Signal(range(Br))
        a_key = Signal(range(Bc))
        a_seq = Signal(range(N_SLOTS))
        a_empty = pick(bk_empty, a_ptr)
        a_rowstart = Signal(init=1)   # a_key == 0, kept as a flag
        a_issue = Signal()
        s_room = Signal()  # similarity: the score FIFO has room for one more pair in flight
        # The issue decision is one LUT of registers: its inputs that depend on other units
        # (the bank's full / done flags, the next score slot's busy flag) are registered a
        # cycle late, which only ever delays an issue (the other units set them towards
        # "go"; A itself moves them towards "stop", and then its own flags take over: a_leave
        # clears a_bank_ok, and after a row's last key the slot after the current one is
        # read, a_free_next). Through the flag selects by a_ptr / a_seq the decision was three
        # LUT levels in front of its ~100 loads.
        a_bank_ok = Signal(name="a_bank_ok")
        a_free_now = Signal(name="a_free_now")     # ~slot_busy[a_seq], a cycle late
        a_free_next = Signal(name="a_free_next")   # ~slot_busy[a_seq + 1], a cycle late
        a_advanced = Signal(name="a_advanced")     # a_seq moved on in the last cycle
        m.d.comb += a_issue.eq(a_bank_ok & Mux(a_sim, s_room,
                                               ~a_rowstart | Mux(a_advanced, a_free_next, a_free_now)))
        a_key_last, a_row_last = issue_flags(a_issue, a_ptr, a_key, a_row, "a")
        a_lastkey = a_key_last
        a_lastrow = a_row_last
        a_leave = a_issue & a_lastkey & a_lastrow   # A's last pair of the bank
        m.d.sync += [a_bank_ok.eq(~a_leave & pick(bk_full, a_ptr) & ~pick(bk_adone, a_ptr)),
                     a_free_now.eq(~slot_busy[a_seq]), a_free_next.eq(~slot_busy[(a_seq + 1) % N_SLOTS]),
                     a_advanced.eq(a_issue & a_lastkey & ~a_sim)]
        m.d.comb += [q_rd.addr.eq(a_row), k_rd.addr.eq(Mux(a_ptr, Bc, 0) + a_key)]
        # In similarity mode the softmax unit (B) stays idle: A neither claims score slots nor
        # advances the slot sequence (so that A and B agree on it in the next attention job),
        # and A itself hands the bank back to the loader and moves B's bank pointer along with
        # its own (B would have done both after the bank's last row).
        b_ptr = Signal()
        a_jlast = Signal()  # the job's final (row, key) pair: its score carries ``last``
        m.d.comb += a_jlast.eq(a_lastkey & a_lastrow & pick(bk_final, a_ptr) & pick(bk_lastjob, a_ptr))
        # A slot's busy flag is set (by A at a row's first key) and cleared (by B after the row's
        # last key) a cycle after the event, from requests in registers: behind both units'
        # issue decisions and slot selects its update was on the late-endpoint list. A reads
        # the flag a cycle late and comes back to a slot no earlier than N_SLOTS (4) row starts
        # later, so the late set is never missed; the late clear costs A a cycle only when it
        # waits for B. A slot is cleared only while busy and set only while free: the two
        # requests never meet.
        busy_set = [Signal(name=f"slot{i}_busy_set") for i in range(N_SLOTS)]
        busy_clr = [Signal(name=f"slot{i}_busy_clr") for i in range(N_SLOTS)]
        for i in range(N_SLOTS):
            m.d.sync += [busy_set[i].eq(a_issue & a_rowstart & ~a_sim & (a_seq == i)), busy_clr[i].eq(0)]
            with m.If(busy_set[i]):
                m.d.sync += slot_busy[i].eq(1)
            with m.Elif(busy_clr[i]):
                m.d.sync += slot_busy[i].eq(0)
        with m.If(a_issue):
            with m.If(a_lastkey):
                m.d.sync += [a_key.eq(0), a_rowstart.eq(1)]
                with m.If(~a_sim):
                    m.d.sync += a_seq.eq(a_seq + 1 if N_SLOTS & (N_SLOTS - 1) == 0 else
                                         Mux(a_seq == N_SLOTS - 1, 0, a_seq + 1))
                with m.If(a_lastrow):
                    m.d.sync += a_row.eq(0)
                    for b in range(2):
                        with m.If(a_ptr == b):
                            m.d.sync += bk_adone[b].eq(1)
                            with m.If(bk_final[b]):
                                m.d.sync += q_busy.eq(0)
                            with m.If(a_sim):
                                m.d.sync += full_clr[b].eq(1)
                    m.d.sync += a_ptr.eq(~a_ptr)
                    with m.If(a_sim):
                        m.d.sync += b_ptr.eq(~b_ptr)
                with m.Else():
                    m.d.sync += a_row.eq(a_row + 1)
            with m.Else():
                m.d.sync += [a_key.eq(a_key + 1), a_rowstart.eq(0)]

        # Stage a1: memory outputs valid. a1q: the Q and K reads registered once more before the
        # LUT magnitude products (the block RAM's 5.8 ns clock-to-out was in front of them).
        a1_v = reg(a_issue, "a1_valid")
        a1_slot, a1_key = reg(a_seq, "a1_slot"), reg(a_key, "a1_key")
        a1_last, a1_empty = reg(a_lastkey, "a1_last"), reg(a_empty, "a1_empty")
        a1_jlast = reg(a_jlast, "a1_jlast")
        a1_first = reg(a_rowstart, "a1_first")   # the row's first key of the block
        a_stages = 1  # registers from issue to the score register (sizes the score FIFO)
        qv = data.View(self.q_layout, q_rd.data)
        kv = data.View(self.q_layout, k_rd.data)
        side = [reg(x, f"a1q_side{k}") for k, x in enumerate([a1_v, a1_slot, a1_key, a1_last, a1_empty, a1_jlast, a1_first])]
        a_stages += 1

        # a1d: each Q and K magnitude code split into its significand (implicit bit included) and
        # its exponent shift, the magnitude being sig << shift (as in hw/fp/lutmul.py), registered
        # before the significand product table: the exponent test in front of the table (one
        # function of both whole codes) mapped to a chain of LUTs too deep for the cycle.
        def split_code(code, name):
            mag = code[:fq.code_width - 1]
            exp = mag[fq.mbits:]
            normal = exp.any()
            # the significand in two register copies, one for each product table (pos, neg):
            # one register drove some 200 table LUTs
            sig = Cat(mag[:fq.mbits], normal)
            copies = []
            for c in range(2):
                copy = fanout_copy(len(sig), f"{name}_sig{c}")
                m.d.sync += copy.eq(sig)
                copies.append(copy)
            return (copies, reg(Mux(normal, exp - 1, 0).as_unsigned()[:len(exp)], f"{name}_sh"))
        split = []
        for d in range(D):
            a, b = qv.codes[d], kv.codes[d]
            split.append(split_code(a, f"a1d_q{d}") + split_code(b, f"a1d_k{d}") +
                         (reg(a[fq.code_width - 1] ^ b[fq.code_width - 1], f"a1d_neg{d}"),))
        fprod = fpnum.product_frac_bits(fq, fq)
        esh = [reg(qv.scales[i] + kv.scales[i] - (2 * E8M0_BIAS + fprod - nm.dot_frac), f"a1d_esh{i}", signed(11))
               for i in range(nb)]
        side = [reg(x, f"a1d_side{k}") for k, x in enumerate(side)]
        a_stages += 1

        # a2: signed significand products from a table (the sign is one more table input, so no
        # negation follows the shift), exponent shifts added.
        sig_bits = fq.mbits + 1
        lanes = []
        for d, (sig_q, sh_q, sig_k, sh_k, neg) in enumerate(split):
            # A ROM kept in LUTs (rom_style "logic"): with its registered output Yosys would
            # otherwise put it in a DP16KD without the output register (5.6 ns clock-to-out).
            # Two tables, for a positive and a negative product, each a function of 2 * sig_bits
            # inputs (with the sign a ninth input the table was a LUT level deeper); a3f
            # selects by the sign in front of the shift.
            values = []
            for sign in (0, 1):
                table = [(-(sq * sk) if sign else sq * sk) for sq in range(1 << sig_bits) for sk in range(1 << sig_bits)]
                rom_d = Memory(shape=signed(2 * sig_bits + 1), depth=len(table), init=table, attrs={"rom_style": "logic"})
                m.submodules[f"sig_table{d}_{'neg' if sign else 'pos'}"] = rom_d
                rd = rom_d.read_port(domain="comb")
                m.d.comb += rd.addr.eq(Cat(sig_k[sign], sig_q[sign]))
                values.append(reg(rd.data, f"a2_val{d}_{'neg' if sign else 'pos'}"))
            value = Mux(reg(neg, f"a2_neg{d}"), values[1], values[0])
            lanes.append((value, reg(sh_q + sh_k, f"a2_sh{d}")))
        esh = [reg(x, f"a2_esh{i}") for i, x in enumerate(esh)]
        side = [reg(x, f"a2_side{k}") for k, x in enumerate(side)]
        a_stages += 1

        # a3f, a3: the exact signed products in two shifts, by the amount's low two bits (a3f,
        # behind the sign's select), then by its multiple of 4 (a3): the select and the whole
        # shift were too long for one stage. Each MX block's shift onto the 2^-dot_frac grid is
        # decoded beside them (out of range, left or right, and the amounts).
        pw = fpnum.product_width(fq, fq)
        fine = [(reg(value << shift[:2], f"a3f_p{d}", signed(len(value) + 3)), reg(shift[2:], f"a3f_sh{d}"))
                for d, (value, shift) in enumerate(lanes)]
        esh = [reg(x, f"a3f_esh{i}") for i, x in enumerate(esh)]
        side = [reg(x, f"a3f_side{k}") for k, x in enumerate(side)]
        a_stages += 1
        prods = [reg((value << Cat(Const(0, 2), shift))[:pw + 1], f"a3_p{d}", signed(pw + 1))
                 for d, (value, shift) in enumerate(fine)]
        sum_bits = pw + 1 + (B - 1).bit_length()   # width of an MX block's adder-tree sum
        esh_dec = []
        for i, sh in enumerate(esh):
            esh_dec.append(dict(
                zero=reg(sh >= W, f"a3_shzero{i}"),
                left=reg(sh >= 0, f"a3_shleft{i}"),
                left_amt=reg(sh[:_bits(W)], f"a3_shl{i}"),
                right_amt=reg(Mux(sh < -sum_bits, sum_bits, -sh)[:_bits(sum_bits + 1)], f"a3_shr{i}")))
        side = [reg(x, f"a3_side{k}") for k, x in enumerate(side)]
        a_stages += 1

        def delay_dec(dec, name):
            return [{k: reg(v, f"{name}_{k}{i}") for k, v in x.items()} for i, x in enumerate(dec)]

        # Adder trees, one per MX block, one register level per halving.
        sums = []
        depth = 0
        groups = [prods[i * B:(i + 1) * B] for i in range(nb)]
        while max(len(g) for g in groups) > 1:
            depth += 1
            new_groups = []
            for gi, g in enumerate(groups):
                if len(g) == 1:
                    new_groups.append([reg(g[0], f"at{depth}_{gi}_0")])
                    continue
                width = len(g[0]) + 1
                ng = []
                for i in range(0, len(g), 2):
                    x = g[i] + g[i + 1] if i + 1 < len(g) else g[i]
                    ng.append(reg(x, f"at{depth}_{gi}_{i // 2}", signed(width)))
                new_groups.append(ng)
            groups = new_groups
            esh_dec = delay_dec(esh_dec, f"at{depth}")
            side = [reg(x, f"at{depth}_side{k}") for k, x in enumerate(side)]
            a_stages += 1
        sums = [g[0] for g in groups]

        # Term stages: each block sum onto the 2^-dot_frac grid, modulo 2^W (left shift or floor),
        # in two shifts: by the amount's multiple of 8 (ad1), then by the rest (ad2); one
        # 6-level shift was too long for a stage. Left: (S << a)[:W] = (((S << a1)[:W]) << a2)[:W];
        # right (floor): S >> a = (S >> a1) >> a2.
        tw = max(W, sum_bits)
        coarse = []
        for i, (S, dec) in enumerate(zip(sums, esh_dec)):
            assert len(S) == sum_bits
            c = Signal(signed(tw), name=f"ad1_coarse{i}")
            with m.If(dec["left"]):
                m.d.sync += c.eq((S << Cat(Const(0, 3), dec["left_amt"][3:]))[:W])
            with m.Else():
                m.d.sync += c.eq(S >> Cat(Const(0, 3), dec["right_amt"][3:]))
            coarse.append(c)
        fine_dec = [dict(zero=reg(dec["zero"], f"ad1_zero{i}"), left=reg(dec["left"], f"ad1_left{i}"),
                         left_amt=reg(dec["left_amt"][:3], f"ad1_lfine{i}"),
                         right_amt=reg(dec["right_amt"][:3], f"ad1_rfine{i}")) for i, dec in enumerate(esh_dec)]
        side = [reg(x, f"ad1_side{k}") for k, x in enumerate(side)]
        a_stages += 1
        terms = []
        for i, (c, dec) in enumerate(zip(coarse, fine_dec)):
            term = Signal(W, name=f"term{i}")
            with m.If(dec["zero"]):
                m.d.comb += term.eq(0)
            with m.Elif(dec["left"]):
                m.d.comb += term.eq((c << dec["left_amt"])[:W])
            with m.Else():
                m.d.comb += term.eq(c >> dec["right_amt"])  # signed: sign-extends to W bits (floor)
            terms.append(reg(term, f"ad_term{i}"))
        side = [reg(x, f"ad_side{k}") for k, x in enumerate(side)]
        a_stages += 1
        total = terms[0]
        for t in terms[1:]:
            total = (total + t)[:W]
        # as: the dot product is registered in the multipliers' input registers (as is C, set
        # with the command long before the job's first pair gets here).
        dot = total[:W].as_signed()
        side = [reg(x, f"as_side{k}") for k, x in enumerate(side)]
        a_stages += 1
        # am: dot * C in pieces of at most 17 bits of dot (one ECP5 MULT18X18D each, C being
        # unsigned and at most 17 bits wide), registered; amp: their sum. The multiplier blocks
        # and the adders joining their outputs were too long for one stage.
        prod_w = W + nm.const_bits + 1
        pieces = split_product(m, platform, dot, c_reg, "am_prod", register_x=True, register_y=True)
        side = [reg(x, f"am_side{k}") for k, x in enumerate(side)]
        a_stages += 1
        # amr: the pieces registered once more, in the fabric (from the multipliers' output
        # registers, the route and the join's 58-bit adder were too long for one stage)
        pieces = [(reg(piece, f"amr_piece{n}"), lo) for n, (piece, lo) in enumerate(pieces)]
        side = [reg(x, f"amr_side{k}") for k, x in enumerate(side)]
        a_stages += 1
        prod = reg(join_pieces(pieces), "amp_prod", signed(prod_w))
        side = [reg(x, f"amp_side{k}") for k, x in enumerate(side)]
        a_stages += 1

        # Rounding shift and saturation, score = clamp(floor((prod + rnd) / 2^shift)), in two
        # stages: the rounding add and both saturation tests in ar1, the shift and the clamp in
        # ar2 (in one stage the add, the variable shift and the clamp compares were in series,
        # the core's critical path). The tests compare prod itself against per-job thresholds:
        # floor((prod + rnd) / 2^sh) > smax  <=>  prod >= (smax + 1) 2^sh - rnd, and
        # floor((prod + rnd) / 2^sh) < smin  <=>  prod <  smin 2^sh - rnd. Thresholds beyond the
        # range of prod are clamped to one past it (the test is then never true), so they fit in
        # prod_w + 1 bits.
        thr_min, thr_max = -(1 << prod_w), (1 << prod_w) - 1

        def sat_threshold(bound, sh):
            return min(max((bound << sh) - ((1 << sh) >> 1), thr_min), thr_max)
        # The thresholds follow sh_reg two cycles behind (a table read: the shift is set with
        # the command, long before the job's first pair reaches ar1), through copies of sh_reg,
        # one per SAT_GROUP threshold bits: one register driving the whole table (some 400 LUTs)
        # was a critical path.
        SAT_GROUP = 16
        sh_values = range(1 << len(sh_reg))
        thresholds = []
        for bound, name in ((smax + 1, "hi"), (smin, "lo")):
            values = [sat_threshold(bound, sh) & ((1 << (prod_w + 1)) - 1) for sh in sh_values]
            bits = []
            for lo in range(0, prod_w + 1, SAT_GROUP):
                hi = min(lo + SAT_GROUP, prod_w + 1)
                sh_copy = fanout_copy(len(sh_reg), f"a_sat_{name}_sh{lo // SAT_GROUP}")
                m.d.sync += sh_copy.eq(sh_reg)
                part = Array([Const(v >> lo, hi - lo) for v in values])[sh_copy]
                bits.append(reg(part, f"a_sat_{name}_job{lo // SAT_GROUP}", unsigned(hi - lo)))
            thresholds.append(Cat(*bits).as_signed())
        hi_job, lo_job = thresholds
        # The rounding shift as floor((prod + 2^(sh-1)) / 2^sh) = (floor(prod / 2^(sh-1)) + 1) >> 1
        # (sh >= 1; with y = 2 prod for sh = 0 the same formula gives prod): the variable shift
        # in ar1, an add of the SW + 1 bits that are kept in ar2, so that no wide add precedes
        # the shift. Only the low SW bits of the result are used: exact when not saturated.
        # The variable shift itself in two parts: by the multiple of 8 in ar1 (keeping the SW + 8
        # bits that the rest needs), by the rest in ar1f (+1 A stage; 6 levels with the amount
        # fanned out across prod were too long for one).
        sh_zero = reg(sh_reg == 0, "a_sh_zero_job")
        sh_less1 = reg(sh_reg - 1, "a_sh_less1_job", unsigned(len(sh_reg)))
        sh_fine = reg(Mux(sh_zero, 0, sh_less1[:3]), "a_sh_fine_job", unsigned(3))
        coarse_shifted = reg(Mux(sh_zero, prod << 1, prod >> Cat(Const(0, 3), sh_less1[3:]))[:SW + 8],
                             "ar1_coarse", signed(SW + 8))
        # The saturation tests in three parts, side by side in ar1f: the low and middle parts
        # compared unsigned, the high part (the sign) signed, the upper two both ways; ar2
        # combines them lexicographically (one compare across all prod_w bits was too long, and
        # so was one across half of them: its carry chain alone took 3.5 ns):
        # x >= y  <=>  x_hi > y_hi | (~(x_hi < y_hi) & (x_mid > y_mid | (~(x_mid < y_mid) & x_lo >= y_lo))),
        # likewise for <.
        # The tests are formed in ar1f, from a copy of prod registered in ar1 (prod_sat): formed
        # in ar1 from amp_prod, which also feeds the coarse shift's ~30 selects, the route from
        # there to the compare chains was on the late-endpoint list.
        prod_sat = reg(prod, "ar1_prod_sat")
        side = [reg(x, f"ar1_side{k}") for k, x in enumerate(side)]
        a_stages += 1
        c1, c2 = (prod_w + 1) // 3, 2 * (prod_w + 1) // 3

        def split3(x):
            return x[:c1], x[c1:c2], x[c2:].as_signed()
        x_lo, x_mid, x_hi = split3(prod_sat)
        hi_lo, hi_mid, hi_hi = split3(hi_job)
        lo_lo, lo_mid, lo_hi = split3(lo_job)
        tests = {"over_hi_gt": x_hi > hi_hi, "over_hi_lt": x_hi < hi_hi, "over_mid_gt": x_mid > hi_mid,
                 "over_mid_lt": x_mid < hi_mid, "over_lo": x_lo >= hi_lo,
                 "under_hi_lt": x_hi < lo_hi, "under_hi_gt": x_hi > lo_hi, "under_mid_lt": x_mid < lo_mid,
                 "under_mid_gt": x_mid > lo_mid, "under_lo": x_lo < lo_lo}
        half_shifted = reg((coarse_shifted >> sh_fine)[:SW + 1], "ar1f_half", signed(SW + 1))
        tests = {k: reg(v, f"ar1f_{k}") for k, v in tests.items()}
        side = [reg(x, f"ar1f_side{k}") for k, x in enumerate(side)]
        a_stages += 1
        t = tests
        over = t["over_hi_gt"] | (~t["over_hi_lt"] & (t["over_mid_gt"] | (~t["over_mid_lt"] & t["over_lo"])))
        under = t["under_hi_lt"] | (~t["under_hi_gt"] & (t["under_mid_lt"] | (~t["under_mid_gt"] & t["under_lo"])))
        shifted = Signal(signed(SW))
        m.d.comb += shifted.eq((half_shifted + 1) >> 1)
        # The pair of an empty block (no key, score unused) gets score_min, which is that
        # block's max.
        score_value = Mux(under | side[4], smin, Mux(over, smax, shifted))
        score = reg(score_value, "ar_score", signed(SW))
        # a copy of the score for the running max (the score register also feeds the score
        # RAM's inputs, which sit where the block RAMs are)
        score_for_max = fanout_copy(signed(SW), "ar_score_for_max")
        m.d.sync += score_for_max.eq(score_value)
        ae_v, ae_slot, ae_key, ae_last, ae_empty, ae_jlast, ae_first = [reg(x, f"ar_side{k}") for k, x in enumerate(side)]
        # and of its valid and first-key flags (the shared ones drive the score RAM's write and
        # the slot handoff)
        max_v, max_first = fanout_copy(1, "ar_max_v"), fanout_copy(1, "ar_max_first")
        m.d.sync += [max_v.eq(side[0]), max_first.eq(side[6])]
        # the score FIFO's write, registered from the valid and the mode here (a gate behind the
        # valid register put the mode's route in front of the FIFO's flags)
        ae_s_push = reg(side[0] & e_sim, "ar_s_push")
        a_stages += 1

        # End of A: score buffer write, block max; a cycle later, the slot handoff (a running-max
        # compare in front of the slot registers' select was a critical path; B starts a row a
        # cycle later for it: once a job, not a row). run_max is the max of the row's scores so
        # far: it loads the score at a row's first key (or an empty block's pair, score_min)
        # and at every larger score, so the compare drives only its enable, and after the row's
        # last key it holds the block max that the handoff takes.
        run_max = Signal(signed(SW), init=smin)
        m.d.comb += [s_wr.addr.eq(ae_slot * Bc + ae_key), s_wr.data.eq(score),
                     s_wr.en.eq(ae_v & ~ae_empty & ~e_sim)]
        # score > run_max as the sign of run_max - score (one carry chain, see take_bmax)
        with m.If(max_v & (max_first | (run_max - score_for_max)[-1])):
            m.d.sync += run_max.eq(score_for_max)
        slot_done = reg(ae_v & ae_last & ~e_sim, "ae_slot_done")
        slot_done_seq = reg(ae_slot, "ae_slot_done_seq")
        with m.If(slot_done):
            m.d.sync += [slot_ready[slot_done_seq].eq(1), slot_bmax[slot_done_seq].eq(run_max)]

        # Similarity output: every score of the job goes into a FIFO that drives ``s``. A pair
        # is issued only when the FIFO will have room for it when it leaves the pipeline:
        # ``s_pending`` counts pairs issued and not yet taken by the host (in the pipeline or
        # the FIFO), so the FIFO never overflows however long ``s`` stalls. It counts from
        # registered issue and take flags (from the issue decision itself the count's adder
        # was a critical path), so it lags the true count by at most the one pair issued in the
        # cycle before: a pair is issued while s_pending < s_depth - 1. A depth of
        # ``a_stages + 4`` keeps one pair per cycle while the host takes one beat per cycle
        # (a score is readable the cycle after it is written, the count lags a cycle).
        s_depth = a_stages + 4
        # The score FIFO: registered flags (hw/common/fifo.py), a power-of-two depth >= s_depth,
        # written at every similarity score (it cannot be full, see s_pending).
        s_fifo = m.submodules.s_fifo = RegisteredFlagFifo(self.s.payload.shape(), 1 << (s_depth - 1).bit_length())
        s_pending = Signal(range(s_depth + 1))
        s_take = self.s.valid & self.s.ready
        s_issued = reg(a_issue & a_sim, "s_issued")
        s_taken = reg(s_take, "s_taken")
        m.d.comb += s_room.eq(s_pending < s_depth - 1)
        m.d.sync += s_pending.eq(s_pending + s_issued - s_taken)
        m.d.comb += [s_fifo.i.payload.score.eq(score), s_fifo.i.payload.last.eq(ae_jlast),
                     s_fifo.i.valid.eq(ae_s_push)]
        # ``s`` leaves through a skid buffer (two more entries, counted in s_pending like the
        # FIFO's): the host's ready then reaches only the buffer's pointers, not the FIFO's level
        # logic.
        m.submodules.s_skid = s_skid = SkidBuffer(self.s.payload.shape())
        wiring.connect(m, s_fifo.o, s_skid.i)
        wiring.connect(m, s_skid.o, wiring.flipped(self.s))

        # ---------------------------------------------------------------- softmax / P.V unit (B)
        fifo_layout = data.StructLayout({
            "row": range(Br), "P": data.ArrayLayout(signed(PSW), D), "psum": unsigned(PSUMW),
            "alpha": unsigned(PW), "xt": data.ArrayLayout(8, nb), "first": 1, "final": 1, "lastrow": 1,
        })
        # The row FIFO between B and U, two entries with registered flags (hw/common/fifo.py):
        # U decides its pop from "not empty", so with a flag derived from the level (Amaranth's
        # SyncFIFO: the level's update waits for the pop) the two were 8.2 ns in series. B never
        # writes it full (rows in flight are limited to 2, see rows_started).
        row_fifo = m.submodules.row_fifo = RegisteredFlagFifo(fifo_layout, 2)
        rq_ready = row_fifo.o.valid   # not empty
        rq_pop = row_fifo.o.ready
        # Rows started by B and not yet taken by U (at most 2: the row FIFO's depth), as the
        # difference of two 2-bit counters (started, popped): the limit test reads four register
        # bits, and each counter only counts, where an add-and-subtract counter had the issue
        # decision and the FIFO pop in series.
        # The room test itself is a register, formed from the counters' next values.
        rows_started = Signal(2)
        rows_popped = Signal(2)
        inflight_room = Signal(init=1, name="b_room")
        b_row = Signal(range(Br))
        b_key = Signal(range(Bc))
        b_seq = Signal(range(N_SLOTS))
        b_empty = pick(bk_empty, b_ptr)
        b_rowstart = Signal(init=1)   # b_key == 0, kept as a flag
        b_issue = Signal()
        # A row's running max is read from ``mreg`` at its rowstart and the new one written back
        # two cycles later (b1), so two rowstarts of one row must be at least 3 cycles apart.
        # Between them B issues every other row of the tile once (at least a cycle each): only
        # tiles of one or two rows can come closer, and after the last key of such a bank B
        # waits two cycles (b_hold, a shift register: waiting while its bit 0 is set).
        b_hold = Signal(2)
        # As A's: the bank's full flag and the score slots' ready flags (set by the loader and
        # by A) are read a cycle late, B's own moves are followed at once (b_leave, b_ready_next).
        b_bank_ok = Signal(name="b_bank_ok")
        b_ready_now = Signal(name="b_ready_now")     # slot_ready[b_seq], a cycle late
        b_ready_next = Signal(name="b_ready_next")   # slot_ready[b_seq + 1], a cycle late
        b_advanced = Signal(name="b_advanced")
        m.d.comb += b_issue.eq(b_bank_ok & ~b_hold[0] &
                               (~b_rowstart | (Mux(b_advanced, b_ready_next, b_ready_now) & inflight_room)))
        b_key_last, b_row_last = issue_flags(b_issue, b_ptr, b_key, b_row, "b")
        b_lastkey = b_key_last
        b_lastrow = b_row_last
        b_leave = b_issue & b_lastkey & b_lastrow
        m.d.sync += [b_bank_ok.eq(~b_leave & ~b_sim & pick(bk_full, b_ptr)),
                     b_ready_now.eq(slot_ready[b_seq]), b_ready_next.eq(slot_ready[(b_seq + 1) % N_SLOTS]),
                     b_advanced.eq(b_issue & b_lastkey)]
        b_first = pick(bk_first, b_ptr)
        with m.If(b_issue & b_lastkey & b_lastrow & pick(bk_tiny, b_ptr)):
            m.d.sync += b_hold.eq(0b11)
        with m.Else():
            m.d.sync += b_hold.eq(b_hold >> 1)
        m.d.comb += m_rd.addr.eq(b_row)
        m.d.comb += [s_rd.addr.eq(b_seq * Bc + b_key), v_rd.addr.eq(Mux(b_ptr, Bc, 0) + b_key)]
        with m.If(b_issue):
            with m.If(b_lastkey):
                m.d.sync += [slot_ready[b_seq].eq(0), Array(busy_clr)[b_seq].eq(1), b_key.eq(0), b_rowstart.eq(1),
                             b_seq.eq(b_seq + 1 if N_SLOTS & (N_SLOTS - 1) == 0 else
                                      Mux(b_seq == N_SLOTS - 1, 0, b_seq + 1))]
                with m.If(b_lastrow):
                    m.d.sync += [b_row.eq(0), b_ptr.eq(~b_ptr)]
                    for b in range(2):
                        with m.If(b_ptr == b):
                            m.d.sync += full_clr[b].eq(1)
                with m.Else():
                    m.d.sync += b_row.eq(b_row + 1)
            with m.Else():
                m.d.sync += [b_key.eq(b_key + 1), b_rowstart.eq(0)]
        pop = Signal()
        start_row = b_issue & b_rowstart
        started_next = Signal(2, name="rows_started_next")
        popped_next = Signal(2, name="rows_popped_next")
        m.d.comb += [started_next.eq(rows_started + start_row), popped_next.eq(rows_popped + pop)]
        m.d.sync += [rows_started.eq(started_next), rows_popped.eq(popped_next),
                     inflight_room.eq((started_next - popped_next)[:2] < 2)]

        def delay(ctl, name):
            """The control fields of a B stage, registered into the next one."""
            return {k: reg(v, f"{name}_{k}") for k, v in ctl.items()}

        # b0: block-RAM reads in flight (their output registers); the row's old running max (the
        # LUT-RAM read) and the block max registered. b1: at the row's first key, the compare
        # m < block max (or the row's first kept block: m_new is the block max) and both
        # operands are registered and held for the row's other keys; m_new = max(m, block max)
        # is selected from them, written back to ``mreg``, and the differences after it
        # (m_new - s, m_new - m) are formed from both candidates, selected behind the carry
        # chains. The read, the compare and the write-back were in series at issue; the select
        # in one stage with the compare (24 loads of the compare's result), or in front of the
        # subtractions, was too long.
        ctl = dict(v=b_issue, row=b_row, fk=b_rowstart, lk=b_lastkey, empty=b_empty, first=b_first,
                   final=pick(bk_final, b_ptr), lastrow=pick(bk_lastjob, b_ptr) & b_lastrow,
                   **{f"xt{i}": pick([bk_xt[0][i], bk_xt[1][i]], b_ptr) for i in range(nb)})
        ctl = delay(ctl, "b0")
        mold0 = reg(m_rd.data, "b0_mold", signed(SW))
        bmax0 = reg(slot_bmax[b_seq], "b0_bmax", signed(SW))
        take_bmax = Signal(name="b1_take_bmax")   # m_new is the block max
        bmax1 = Signal(signed(SW), name="b1_bmax")
        mold1 = Signal(signed(SW), name="b1_mold")   # at a row's first kept block: unused (alpha)
        with m.If(ctl["v"] & ctl["fk"]):
            # m < bmax as the sign of m - bmax, the carry chain's last bit (Yosys maps a signed
            # compare to the chain and two more LUT levels); on a tie m_new is the same either way
            m.d.sync += [take_bmax.eq(ctl["first"] | (mold0 - bmax0)[-1]), bmax1.eq(bmax0), mold1.eq(mold0)]
        # b1: the score and V reads leave their RAM output registers.
        ctl = delay(ctl, "b1")
        with m.If(ctl["v"] & ctl["fk"]):
            m.d.comb += [m_wr.addr.eq(ctl["row"]), m_wr.data.eq(Mux(take_bmax, bmax1, mold1)), m_wr.en.eq(1)]
        # b1s: the score and the V token registered once more, in the fabric, with the row's max
        # operands (the block RAMs' output registers sit where the RAMs are; from there the
        # subtractions and the V decode behind them were too long for one stage)
        s_val = reg(s_rd.data.as_signed(), "b1s_s", signed(SW))
        vview = data.View(self.v_layout, reg(v_rd.data, "b1s_v"))
        take_bmax, bmax1, mold1 = reg(take_bmax, "b1s_take_bmax"), reg(bmax1, "b1s_bmax"), reg(mold1, "b1s_mold")
        ctl = delay(ctl, "b1s")

        r_sh = nm.score_frac - nm.exp_bits

        def exp_index(t, name):
            """(big, shift n, table index copies) of 2^-t, t >= 0 in score units, registered; big: n is
            to be clamped to p_bits + 2 (n's bits are then meaningless). The test does not wait
            for the rounding add: n > p_bits + 2 exactly when t >= ((p_bits + 3) << (exp_bits +
            r)) - 2^(r - 1), a compare of t beside the add."""
            half = (1 << (r_sh - 1)) if r_sh > 0 else 0
            u = (t + half) >> r_sh
            u_s = Signal(len(t) + 1, name=f"{name}_u")
            m.d.comb += u_s.eq(u)
            big = t >= ((PB + 3) << (nm.exp_bits + r_sh)) - half
            # the clamp itself is applied in b3, from these registers (behind the add and the
            # compare it was a critical path)
            # the table index in a register copy per table part (one drove all four parts,
            # some 400 LUTs)
            index = []
            for h in range(1 << part_bits):
                copy = fanout_copy(nm.exp_bits, f"{name}_i{h}")
                m.d.sync += copy.eq(u_s[:nm.exp_bits])
                index.append(copy)
            return (reg(big, f"{name}_big"), reg((u_s >> nm.exp_bits)[:_bits(PB + 3)], f"{name}_n", range(PB + 3)),
                    index)

        # b1s -> b1d: the differences in front of the exp2 indices (m_new - s, m_new - m), the V
        # magnitudes and signs and each MX block's alignment amount (Xt_b - scale, clamped) are
        # registered before the index rounding and the V negation.
        t_p = reg(Mux(take_bmax, bmax1 - s_val, mold1 - s_val), "b1d_tp", SW + 1)
        t_a = reg(Mux(take_bmax, bmax1 - mold1, 0), "b1d_ta", SW + 1)
        v_mag, v_neg = [], []
        for d in range(D):
            code = vview.codes[d]
            mag_code = code[:fv.code_width - 1]
            exp = mag_code[fv.mbits:]
            # sig << (exp - 1) for a normal code, as (sig << exp) >> 1 (no subtract in front of
            # the shift); a subnormal one is its mantissa field
            normal = exp.any()
            shifted = (Cat(mag_code[:fv.mbits], Const(1)) << exp) >> 1
            v_mag.append(reg(Mux(normal, shifted, mag_code[:fv.mbits]), f"b1d_vmag{d}", vbits))
            v_neg.append(reg(code[fv.code_width - 1], f"b1d_vneg{d}"))
        # each MX block's alignment amount Xt_b - scale (>= 0), clamped to VFW
        v_dsh = []
        for i in range(nb):
            x = Signal(8, name=f"b1d_dsh_raw{i}")
            m.d.comb += x.eq(ctl[f"xt{i}"] - vview.scales[i])
            v_dsh.append(reg(Mux(x > VFW, VFW, x), f"b1d_dsh{i}", range(VFW + 1)))
        ctl = delay(ctl, "b1d")

        # b1d -> b2: exp2 index rounding and clamp; V signed.
        p_big, p_n, p_i = exp_index(t_p, "b2_p")
        a_big, a_n, a_i = exp_index(t_a, "b2_a")
        v_int = [reg(Mux(neg, -mag, mag), f"b2_vint{d}", signed(vbits + 1)) for d, (mag, neg) in enumerate(zip(v_mag, v_neg))]
        # the clamped alignment amount, a register copy per lane (one per MX block drove the
        # shifts of all the block's lanes)
        v_align = []
        for d in range(D):
            copy = fanout_copy(range(VFW + 1), f"b2_dsh{d}")
            m.d.sync += copy.eq(v_dsh[d // B])
            v_align.append(copy)
        ctl = delay(ctl, "b2")

        # b2 -> b3: the exp2 table entries of every part registered with the index's top bits;
        # b3m: the part selected. n - 1 and n == 0 with them; V aligned to Xt_b (floor shift).
        ib = nm.exp_bits - part_bits
        m.d.comb += [port.addr.eq(i[:ib]) for port, i in zip(rom_p, p_i)]
        m.d.comb += [port.addr.eq(i[:ib]) for port, i in zip(rom_a, a_i)]

        def table_entry(ports, index, name):
            parts = Array([reg(port.data, f"b3_{name}T{h}") for h, port in enumerate(ports)])
            return reg(parts[reg(index[0][ib:], f"b3_{name}_part")], f"b3m_{name}T")
        # the shift n clamped to p_bits + 2 (big): n == 0 and n - 1
        p_n0 = reg(reg(~p_big & (p_n == 0), "b3_pn0"), "b3m_pn0")
        a_n0 = reg(reg(~a_big & (a_n == 0), "b3_an0"), "b3m_an0")
        p_nm1 = reg(reg(Mux(p_big, PB + 1, p_n - 1), "b3_pnm1", range(PB + 2)), "b3m_pnm1")
        a_nm1 = reg(reg(Mux(a_big, PB + 1, a_n - 1), "b3_anm1", range(PB + 2)), "b3m_anm1")
        # The alignment shift in two parts: by the amount's multiple of 4 here, the rest in b4.
        vfix = [reg((x << nm.v_guard) >> Cat(Const(0, 2), v_align[d][2:]), f"b3_vcoarse{d}", signed(VFW))
                for d, x in enumerate(v_int)]
        v_align = [reg(x[:2], f"b3_dsh{d}") for d, x in enumerate(v_align)]
        ctl = delay(ctl, "b3")
        p_T, a_T = table_entry(rom_p, p_i, "p"), table_entry(rom_a, a_i, "a")
        vfix = [reg(x, f"b3m_vcoarse{d}") for d, x in enumerate(vfix)]
        v_align = [reg(x, f"b3m_dsh{d}") for d, x in enumerate(v_align)]
        ctl = delay(ctl, "b3m")

        # b3 -> b4 -> b5: the rounding shift (T + 2^(n-1)) >> n (T itself when n = 0) in two
        # stages: y = T >> (n - 1) (2 T when n = 0), then (y >> 1) + (y & 1). Table read, add
        # and variable shift in one stage were a critical path.
        def half_shift(T, n0, nm1, name):
            return reg(Mux(n0, T << 1, T >> nm1), name, unsigned(PW + 1))

        def round_off(y):
            return (y >> 1) + y[0]
        p_y, a_y = half_shift(p_T, p_n0, p_nm1, "b4_py"), half_shift(a_T, a_n0, a_nm1, "b4_ay")
        vfix = [reg(x >> v_align[d], f"b4_vfix{d}") for d, x in enumerate(vfix)]
        ctl = delay(ctl, "b4")
        # b5: p rounded (0 for an empty block's pair) into one register copy per group of
        # P_GROUP products, each next to its multipliers, and vfix registered once more beside
        # it: one p fanned out to all 2 D multipliers' inputs, behind the rounding add and the
        # empty select, was up to 8 ns, most of it routing.
        P_GROUP = 4
        p5_copies = []
        for g in range(-(-D // P_GROUP)):
            copy = fanout_copy(unsigned(PW), f"b5_p{g}")
            m.d.sync += copy.eq(Mux(ctl["empty"], 0, round_off(p_y)))
            p5_copies.append(copy)
        p5 = p5_copies[0]
        vfix = [reg(x, f"b5_vfix{d}") for d, x in enumerate(vfix)]
        alpha5 = reg(round_off(a_y), "b5_alpha", unsigned(PW))
        ctl = delay(ctl, "b5")

        # b6i: p and vfix in the multipliers' input registers; b6: the products p * vfix in
        # pieces of vfix (split_product: one MULT18X18D with its output register each on ECP5);
        # b7: the pieces joined. vfix is wider than 18 bits, so one product is two multiplier
        # blocks and an adder: too long for one stage.
        pieces6 = [split_product(m, platform, x, p5_copies[d // P_GROUP], f"b6_prod{d}",
                                 register_x=True, register_y=True) for d, x in enumerate(vfix)]
        p6 = reg(reg(p5, "b6i_p"), "b6_p")
        alpha6 = reg(reg(alpha5, "b6i_alpha"), "b6_alpha")
        ctl = delay(delay(ctl, "b6i"), "b6")
        prod7 = [reg(join_pieces(pieces), f"b7_prod{d}", signed(PRW)) for d, pieces in enumerate(pieces6)]
        p7 = reg(p6, "b7_p")
        alpha7 = reg(alpha6, "b7_alpha")
        ctl = delay(ctl, "b7")
        # b7r: the products registered once more, away from the multipliers (the joined products
        # sit next to them, the sums next to the row FIFO: the route between and the sums' adder
        # were too long for one stage)
        prod7 = [reg(x, f"b7r_prod{d}") for d, x in enumerate(prod7)]
        p7 = reg(p7, "b7r_p")
        alpha7 = reg(alpha7, "b7r_alpha")
        # the sums' valid and first-key flags, a register copy per lane (one of each drove the
        # enables and the clear selects of all D sums, some 700 loads)
        lane_v, lane_fk = [], []
        for d in range(D):
            for flags, key in ((lane_v, "v"), (lane_fk, "fk")):
                copy = fanout_copy(1, f"b7r_{key}{d}")
                m.d.sync += copy.eq(ctl[key])
                flags.append(copy)
        ctl = delay(ctl, "b7r")

        # b8: exact block sums. b9: the row's last key has its sums in acc_P / acc_ps, which are
        # written to the FIFO from these registers (the sums' adders in front of the FIFO's write
        # were a critical path).
        acc_P = [Signal(signed(PSW), name=f"P{d}") for d in range(D)]
        acc_ps = Signal(PSUMW)
        alpha_keep = Signal(PW)
        for d in range(D):
            with m.If(lane_v[d]):
                m.d.sync += acc_P[d].eq(Mux(lane_fk[d], 0, acc_P[d]) + prod7[d])
        new_ps = Mux(ctl["fk"], 0, acc_ps) + p7
        with m.If(ctl["v"]):
            m.d.sync += acc_ps.eq(new_ps)
            with m.If(ctl["fk"]):
                m.d.sync += alpha_keep.eq(alpha7)
        row_done = reg(ctl["v"] & ctl["lk"], "b9_row_done")
        ctl = delay(ctl, "b9")
        fw = row_fifo.i.payload
        m.d.comb += [fw.row.eq(ctl["row"]), fw.psum.eq(acc_ps), fw.alpha.eq(alpha_keep),
                     fw.first.eq(ctl["first"]), fw.final.eq(ctl["final"]), fw.lastrow.eq(ctl["lastrow"]),
                     row_fifo.i.valid.eq(row_done)]
        m.d.comb += [fw.P[d].eq(x) for d, x in enumerate(acc_P)]
        m.d.comb += [fw.xt[i].eq(ctl[f"xt{i}"]) for i in range(nb)]

        # ---------------------------------------------------------------- row update (U)
        ent = Signal(fifo_layout)
        fr = row_fifo.o.payload
        stv = data.View(state_layout, st_rd.data)   # the row state, valid in U1M
        m.d.comb += st_rd.addr.eq(ent.row)
        # A row's first kept block starts from a zero state (acc, l and e): alpha is taken as 0
        # for the rescale and e as 0 for the exponents, so the state read needs no mux.
        u_alpha = Signal(PW)
        e_old = [Mux(ent.first, 0, stv.e[i]) for i in range(nb)]
        uA = [Signal(signed(AW + PW + 1), name=f"u_accx{d}") for d in range(D)]
        uL = Signal(LW + PW)
        div_idle = Signal()
        div_start = Signal()
        # The start reaches the divider a cycle later, from a register (the two FSMs' state
        # decodes in series were a critical path); the row's result stays in acc_new, l_new, e_new
        # and ent for that cycle (the next row's update writes them at the earliest 2 cycles on).
        div_go = Signal()
        m.d.sync += div_go.eq(div_start)
        # The update is cut into register stages for timing (it was the core's critical path:
        # exponent compare -> shift amount -> barrel shift -> add -> state memory / divider):
        # U0 takes the FIFO entry, U1 and U1W read the row state, U1M registers it in the
        # multipliers' inputs (and the old exponents), U1X the pieces of the rescaled state (and
        # the exponent differences), U1P their sum (and the shift amounts), U1Q the amounts'
        # copies per lane, U2 and U2F the aligned terms, U2S their sums, and U3 writes the state
        # or hands the row to the divider from registers only.
        # U1X multiplies the state by alpha in pieces of at most 17 bits of the state (one ECP5
        # MULT18X18D each with its output register, alpha being unsigned) and U1P adds the
        # registered pieces (join_pieces: one adder): the whole
        # product in one stage (multiplier blocks, routing, then the LUT adders that join their
        # outputs) was the critical path.
        # Both operands pass each multiplier's input registers (loaded at every edge): the state
        # from the RAM's output register, valid from U1M until the write in U3 (the address is
        # ent.row throughout), and alpha, loaded with the entry in U0 and held until U3. Routed
        # straight into the multiply, each was the core's critical path (the state RAM's output
        # 4.8 ns across the chip, one alpha register driving every multiplier 4.5 ns, each into
        # the multiply's 3.5 ns setup).
        u_rescale = Signal()   # in U1X: the pieces of the state times alpha are registered
        uA_pieces = [split_product(m, platform, stv.acc[d], u_alpha, f"u_accx{d}", u_rescale,
                                   register_x=True, register_y=True) for d in range(D)]
        uL_pieces = split_product(m, platform, stv.l, u_alpha, "u_lx", u_rescale, register_x=True, register_y=True)
        e_new = [Signal(8, name=f"u_enew{i}") for i in range(nb)]
        e_up = [Signal(8, name=f"u_eup{i}") for i in range(nb)]        # e_new - e (>= 0)
        xt_down = [Signal(8, name=f"u_xtdown{i}") for i in range(nb)]  # e_new - Xt (>= 0)
        # The shift amounts, per MX block (U1P), then a register copy per lane (U1Q): one per
        # block drove the 56-bit shifts of all the block's lanes (some 900 LUTs), and the copies
        # loaded straight from the clamp logic were still too far from it.
        amt_a_blk = [Signal(range(AW + PW + 1), name=f"u_amta_blk{i}") for i in range(nb)]
        amt_p_blk = [Signal(range(PSW + 1), name=f"u_amtp_blk{i}") for i in range(nb)]
        amt_a = [fanout_copy(range(AW + PW + 1), f"u_amta{d}") for d in range(D)]
        amt_p = [fanout_copy(range(PSW + 1), f"u_amtp{d}") for d in range(D)]
        acc_coarse = [Signal(signed(AW + PW + 1), name=f"u_acccoarse{d}") for d in range(D)]
        p_coarse = [Signal(signed(PSW), name=f"u_pcoarse{d}") for d in range(D)]
        acc_term = [Signal(signed(AW), name=f"u_accterm{d}") for d in range(D)]  # rescaled state, aligned
        p_term = [Signal(signed(AW), name=f"u_pterm{d}") for d in range(D)]      # block sum, aligned
        l_term = Signal(LW)
        acc_new = [Signal(signed(AW), name=f"u_accnew{d}") for d in range(D)]
        l_new = Signal(LW)
        stw = data.View(state_layout, st_wr.data)
        m.d.comb += [stw.l.eq(l_new), st_wr.addr.eq(ent.row)]
        m.d.comb += [stw.acc[d].eq(acc_new[d]) for d in range(D)]
        m.d.comb += [stw.e[i].eq(e_new[i]) for i in range(nb)]
        u_fsm = OneHot(["U0", "U1", "U1W", "U1M", "U1X", "U1P", "U1Q", "U2", "U2F", "U2S", "U3"], "update")
        # ent loads the FIFO's head in every U0 cycle and keeps the one popped: a load enable from
        # the FIFO's ready was a critical path (it fans out to every bit). The enable is not the
        # U0 flip-flop itself, which also pops the FIFO, but copies of it, one per quarter of
        # ent's bits (ent_load: each its own register with its own feedback, so synthesis keeps
        # them apart): through U0's fanout the FIFO's level update was the critical path.
        u_leave = u_fsm["U3"] & (~ent.final | div_idle)
        ent_width = data.Layout.cast(fifo_layout).size
        for k in range(4):
            ent_load = Signal(init=1, name=f"ent_load{k}")
            m.d.sync += ent_load.eq(Mux(ent_load, ~rq_ready, u_leave))
            lo, hi = k * ent_width // 4, (k + 1) * ent_width // 4
            with m.If(ent_load):
                m.d.sync += ent.as_value()[lo:hi].eq(fr.as_value()[lo:hi])
                if k == 0:
                    m.d.sync += u_alpha.eq(Mux(fr.first, 0, fr.alpha))
        with m.If(u_fsm["U0"]):
            with m.If(rq_ready):
                m.d.comb += [rq_pop.eq(1), pop.eq(1)]
                m.d.sync += u_fsm.go("U0", "U1")
        with m.If(u_fsm["U1"]):
            # The row state is read at ent.row (from a register: through the FIFO's
            # asynchronous read the address was too late for the RAM) and passes the RAM's
            # output register in U1W.
            m.d.sync += u_fsm.go("U1", "U1W")
        with m.If(u_fsm["U1W"]):
            m.d.sync += u_fsm.go("U1W", "U1M")
        # The exponent alignment does not wait for the rescale: the row's old exponents are
        # registered in U1M (e_old_r: from the state RAM's output, behind the first-block select,
        # the subtractions after them were a critical path), e_new - e and e_new - Xt come from
        # two subtractors side by side in U1X (each then one sign test), and U1P turns them into
        # the clamped shift amounts. Done after the rescale in one stage (compare, subtract,
        # clamp compare in series) it was the critical path.
        e_old_r = [Signal(8, name=f"u_eold{i}") for i in range(nb)]
        with m.If(u_fsm["U1M"]):
            m.d.sync += [r.eq(x) for r, x in zip(e_old_r, e_old)]
            m.d.sync += u_fsm.go("U1M", "U1X")
        with m.If(u_fsm["U1X"]):
            m.d.comb += u_rescale.eq(1)
            for i in range(nb):
                xt_minus_e = Signal(signed(9), name=f"u_xtme{i}")
                e_minus_xt = Signal(signed(9), name=f"u_emxt{i}")
                m.d.comb += [xt_minus_e.eq(ent.xt[i] - e_old_r[i]), e_minus_xt.eq(e_old_r[i] - ent.xt[i])]
                m.d.sync += [e_new[i].eq(Mux(xt_minus_e[8], e_old_r[i], ent.xt[i])),
                             e_up[i].eq(Mux(xt_minus_e[8], 0, xt_minus_e[:8])),
                             xt_down[i].eq(Mux(e_minus_xt[8], 0, e_minus_xt[:8]))]
            m.d.sync += u_fsm.go("U1X", "U1P")
        with m.If(u_fsm["U1P"]):
            m.d.sync += [uA[d].eq(join_pieces(pieces)) for d, pieces in enumerate(uA_pieces)]
            m.d.sync += uL.eq(join_pieces(uL_pieces))
            # sh_acc = p_bits + e_new - e, sh_P = p_bits - acc_frac + e_new - Xt, each clamped
            # (a shift by the clamp value already gives the sign fill).
            for i in range(nb):
                m.d.sync += [amt_a_blk[i].eq(Mux(e_up[i] > AW + PW - PB, AW + PW, PB + e_up[i])),
                             amt_p_blk[i].eq(Mux(xt_down[i] > PSW - (PB - nm.acc_frac), PSW,
                                                 PB - nm.acc_frac + xt_down[i]))]
            m.d.sync += u_fsm.go("U1P", "U1Q")
        # The per-lane shift amounts and the aligned terms below are loaded at every edge, without
        # an enable (a state bit as the enable of their ~2,000 bits was on the late-endpoint
        # list): each stage's inputs hold from the stage before it on until the next row's U1P
        # (amt_*_blk, uA and uL are loaded in U1P, ent in U0), so each register holds its row's
        # value from the state that loads it in the sequence below until at least U2S.
        m.d.sync += [amt_a[d].eq(amt_a_blk[d // B]) for d in range(D)]   # right from U1Q on
        m.d.sync += [amt_p[d].eq(amt_p_blk[d // B]) for d in range(D)]
        with m.If(u_fsm["U1Q"]):
            m.d.sync += u_fsm.go("U1Q", "U2")
        # The aligned terms in two shifts, by the amount's multiple of 8 (right from U2 on) and
        # by the rest (from U2F on), then their sums in U2S: the whole 56-bit barrel shift, fanned
        # out from one amount per MX block, and the add were each too long for one stage (floor
        # shifts compose: x >> (a + b) = (x >> a) >> b).
        for d in range(D):
            m.d.sync += [acc_coarse[d].eq(uA[d] >> Cat(Const(0, 3), amt_a[d][3:])),
                         p_coarse[d].eq(ent.P[d] >> Cat(Const(0, 3), amt_p[d][3:])),
                         acc_term[d].eq(acc_coarse[d] >> amt_a[d][:3]),
                         p_term[d].eq(p_coarse[d] >> amt_p[d][:3])]
        m.d.sync += l_term.eq(uL >> PB)
        with m.If(u_fsm["U2"]):
            m.d.sync += u_fsm.go("U2", "U2F")
        with m.If(u_fsm["U2F"]):
            m.d.sync += u_fsm.go("U2F", "U2S")
        # The state write enable (U3 of a row that is not final) from a register of its own: the
        # state decode and ent.final reached the 38 block RAMs' enables (7.3 ns).
        st_write = Signal(name="u_st_write")
        m.d.sync += st_write.eq(u_fsm["U2S"] & ~ent.final)
        m.d.comb += st_wr.en.eq(st_write)   # in U3
        # acc_new holds from U2S until the divider has read it: loaded under per-lane copies of
        # U2S (set from U2F, which always moves to U2S for one cycle), not U2S's own fanout.
        for d in range(D):
            u2s_at = fanout_copy(1, f"u_u2s{d}")
            m.d.sync += u2s_at.eq(u_fsm["U2F"])
            with m.If(u2s_at):
                m.d.sync += acc_new[d].eq((acc_term[d] + p_term[d])[:AW])
        with m.If(u_fsm["U2S"]):
            m.d.sync += l_new.eq((l_term + ent.psum)[:LW])
            m.d.sync += u_fsm.go("U2S", "U3")
        with m.If(u_fsm["U3"]):
            with m.If(ent.final):
                with m.If(div_idle):
                    m.d.comb += div_start.eq(1)
                    m.d.sync += u_fsm.go("U3", "U0")
            with m.Else():
                m.d.sync += u_fsm.go("U3", "U0")

        # ---------------------------------------------------------------- divider
        # D restoring radix-2 dividers, one quotient bit a cycle: Wq = out_width iterations, then
        # the rounding step (a last iteration, below), SIGN and OUT: out_width + 3 cycles a row
        # (against at least Bc keys of B work per row and block). One trial subtraction and a
        # 2:1 select per bit and cycle: with a radix-4 digit (three subtractions side by side and
        # a priority select behind them) the divider was the core's critical path.
        Wq = self.out_width   # quotient bits (|y| fits)
        NW = max(AW - 1 + PB, Wq + 1)
        dv_num = [Signal(Wq, name=f"dv_num{d}") for d in range(D)]
        dv_rem = [Signal(LW + 1, name=f"dv_rem{d}") for d in range(D)]
        dv_q = [Signal(Wq, name=f"dv_q{d}") for d in range(D)]
        dv_neg = [Signal(name=f"dv_neg{d}") for d in range(D)]
        # Each divider's trial bit, registered beside its subtraction: the quotient register,
        # placed towards the output beat, was 4 ns of routing behind the chain. The quotient
        # shifts in the bit a cycle later (dv_qshift<d>, ITER a cycle late), and the rounding
        # step's bit (up) stays here for the output beat.
        dv_fit = [Signal(name=f"dv_fit{d}") for d in range(D)]
        # The divisor, a copy per divider: one register fanned out to the trial subtractions of
        # all D dividers, spread over the chip, was 2.3 ns of routing on the critical path.
        dv_l = [fanout_copy(LW, f"dv_l{d}") for d in range(D)]
        dv_e = [Signal(8, name=f"dv_e{i}") for i in range(nb)]
        dv_last = Signal()
        dv_tok = Signal(Wq, name="dv_tok")   # one-hot: the iteration (a counter's compare was on a path)
        dv_masked = Signal()
        dv_fsm = OneHot(["IDLE", "ITER", "ROUND", "SIGN", "OUT"], "divider")
        # The divider's operands are prepared a cycle after U2S, in registers loaded every cycle
        # (no enable): |acc|, its sign and l == 0. acc_new and l_new hold from U2S until the
        # divider has loaded these (the start reaches it two cycles after U2S at the earliest,
        # the next row's U2S is 9 cycles after U3). The magnitude's negation in front of the
        # divider's load (and the remainder's select) was the critical path.
        pre_neg = [Signal(name=f"dvp_neg{d}") for d in range(D)]
        pre_mag = [Signal(AW, name=f"dvp_mag{d}") for d in range(D)]
        pre_masked = Signal(name="dvp_masked")
        for d in range(D):
            a = acc_new[d]
            m.d.sync += [pre_neg[d].eq(a < 0), pre_mag[d].eq(Mux(a < 0, -a, a))]
        m.d.sync += pre_masked.eq(l_new == 0)
        # Each step compares X = 2 rem + (the next numerator bit) with l through one subtraction,
        # of 2 l + 1 from 2 X + low: its sign is that of X - l when low = 1 (the iterations). The
        # rounding step is one more iteration, with the numerator's bits all shifted out
        # (X = 2 rem) and low = 1 - neg: 2 (2 rem - l) - neg >= 0 exactly when 2 rem >= l + neg,
        # i.e. round half up: ties go up for y >= 0 and toward zero in magnitude for y < 0.
        # In IDLE the subtraction is made negative (the divisor gets a top bit above X's range),
        # so the remainder's select falls through to its load value: a separate IDLE / ITER
        # select behind the subtraction was one more LUT level. Each divider reads IDLE from a
        # copy of its own (dv_idle<d>, set on OUT -> IDLE, cleared by the start, like the state
        # bit): one flip-flop would fan out to some 600 loads. The remainder and the numerator
        # bits have no enable: after ITER the remainder is only read in ROUND and the numerator
        # bits not at all, so the steps they take in ROUND, SIGN and OUT are harmless.
        idle = dv_fsm["IDLE"]
        idle_at = [Signal(init=1, name=f"dv_idle{d}") for d in range(D)]
        # low, per divider, a register: 1 - neg in the rounding step, 1 otherwise (the ROUND
        # state bit fanned out to every divider's subtraction was the critical path)
        low_at = [Signal(init=1, name=f"dv_low{d}") for d in range(D)]
        m.d.sync += [low_at[d].eq(~(dv_fsm["ITER"] & dv_tok[Wq - 1] & dv_neg[d])) for d in range(D)]
        step_rem, step_num, fits_at = [], [], []
        for d in range(D):
            m.d.sync += idle_at[d].eq(Mux(idle_at[d], ~div_go, dv_fsm["OUT"] & self.o.ready))
            num = Signal(NW, name=f"dv_n{d}")
            m.d.comb += num.eq(pre_mag[d] << PB)
            load_rem = (num >> Wq)[:LW + 1]
            rem = dv_rem[d]
            x = Cat(dv_num[d][Wq - 1], rem[:LW])   # 2 rem + the next numerator bit
            low = low_at[d]
            diff = Signal(signed(LW + 4), name=f"dv_diff{d}")
            m.d.comb += diff.eq(Cat(low, x) - Cat(Const(1), dv_l[d], Const(0), idle_at[d]))
            fits = Signal(name=f"dv_fits{d}")
            m.d.comb += fits.eq(~diff[-1])
            fits_at.append(fits)
            step_rem.append(Mux(fits, diff[1:LW + 1], Mux(idle_at[d], load_rem, x[:LW])))
            step_num.append((dv_num[d] << 1)[:Wq])
            m.d.sync += [dv_rem[d].eq(step_rem[d]), dv_num[d].eq(Mux(idle_at[d], num[:Wq], step_num[d]))]
        # ITER, per divider (set by the start, cleared after the last iteration, like dv_idle<d>):
        # the quotient shifts in a bit at each iteration and holds otherwise (its old bits are
        # all shifted out by the Wq iterations, so it needs no clear)
        # The trial bit is held after the rounding step (ROUND, per divider: round_at<d>), so
        # that the output beat, formed at every edge, does not change while OUT waits.
        # Each divider's operands load under its own idle flag (the IDLE state bit as the enable
        # of all D divisors' and signs' bits reached some 350 loads).
        # The fully-masked flag, a copy per divider for its output lanes: one register at the
        # output select of all D lanes pulled the output registers together, far from some
        # of the dividers (the quotient bits then crossed the chip, 3.8 ns).
        masked_at = [fanout_copy(1, f"dv_masked{d}") for d in range(D)]
        for d in range(D):
            with m.If(idle_at[d]):
                m.d.sync += [dv_neg[d].eq(pre_neg[d]), dv_l[d].eq(l_new), masked_at[d].eq(pre_masked)]
        iter_at = [Signal(name=f"dv_iter{d}") for d in range(D)]
        round_at = [Signal(name=f"dv_round{d}") for d in range(D)]
        qshift_at = [Signal(name=f"dv_qshift{d}") for d in range(D)]
        for d in range(D):
            m.d.sync += [iter_at[d].eq(Mux(iter_at[d], ~dv_tok[Wq - 1], div_go)),
                         round_at[d].eq(iter_at[d] & dv_tok[Wq - 1]), qshift_at[d].eq(iter_at[d])]
            with m.If(iter_at[d] | round_at[d]):
                m.d.sync += dv_fit[d].eq(fits_at[d])
            with m.If(qshift_at[d]):
                m.d.sync += dv_q[d].eq(Cat(dv_fit[d], dv_q[d])[:Wq])
        with m.If(idle):
            # While idle the divider loads the prepared operands every cycle, so that the
            # start (a handshake with the update FSM) only changes the state: as the enable
            # of all these registers it was a critical path.
            m.d.comb += div_idle.eq(1)
            m.d.sync += [dv_masked.eq(pre_masked), dv_last.eq(ent.lastrow), dv_tok.eq(1)]
            m.d.sync += [dv_e[i].eq(e_new[i]) for i in range(nb)]
            with m.If(div_go):
                m.d.sync += dv_fsm.go("IDLE", "ITER")
        with m.If(dv_fsm["ITER"]):
            m.d.sync += dv_tok.eq(dv_tok << 1)
            with m.If(dv_tok[Wq - 1]):
                m.d.sync += dv_fsm.go("ITER", "ROUND")
        with m.If(dv_fsm["ROUND"]):
            # The rounding step: its bit (up) is in dv_fit<d> from SIGN on, and the quotient's
            # last bit reaches dv_q<d> at the end of this cycle.
            m.d.sync += dv_fsm.go("ROUND", "SIGN")
        # The output beat is formed at every edge, without an enable (the SIGN state as the
        # enable of all its bits was a critical path): its operands do not change in SIGN and
        # OUT, so the beat formed in SIGN holds while OUT waits for o.ready. The increment
        # applied with the sign is up ^ neg: -(q + up) = ~q + (1 - up), one adder with the sign
        # as its inversion. A fully masked row (l = 0, flagged when l was loaded) gives y = 0.
        ow = self.out_width
        for d in range(D):
            flip = Mux(dv_neg[d], Const((1 << ow) - 1, ow), Const(0, ow))
            m.d.sync += self.o.payload.y[d].eq(Mux(masked_at[d], 0, (dv_q[d][:ow] ^ flip) + (dv_fit[d] ^ dv_neg[d])))
        for i in range(nb):
            m.d.sync += self.o.payload.exp[i].eq(dv_e[i] + self.out_exp_offset)
        m.d.sync += [self.o.payload.masked.eq(dv_masked), self.o.payload.last.eq(dv_last)]
        with m.If(dv_fsm["SIGN"]):
            m.d.sync += self.o.valid.eq(1)
            m.d.sync += dv_fsm.go("SIGN", "OUT")
        with m.If(dv_fsm["OUT"]):
            with m.If(self.o.ready):
                m.d.sync += self.o.valid.eq(0)
                m.d.comb += job_done.eq(dv_last)
                m.d.sync += dv_fsm.go("OUT", "IDLE")
        with m.If(s_take & self.s.payload.last):
            m.d.comb += job_done.eq(1)
        return m
