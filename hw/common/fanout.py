"""Register copies for a value with many far-apart loads.

Why: on an FPGA one flip-flop driving loads spread over the chip (the same operand at every
multiplier of a row of DSP blocks, one divisor at every divider) spends most of the cycle in
routing, and no placement fixes it. Copies of the register, each driving a share of the loads,
can each sit next to theirs. But synthesis merges registers with the same input and clock into
one (Yosys ``opt_merge``), so the copies are marked: :func:`fanout_copy` names a register
with the attribute :data:`FANOUT_COPY_ATTR`, and the synthesis flows (``sim/synth.py``) set
Yosys' ``keep`` on every flip-flop that drives such a wire before optimizing, which keeps them
apart. Simulation and behaviour are those of plain registers.
"""

from amaranth.hdl import Signal

__all__ = ["FANOUT_COPY_ATTR", "KEEP_FANOUT_COPIES_YOSYS", "fanout_copy"]

FANOUT_COPY_ATTR = "varaccel_fanout_copy"

# Yosys commands (after read_verilog) that set keep on the flip-flops driving a marked wire, and
# on their plain twins. opt_merge folds a twin without keep into a kept flip-flop with the same
# inputs (it keeps the kept one), so a copy whose twin is an ordinary register (the job's mode
# register and the loader's copy of it, say) would end up driving the twin's loads as well. So:
# proc turns the processes into flip-flop cells; opt_dff moves enables and resets into them and
# opt_merge (flip-flops excluded) shares identical logic, so that twins read the same nets;
# then every flip-flop whose D input is a marked flip-flop's gets keep too. synth_* runs these
# passes again later (no-ops for what is done here).
KEEP_FANOUT_COPIES_YOSYS = (
    "proc\nopt_expr\nopt_clean\nopt_dff\nopt_merge */t:$*dff* %n\nopt_clean\n"
    f"select -set fanout_copies a:{FANOUT_COPY_ATTR} %ci1 t:$*dff* %i\n"
    "setattr -set keep 1 @fanout_copies @fanout_copies %ci1:+[D] %co1:+[D] t:$*dff* %i %u\n")


def fanout_copy(shape, name):
    """A new ``Signal`` of ``shape`` marked as a register copy that synthesis keeps apart from
    its twins (assign it in a synchronous domain, as each of its twins)."""
    return Signal(shape, name=name, attrs={FANOUT_COPY_ATTR: 1})
