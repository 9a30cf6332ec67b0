"""Alignment methods register here by name; adding one is one small file.

A method is a pure function ``fn(problem, options) -> Alignment``; its options are a
frozen pydantic model so a config file or CLI flag set is validated before any work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from ..data.mergedata import MergeData
from ..errors import PermergeError
from ..permutation.spec import Permutation, PermutationSpec


@dataclass
class AlignProblem:
    """Everything an alignment method may look at."""

    model: nn.Module  # a module of the shared architecture (used as a functional template)
    state_a: dict[str, torch.Tensor]
    state_b: dict[str, torch.Tensor]
    spec: PermutationSpec
    data: MergeData | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True


@dataclass
class Alignment:
    perm: Permutation
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AlignMethod:
    name: str
    fn: Callable[[AlignProblem, Any], Alignment]
    options: type[BaseModel]
    needs_data: bool
    summary: str

    def parse_options(self, values: dict[str, Any] | None) -> BaseModel:
        return parse_options(self.options, values, self.name)


def parse_options(options: type[BaseModel], values: dict[str, Any] | None, method: str) -> BaseModel:
    """Validate ``--opt`` values for ``method``; the first problem as one line, not pydantic's report."""
    try:
        return options.model_validate(values or {})
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise PermergeError(f"invalid option {where!r} for method {method}: {err['msg']}") from None


_METHODS: dict[str, AlignMethod] = {}


def register(name: str, options: type[BaseModel], *, needs_data: bool, summary: str):
    def deco(fn: Callable[[AlignProblem, Any], Alignment]) -> Callable[[AlignProblem, Any], Alignment]:
        _METHODS[name] = AlignMethod(name, fn, options, needs_data, summary)
        return fn

    return deco


def get_method(name: str) -> AlignMethod:
    if name not in _METHODS:
        raise PermergeError(f"unknown alignment method {name!r}; known: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def available() -> dict[str, AlignMethod]:
    return dict(sorted(_METHODS.items()))
