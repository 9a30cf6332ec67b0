"""Method registry: ``@register_method("name", Options, kind=...)`` on ``fn(ctx, opts)``.

A method is one function in one file under ``reduce/methods/`` with a frozen pydantic options
class (subclass :class:`ReduceOptions`; DSA's extends DC's); the files there are imported
automatically, so adding a method never touches anything else. The options' defaults are the
documented settings, unknown options are rejected by name, and the resolved values are
recorded in the output metadata so every reduced set says exactly how it was made.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from torch import nn

from ..data import ImageSet
from ..errors import PermergeError, first_error
from ..registry import Registry, summary_of

Kind = Literal["coreset", "condensation"]


@dataclass
class ReduceContext:
    """Everything a method may use; built once by :func:`permerge.reduce.reduce_dataset`."""

    data: ImageSet  # the source training set
    ipc: int  # images per class
    classes: list[int]  # class ids present in ``data`` (a class subset keeps its ids)
    generator: torch.Generator  # the only source of randomness (seeded from ``seed``)
    seed: int
    device: torch.device
    progress: bool
    model: nn.Module | None = None  # a trained model (coreset features / scores)
    net_factory: Callable[[], nn.Module] | None = None  # architecture to condense with
    net_name: str | None = None

    def class_indices(self, c: int) -> torch.Tensor:
        return (self.data.labels == c).nonzero().flatten()


@dataclass
class MethodResult:
    """What a method returns: images in [0, 1] pixel scale plus bookkeeping."""

    images: torch.Tensor  # float32, N x C x H x W, in [0, 1]
    labels: torch.Tensor  # int64
    source_indices: torch.Tensor | None = None  # coresets: indices into the source set
    weights: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)  # e.g. loss history, feature source


class ReduceOptions(BaseModel):
    """Base of every reduction method's options: frozen, unknown names refused.

    Validation happens in :meth:`Method.resolve` (one line per bad value, and the range rules
    of :func:`_check_option`), so fields need no ``Field(ge=...)`` constraints of their own.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")


MethodFn = Callable[[ReduceContext, Any], MethodResult]


@dataclass(frozen=True)
class Method:
    name: str
    kind: Kind
    fn: MethodFn
    options: type[ReduceOptions]
    summary: str

    @property
    def needs_data(self) -> bool:
        return True  # a reduction always reads its source dataset

    def defaults(self) -> dict[str, Any]:
        """The method's hyperparameters with their default values."""
        return {n: f.default for n, f in self.options.model_fields.items()}

    def resolve(self, options: dict[str, Any]) -> ReduceOptions:
        """Defaults overridden by ``options``; an unknown option name or a value that does not
        fit the field's annotation is a user error (``--opt lr_img=abc`` must not reach
        the optimiser)."""
        known = self.defaults()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise PermergeError(
                f"method {self.name!r} has no option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known)) or '(none)'}"
            )
        fields = self.options.model_fields
        checked = {k: _check_option(self.name, k, v, fields[k].annotation, known[k]) for k, v in options.items()}
        try:
            return self.options.model_validate({**known, **checked})
        except ValidationError as e:  # a cross-field rule of the options class
            where, msg = first_error(e)
            raise PermergeError(
                f"invalid options for method {self.name!r}: {where + ': ' if where else ''}{msg}"
            ) from None


def _check_option(method: str, name: str, value: Any, hint: Any, default: Any) -> Any:
    """Validate one hyperparameter against its annotation. Every numeric hyperparameter is a
    rate, a momentum or a count, so numbers must be finite and >= 0, and integer counts whose
    default is not 0 must be >= 1 (a batch of 0 images or 0 proxy epochs is never meant)."""

    def bad(why: str) -> PermergeError:
        return PermergeError(f"invalid option {name}={value!r} for method {method!r}: {why}")

    try:
        v = TypeAdapter(hint).validate_python(value)
    except ValidationError as e:
        raise bad(first_error(e)[1]) from None
    if isinstance(value, bool) and not isinstance(v, bool):
        raise bad("expected a number, got a boolean")
    if isinstance(v, bool) or not isinstance(v, int | float):
        return v
    if not math.isfinite(v) or v < 0:
        raise bad("must be a finite number >= 0")
    if isinstance(v, int) and v < 1 and default != 0:
        raise bad("must be a positive integer")
    return v


METHODS: Registry[Method] = Registry("reduction method", package=f"{__package__}.methods")


def register_method(
    name: str, options: type[ReduceOptions] = ReduceOptions, *, kind: Kind, summary: str | None = None
) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn(ctx: ReduceContext, opts: Options) -> MethodResult``; ``summary`` defaults
    to the first line of ``fn``'s docstring."""

    def deco(fn: MethodFn) -> MethodFn:
        entry = Method(name=name, kind=kind, fn=fn, options=options, summary=summary or summary_of(fn))
        METHODS.add(name, entry, source=fn)
        return fn

    return deco


def available_methods() -> dict[str, Method]:
    """All registered methods by name (built-in ones are imported on first use)."""
    return METHODS.items()


def get_method(name: str) -> Method:
    return METHODS.get(name.strip().lower())
