"""The state a spec derivation threads through the traced graph, and the handler table.

Every tensor flowing through the graph gets a :class:`TensorValue`: one :class:`Ax` per
dimension, naming the *channel space* (a union-find id) whose units lie along that axis,
or ``FIXED`` when the axis carries nothing that may be permuted (batch, tokens, pixels, the
input's channels, the head's logits). Handlers, one small function per op registered with
:func:`handles`, say how an op maps the spaces of its inputs to those of its output: a
layer *produces* a new space and binds its weight axes; an activation passes spaces
through; an addition ties its operands' spaces; a reduction drops the reduced axes.

A space counts as permuted only once a layer produced it: parameter axes read directly
(``get_attr``: a class token, a position embedding) get fresh spaces that become permuted
only when tied to a produced one, so a parameter never used with permuted activations is
left alone. Tying any space to ``FIXED`` is always safe (that group simply is not
permuted); ops that cannot be expressed as a tie refuse, naming op, node and source line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from torch import fx, nn

from ...errors import AlignmentError
from ..spec import AxisRef

FIXED = 0
_TORCH_DIR = os.path.dirname(torch.__file__)


@dataclass(frozen=True)
class Ax:
    """One tensor axis: its channel space and how its units lie along it, as
    ``(outer, units, block)``: ``block > 1`` after flattening a conv map into the channel
    axis, ``outer > 1`` after merging attention heads (each a copy of the units) back."""

    sid: int = FIXED
    block: int = 1
    outer: int = 1


@dataclass(frozen=True)
class TensorValue:
    """The channel spaces of one tensor, one :class:`Ax` per dimension."""

    axes: tuple[Ax, ...]

    @property
    def ndim(self) -> int:
        return len(self.axes)

    def with_axis(self, dim: int, ax: Ax) -> TensorValue:
        axes = list(self.axes)
        axes[dim] = ax
        return TensorValue(tuple(axes))


# a node's value: a tensor, a tuple of values (an op returning several), or None (not a tensor)
Value: TypeAlias = TensorValue | tuple["Value", ...] | None
Handler = Callable[["Ctx", fx.Node], Value]
_HANDLERS: dict[object, Handler] = {}


def handles(*targets: object) -> Callable[[Handler], Handler]:
    """Register a handler for module classes, functions, or ``".name"`` for tensor methods."""

    def deco(fn: Handler) -> Handler:
        for t in targets:
            _HANDLERS[t] = fn
        return fn

    return deco


def lookup(node: fx.Node, modules: dict[str, nn.Module]) -> Handler | None:
    """The handler for ``node``: a module by its class (subclasses included), a function by
    identity, a method by name."""
    if node.op == "call_module":
        for cls in type(modules[str(node.target)]).__mro__:
            if cls in _HANDLERS:
                return _HANDLERS[cls]
        return None
    if node.op == "call_method":
        return _HANDLERS.get("." + str(node.target))
    return _HANDLERS.get(node.target)


def source_line(node: fx.Node) -> str:
    """``file:line: code`` of the user code that made ``node`` (empty when unknown)."""
    lines = (node.stack_trace or "").splitlines()
    best = ""
    for i, ln in enumerate(lines):
        ln = ln.strip()
        if ln.startswith('File "') and _TORCH_DIR not in ln:
            path, _, rest = ln[6:].partition('", line ')
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            best = f"{os.path.basename(path)}:{rest.split(',')[0]}: {code}"
    return best


def op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"module {type(modules[str(node.target)]).__name__}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    return f"function {getattr(node.target, '__name__', node.target)}"


class Ctx:
    """Union-find over channel spaces, the weight axes bound to them, and node values."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.parent: list[int] = [FIXED]
        self.producer: dict[int, str] = {}  # root -> a layer that creates the space's units
        self.produced: list[tuple[int, str]] = []  # (space, layer) in graph order, for naming
        self.bindings: list[tuple[int, AxisRef]] = []
        self.values: dict[fx.Node, Value] = {}

    # --- spaces -------------------------------------------------------------------------
    def new(self, producer: str | None = None) -> int:
        self.parent.append(len(self.parent))
        sid = len(self.parent) - 1
        if producer is not None:
            self.producer[sid] = producer
            self.produced.append((sid, producer))
        return sid

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def live(self, ax: Ax) -> bool:
        """Not (yet) tied to the fixed space."""
        return self.find(ax.sid) != FIXED

    def permuted(self, ax: Ax) -> bool:
        """Live and made by a layer: its order matters to someone."""
        r = self.find(ax.sid)
        return r != FIXED and r in self.producer

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb == FIXED:  # FIXED stays the root, so "is fixed" is find(x) == FIXED
            ra, rb = rb, ra
        self.parent[rb] = ra
        if rb in self.producer:
            self.producer.setdefault(ra, self.producer.pop(rb))

    def tie(self, node: fx.Node, axes: Iterable[Ax]) -> Ax:
        """Tie axes that must be permuted alike; their blocks must agree (unless fixed)."""
        axes = list(axes)
        live = [a for a in axes if self.live(a)]
        if any((a.block, a.outer) != (live[0].block, live[0].outer) for a in live):
            raise self.refuse(node, "combines tensors whose channels are laid out differently (flattened vs not)")
        for a in axes[1:]:
            self.union(axes[0].sid, a.sid)
        if self.find(axes[0].sid) == FIXED:
            return Ax()
        return live[0]

    def fix(self, node: fx.Node, ax: Ax, why: str) -> None:
        """Tie ``ax`` to the fixed space; refused if a layer's units already live there."""
        if self.permuted(ax):
            raise self.refuse(node, why)
        self.union(FIXED, ax.sid)

    def pin(self, ax: Ax) -> None:
        """Tie ``ax`` to the fixed space even if a layer made it: its units stay in place."""
        self.union(FIXED, ax.sid)

    def produce(self, name: str) -> Ax:
        return Ax(self.new(name))

    def mark_produced(self, ax: Ax, name: str) -> None:
        """A parameter read directly (``x @ self.w``) creates the units of ``ax``."""
        r = self.find(ax.sid)
        if r != FIXED and r not in self.producer:
            self.producer[r] = name
            self.produced.append((ax.sid, name))

    def bind(self, ax: Ax, param: str, axis: int, block: int | None = None, outer: int | None = None) -> None:
        ref = AxisRef(param, axis, ax.block if block is None else block, ax.outer if outer is None else outer)
        self.bindings.append((ax.sid, ref))

    def refine(self, ax: Ax, repeats: int) -> bool:
        """Reinterpret a layer's fresh output space as ``repeats`` copies of fewer units (its
        outputs split into heads): every weight axis bound to it so far gets ``outer *=
        repeats``. Only for a space no other op has seen yet; False otherwise."""
        root = self.find(ax.sid)
        mine = [i for i, (sid, _) in enumerate(self.bindings) if self.find(sid) == root]
        producers = [p for sid, p in self.produced if self.find(sid) == root]
        if root == FIXED or len(producers) != 1 or ax.block != 1 or ax.outer != 1:
            return False
        if any(not self.bindings[i][1].param.startswith(producers[0] + ".") for i in mine):
            return False
        for i in mine:
            sid, ref = self.bindings[i]
            self.bindings[i] = (sid, AxisRef(ref.param, ref.axis, ref.block, ref.outer * repeats))
        return True

    # --- values -------------------------------------------------------------------------
    def value(self, a: object) -> Value:
        if isinstance(a, fx.Node):
            return self.values.get(a)
        if isinstance(a, (list, tuple)):
            return tuple(self.value(x) for x in a)
        return None

    def tensor(self, node: fx.Node, a: object) -> TensorValue:
        v = self.value(a)
        if not isinstance(v, TensorValue):
            raise self.refuse(node, "expected a tensor argument")
        return v

    def module(self, node: fx.Node) -> nn.Module:
        return self.modules[str(node.target)]

    def arg(self, node: fx.Node, i: int, name: str, default: Any = None) -> Any:
        if len(node.args) > i:
            return node.args[i]
        return node.kwargs.get(name, default)

    def refuse(self, node: fx.Node, why: str) -> AlignmentError:
        where = source_line(node)
        return AlignmentError(
            f"unsupported {op_name(node, self.modules)} at node {node.name}"
            + (f" ({where})" if where else "")
            + f": {why}; pass a hand-written PermutationSpec instead"
        )


def shape(a: object) -> tuple[int, ...]:
    """The traced shape of a node's tensor output (empty for non-tensors)."""
    meta = a.meta.get("tensor_meta") if isinstance(a, fx.Node) else None
    return tuple(int(s) for s in meta.shape) if meta is not None and hasattr(meta, "shape") else ()


def fixed_value(meta: object) -> Value:
    """An all-fixed value shaped like a node's ``tensor_meta`` (tuples recursively)."""
    if meta is None:
        return None
    if hasattr(meta, "shape"):
        return TensorValue(tuple(Ax() for _ in meta.shape))
    if isinstance(meta, (tuple, list)):
        return tuple(fixed_value(m) for m in meta)
    return None


def tensors_in(v: Value) -> list[TensorValue]:
    if isinstance(v, TensorValue):
        return [v]
    if isinstance(v, tuple):
        return [t for x in v for t in tensors_in(x)]
    return []


def dim_of(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def prod(xs: Iterable[int]) -> int:
    return math.prod(xs)
