"""Alignment methods, registered by name: ``wm``, ``am``, ``ste`` (each module of this package
that uses ``@register`` is imported on first lookup; see :mod:`permerge.registry`)."""

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
