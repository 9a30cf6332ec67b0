"""Derive a PermutationSpec from a model by tracing it with ``torch.fx``.

The traced graph is walked once in order; each node's op is looked up in a table of small
handlers (:mod:`permerge.permutation.ops`), which give every axis of the node's output a
*channel space* (union-find id) and bind weight axes to spaces. What reaches the output
(the head's logits) or comes from the input is fixed; each remaining space made by a layer
becomes one permutation group. Ops without a handler pass when none of their inputs carries
permuted units (input preprocessing, shape arithmetic); otherwise they raise, naming the
op, the node and the source line: guessing would silently break the model's function.
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import AlignmentError
from .ops import FIXED, Ax, Ctx, TensorValue, Value, lookup
from .ops.base import fixed_value, shape, tensors_in
from .ops.elementwise import ACTIVATION_FUNCTIONS, ACTIVATION_METHODS
from .ops.layers import ACTIVATION_MODULES
from .spec import AxisRef, PermGroup, PermutationSpec

__all__ = ["FIXED", "derive_spec", "trace"]


def trace(model: nn.Module, stack_traces: bool = False) -> fx.GraphModule:
    """``torch.fx`` trace; with ``stack_traces`` each node keeps its source line (for error
    messages: torch symbolises them with a module whose first import takes over a second)."""
    tracer = fx.Tracer()
    tracer.record_stack_traces = stack_traces
    try:
        graph = tracer.trace(model)
    except Exception as e:  # tracing failures come in many types
        first = " ".join(str(e).split())[:300]
        raise AlignmentError(f"cannot trace {type(model).__name__} with torch.fx: {first}") from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _propagate(model: nn.Module, gm: fx.GraphModule, example_input: torch.Tensor) -> None:
    """Record every node's output shape, leaving each module's train/eval mode as it was."""
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


def derive_spec(model: nn.Module, example_input: torch.Tensor) -> PermutationSpec:
    """Trace ``model`` and return its permutation groups (the head and input stay fixed).

    A model that is refused is traced again with stack traces, so that the error names the
    line of the user's code; a model that is accepted never pays for them."""
    try:
        return _derive(model, example_input, stack_traces=False)
    except AlignmentError:
        return _derive(model, example_input, stack_traces=True)


def _derive(model: nn.Module, example_input: torch.Tensor, stack_traces: bool) -> PermutationSpec:
    gm = trace(model, stack_traces)
    _propagate(model, gm, example_input)
    ctx = Ctx(gm)
    state = model.state_dict()
    for node in gm.graph.nodes:
        ctx.values[node] = _visit(ctx, node, state)
    groups, names = _groups(ctx, state)
    probes, axes = _probes(ctx, names, {g.name: g.size for g in groups.values()})
    spec = PermutationSpec(groups, probes=probes, probe_axes=axes)
    spec.validate(state)
    return spec


def _visit(ctx: Ctx, node: fx.Node, state: dict[str, torch.Tensor]) -> Value:
    if node.op == "placeholder":
        return fixed_value(node.meta.get("tensor_meta"))
    if node.op == "output":
        for t in tensors_in(ctx.value(node.args[0])):
            for ax in t.axes:
                ctx.union(FIXED, ax.sid)
        return None
    if node.op == "get_attr":
        return _parameter(ctx, node, state)
    handler = lookup(node, ctx.modules)
    if handler is not None:
        return handler(ctx, node)
    # no handler: fine as long as nothing permuted flows in (ties stray parameter axes)
    for a in (*node.args, *node.kwargs.values()):
        for t in tensors_in(ctx.value(a)):
            for ax in t.axes:
                ctx.fix(node, ax, "no handler for an op that touches permuted channels")
    return fixed_value(node.meta.get("tensor_meta"))


def _parameter(ctx: Ctx, node: fx.Node, state: dict[str, torch.Tensor]) -> Value:
    """A parameter read directly: each axis gets its own space, permuted only if it is tied
    to a layer's units later (a position embedding added to the residual stream)."""
    name = str(node.target)
    if name not in state:
        return fixed_value(node.meta.get("tensor_meta"))
    axes = []
    for i in range(state[name].ndim):
        ax = Ax(ctx.new())
        ctx.bind(ax, name, i)
        axes.append(ax)
    return TensorValue(tuple(axes))


def _groups(ctx: Ctx, state: dict[str, torch.Tensor]) -> tuple[dict[str, PermGroup], dict[int, str]]:
    """One group per space made by a layer and not tied to the fixed space, named after the
    first layer (in graph order) whose outputs it reorders."""
    names: dict[int, str] = {}
    for sid, producer in ctx.produced:
        root = ctx.find(sid)
        if root != FIXED and root not in names:
            names[root] = f"P_{producer}"
    refs: dict[int, list[AxisRef]] = {}
    for sid, ref in ctx.bindings:
        root = ctx.find(sid)
        if root in names:
            refs.setdefault(root, []).append(ref)
    groups: dict[str, PermGroup] = {}
    for root, rs in refs.items():
        unique = tuple(dict.fromkeys(rs))
        size = state[unique[0].param].shape[unique[0].axis] // (unique[0].block * unique[0].outer)
        groups[names[root]] = PermGroup(names[root], size, unique)
    return groups, {r: n for r, n in names.items() if n in groups}


def _is_activation(ctx: Ctx, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(ctx.modules[str(node.target)], ACTIVATION_MODULES)
    if node.op == "call_method":
        return node.target in ACTIVATION_METHODS
    return node.op == "call_function" and node.target in ACTIVATION_FUNCTIONS


def _probes(
    ctx: Ctx, names: dict[int, str], sizes: dict[str, int]
) -> tuple[dict[str, tuple[str, ...]], dict[str, int]]:
    """Per group, the nodes after a nonlinearity (else any node) that carry its units on
    exactly one axis, once each (not flattened, not repeated per head), and that axis."""
    act: dict[str, list[str]] = {}
    anyn: dict[str, list[str]] = {}
    axis_of: dict[str, int] = {}
    for node, v in ctx.values.items():
        if not isinstance(v, TensorValue) or node.op in ("placeholder", "output", "get_attr"):
            continue
        live = [(i, ax) for i, ax in enumerate(v.axes) if ctx.find(ax.sid) in names]
        if len(live) != 1:
            continue
        i, ax = live[0]
        g = names[ctx.find(ax.sid)]
        if shape(node)[i] != sizes[g]:  # blocks, head repeats (also a layer refined into heads later)
            continue
        axis_of[node.name] = i
        anyn.setdefault(g, []).append(node.name)
        if _is_activation(ctx, node):
            act.setdefault(g, []).append(node.name)
    probes = {g: tuple(act.get(g) or anyn.get(g, [])) for g in names.values()}
    probes = {g: p for g, p in probes.items() if p}
    used = {n for p in probes.values() for n in p}
    return probes, {n: a for n, a in axis_of.items() if n in used and a != 1}
