"""Attention: matrix products, ``scaled_dot_product_attention``, ``nn.MultiheadAttention``
and ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder``.

The residual stream (the embedding axis every block reads and writes) is one group. A
contraction ties the two contracted axes (``q @ k^T`` sums over q's and k's units alike, so
one permutation of both leaves every score unchanged): single-head attention written by
hand gets a q/k group and a v/out group. Projections split into heads get a *within-head*
group: one permutation of the ``head_dim`` units applied in every head (``AxisRef.outer``
= heads; 3 x heads for a packed q/k/v projection, whose q, k and v then share it), tied
through ``scaled_dot_product_attention`` and the merge of the heads into the output
projection. ``nn.MultiheadAttention`` gets the same from its packed ``in_proj_weight``.
Whole heads are not permuted (the order of the heads stays as it is).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .base import Ax, Ctx, TensorValue, Value, handles, shape


def _batch_axes(ctx: Ctx, node: fx.Node, operands: list[TensorValue], nbatch: int) -> list[Ax]:
    """Tie the broadcast batch axes (all but the last two) of the operands."""
    out: list[Ax] = []
    for j in range(nbatch):
        col = [v.axes[j - (nbatch - (v.ndim - 2))] for v in operands if j - (nbatch - (v.ndim - 2)) >= 0]
        out.append(ctx.tie(node, col) if col else Ax())
    return out


@handles(torch.matmul, operator.matmul, torch.bmm, ".matmul", ".bmm")
def _matmul(ctx: Ctx, node: fx.Node) -> Value:
    """(..., n, k) @ (..., k, m): the contracted axes are tied; n and m keep their spaces.
    A weight read directly (``x @ self.w``) produces the output units."""
    a, b = ctx.tensor(node, node.args[0]), ctx.tensor(node, node.args[1])
    if a.ndim < 2 or b.ndim < 2:
        for ax in (*a.axes, *b.axes):
            ctx.fix(node, ax, "matrix-vector product over a permuted axis")
        return TensorValue(tuple(Ax() for _ in shape(node)))
    ctx.tie(node, [a.axes[-1], b.axes[-2]])
    out_m = b.axes[-1]
    w = node.args[1]
    if isinstance(w, fx.Node) and w.op == "get_attr":
        ctx.mark_produced(out_m, str(w.target))
    nbatch = len(shape(node)) - 2
    return TensorValue((*_batch_axes(ctx, node, [a, b], nbatch), a.axes[-2], out_m))


@handles(F.linear)
def _functional_linear(ctx: Ctx, node: fx.Node) -> Value:
    """``F.linear(x, self.w, self.b)`` with parameters read directly."""
    x, w = ctx.tensor(node, node.args[0]), ctx.tensor(node, ctx.arg(node, 1, "weight"))
    bias = ctx.arg(node, 2, "bias")
    ctx.tie(node, [x.axes[-1], w.axes[1]])
    out = w.axes[0]
    wn = ctx.arg(node, 1, "weight")
    if isinstance(wn, fx.Node) and wn.op == "get_attr":
        ctx.mark_produced(out, str(wn.target).rsplit(".", 1)[0])
    if isinstance(bias, fx.Node):
        out = ctx.tie(node, [out, ctx.tensor(node, bias).axes[0]])
    return x.with_axis(x.ndim - 1, out)


@handles(F.scaled_dot_product_attention)
def _sdpa(ctx: Ctx, node: fx.Node) -> Value:
    """softmax(q k^T / sqrt(d)) v: q's and k's feature axes are tied (contracted), the token
    axes stay fixed, batch/head axes are tied, and the output carries v's feature space."""
    q, k, v = (ctx.tensor(node, ctx.arg(node, i, n)) for i, n in enumerate(("query", "key", "value")))
    ctx.tie(node, [q.axes[-1], k.axes[-1]])
    for ax in (q.axes[-2], k.axes[-2], v.axes[-2]):
        ctx.fix(node, ax, "attention over a permuted token axis")
    nbatch = len(shape(node)) - 2
    return TensorValue((*_batch_axes(ctx, node, [q, k, v], nbatch), Ax(), v.axes[-1]))


