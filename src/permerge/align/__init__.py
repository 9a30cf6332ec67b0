"""Alignment methods, registered by name: ``wm``, ``am``, ``ste``."""

from . import activation_matching, ste  # noqa: F401  (registers the methods)
from .registry import Alignment, AlignMethod, AlignProblem, available, get_method, register
from .weight_matching import WeightMatcher, l2_distance, weight_matching

__all__ = [
    "AlignMethod",
    "AlignProblem",
    "Alignment",
    "WeightMatcher",
    "available",
    "get_method",
    "l2_distance",
    "register",
    "weight_matching",
]
