"""Alignment methods register here by name; adding one is one small file.

A method is a pure function ``fn(problem, options) -> Alignment``; its options are a
frozen pydantic model so a config file or CLI flag set is validated before any work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from ..data.mergedata import MergeData
from ..errors import PermergeError, first_error
from ..permutation.spec import Permutation, PermutationSpec
from ..registry import Registry


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


Fn = TypeVar("Fn", bound=Callable[..., Any])


@dataclass(frozen=True)
class MergeMethod(Generic[Fn]):
    """A registered merge method: alignment methods and mergers alike (``permerge methods``
    lists both with their options)."""

    name: str
    fn: Fn
    options: type[BaseModel]
    needs_data: bool
    summary: str

    def parse_options(self, values: dict[str, Any] | None) -> BaseModel:
        return parse_options(self.options, values, self.name)


AlignMethod = MergeMethod[Callable[[AlignProblem, Any], Alignment]]


def option_error(e: ValidationError, subject: str) -> PermergeError:
    """pydantic's multi-line report as one line naming the first bad field (the one helper for
    every option set: methods, the finisher, training, configs)."""
    where, msg = first_error(e)
    return PermergeError(f"invalid option {where!r} for {subject}: {msg}" if where else f"{subject}: {msg}")


def parse_options(options: type[BaseModel], values: dict[str, Any] | None, method: str) -> BaseModel:
    """Validate ``--opt`` values for ``method``; the first problem as one line, not pydantic's report."""
    try:
        return options.model_validate(values or {})
    except ValidationError as e:
        raise option_error(e, f"method {method}") from None


def with_seed(options: type[BaseModel], values: dict[str, Any] | None, seed: int | None) -> dict[str, Any] | None:
    """``values`` plus ``seed`` when the options have a ``seed`` field the caller left unset: the
    one place a run's ``--seed`` reaches every seeded method (wm, am, ste, pleas, zipit, kd)."""
    if seed is None or "seed" not in options.model_fields or "seed" in (values or {}):
        return values
    return {**(values or {}), "seed": seed}


METHODS: Registry[AlignMethod] = Registry("alignment method", package=__name__.rsplit(".", 1)[0])


def register(name: str, options: type[BaseModel], *, needs_data: bool, summary: str):
    """``@register("wm", WMOptions, needs_data=False, summary=...)`` on ``fn(problem, opts)``;
    the modules of ``permerge.align`` are imported on first lookup, so a new file is enough."""

    def deco(fn: Callable[[AlignProblem, Any], Alignment]) -> Callable[[AlignProblem, Any], Alignment]:
        METHODS.add(name, AlignMethod(name, fn, options, needs_data, summary), source=fn)
        return fn

    return deco


def get_method(name: str) -> AlignMethod:
    return METHODS.get(name)


def available() -> dict[str, AlignMethod]:
    return METHODS.items()
