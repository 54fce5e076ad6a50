"""Core registry and deterministic Verilog + FuseSoC emission of every varaccel core."""

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from amaranth.back import verilog

from .axis import AXIStreamTop

__all__ = ["CoreSpec", "CORES", "core_spec", "parse_params", "build_core", "emit_core", "params_tag",
           "EmittedCore"]


@dataclass(frozen=True)
class CoreSpec:
    """How to build one core: ``factory`` (``"module:Class"``) called with the parameters."""

    name: str
    factory: str
    defaults: dict
    summary: str

    def cls(self):
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)


CORES = {spec.name: spec for spec in [
    CoreSpec("lutmul", "hw.fp.lutmul:LUTMultiplier",
             {"fmt_a": "e2m1", "fmt_b": "e2m1", "lanes": 1, "signmag": False, "table_max_bits": 6,
              "method": "lut"},
             "low-bit FP x low-bit FP, magnitude from a lookup table, exact fixed-point product"),
    CoreSpec("quantize", "hw.fp.quantizer:Quantizer",
             {"fmt": "e2m1", "in_format": "f32", "lanes": 1, "mx": False, "block": 32},
             "float16/bfloat16/float32 -> low-bit FP codes, optional MX block mode with E8M0 scale"),
    CoreSpec("dot", "hw.fp.dot:DotProductUnit",
             {"fmt_a": "e2m1", "fmt_b": "e2m1", "lanes": 32, "block": 32, "acc_frac": 24, "acc_width": 48},
             "exact MX dot product: LUT multipliers, adder tree, block scales, fixed-point accumulator"),
    CoreSpec("sort", "hw.sort.radix:RadixSorter",
             {"key_bits": 16, "radix_bits": 4, "max_len": 4096, "lanes": 1, "out_lanes": 1},
             "LSD radix sort of a packet of keys, emits (key, index) in order"),
    CoreSpec("topk", "hw.sort.topk:TopK",
             {"key_bits": 16, "radix_bits": 4, "max_len": 4096, "lanes": 1, "banks": 0},
             "radix select of the k largest keys, emits k indices in descending key order"),
    CoreSpec("attention", "hw.attn.core:AttentionCore", {"D": 64, "block": 32, "Br": 64, "Bc": 64, "lanes": 0, "qk_fmt": "e4m3", "v_fmt": "e4m3", "dot_frac": 16, "dot_width": 40, "const_bits": 16, "score_frac": 10, "score_width": 24, "exp_bits": 8, "p_bits": 15, "l_width": 32, "v_guard": 2, "acc_frac": 4, "acc_width": 40, "max_kblocks": 64, "len_bits": 16}, "attention over a KV cache: MX q.k scores, online softmax, block-sparse skipping, exact divide"),
]}


def core_spec(name):
    """The :class:`CoreSpec` of core ``name``; ``ValueError`` naming the known cores otherwise."""
    if name not in CORES:
        raise ValueError(f"core must be one of {sorted(CORES)}, not {name!r}")
    return CORES[name]


def _coerce(name, text, default):
    if isinstance(default, bool):
        lowered = str(text).lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"parameter {name} must be a boolean, not {text!r}")
    if isinstance(default, int):
        try:
            return int(text, 0) if isinstance(text, str) else int(text)
        except ValueError:
            raise ValueError(f"parameter {name} must be an integer, not {text!r}") from None
    return str(text)


def parse_params(core, overrides=()):
    """Defaults of ``core`` updated by ``NAME=VALUE`` strings (or a dict); unknown names raise."""
    spec = core_spec(core)
    params = dict(spec.defaults)
    items = overrides.items() if isinstance(overrides, dict) else (o.split("=", 1) for o in overrides)
    for item in items:
        if len(item) != 2:
            raise ValueError(f"--param must be NAME=VALUE, not {item!r}")
        name, value = item
        if name not in params:
            raise ValueError(f"parameter {name!r} is not a parameter of {core}; "
                             f"known: {', '.join(sorted(params))}")
        params[name] = _coerce(name, value, spec.defaults[name])
    return params


def build_core(core, params=None):
    """Instantiate the Amaranth component of ``core`` with ``params`` (defaults filled in)."""
    full = parse_params(core, params or {})
    return core_spec(core).cls()(**full)


