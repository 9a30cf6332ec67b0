from __future__ import annotations

import pytest
import torch

from permerge.data import ImageSet
from permerge.errors import DataError, ModelError, PermergeError
from permerge.reduce import available_methods, reduce_dataset


def test_methods_registered() -> None:
    names = set(available_methods())
    assert {"random", "herding", "kcenter", "el2n", "uncertainty", "dc", "dsa", "dm"} <= names
    assert available_methods()["dc"].kind == "condensation"


def test_k_larger_than_class(toy: ImageSet) -> None:
    with pytest.raises(DataError, match="only 6"):
        reduce_dataset(toy, "random", 7, progress=False)


def test_unknown_method(toy: ImageSet) -> None:
    with pytest.raises(PermergeError, match="unknown reduction method 'nope'; known: "):
        reduce_dataset(toy, "nope", 1)


def test_unknown_option(toy: ImageSet) -> None:
    with pytest.raises(PermergeError, match="no option"):
        reduce_dataset(toy, "herding", 1, iterations=3)


@pytest.mark.parametrize("ipc", [0, -1, 1.5, True])
def test_bad_ipc(toy: ImageSet, ipc: object) -> None:
    with pytest.raises(PermergeError, match="positive integer"):
        reduce_dataset(toy, "random", ipc)  # type: ignore[arg-type]


def test_empty_dataset() -> None:
    empty = ImageSet(images=torch.zeros(0, 1, 2, 2), labels=torch.zeros(0, dtype=torch.long), name="empty")
    with pytest.raises(DataError, match="empty"):
        reduce_dataset(empty, "random", 1)


def test_coreset_needs_checkpoint_not_arch(toy: ImageSet) -> None:
    with pytest.raises(ModelError, match="trained checkpoint"):
        reduce_dataset(toy, "herding", 1, model="mlp")


def test_bad_init(toy: ImageSet) -> None:
    with pytest.raises(PermergeError, match="init must be"):
        reduce_dataset(toy, "dm", 1, init="zeros", iterations=1, net="mlp:4")
