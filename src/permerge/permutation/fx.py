"""Derive a PermutationSpec from a model by tracing it with ``torch.fx``.

Every node's output gets a *channel space* (a union-find id) or the fixed space of the
input/output. Handlers per op say how spaces flow: a Linear/Conv creates a new space for
its outputs and binds its input axis to its input's space; norms, activations, pooling and
dropout pass the space through; ``flatten`` turns a conv space into blocks; an addition
unites both operands' spaces (a residual stream is one group). What reaches the output
(the head's logits) or comes from the input is fixed. Any op without a handler raises:
guessing would silently break the model's function.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import AlignmentError
from .spec import AxisRef, PermGroup, PermutationSpec

FIXED = 0

_PASS_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.ELU,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.ReLU6,
    nn.Hardswish,
)
_PASS_FUNCTIONS = {
    F.relu,
    F.gelu,
    F.silu,
    F.leaky_relu,
    F.elu,
    F.dropout,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    torch.relu,
    torch.tanh,
    torch.sigmoid,
    F.relu6,
    F.hardswish,
}
_ACTIVATIONS = (
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
)
_ACT_FUNCTIONS = {
    F.relu,
    F.gelu,
    F.silu,
    F.leaky_relu,
    F.elu,
    torch.relu,
    torch.tanh,
    torch.sigmoid,
    F.relu6,
    F.hardswish,
}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "relu_"}
_ADD = {operator.add, operator.iadd, torch.add}
_SCALE = {operator.mul, operator.truediv, operator.imul, torch.mul}


@dataclass(frozen=True)
class Space:
    """A node's channel space: union-find id plus block size (>1 after a conv flatten)."""

    sid: int
    block: int = 1


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = [FIXED]

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        # FIXED always stays the root so "is fixed" is find(x) == FIXED
        if rb == FIXED:
            ra, rb = rb, ra
        self.parent[rb] = ra


