"""golden/accel: acceleration techniques as switches on golden.model hooks (see each module)."""

from .config import PRESETS, AccelConfig
from .hooks import AcceleratedHooks, OpCounter, StepStats, pivot_scores, select_pivots
from .infer import RunRecord, accelerated_infer, hw_sample
from .sparse import block_density, block_mask, step_mask, token_mask

__all__ = ["AccelConfig", "PRESETS", "AcceleratedHooks", "OpCounter", "StepStats", "pivot_scores",
           "select_pivots", "RunRecord", "accelerated_infer", "hw_sample", "block_mask", "block_density",
           "step_mask", "token_mask"]
