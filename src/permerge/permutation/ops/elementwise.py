"""Elementwise ops (spaces pass or are tied by broadcasting) and reductions (the reduced
axes disappear: sums, means and maxima are symmetric in the units they reduce over)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx

from .base import Ax, Ctx, TensorValue, Value, dim_of, handles, shape

ACTIVATION_FUNCTIONS = {
    F.relu,
    F.gelu,
    F.silu,
    F.leaky_relu,
    F.elu,
    F.relu6,
    F.hardswish,
    F.hardsigmoid,
    F.mish,
    F.softplus,
    torch.relu,
    torch.tanh,
    torch.sigmoid,
}
ACTIVATION_METHODS = {"relu", "sigmoid", "tanh", "relu_"}
_UNARY_FUNCTIONS = {
    *ACTIVATION_FUNCTIONS,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.softmax,  # softmax / normalize along an axis commute with permuting that axis
    F.log_softmax,
    F.normalize,
    torch.softmax,
    torch.exp,
    torch.log,
    torch.sqrt,
    torch.rsqrt,
    torch.abs,
    torch.square,
    torch.erf,
    torch.clamp,
    torch.zeros_like,
    torch.ones_like,
    operator.neg,
}
_UNARY_METHODS = {
    *ACTIVATION_METHODS,
    "contiguous",
    "clone",
    "detach",
    "float",
    "half",
    "to",
    "type",
    "type_as",
    "softmax",
    "log_softmax",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "abs",
    "square",
    "neg",
    "clamp",
    "clip",
    "sigmoid_",
    "tanh_",
    "zero_",
}


@handles(*_UNARY_FUNCTIONS, *("." + m for m in _UNARY_METHODS))
def _unary(ctx: Ctx, node: fx.Node) -> Value:
    return ctx.tensor(node, node.args[0])


_BINARY = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.pow,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.pow,
    torch.maximum,
    torch.minimum,
    torch.where,
    torch.lerp,
}
_BINARY_METHODS = ("add", "sub", "mul", "div", "pow", "add_", "mul_", "masked_fill", "lerp")


@handles(*_BINARY, *("." + m for m in _BINARY_METHODS))
def _broadcast(ctx: Ctx, node: fx.Node) -> Value:
    """Broadcasting elementwise op: per output axis, the operands that span it are tied
    (a residual add makes one group of the stream; a gate ties both branches; a full-size
    fixed operand fixes the other). Operands of size 1 on an axis do not constrain it."""
    out_shape = shape(node)
    operands: list[tuple[TensorValue, tuple[int, ...]]] = []
    for a in (*node.args, *node.kwargs.values()):
        v = ctx.value(a) if isinstance(a, fx.Node) else None
        if isinstance(v, TensorValue):
            operands.append((v, shape(a)))
    axes: list[Ax] = []
    for j in range(len(out_shape)):
        spanning = []
        for v, s in operands:
            i = j - (len(out_shape) - v.ndim)
            if i >= 0 and s[i] == out_shape[j] and (s[i] != 1 or out_shape[j] == 1):
                spanning.append(v.axes[i])
        axes.append(ctx.tie(node, spanning) if spanning else Ax())
    return TensorValue(tuple(axes))


_REDUCTIONS = (
    torch.mean,
    torch.sum,
    torch.amax,
    torch.amin,
    torch.var,
    torch.std,
    torch.logsumexp,
    torch.prod,
)
_REDUCTION_METHODS = ("mean", "sum", "amax", "amin", "var", "std", "logsumexp", "prod")


@handles(*_REDUCTIONS, *("." + m for m in _REDUCTION_METHODS), torch.norm, ".norm")
def _reduce(ctx: Ctx, node: fx.Node) -> Value:
    """Reduced axes vanish (or stay as size 1, fixed); the others keep their spaces."""
    x = ctx.tensor(node, node.args[0])
    is_norm = node.target in (torch.norm, "norm")
    dims = ctx.arg(node, 2 if is_norm else 1, "dim")
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        reduced = set(range(x.ndim))
    else:
        reduced = {dim_of(int(d), x.ndim) for d in (dims if isinstance(dims, (list, tuple)) else (dims,))}
    keep = len(shape(node)) == x.ndim
    axes = [Ax() if i in reduced else a for i, a in enumerate(x.axes) if keep or i not in reduced]
    return TensorValue(tuple(axes))