def bind_mha(ctx: Ctx, node: fx.Node, mod: nn.MultiheadAttention, name: str, q: Ax, k: Ax, v: Ax, out: Ax) -> None:
    """The residual-facing axes of an attention module: the projections' input axes and
    the output projection's outputs. The heads inside stay in place."""
    for ax in (q, k, v, out):
        if ctx.live(ax) and ax.block != 1:
            raise ctx.refuse(node, "attention over a flattened conv map")
    if mod._qkv_same_embed_dim:
        ctx.bind(ctx.tie(node, [q, k, v]), f"{name}.in_proj_weight", 1)
        if mod.bias_k is None:  # within-head units: one permutation for q, k, v of every head
            heads = mod.num_heads
            inner = ctx.produce(f"{name}.in_proj")
            ctx.bind(inner, f"{name}.in_proj_weight", 0, outer=3 * heads)
            if mod.in_proj_bias is not None:
                ctx.bind(inner, f"{name}.in_proj_bias", 0, outer=3 * heads)
            ctx.bind(inner, f"{name}.out_proj.weight", 1, outer=heads)
    else:
        for ax, p in ((q, "q"), (k, "k"), (v, "v")):
            ctx.bind(ax, f"{name}.{p}_proj_weight", 1)
    ctx.bind(out, f"{name}.out_proj.weight", 0)
    if mod.out_proj.bias is not None:
        ctx.bind(out, f"{name}.out_proj.bias", 0)


@handles(nn.MultiheadAttention)
def _mha(ctx: Ctx, node: fx.Node) -> Value:
    mod = ctx.module(node)
    assert isinstance(mod, nn.MultiheadAttention)
    q, k, v = (ctx.tensor(node, ctx.arg(node, i, n)) for i, n in enumerate(("query", "key", "value")))
    name = str(node.target)
    out = ctx.produce(f"{name}.out_proj")
    bind_mha(ctx, node, mod, name, q.axes[-1], k.axes[-1], v.axes[-1], out)
    weights = node.meta.get("tensor_meta")
    second = TensorValue(tuple(Ax() for _ in weights[1].shape)) if weights and weights[1] is not None else None
    return (TensorValue((*(Ax() for _ in q.axes[:-1]), out)), second)


def bind_encoder_layer(ctx: Ctx, node: fx.Node, layer: nn.TransformerEncoderLayer, name: str, s: Ax) -> None:
    """Pre- or post-norm block: attention and MLP both read and write the residual stream
    ``s``; the MLP's hidden units are a new group."""
    bind_mha(ctx, node, layer.self_attn, f"{name}.self_attn", s, s, s, s)
    hidden = ctx.produce(f"{name}.linear1")
    ctx.bind(s, f"{name}.linear1.weight", 1)
    ctx.bind(hidden, f"{name}.linear1.weight", 0)
    ctx.bind(s, f"{name}.linear2.weight", 0)
    ctx.bind(hidden, f"{name}.linear2.weight", 1)
    for p, ax in (("linear1.bias", hidden), ("linear2.bias", s)):
        if getattr(layer, p.split(".")[0]).bias is not None:
            ctx.bind(ax, f"{name}.{p}", 0)
    for norm in ("norm1", "norm2"):
        for p in ("weight", "bias"):
            if getattr(getattr(layer, norm), p, None) is not None:
                ctx.bind(s, f"{name}.{norm}.{p}", 0)


@handles(nn.TransformerEncoderLayer)
def _encoder_layer(ctx: Ctx, node: fx.Node) -> Value:
    x = ctx.tensor(node, node.args[0])
    layer = ctx.module(node)
    assert isinstance(layer, nn.TransformerEncoderLayer)
    bind_encoder_layer(ctx, node, layer, str(node.target), x.axes[-1])
    return x


@handles(nn.TransformerEncoder)
def _encoder(ctx: Ctx, node: fx.Node) -> Value:
    x = ctx.tensor(node, node.args[0])
    enc = ctx.module(node)
    assert isinstance(enc, nn.TransformerEncoder)
    for i, layer in enumerate(enc.layers):
        bind_encoder_layer(ctx, node, layer, f"{node.target}.layers.{i}", x.axes[-1])
    if enc.norm is not None:
        for p in ("weight", "bias"):
            if getattr(enc.norm, p, None) is not None:
                ctx.bind(x.axes[-1], f"{node.target}.norm.{p}", 0)
    return x
