"""AccelConfig: which acceleration techniques are on, with their parameters, and the presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

__all__ = ["AccelConfig", "PRESETS"]

_QUANT_FORMATS = ("e2m1", "e2m3", "e3m2")
_ATTN_FORMATS = ("e2m1", "e2m3", "e3m2", "e4m3", "e5m2")


def _layer_range(frac: Tuple[float, float], depth: int) -> range:
    """Blocks b with floor(lo * depth) <= b < ceil(hi * depth)."""
    lo, hi = frac
    return range(int(math.floor(lo * depth)), min(depth, int(math.ceil(hi * depth))))


@dataclass(frozen=True)
class AccelConfig:
    """Switches and parameters of every technique of golden/accel (all off = the dense model).

    Scale sets are given relative to the END of the schedule ("the last n scales"), so one
    config fits the 4-scale tiny model and the 10-scale 256 px schedule alike; block ranges
    are fractions of the depth (blocks ``floor(lo*depth) <= b < ceil(hi*depth)``).

    FastVAR cached token pruning (``prune``)
        ``prune_keep``: keep ratios of the last ``len(prune_keep)`` scales, in schedule order
        (default (0.5, 0.25): the second-to-last scale keeps 50 %, the last 25 %, the HART
        setting of FastVAR); ``prune_layers``: block range (default (0.1, 0.9), the middle
        layers; for d30 that is blocks 3..26, close to FastVAR's 3..27 for Infinity).
    Block-sparse attention (``sparse``)
        ``block_q``/``block_k`` tokens per tile, ``window`` (Chebyshev radius, in tokens of the
        key's scale, around the query's position mapped onto that scale), ``sink_scales`` (keys of
        scales < sink_scales are always kept). See :mod:`golden.accel.sparse`.
    Token aggregation (``aggregate``)
        at the last ``agg_last`` scales, in blocks ``agg_layers``: windows of ``agg_window`` x
        ``agg_window`` tokens; a token merges into its window's top-left representative when their
        cosine similarity exceeds ``agg_threshold``. See :mod:`golden.accel.hooks`.
    Dynamic bypass (``bypass``)
        at the last ``bypass_last`` scales: a token whose relative update at block b (b >=
        floor(bypass_from_layer * depth)) is below ``bypass_threshold`` skips blocks b+1.. of
        the step.
    Parallel decoding (``parallel_last`` >= 2)
        the last ``parallel_last`` scales are predicted in one forward pass (needs the driver
        :func:`golden.accel.infer.accelerated_infer`).
    Low-bit FP (``quant`` in e2m1 / e2m3 / e3m2)
        every linear of the transformer blocks (``quant_scope="blocks"``; ``"all"`` adds the
        AdaLN, head and word-embedding linears) through ``mx_matmul`` with MX blocks of
        ``quant_block``; ``quant_dual_fc2``: FPQVAR dual format (e1m2 negatives / e2m1
        positives) for the fc2 input; ``quant_hadamard``: group-wise Hadamard group size (0 =
        off; applied where the group divides K, never to a dual-format input);
        ``quant_attn``: MX fake quantization of q, k, v along the head dim (e.g. "e4m3").
    Hardware sampling (``hw_sampling``)
        top-k / top-p through ``golden.numerics.sort.topk_topp_mask`` (needs the driver); the
        top-k itself through the hooks' backend (:mod:`golden.accel.backend`).
    Attention on the attention core (``attn_core_last`` >= 1)
        at the last ``attn_core_last`` scales, in the blocks ``attn_core_blocks`` (block indices),
        every head's attention goes through the attention core's bit-exact numerics
        (``golden.numerics.attention``, default AttnNumerics formats) via the hooks' backend,
        with query tiles of ``block_q`` and key blocks of ``block_k`` tokens: the core's block
        mask is the tile cover of the token mask (:func:`golden.accel.backend.core_tile_mask`).
    """

    prune: bool = False
    prune_keep: Tuple[float, ...] = (0.5, 0.25)
    prune_layers: Tuple[float, float] = (0.1, 0.9)

    sparse: bool = False
    block_q: int = 16
    block_k: int = 16
    window: int = 1
    sink_scales: int = 2

    aggregate: bool = False
    agg_threshold: float = 0.95
    agg_window: int = 2
    agg_last: int = 2
    agg_layers: Tuple[float, float] = (0.0, 1.0)

    bypass: bool = False
    bypass_threshold: float = 0.05
    bypass_last: int = 3
    bypass_from_layer: float = 0.25

    parallel_last: int = 0

    quant: Optional[str] = None
    quant_block: int = 32
    quant_dual_fc2: bool = False
    quant_hadamard: int = 0
    quant_attn: Optional[str] = None
    quant_scope: str = "blocks"

    hw_sampling: bool = False

    attn_core_last: int = 0
    attn_core_blocks: Tuple[int, ...] = (0,)

    def __post_init__(self):
        object.__setattr__(self, "prune_keep", tuple(float(r) for r in self.prune_keep))
        object.__setattr__(self, "prune_layers", tuple(float(r) for r in self.prune_layers))
        object.__setattr__(self, "agg_layers", tuple(float(r) for r in self.agg_layers))
        blocks = tuple(self.attn_core_blocks)
        if all(float(b) == int(b) for b in blocks):  # overrides parse tuples as floats
            object.__setattr__(self, "attn_core_blocks", tuple(int(b) for b in blocks))
        self.validate()

    def validate(self) -> None:
        def need(ok, name, allowed):
            if not ok:
                raise ValueError(f"AccelConfig.{name}={getattr(self, name)!r} is invalid: must be {allowed}")

        need(all(0.0 < r <= 1.0 for r in self.prune_keep), "prune_keep", "a tuple of ratios in (0, 1]")
        for n in ("prune_layers", "agg_layers"):
            v = getattr(self, n)
            need(len(v) == 2 and 0.0 <= v[0] <= v[1] <= 1.0, n, "(lo, hi) with 0 <= lo <= hi <= 1")
        for n in ("block_q", "block_k", "agg_window", "quant_block"):
            need(isinstance(getattr(self, n), int) and getattr(self, n) >= 1, n, "an integer >= 1")
        for n in ("window", "sink_scales", "agg_last", "bypass_last", "quant_hadamard", "attn_core_last"):
            need(isinstance(getattr(self, n), int) and getattr(self, n) >= 0, n, "an integer >= 0")
        need(self.quant_hadamard == 0 or (self.quant_hadamard & (self.quant_hadamard - 1)) == 0,
             "quant_hadamard", "0 or a power of two")
        need(isinstance(self.parallel_last, int) and (self.parallel_last == 0 or self.parallel_last >= 2),
             "parallel_last", "0 (off) or an integer >= 2")
        need(-1.0 <= self.agg_threshold <= 1.0, "agg_threshold", "a cosine in [-1, 1]")
        need(self.bypass_threshold >= 0.0, "bypass_threshold", ">= 0")
        need(0.0 <= self.bypass_from_layer <= 1.0, "bypass_from_layer", "in [0, 1]")
        need(self.quant is None or self.quant in _QUANT_FORMATS, "quant", f"None or one of {_QUANT_FORMATS}")
        need(self.quant_attn is None or self.quant_attn in _ATTN_FORMATS, "quant_attn",
             f"None or one of {_ATTN_FORMATS}")
        need(self.quant_scope in ("blocks", "all"), "quant_scope", "'blocks' or 'all'")
        need(all(isinstance(b, int) and b >= 0 for b in self.attn_core_blocks), "attn_core_blocks",
             "a tuple of block indices >= 0")

    def attn_core_applies(self, si: int, block_idx: int, num_scales: int) -> bool:
        """Whether the attention of scale ``si`` in block ``block_idx`` runs on the attention core."""
        return (self.attn_core_last > 0 and si >= num_scales - self.attn_core_last
                and block_idx in self.attn_core_blocks)

    # ------------------------------------------------------------------ derived, per model
    def prune_ratio(self, si: int, num_scales: int) -> float:
        """Keep ratio of scale ``si`` (1.0 where pruning does not apply)."""
        if not self.prune:
            return 1.0
        off = si - (num_scales - len(self.prune_keep))
        return self.prune_keep[off] if 0 <= off < len(self.prune_keep) else 1.0

    def prune_blocks(self, depth: int) -> range:
        return _layer_range(self.prune_layers, depth) if self.prune else range(0)

    def agg_applies(self, si: int, block_idx: int, num_scales: int, depth: int) -> bool:
        return (self.aggregate and si >= num_scales - self.agg_last
                and block_idx in _layer_range(self.agg_layers, depth))

    def bypass_applies(self, si: int, num_scales: int) -> bool:
        return self.bypass and si >= num_scales - self.bypass_last

    def bypass_first_block(self, depth: int) -> int:
        return int(math.floor(self.bypass_from_layer * depth))

    def step_groups(self, num_scales: int):
        """Scale indices decoded by each forward pass: singletons, then (with parallel decoding)
        the last ``parallel_last`` scales together (the group never includes scale 0)."""
        p = min(self.parallel_last, num_scales - 1)
        if p < 2:
            return [(si,) for si in range(num_scales)]
        return [(si,) for si in range(num_scales - p)] + [tuple(range(num_scales - p, num_scales))]

    @property
    def is_dense(self) -> bool:
        """True when no technique is switched on (the hooks then reproduce the dense model)."""
        return not (self.prune or self.sparse or self.aggregate or self.bypass or self.parallel_last
                    or self.quant or self.quant_attn or self.hw_sampling or self.attn_core_last)

    def replace(self, **kw) -> "AccelConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def enabled(self) -> Tuple[str, ...]:
        """Short names of the techniques switched on."""
        out = []
        for flag, name in (("prune", "fastvar"), ("sparse", "sparse"), ("aggregate", "aggregate"),
                           ("bypass", "bypass"), ("hw_sampling", "hwsample")):
            if getattr(self, flag):
                out.append(name)
        if self.parallel_last:
            out.append(f"parallel{self.parallel_last}")
        if self.attn_core_last:
            out.append(f"attncore{self.attn_core_last}")
        if self.quant:
            out.append(f"mx-{self.quant}" + ("+dual" if self.quant_dual_fc2 else "")
                       + (f"+ght{self.quant_hadamard}" if self.quant_hadamard else "")
                       + (f"+attn-{self.quant_attn}" if self.quant_attn else ""))
        return tuple(out) or ("dense",)

    # ------------------------------------------------------------------ presets / parsing
    @classmethod
    def base(cls, var_cfg=None) -> "AccelConfig":
        """All techniques off, with size-dependent defaults: tiles of 16 tokens, window 1 and two
        sink scales for the official schedules (tile density of the 256 px schedule's last four
        steps 0.83 / 0.65 / 0.51 / 0.41; with 64-token tiles it stays >= 0.7); tiles of 4 and one
        sink scale for small maps (last scale <= 8, e.g. the tiny preset)."""
        if var_cfg is not None and var_cfg.patch_nums[-1] <= 8:
            return cls(block_q=4, block_k=4, window=1, sink_scales=1)
        return cls()

    @classmethod
    def parse(cls, spec, var_cfg=None) -> "AccelConfig":
        """Parse a comma list of preset names and ``field=value`` overrides, applied left to right
        on :meth:`base`: ``"fastvar,sparse,mxfp4"``, ``"sparse,window=3,block_q=8"``. An
        AccelConfig passes through; None or "" is "dense"."""
        if isinstance(spec, AccelConfig):
            return spec
        cfg = cls.base(var_cfg)
        if spec is None:
            return cfg
        if not isinstance(spec, str):
            raise ValueError(f"accel spec must be a string or AccelConfig, got {spec!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            if "=" in item:
                k, v = (s.strip() for s in item.split("=", 1))
                if k not in fields:
                    raise ValueError(f"accel override {k!r} is unknown: must be one of {sorted(fields)}")
                cfg = cfg.replace(**{k: _convert(getattr(cfg, k), k, v)})
            elif item in PRESETS:
                cfg = cfg.replace(**PRESETS[item])
            else:
                raise ValueError(f"accel preset {item!r} is unknown: must be one of {sorted(PRESETS)} "
                                 f"or a field=value override")
        return cfg


def _convert(current, name, text):
    if text.lower() in ("none", "null"):
        return None
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"accel override {name}={text!r}: must be a boolean")
    if isinstance(current, tuple):
        return tuple(float(t) for t in text.replace("/", ":").split(":"))
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    return text


#: Preset name -> fields it sets. "turbo" is our VAR-Turbo-style aggregation + bypass;
#: "all" switches on everything.
PRESETS = {
    "dense": {},
    "fastvar": {"prune": True},
    "sparse": {"sparse": True},
    "aggregate": {"aggregate": True},
    "bypass": {"bypass": True},
    "turbo": {"aggregate": True, "bypass": True},
    "parallel": {"parallel_last": 2},
    "hwsample": {"hw_sampling": True},
    "attncore": {"attn_core_last": 1},
    "mxfp4": {"quant": "e2m1", "quant_dual_fc2": True, "quant_attn": "e4m3"},
    "mxfp6": {"quant": "e2m3", "quant_dual_fc2": False, "quant_attn": "e4m3"},
    "ght": {"quant_hadamard": 128},
    "all": {"prune": True, "sparse": True, "aggregate": True, "bypass": True, "parallel_last": 2,
            "hw_sampling": True, "quant": "e2m1", "quant_dual_fc2": True, "quant_attn": "e4m3"},
}
