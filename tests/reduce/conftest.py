"""Fixtures for the reduction tests: tiny real-data subsets, skipped when data is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from permerge.data import ImageSet, load_dataset

DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "MNIST").is_dir():
        pytest.skip(f"real MNIST not found under {DATA_ROOT} (the shared data folder)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def mnist20(data_root: Path) -> ImageSet:
    """20 real MNIST training images per class (200 in all), seed 0."""
    return load_dataset("mnist@20", data_root=data_root, seed=0)


@pytest.fixture()
def toy() -> ImageSet:
    """Three classes of 1x2x2 float images with 6 samples each; no files needed."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(18, 1, 2, 2, generator=g)
    labels = torch.arange(3).repeat_interleave(6)
    return ImageSet(images=images, labels=labels, name="toy", num_classes=3)
