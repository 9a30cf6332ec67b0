"""Shape bookkeeping: reshapes, transposes, indexing, concatenation and splitting move the
channel axis around without mixing its units; where they would split or interleave the
units, the space is tied to ``FIXED`` (refused once a layer's units live there)."""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn

from .base import Ax, Ctx, TensorValue, Value, dim_of, fixed_value, handles, prod, shape


def _landing(out_shape: tuple[int, ...], before: int, units: int) -> tuple[int, int, int] | None:
    """The output axis that holds whole units, major-first: ``(axis, outer, block)``.

    ``before`` counts the elements ahead of the units in the flat layout (the axes before the
    channel axis times its own repeats). The output axis must start at an element boundary
    that divides ``before`` (what it merges in front are repeats of the units, e.g. heads)
    and hold a multiple of ``outer * units`` elements (what it merges behind makes blocks)."""
    acc = 1
    for e, n in enumerate(out_shape):
        if acc > before:
            return None
        if before % acc == 0 and n % ((before // acc) * units) == 0 and n > 1:
            return e, before // acc, n // ((before // acc) * units)
        acc *= n
    return None


def _split_heads(
    ctx: Ctx, node: fx.Node, ax: Ax, out_shape: tuple[int, ...], outer: int, size: int
) -> tuple[int, int] | None:
    """A layer's outputs split into ``repeats`` heads of ``units`` (``(N, T, H * d) -> (N, T,
    H, d)``, also ``3 * H`` for packed q/k/v): the output axis holding the units and the
    repeat count, after refining the layer's space; None if that is not the pattern."""
    src = node.args[0]
    if not isinstance(src, fx.Node) or len(src.users) != 1 or src.op not in ("call_module", "call_function"):
        return None
    acc = 1
    for e, n in enumerate(out_shape):
        if acc > outer * size:
            return None
        if acc % outer == 0 and acc > outer and size % (acc // outer) == 0 and n == size // (acc // outer):
            repeats = acc // outer
            if n > 1 and ctx.refine(ax, repeats):
                return e, repeats
            return None
        acc *= n
    return None


def reshape_value(ctx: Ctx, node: fx.Node, x: TensorValue, in_shape: tuple[int, ...]) -> TensorValue:
    """Any reshape (view, flatten, unflatten, squeeze, unsqueeze) from the traced shapes.

    A channel axis lands on the output axis that starts where it did: merging trailing axes
    into it makes blocks (a conv map flattened for a linear head), merging leading ones makes
    repeats (attention heads merged back), splitting them off again undoes that. A layer's
    outputs split into heads become a within-head permutation shared by all heads. Any other
    split or interleaving pins the space (ties it to ``FIXED``): those units stay in place."""
    out_shape = shape(node)
    out = [Ax() for _ in out_shape]
    for d, ax in enumerate(x.axes):
        if not ctx.live(ax) or in_shape[d] <= 1:
            continue
        units = in_shape[d] // (ax.block * ax.outer)
        land = _landing(out_shape, prod(in_shape[:d]) * ax.outer, units)
        if land is not None and not ctx.live(out[land[0]]):
            e, outer, block = land
            out[e] = Ax(ax.sid, block, outer)
            continue
        heads = _split_heads(ctx, node, ax, out_shape, prod(in_shape[:d]), in_shape[d])
        if heads is not None and not ctx.live(out[heads[0]]):
            out[heads[0]] = Ax(ax.sid)
            continue
        ctx.pin(ax)  # e.g. units interleaved with another axis: kept in place (the same function)
    return TensorValue(tuple(out))


_RESHAPES = (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.unflatten, nn.Flatten, nn.Unflatten)
_RESHAPE_METHODS = ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as")


@handles(*_RESHAPES, *("." + m for m in _RESHAPE_METHODS))
def _reshape(ctx: Ctx, node: fx.Node) -> Value:
    return reshape_value(ctx, node, ctx.tensor(node, node.args[0]), shape(node.args[0]))


@handles(torch.transpose, ".transpose", torch.swapaxes, ".swapaxes", ".permute", torch.permute, ".t", torch.movedim)
def _transpose(ctx: Ctx, node: fx.Node) -> Value:
    x = ctx.tensor(node, node.args[0])
    order = list(range(x.ndim))
    if node.target == "t":
        order = order[::-1]
    elif node.target in ("permute", torch.permute):
        dims: Any = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) else node.args[1:]
        dims = dims or ctx.arg(node, 1, "dims")
        order = [dim_of(int(d), x.ndim) for d in dims]
    elif node.target is torch.movedim:
        src, dst = (dim_of(int(ctx.arg(node, i, n)), x.ndim) for i, n in ((1, "source"), (2, "destination")))
        order.remove(src)
        order.insert(dst, src)
    else:
        a, b = (dim_of(int(ctx.arg(node, i, n)), x.ndim) for i, n in ((1, "dim0"), (2, "dim1")))
        order[a], order[b] = order[b], order[a]
    return TensorValue(tuple(x.axes[i] for i in order))


@handles(".size", ".dim", ".numel", len)
def _not_a_tensor(ctx: Ctx, node: fx.Node) -> Value:
    """Shape queries return ints, which carry no channels."""
    return None


@handles(getattr)
def _attribute(ctx: Ctx, node: fx.Node) -> Value:
    """``x.shape``, ``x.dtype``: not tensors. Tensor attributes (``x.T``) are not supported."""
    if node.meta.get("tensor_meta") is not None:
        for ax in ctx.tensor(node, node.args[0]).axes:
            ctx.fix(node, ax, f"tensor attribute .{node.args[1]}")
        return fixed_value(node.meta["tensor_meta"])
    return None


@handles(operator.getitem)
def _getitem(ctx: Ctx, node: fx.Node) -> Value:
    """Indexing a tuple picks an element; indexing a tensor with ints / slices / None keeps
    the spaces of the axes kept whole. Partial slices or single indices of a permuted axis
    would pick units by position: refused."""
    base, index = ctx.value(node.args[0]), node.args[1]
    if isinstance(base, tuple):
        return base[index] if isinstance(index, (int, slice)) else None
    if not isinstance(base, TensorValue):
        return fixed_value(node.meta.get("tensor_meta"))
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in items):
        for ax in base.axes:
            ctx.fix(node, ax, "indexing with a tensor")
        return fixed_value(node.meta.get("tensor_meta"))
    if Ellipsis in items:
        k = items.index(Ellipsis)
        fill = base.ndim - sum(1 for i in items if i is not None and i is not Ellipsis)
        items = items[:k] + [slice(None)] * fill + items[k + 1 :]
    in_shape, out, d = shape(node.args[0]), [], 0
    for i in items:
        if i is None:
            out.append(Ax())
            continue
        ax = base.axes[d]
        whole = isinstance(i, slice) and len(range(*i.indices(in_shape[d]))) == in_shape[d] and (i.step or 1) == 1
        if whole:
            out.append(ax)
        else:
            ctx.fix(node, ax, "indexing part of a permuted channel axis")
            if isinstance(i, slice):
                out.append(Ax())
        d += 1
    return TensorValue((*out, *base.axes[d:]))


def _dim_arg(ctx: Ctx, node: fx.Node, i: int, ndim: int, default: int = 0) -> int:
    d = ctx.arg(node, i, "dim", default)
    return dim_of(int(d), ndim)


@handles(torch.cat, torch.concat, torch.stack)
def _cat(ctx: Ctx, node: fx.Node) -> Value:
    """Joining along an axis without permuted units ties the other axes; along a channel
    axis it would need a separate permutation per part: refused."""
    parts = [ctx.tensor(node, t) for t in ctx.arg(node, 0, "tensors")]
    ndim = parts[0].ndim
    stack = node.target is torch.stack
    d = _dim_arg(ctx, node, 1, ndim + 1 if stack else ndim)
    axes: list[Ax] = []
    for j in range(ndim):
        col = [p.axes[j] for p in parts]
        if j == d and not stack:
            for ax in col:
                ctx.fix(node, ax, "concatenates along a permuted channel axis")
            axes.append(Ax())
        else:
            axes.append(ctx.tie(node, col))
    if stack:
        axes.insert(d, Ax())
    return TensorValue(tuple(axes))


@handles(torch.chunk, ".chunk", torch.split, ".split", torch.unbind, ".unbind", torch.tensor_split, ".tensor_split")
def _split(ctx: Ctx, node: fx.Node) -> Value:
    """Pieces along an axis without permuted units keep the other axes' spaces."""
    x = ctx.tensor(node, node.args[0])
    unbind = node.target in (torch.unbind, "unbind")
    d = _dim_arg(ctx, node, 1 if unbind else 2, x.ndim)
    ctx.fix(node, x.axes[d], "splits a permuted channel axis")
    metas = node.meta.get("tensor_meta") or ()
    piece = x.axes[:d] + x.axes[d + 1 :] if unbind else x.axes[:d] + (Ax(),) + x.axes[d + 1 :]
    return tuple(TensorValue(piece) for _ in metas)


@handles(".expand", ".expand_as", torch.broadcast_to, ".broadcast_to", ".repeat", ".tile", torch.tile)
def _expand(ctx: Ctx, node: fx.Node) -> Value:
    """Broadcast copies: axes that keep their size keep their space; copied axes are fixed
    (a class token expanded over the batch); tiling a permuted axis is refused."""
    x = ctx.tensor(node, node.args[0])
    in_shape, out_shape = shape(node.args[0]), shape(node)
    lead = len(out_shape) - x.ndim
    axes = [Ax() for _ in range(lead)]
    for i, ax in enumerate(x.axes):
        if in_shape[i] == out_shape[lead + i]:
            axes.append(ax)
        else:
            if in_shape[i] != 1:
                ctx.fix(node, ax, "tiles a permuted channel axis")
            axes.append(Ax())
    return TensorValue(tuple(axes))