def params_tag(core, params):
    """Short stable tag of a parameter set, used in build folder names."""
    full = parse_params(core, params or {})
    text = json.dumps(full, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


# Verilator -Wall categories that flag how Amaranth/Yosys write Verilog, not design faults:
# every case has a default assignment before it (CASEINCOMPLETE, PROCASSINIT), struct fields
# of payloads are declared whole and used in parts (UNUSEDSIGNAL), operands are widened or cut
# by explicit slices (WIDTHEXPAND/WIDTHTRUNC), and submodules share the file (DECLFILENAME).
# Everything else -Wall checks (latches, multiple drivers, combinational loops, blocking
# assignments in sequential logic, ...) stays on; tests/test_lint.py runs it on every core.
LINT_HEADER = ("/* verilator lint_off CASEINCOMPLETE */\n/* verilator lint_off PROCASSINIT */\n"
               "/* verilator lint_off UNUSEDSIGNAL */\n/* verilator lint_off WIDTHEXPAND */\n"
               "/* verilator lint_off WIDTHTRUNC */\n/* verilator lint_off DECLFILENAME */\n")


@dataclass
class EmittedCore:
    """What :func:`emit_core` wrote: Verilog, FuseSoC file, and the stream port description."""

    core: str
    top: str
    params: dict
    verilog: Path
    core_file: Path
    ports_json: Path
    stream_ports: list = field(default_factory=list)
    other_ports: list = field(default_factory=list)


def _fusesoc_core(core, top, params, verilog_name, summary):
    param_lines = "".join(f"#   {k} = {v}\n" for k, v in sorted(params.items()))
    return (
        "CAPI=2:\n"
        f"# Generated by varaccel from hw/ with parameters:\n{param_lines}"
        f"name: varaccel:cores:{top}:0.1.0\n"
        f"description: \"{summary}\"\n"
        "filesets:\n"
        "  rtl:\n"
        "    files:\n"
        f"      - {verilog_name}\n"
        "    file_type: verilogSource\n"
        "targets:\n"
        "  default:\n"
        "    filesets: [rtl]\n"
        f"    toplevel: {top}\n"
        "  lint:\n"
        "    default_tool: verilator\n"
        "    filesets: [rtl]\n"
        "    tools:\n"
        "      verilator:\n"
        "        mode: lint-only\n"
        "        verilator_options: [-Wall]\n"
        f"    toplevel: {top}\n"
    )


def emit_core(core, params=None, out_dir="build/verilog", top=None, target=None):
    """Emit ``core`` as Verilog into ``out_dir`` with a FuseSoC ``.core`` and a ports JSON.

    The top module is ``top`` (default ``varaccel_<core>``), wrapped by :class:`AXIStreamTop`
    so its streams carry AXI4-Stream names. Emission is deterministic (``emit_src=False``).

    ``target``: ``None`` (``varaccel verilog``, simulation: portable Verilog) or a
    :class:`~hw.common.ram.SynthTarget`, handed to elaboration as the ``platform``, so that a
    vendor flow gets vendor primitives where inference falls short (``sim/synth.py`` passes
    ``SynthTarget("ecp5")``: DP16KD block RAMs with their output register). Both are the same
    cycle for cycle.
    """
    full = parse_params(core, params or {})
    top = top or f"varaccel_{core}"
    component = core_spec(core).cls()(**full)
    wrapper = AXIStreamTop(component)
    text = LINT_HEADER + verilog.convert(wrapper, name=top, platform=target, ports=wrapper.ports, emit_src=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    v_path = out / f"{top}.v"
    v_path.write_text(text)
    core_path = out / f"{top}.core"
    core_path.write_text(_fusesoc_core(core, top, full, v_path.name, core_spec(core).summary))
    other = [{"name": p.name, "width": len(p)} for p in wrapper.ports
             if not any(p.name.startswith(sp.prefix + "_") for sp in wrapper.stream_ports)]
    description = {
        "core": core, "top": top, "params": full,
        "streams": [{**asdict(sp), "fields": [asdict(f) for f in sp.fields]} for sp in wrapper.stream_ports],
        "other_ports": other,
    }
    json_path = out / f"{top}.ports.json"
    json_path.write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    return EmittedCore(core, top, full, v_path, core_path, json_path, description["streams"], other)
