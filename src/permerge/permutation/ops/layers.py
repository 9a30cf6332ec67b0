"""Handlers for layers with weights (Linear, Conv, Embedding, norms) and for the
parameter-free modules that act on spatial axes or elementwise."""

from __future__ import annotations

import torch.nn.functional as F
from torch import fx, nn

from .base import Ax, Ctx, TensorValue, Value, handles

ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.ELU,
    nn.Softplus,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.PReLU,
)
_ELEMENTWISE_MODULES = (
    *ACTIVATION_MODULES,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.Softmax,
    nn.LogSoftmax,
)


@handles(*_ELEMENTWISE_MODULES)
def _elementwise_module(ctx: Ctx, node: fx.Node) -> Value:
    """Elementwise (or softmax: permutation-equivariant along any axis): spaces pass."""
    mod = ctx.module(node)
    if isinstance(mod, nn.PReLU) and mod.num_parameters > 1:
        raise ctx.refuse(node, "PReLU with one slope per channel")
    return ctx.tensor(node, node.args[0])


@handles(nn.Linear)
def _linear(ctx: Ctx, node: fx.Node) -> Value:
    """Binds the input axis (with its block: a flattened conv map moves in blocks) and
    produces a new space for the outputs on the last axis; other axes pass through."""
    x = ctx.tensor(node, node.args[0])
    name = str(node.target)
    ctx.bind(x.axes[-1], f"{name}.weight", 1)
    out = ctx.produce(name)
    ctx.bind(out, f"{name}.weight", 0)
    if ctx.module(node).bias is not None:
        ctx.bind(out, f"{name}.bias", 0)
    return x.with_axis(x.ndim - 1, out)


@handles(nn.Embedding)
def _embedding(ctx: Ctx, node: fx.Node) -> Value:
    idx = ctx.tensor(node, node.args[0])
    out = ctx.produce(str(node.target))
    ctx.bind(out, f"{node.target}.weight", 1)
    return TensorValue((*idx.axes, out))


def _channel_axis(ctx: Ctx, node: fx.Node, x: TensorValue, spatial: int, what: str) -> int:
    """The channel axis of an (N,) C, *spatial input; the spatial axes must not be permuted."""
    c = x.ndim - spatial - 1
    for ax in x.axes[c + 1 :]:
        ctx.fix(node, ax, f"{what} over an axis that carries permuted channels")
    return c


