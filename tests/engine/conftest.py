"""Fixtures for the alignment/merging/CLI tests: tiny models trained on tiny real subsets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from permerge import api
from permerge.checkpoint import Checkpoint, load_checkpoint

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (SHARED / "MNIST").is_dir() or not (SHARED / "FashionMNIST").is_dir():
        pytest.skip("needs ../shared/data (real MNIST and Fashion-MNIST)")
    return SHARED


@pytest.fixture(scope="session")
def trained_pair(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, Checkpoint]:
    """MLP 784-64-64-10 on 2,000 MNIST and 2,000 Fashion-MNIST images (different init seeds)."""
    out = tmp_path_factory.mktemp("pair")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    api.train(
        "mnist@200",
        model="mlp:64x64",
        seed=0,
        epochs=8,
        out=out / "a",
        data_root=data_root,
        progress=False,
        val_fraction=0.1,
    )
    api.train(
        "fashion-mnist@200",
        model="mlp:64x64",
        seed=1,
        epochs=8,
        out=out / "b",
        data_root=data_root,
        progress=False,
        val_fraction=0.1,
    )
    return load_checkpoint(out / "a"), load_checkpoint(out / "b")


@pytest.fixture(scope="session")
def merge_data(data_root: Path):  # type: ignore[no-untyped-def]
    return api.load_merge_data(["mnist@10", "fashion-mnist@10"], data_root=data_root)
