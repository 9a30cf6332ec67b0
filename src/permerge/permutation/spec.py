"""Permutation specs: which weight axes move together when hidden units are reordered.

A *group* is one set of interchangeable units (the channels of a conv, the neurons of a
hidden layer, or the residual stream shared by several layers). Each axis in a group is an
``AxisRef(param, axis, block, outer)``: the axis is laid out as ``(outer, units, block)``.
``block > 1`` marks a linear layer fed by a flattened conv map, whose inputs move in blocks
of ``H * W`` per channel; ``outer > 1`` repeats the units, e.g. a q/k/v projection whose
outputs are ``heads`` copies of one within-head permutation.

A permutation maps each group name to a LongTensor ``perm``; applying it gives the model
whose unit ``i`` is the original unit ``perm[i]`` (``index_select`` semantics). Such a
model computes exactly the same function.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..errors import AlignmentError

Permutation = dict[str, torch.Tensor]


@dataclass(frozen=True)
class AxisRef:
    param: str
    axis: int
    block: int = 1
    outer: int = 1


@dataclass(frozen=True)
class PermGroup:
    name: str
    size: int
    axes: tuple[AxisRef, ...]


@dataclass(frozen=True)
class PermutationSpec:
    groups: dict[str, PermGroup]
    # group name -> fx node names whose outputs carry the group's units (post-activation
    # where possible); activation matching reads its features there. Empty for hand specs.
    probes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # probe node name -> the axis of its output that carries the units, where not axis 1
    # (the last axis of a transformer's (batch, tokens, features) activations)
    probe_axes: dict[str, int] = field(default_factory=dict)
    # param name -> [(axis, group name, block)], derived for fast application
    by_param: dict[str, tuple[tuple[int, str, int], ...]] = field(default_factory=dict)
    # (param name, axis) -> outer repeat of the units where it is not 1
    outer: dict[tuple[str, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.by_param:
            table: dict[str, list[tuple[int, str, int]]] = {}
            for g in self.groups.values():
                for ax in g.axes:
                    table.setdefault(ax.param, []).append((ax.axis, g.name, ax.block))
            object.__setattr__(self, "by_param", {k: tuple(v) for k, v in table.items()})
        if not self.outer:
            reps = {(a.param, a.axis): a.outer for g in self.groups.values() for a in g.axes if a.outer != 1}
            object.__setattr__(self, "outer", reps)

    @classmethod
    def from_dict(
        cls, groups: Mapping[str, list[tuple[str, int] | tuple[str, int, int]]], state: Mapping[str, torch.Tensor]
    ) -> PermutationSpec:
        """Hand-written spec: ``{"h1": [("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)]}``.

        Sizes are read from ``state``; every axis of a group must have the same unit count.
        """
        out = {}
        for name, refs in groups.items():
            axes = tuple(AxisRef(*r) for r in refs)
            out[name] = PermGroup(name, _group_size(name, axes, state), axes)
        spec = cls(out)
        spec.validate(state)
        return spec

    def validate(self, state: Mapping[str, torch.Tensor]) -> None:
        for g in self.groups.values():
            if _group_size(g.name, g.axes, state) != g.size:
                raise AlignmentError(f"group {g.name}: size does not match the model's weights")
        for p, entries in self.by_param.items():
            axes = [a for a, _, _ in entries]
            if len(set(axes)) != len(axes):
                raise AlignmentError(f"parameter {p} has one axis in two permutation groups")

    def identity(self) -> Permutation:
        return {name: torch.arange(g.size) for name, g in self.groups.items()}

    def random(self, generator: torch.Generator) -> Permutation:
        return {name: torch.randperm(g.size, generator=generator) for name, g in self.groups.items()}

    def to_json(self) -> dict[str, object]:
        return {
            g.name: {
                "size": g.size,
                "axes": [[a.param, a.axis, a.block, *([a.outer] if a.outer != 1 else [])] for a in g.axes],
            }
            for g in self.groups.values()
        }


def _group_size(name: str, axes: tuple[AxisRef, ...], state: Mapping[str, torch.Tensor]) -> int:
    sizes = set()
    for a in axes:
        if a.param not in state:
            raise AlignmentError(f"group {name}: no parameter {a.param!r} in the model")
        n = state[a.param].shape[a.axis]
        if n % (a.block * a.outer):
            raise AlignmentError(
                f"group {name}: {a.param} axis {a.axis} ({n}) is not a multiple of block {a.block} x outer {a.outer}"
            )
        sizes.add(n // (a.block * a.outer))
    if len(sizes) != 1:
        raise AlignmentError(f"group {name}: axes have different unit counts {sorted(sizes)}")
    return sizes.pop()


def expand_block(perm: torch.Tensor, block: int, outer: int = 1) -> torch.Tensor:
    """Unit permutation -> index permutation of an axis laid out as
    ``(repeat * units + unit) * block + offset``."""
    if block == 1 and outer == 1:
        return perm
    n = len(perm)
    offsets = torch.arange(block, device=perm.device).view(1, 1, -1)
    repeats = torch.arange(outer, device=perm.device).view(-1, 1, 1) * (n * block)
    return (repeats + perm.view(1, -1, 1) * block + offsets).reshape(-1)


def permute_param(
    spec: PermutationSpec, name: str, value: torch.Tensor, perm: Permutation, skip_group: str | None = None
) -> torch.Tensor:
    """``value`` with every permuted axis reordered (except those of ``skip_group``)."""
    for axis, group, block in spec.by_param.get(name, ()):
        if group == skip_group:
            continue
        value = value.index_select(axis, expand_block(perm[group], block, spec.outer.get((name, axis), 1)))
    return value


def apply_permutation(
    spec: PermutationSpec, perm: Permutation, state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The state dict of the permuted model (tensors not in the spec are copied as is)."""
    missing = set(spec.groups) - set(perm)
    if missing:
        raise AlignmentError(f"permutation lacks groups {sorted(missing)}")
    for name, g in spec.groups.items():  # a non-permutation would silently drop/duplicate units
        p = perm[name]
        units = torch.arange(g.size, device=p.device, dtype=p.dtype)
        if p.shape != (g.size,) or not torch.equal(torch.sort(p).values, units):
            raise AlignmentError(f"group {name}: not a permutation of {g.size} units")
    return {k: permute_param(spec, k, v, perm) for k, v in state.items()}


def invert(perm: Permutation) -> Permutation:
    return {k: torch.argsort(v) for k, v in perm.items()}


def compose(outer: Permutation, inner: Permutation) -> Permutation:
    """Applying ``inner`` then ``outer`` equals applying ``compose(outer, inner)``."""
    return {k: inner[k][outer[k]] for k in outer}
