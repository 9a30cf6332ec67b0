"""Per-op handlers for spec derivation (see :mod:`permerge.permutation.ops.base`).

Importing this package registers every handler: ``layers`` (weights, norms, pooling,
padding), ``elementwise`` (activations, broadcasting, reductions), ``shape`` (reshapes,
indexing, cat/split) and ``attention`` (matmul, SDPA, MultiheadAttention, encoder layers).
Supporting a new op is one function decorated with ``@handles(op)``.
"""

from . import attention, elementwise, layers, shape  # noqa: F401  (register the handlers)
from .base import FIXED, Ax, Ctx, TensorValue, Value, handles, lookup

__all__ = ["FIXED", "Ax", "Ctx", "TensorValue", "Value", "handles", "lookup"]