def derive_spec(model: nn.Module, example_input: torch.Tensor) -> PermutationSpec:
    """Trace ``model`` and return its permutation groups (the head and input stay fixed)."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # tracing failures come in many types
        raise AlignmentError(f"cannot trace {type(model).__name__} with torch.fx: {e}") from None
    # gm shares its submodules with ``model``: restore each one's own mode afterwards
    # (a blanket ``train(was_training)`` would, e.g., unfreeze a BN kept in eval mode).
    modes = [(m, m.training) for m in (*model.modules(), *gm.modules())]
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    except Exception as e:  # a shape mismatch surfaces as RuntimeError, etc.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AlignmentError(
            f"cannot run {type(model).__name__} on an example input of shape {tuple(example_input.shape)}: {first}"
        ) from None
    finally:
        for m, mode in modes:
            m.training = mode
    modules = dict(gm.named_modules())
    uf = _UnionFind()
    space: dict[fx.Node, Space] = {}
    axes: list[tuple[int, AxisRef]] = []  # (space id, axis)

    def shape(n: fx.Node) -> tuple[int, ...]:
        meta = n.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None else ()

    def arg_space(n: fx.Node, a: object) -> Space:
        if not isinstance(a, fx.Node):
            raise AlignmentError(f"node {n.name}: expected a tensor argument")
        return space[a]

    def bind(s: Space, param: str, axis: int) -> None:
        axes.append((s.sid, AxisRef(param, axis, s.block)))

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            space[node] = Space(FIXED)
        elif node.op == "output":
            out = node.args[0]
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, fx.Node):
                    uf.union(space[o].sid, FIXED)
        elif node.op == "call_module":
            mod = modules[node.target]
            s_in = arg_space(node, node.args[0])
            name = str(node.target)
            if isinstance(mod, (nn.Linear, nn.Conv2d, nn.Conv1d)):
                if isinstance(mod, nn.Conv2d | nn.Conv1d) and mod.groups != 1:
                    raise AlignmentError(f"node {node.name}: grouped convolution ({name}) is not supported")
                if isinstance(mod, nn.Conv2d | nn.Conv1d) and s_in.block != 1:
                    raise AlignmentError(f"node {node.name}: convolution over a flattened input")
                bind(s_in, f"{name}.weight", 1)
                s_out = Space(uf.new())
                bind(s_out, f"{name}.weight", 0)
                if mod.bias is not None:
                    bind(s_out, f"{name}.bias", 0)
                space[node] = s_out
            elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                _bind_norm(mod, name, s_in, bind, node, buffers=True)
                space[node] = s_in
            elif isinstance(mod, nn.GroupNorm):
                if mod.num_groups not in (1, mod.num_channels):
                    raise AlignmentError(
                        f"node {node.name}: GroupNorm with {mod.num_groups} groups mixes channels "
                        "across groups under permutation; only 1 (LayerNorm) or C groups are supported"
                    )
                _bind_norm(mod, name, s_in, bind, node, buffers=False)
                space[node] = s_in
            elif isinstance(mod, nn.LayerNorm):
                if len(mod.normalized_shape) != 1 or len(shape(node)) != 2:
                    raise AlignmentError(f"node {node.name}: LayerNorm is supported over features of 2-D inputs only")
                _bind_norm(mod, name, s_in, bind, node, buffers=False)
                space[node] = s_in
            elif isinstance(mod, nn.Flatten):
                space[node] = _flatten(node, s_in, shape(node.args[0]))
            elif isinstance(mod, _PASS_MODULES):
                space[node] = s_in
            else:
                raise AlignmentError(
                    f"unsupported module {type(mod).__name__} at node {node.name} ({name}); "
                    "pass a hand-written PermutationSpec instead"
                )
        elif node.op == "call_function":
            fn = node.target
            if fn in _PASS_FUNCTIONS:
                space[node] = arg_space(node, node.args[0])
            elif fn in _ADD:
                tensors = [a for a in node.args if isinstance(a, fx.Node)]
                s0 = space[tensors[0]]
                for other in tensors[1:]:
                    if space[other].block != s0.block:
                        raise AlignmentError(f"node {node.name}: adding tensors with different layouts")
                    uf.union(s0.sid, space[other].sid)
                space[node] = s0
            elif fn in _SCALE and sum(isinstance(a, fx.Node) for a in node.args) == 1:
                space[node] = space[next(a for a in node.args if isinstance(a, fx.Node))]
            elif fn is torch.flatten:
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                if start != 1:
                    raise AlignmentError(f"node {node.name}: flatten from dim {start} (only 1 is supported)")
                space[node] = _flatten(node, arg_space(node, node.args[0]), shape(node.args[0]))
            else:
                raise AlignmentError(f"unsupported function {getattr(fn, '__name__', fn)} at node {node.name}")
        elif node.op == "call_method":
            if node.target in _PASS_METHODS:
                space[node] = arg_space(node, node.args[0])
            elif node.target in ("view", "reshape", "flatten"):
                src = node.args[0]
                assert isinstance(src, fx.Node)
                in_shape, out_shape = shape(src), shape(node)
                if len(out_shape) == 2 and len(in_shape) >= 2 and out_shape[0] == in_shape[0]:
                    space[node] = _flatten(node, space[src], in_shape)
                elif in_shape == out_shape:
                    space[node] = space[src]
                else:
                    raise AlignmentError(f"unsupported reshape {in_shape}->{out_shape} at node {node.name}")
            elif node.target == "size":
                space[node] = Space(FIXED)
            else:
                raise AlignmentError(f"unsupported method .{node.target}() at node {node.name}")
        elif node.op == "get_attr":
            raise AlignmentError(f"unsupported direct parameter use {node.target} at node {node.name}")
        else:
            raise AlignmentError(f"unsupported op {node.op} at node {node.name}")

    state = model.state_dict()
    by_root: dict[int, list[AxisRef]] = {}
    for sid, ref in axes:
        root = uf.find(sid)
        if root != FIXED:
            by_root.setdefault(root, []).append(ref)
    groups: dict[str, PermGroup] = {}
    root_name: dict[int, str] = {}
    for root, refs in by_root.items():
        # name a group after the first layer whose outputs it reorders
        producer = next((r for r in refs if r.axis == 0), refs[0]).param.rsplit(".", 1)[0]
        name = f"P_{producer}"
        unique = tuple(dict.fromkeys(refs))
        size = state[unique[0].param].shape[unique[0].axis] // unique[0].block
        groups[name] = PermGroup(name, size, unique)
        root_name[root] = name
    spec = PermutationSpec(groups, probes=_probes(gm, modules, space, uf, root_name))
    spec.validate(state)
    return spec


def _probes(
    gm: fx.GraphModule,
    modules: dict[str, nn.Module],
    space: dict[fx.Node, Space],
    uf: _UnionFind,
    root_name: dict[int, str],
) -> dict[str, tuple[str, ...]]:
    """Per group, the nodes after a nonlinearity (else any node) that carry its units."""
    act: dict[str, list[str]] = {}
    anyn: dict[str, list[str]] = {}
    for node in gm.graph.nodes:
        s = space.get(node)
        if s is None or s.block != 1 or node.op in ("placeholder", "output"):
            continue
        name = root_name.get(uf.find(s.sid))
        if name is None:
            continue
        anyn.setdefault(name, []).append(node.name)
        is_act = (node.op == "call_module" and isinstance(modules[node.target], _ACTIVATIONS)) or (
            node.op == "call_function" and node.target in _ACT_FUNCTIONS
        )
        if is_act:
            act.setdefault(name, []).append(node.name)
    return {g: tuple(act.get(g) or anyn.get(g, [])) for g in root_name.values()}


def _bind_norm(mod: nn.Module, name: str, s_in: Space, bind, node: fx.Node, buffers: bool) -> None:
    if s_in.block != 1:
        raise AlignmentError(f"node {node.name}: normalisation over a flattened conv map")
    for p in ("weight", "bias"):
        if getattr(mod, p, None) is not None:
            bind(s_in, f"{name}.{p}", 0)
    if buffers and getattr(mod, "running_mean", None) is not None:
        bind(s_in, f"{name}.running_mean", 0)
        bind(s_in, f"{name}.running_var", 0)


def _flatten(node: fx.Node, s_in: Space, in_shape: tuple[int, ...]) -> Space:
    if len(in_shape) <= 2:
        return s_in
    if s_in.sid == FIXED:
        return s_in
    block = 1
    for d in in_shape[2:]:
        block *= int(d)
    return Space(s_in.sid, s_in.block * block)
