"""Dataset reduction: a few images per class that stand in for a dataset when merging.

Coresets keep real samples (``random``, ``herding``, ``kcenter``, ``el2n``,
``uncertainty``); condensation synthesises images (``dc``, ``dsa``, ``dm``). One entry
point, :func:`reduce_dataset`; every method is one file in ``reduce/methods`` registered
with :func:`register_method`. See docs/REDUCTION.md.
"""

from .api import reduce_dataset
from .reduced_set import ReducedSet, load_reduced, read_reduced
from .registry import MethodResult, ReduceContext, available_methods, get_method, register_method

__all__ = [
    "MethodResult",
    "ReduceContext",
    "ReducedSet",
    "available_methods",
    "get_method",
    "load_reduced",
    "read_reduced",
    "reduce_dataset",
    "register_method",
]