@handles(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(ctx: Ctx, node: fx.Node) -> Value:
    """Full convs produce a new space; depthwise convs (groups == in_channels) keep the
    input's space (a channel multiplier k makes blocks of k); other groupings refuse."""
    mod = ctx.module(node)
    assert isinstance(mod, nn.modules.conv._ConvNd)
    x = ctx.tensor(node, node.args[0])
    name = str(node.target)
    c = _channel_axis(ctx, node, x, len(mod.kernel_size), "convolution")
    ax = x.axes[c]  # blocks (channels laid out unit-major) are fine: weights follow per channel
    if mod.groups == 1:
        ctx.bind(ax, f"{name}.weight", 1)
        out = ctx.produce(name)
    elif mod.groups == mod.in_channels:
        out = Ax(ax.sid, ax.block * (mod.out_channels // mod.in_channels))  # output o = c * k + j
    else:
        ctx.fix(node, ax, f"grouped convolution ({name}) with {mod.groups} groups mixes channels across groups")
        out = Ax()  # permuting outputs would move them to other groups' inputs
    ctx.bind(out, f"{name}.weight", 0)
    if mod.bias is not None:
        ctx.bind(out, f"{name}.bias", 0)
    return x.with_axis(c, out)


@handles(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d)
def _batchnorm(ctx: Ctx, node: fx.Node) -> Value:
    mod = ctx.module(node)
    x = ctx.tensor(node, node.args[0])
    ax = x.axes[1] if x.ndim > 1 else x.axes[0]  # per-channel parameters: any block works
    for p in ("weight", "bias", "running_mean", "running_var"):
        if getattr(mod, p, None) is not None:
            ctx.bind(ax, f"{node.target}.{p}", 0)
    return x


@handles(nn.LayerNorm, nn.RMSNorm)
def _layernorm(ctx: Ctx, node: fx.Node) -> Value:
    """Normalises over the last k axes (statistics are symmetric in the units); the affine
    parameters' axes follow those axes' spaces, blocks included."""
    mod = ctx.module(node)
    assert isinstance(mod, nn.LayerNorm | nn.RMSNorm)
    x = ctx.tensor(node, node.args[0])
    k = len(mod.normalized_shape)
    for j in range(k):
        ax = x.axes[x.ndim - k + j]
        for p in ("weight", "bias"):
            if getattr(mod, p, None) is not None:
                ctx.bind(ax, f"{node.target}.{p}", j)
    return x


@handles(nn.GroupNorm)
def _groupnorm(ctx: Ctx, node: fx.Node) -> Value:
    """1 group (LayerNorm over C, H, W) or one per channel: any permutation of the channels
    commutes with it. G groups of C/G channels need the same group for every channel: the
    conv feeding it gets a within-group permutation shared by all groups (``outer`` = G)."""
    mod = ctx.module(node)
    assert isinstance(mod, nn.GroupNorm)
    x = ctx.tensor(node, node.args[0])
    ax = x.axes[1]
    if mod.num_groups not in (1, mod.num_channels) and ctx.live(ax):
        src = node.args[0]
        single = isinstance(src, fx.Node) and len(src.users) == 1 and src.op == "call_module"
        if not (single and ctx.refine(ax, mod.num_groups)):
            ctx.fix(
                node,
                ax,
                f"GroupNorm with {mod.num_groups} groups needs a permutation within its groups, and its input "
                "is not a single layer's fresh output",
            )
        else:
            ax = Ax(ax.sid, 1, mod.num_groups)
            x = x.with_axis(1, ax)
    for p in ("weight", "bias"):
        if getattr(mod, p, None) is not None:
            ctx.bind(ax, f"{node.target}.{p}", 0)
    return x


_SPATIAL_MODULES: dict[type[nn.Module], int] = {
    nn.MaxPool1d: 1,
    nn.MaxPool2d: 2,
    nn.AvgPool1d: 1,
    nn.AvgPool2d: 2,
    nn.AdaptiveAvgPool1d: 1,
    nn.AdaptiveAvgPool2d: 2,
    nn.AdaptiveMaxPool1d: 1,
    nn.AdaptiveMaxPool2d: 2,
    nn.Upsample: 2,
}
_SPATIAL_FUNCTIONS = {
    F.max_pool1d: 1,
    F.max_pool2d: 2,
    F.avg_pool1d: 1,
    F.avg_pool2d: 2,
    F.adaptive_avg_pool1d: 1,
    F.adaptive_avg_pool2d: 2,
    F.adaptive_max_pool1d: 1,
    F.adaptive_max_pool2d: 2,
    F.interpolate: 2,
}


def _spatial(ctx: Ctx, node: fx.Node, spatial: int) -> Value:
    """Pooling/resizing acts on each channel's map alone: channel spaces pass, the spatial
    axes must not carry permuted units."""
    x = ctx.tensor(node, node.args[0])
    spatial = min(spatial, x.ndim - 2) if x.ndim > 2 else 1
    _channel_axis(ctx, node, x, spatial, "pooling")
    return TensorValue(tuple(a if i < x.ndim - spatial else Ax() for i, a in enumerate(x.axes)))


@handles(*_SPATIAL_MODULES)
def _spatial_module(ctx: Ctx, node: fx.Node) -> Value:
    mod = ctx.module(node)
    return _spatial(ctx, node, next(n for t, n in _SPATIAL_MODULES.items() if isinstance(mod, t)))


@handles(*_SPATIAL_FUNCTIONS)
def _spatial_function(ctx: Ctx, node: fx.Node) -> Value:
    return _spatial(ctx, node, _SPATIAL_FUNCTIONS[node.target])  # type: ignore[index]


def _pad(ctx: Ctx, node: fx.Node, k: int) -> Value:
    x = ctx.tensor(node, node.args[0])
    for ax in x.axes[x.ndim - k :]:
        ctx.fix(node, ax, "padding an axis that carries permuted channels")
    return TensorValue(tuple(a if i < x.ndim - k else Ax() for i, a in enumerate(x.axes)))


@handles(F.pad)
def _pad_function(ctx: Ctx, node: fx.Node) -> Value:
    return _pad(ctx, node, len(ctx.arg(node, 1, "pad")) // 2)


@handles(nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ReflectionPad1d, nn.ReflectionPad2d)
def _pad_module(ctx: Ctx, node: fx.Node) -> Value:
    return _pad(ctx, node, len(ctx.module(node).padding) // 2)  # type: ignore[arg-type]
