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
from pydantic import BaseModel, ValidationError
from torch import nn

from ..checkpoint import Checkpoint
from ..data.mergedata import MergeData
from ..errors import PermergeError
from ..models import ModelConfig
from ..permutation.spec import Permutation, PermutationSpec


@dataclass
class MergerResult:
    model: nn.Module
    config: ModelConfig  # rebuilds ``model`` (wider than a source for a partial merge)
    perm: Permutation | None = None
    spec: PermutationSpec | None = None
    info: dict[str, Any] = field(default_factory=dict)


MergerFn = Callable[[Checkpoint, Checkpoint, MergeData | None, Any, torch.device, bool], MergerResult]


@dataclass(frozen=True)
class Merger:
    name: str
    fn: MergerFn
    options: type[BaseModel]
    needs_data: bool
    summary: str

    def parse_options(self, values: dict[str, Any] | None) -> BaseModel:
        try:
            return self.options.model_validate(values or {})
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise PermergeError(f"invalid option {where!r} for method {self.name}: {err['msg']}") from None


_MERGERS: dict[str, Merger] = {}


def register_merger(
    name: str, options: type[BaseModel], *, needs_data: bool, summary: str
) -> Callable[[MergerFn], MergerFn]:
    def deco(fn: MergerFn) -> MergerFn:
        if name in _MERGERS:
            raise PermergeError(f"merge method {name!r} is registered twice")
        _MERGERS[name] = Merger(name, fn, options, needs_data, summary)
        return fn

    return deco


def mergers() -> dict[str, Merger]:
    from . import pleas, zipit  # noqa: F401  (register themselves)

    return dict(sorted(_MERGERS.items()))
