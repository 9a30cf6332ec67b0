"""Merge methods that build the merged model themselves (not a permutation + interpolation).

Alignment methods (``permerge.align``) return a permutation, and ``merge_models`` interpolates.
Methods registered here return a model, possibly wider than a source (partial merges); each
is one file with ``@register_merger`` and a frozen pydantic options class, like an alignment
method. ``merge_models`` dispatches on the name; the CLI and grids list them with the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from ..align.registry import MergeMethod
from ..checkpoint import Checkpoint
from ..data.mergedata import MergeData
from ..errors import PermergeError
from ..models import ModelConfig
from ..permutation.spec import Permutation, PermutationSpec
from ..registry import Registry
from .spec import spec_for


@dataclass
class MergerResult:
    model: nn.Module
    config: ModelConfig  # rebuilds ``model`` (wider than a source for a partial merge)
    perm: Permutation | None = None
    spec: PermutationSpec | None = None
    info: dict[str, Any] = field(default_factory=dict)


MergerFn = Callable[[Checkpoint, Checkpoint, MergeData | None, Any, torch.device, bool], MergerResult]


Merger = MergeMethod[MergerFn]


def merger_spec(a: Checkpoint, method: str) -> PermutationSpec:
    """A's fx-derived spec, refused without activation probes (mergers match units by activations)."""
    spec = spec_for(a)
    if not spec.probes:
        raise PermergeError(f"{method} matches units by activations: the model's spec has no probes")
    return spec


MERGERS: Registry[Merger] = Registry("merge method", package=__name__.rsplit(".", 1)[0])


def register_merger(
    name: str, options: type[BaseModel], *, needs_data: bool, summary: str
) -> Callable[[MergerFn], MergerFn]:
    """``@register_merger("pleas", PleasOptions, needs_data=True, summary=...)``; the modules of
    ``permerge.merge`` are imported on first lookup, so a new file is enough."""

    def deco(fn: MergerFn) -> MergerFn:
        MERGERS.add(name, Merger(name, fn, options, needs_data, summary), source=fn)
        return fn

    return deco


def mergers() -> dict[str, Merger]:
    return MERGERS.items()
