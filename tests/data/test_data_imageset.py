"""ImageSet: validation, conversion to model input, subsets, batching, concat, as_imageset."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from permerge.data import IDENTITY, ImageSet, Normalization, as_imageset, concat
from permerge.errors import DataError


def _set(n: int = 6, dtype=torch.uint8, c: int = 1, name: str = "s") -> ImageSet:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(n)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, (n, c, 4, 4), generator=g, dtype=torch.uint8)
    else:
        x = torch.rand(n, c, 4, 4, generator=g)
    return ImageSet(x, torch.arange(n) % 3, name=name)


def test_validation():
    x = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(DataError, match="N x C x H x W"):
        ImageSet(torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), name="a")
    with pytest.raises(DataError, match="3 images but 2 labels"):
        ImageSet(x, torch.zeros(2, dtype=torch.long), name="a")
    with pytest.raises(DataError, match="uint8 or float32"):
        ImageSet(x.double(), torch.zeros(3, dtype=torch.long), name="a")
    with pytest.raises(DataError, match=r"labels must lie in \[0, 10\)"):
        ImageSet(x, torch.tensor([0, 10, 1]), name="a")
    with pytest.raises(DataError, match="labels must lie"):
        ImageSet(x, torch.tensor([0, -1, 1]), name="a")


def test_to_input_scales_and_normalises():
    s = _set()
    x = s.to_input(s.images)
    assert x.dtype == torch.float32 and torch.allclose(x * 255, s.images.float(), atol=1e-4)
    assert s.images.dtype == torch.uint8  # stored images untouched
    f = _set(dtype=torch.float32)
    assert torch.equal(f.to_input(f.images), f.images)
    norm = Normalization((0.5,), (0.25,))
    s2 = ImageSet(s.images, s.labels, name="n", normalization=norm)
    assert torch.allclose(s2.to_input(s.images), (s.images.float() / 255 - 0.5) / 0.25, atol=1e-5)
    item, label = s2[2]
    assert item.shape == (1, 4, 4) and label == int(s.labels[2])
    assert Normalization.from_dict(norm.to_dict()) == norm


def test_subset_tracks_source_indices():
    s = _set(10)
    a = s.subset(torch.tensor([9, 2, 5, 7]))
    b = a.subset(torch.tensor([3, 1]))
    assert b.source_indices.tolist() == [7, 2]
    assert torch.equal(b.images, s.images[[7, 2]]) and torch.equal(b.labels, s.labels[[7, 2]])


def test_batches_cover_everything():
    s = _set(10)
    xs, ys = zip(*s.batches(4), strict=True)
    assert [len(y) for y in ys] == [4, 4, 2]
    assert torch.equal(torch.cat(ys), s.labels)
    assert torch.allclose(torch.cat(xs), s.to_input(s.images))
    assert [len(y) for _, y in s.batches(4, drop_last=True)] == [4, 4]
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    sh1 = torch.cat([y for _, y in s.batches(3, shuffle=True, generator=g1)])
    sh2 = torch.cat([y for _, y in s.batches(3, shuffle=True, generator=g2)])
    assert torch.equal(sh1, sh2) and sorted(sh1.tolist()) == sorted(s.labels.tolist())


def test_class_counts():
    s = _set(7)
    assert s.class_counts().tolist() == [3, 2, 2, 0, 0, 0, 0, 0, 0, 0]


def test_concat():
    a, b = _set(4, name="a"), _set(3, name="b")
    c = concat([a, b])
    assert len(c) == 7 and c.images.dtype == torch.uint8 and c.name == "a+b"
    assert torch.equal(c.images[4:], b.images) and torch.equal(c.labels[:4], a.labels)
    mixed = concat([a, _set(2, dtype=torch.float32)], name="m")
    assert mixed.images.dtype == torch.float32 and mixed.name == "m"
    assert torch.allclose(mixed.images[:4] * 255, a.images.float(), atol=1e-4)
    with pytest.raises(DataError, match="different image shapes"):
        concat([a, _set(2, c=3)])
    with pytest.raises(DataError, match="no datasets"):
        concat([])
    other = ImageSet(b.images, b.labels, name="o", normalization=Normalization((0.1,), (0.2,)))
    with pytest.raises(DataError, match="normalisations"):
        concat([a, other])
    w = ImageSet(b.images, b.labels, name="w", weights=torch.tensor([2.0, 3.0, 4.0]))
    assert concat([a, w]).weights.tolist() == [1, 1, 1, 1, 2, 3, 4]


def test_as_imageset():
    x = torch.randn(5, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 3, 4])
    s = as_imageset(TensorDataset(x, y), name="td")
    assert torch.equal(s.images, x) and torch.equal(s.labels, y)
    assert s.normalization == IDENTITY and s.name == "td"
    assert as_imageset(s) is s
    s3 = as_imageset(TensorDataset(torch.randn(2, 4, 4), torch.tensor([1, 1])))
    assert s3.images.shape == (2, 1, 4, 4)
    with pytest.raises(DataError, match="empty"):
        as_imageset(TensorDataset(torch.zeros(0, 1, 2, 2), torch.zeros(0)))
    with pytest.raises(DataError, match="labels must lie"):
        as_imageset(TensorDataset(x, y), num_classes=3)
