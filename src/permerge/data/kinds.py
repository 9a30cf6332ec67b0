"""Dataset kinds whose spec names a file or folder: ``npz:PATH``, ``folder:PATH``, ``reduced:PATH``.

``data`` registers the kinds it reads itself (``npz``, ``folder``); a layer above registers
its own (``permerge.reduce`` registers ``reduced``), so ``data`` never imports what builds on
it. A kind loads a split from its argument and, for a set made *from* another dataset (a
reduced set), names that source, whose test split is the derived set's test set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import DataError
from ..registry import Registry
from .imageset import ImageSet


@dataclass(frozen=True)
class PathKind:
    name: str
    load: Callable[[str, str], ImageSet]  # (argument, split) -> the split's images
    summary: str
    source: Callable[[str], str] | None = None  # argument -> the spec of the dataset it came from


KINDS: Registry[PathKind] = Registry("dataset kind", error=DataError)


def register_kind(
    name: str, *, summary: str, source: Callable[[str], str] | None = None
) -> Callable[[Callable[[str, str], ImageSet]], Callable[[str, str], ImageSet]]:
    """``@register_kind("reduced", summary=..., source=...)`` on ``load(arg, split) -> ImageSet``."""

    def deco(load: Callable[[str, str], ImageSet]) -> Callable[[str, str], ImageSet]:
        KINDS.add(name, PathKind(name, load, summary, source), source=load)
        return load

    return deco


def is_path_kind(kind: str) -> bool:
    return kind in KINDS
