"""Merging: interpolation, BN reset / REPAIR, output ensemble, curves, N-model merge."""

from .bn import repair, reset_bn
from .core import MergeResult, align, aligned_copy, merge_models, methods
from .ensemble import OutputEnsemble
from .lerp import lerp_models, lerp_state
from .many import merge_many

__all__ = [
    "MergeResult",
    "OutputEnsemble",
    "align",
    "aligned_copy",
    "lerp_models",
    "lerp_state",
    "merge_many",
    "merge_models",
    "methods",
    "repair",
    "reset_bn",
]
