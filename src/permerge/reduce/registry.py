"""Method registry: ``@register_method("name", kind=...)`` on ``fn(ctx, **options)``.

A method is one function in one file under ``reduce/methods/``; the files there are
imported automatically, so adding a method never touches anything else. Its keyword-only
parameters *are* its hyperparameters: their defaults are the documented settings, unknown
options are rejected by name, and the resolved values are recorded in the output metadata
so every reduced set says exactly how it was made.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import TypeAdapter, ValidationError
from torch import nn

from ..data import ImageSet
from ..errors import PermergeError

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


MethodFn = Callable[..., MethodResult]


@dataclass(frozen=True)
class Method:
    name: str
    kind: Kind
    fn: MethodFn
    summary: str

    def defaults(self) -> dict[str, Any]:
        """The method's hyperparameters with their default values."""
        sig = inspect.signature(self.fn)
        return {
            n: p.default
            for n, p in sig.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
        }

    def resolve(self, options: dict[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``options``; an unknown option name or a value that does not
        fit the parameter's annotation is a user error (``--opt lr_img=abc`` must not reach
        the optimiser)."""
        known = self.defaults()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise PermergeError(
                f"method {self.name!r} has no option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known)) or '(none)'}"
            )
        hints = typing.get_type_hints(self.fn)
        checked = {k: _check_option(self.name, k, v, hints.get(k, Any), known[k]) for k, v in options.items()}
        return {**known, **checked}


def _check_option(method: str, name: str, value: Any, hint: Any, default: Any) -> Any:
    """Validate one hyperparameter against its annotation. Every numeric hyperparameter is a
    rate, a momentum or a count, so numbers must be finite and >= 0, and integer counts whose
    default is not 0 must be >= 1 (a batch of 0 images or 0 proxy epochs is never meant)."""

    def bad(why: str) -> PermergeError:
        return PermergeError(f"invalid option {name}={value!r} for method {method!r}: {why}")

    try:
        v = TypeAdapter(hint).validate_python(value)
    except ValidationError as e:
        raise bad(e.errors()[0]["msg"]) from None
    if isinstance(value, bool) and not isinstance(v, bool):
        raise bad("expected a number, got a boolean")
    if isinstance(v, bool) or not isinstance(v, int | float):
        return v
    if not math.isfinite(v) or v < 0:
        raise bad("must be a finite number >= 0")
    if isinstance(v, int) and v < 1 and default != 0:
        raise bad("must be a positive integer")
    return v


_METHODS: dict[str, Method] = {}


def register_method(name: str, *, kind: Kind) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn(ctx: ReduceContext, *, option=default, ...) -> MethodResult``."""

    def deco(fn: MethodFn) -> MethodFn:
        doc = (fn.__doc__ or "").strip().splitlines()
        _METHODS[name] = Method(name=name, kind=kind, fn=fn, summary=doc[0] if doc else "")
        return fn

    return deco


def _load_builtin() -> None:
    import importlib
    import pkgutil

    from . import methods

    for mod in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"{methods.__name__}.{mod.name}")


def available_methods() -> dict[str, Method]:
    """All registered methods by name (built-in ones are imported on first use)."""
    _load_builtin()
    return dict(sorted(_METHODS.items()))


def get_method(name: str) -> Method:
    methods = available_methods()
    key = name.strip().lower()
    if key not in methods:
        raise PermergeError(f"unknown reduction method {name!r}; known: {', '.join(methods)}")
    return methods[key]
