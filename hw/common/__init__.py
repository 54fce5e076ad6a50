"""Building blocks shared by the cores: pipeline control and parameter checks."""

from .pipeline import Pipeline
from .params import check_int, check_choice

__all__ = ["Pipeline", "check_int", "check_choice"]
