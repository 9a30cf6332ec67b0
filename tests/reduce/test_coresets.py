from __future__ import annotations

import pytest
import torch
from torch import nn

from permerge.data import ImageSet
from permerge.reduce import reduce_dataset
from permerge.reduce.features import penultimate_features
from permerge.reduce.methods.herding import herding_order
from permerge.reduce.methods.kcenter import covering_radius, kcenter_order

CORESETS = ["random", "herding", "kcenter", "el2n", "uncertainty"]


@pytest.mark.parametrize("method", CORESETS)
def test_balanced_distinct_right_class(mnist20: ImageSet, method: str) -> None:
    rs = reduce_dataset(mnist20, method, 5, progress=False, seed=1)
    assert rs.source_indices is not None
    idx = rs.source_indices
    assert len(idx) == 50 and idx.unique().numel() == 50
    for c in range(10):
        assert int((rs.labels == c).sum()) == 5
    assert torch.equal(mnist20.labels[idx], rs.labels)
    assert torch.equal(rs.images, mnist20.images[idx].float() / 255)
    assert rs.meta["method"] == method and rs.meta["ipc"] == 5


def test_herding_known_order() -> None:
    feats = torch.tensor([[3.0], [0.5], [-2.0], [10.0], [-0.4]])
    # worked by hand: mean 2.22; picks keep the running mean closest to it
    assert herding_order(feats, 5).tolist() == [0, 1, 4, 3, 2]


def test_herding_is_argmin_not_argmax() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 8, generator=g)
    order = herding_order(feats, 10)
    mu = feats.mean(0)
    herd_err = (feats[order].mean(0) - mu).norm()
    rand_err = torch.stack([(feats[torch.randperm(200, generator=g)[:10]].mean(0) - mu).norm() for _ in range(50)])
    assert herd_err < rand_err.min()


def test_herding_matches_its_definition() -> None:
    """The fast form (one matrix-vector product per pick) picks what the definition picks."""
    g = torch.Generator().manual_seed(3)
    feats = torch.rand(500, 64, generator=g)
    f = feats.double()
    mu, total, taken, expect = f.mean(0), torch.zeros(64, dtype=torch.float64), set(), []
    for t in range(1, 31):
        dist = ((mu - (total + f) / t) ** 2).sum(1)
        dist[list(taken)] = float("inf")
        i = int(dist.argmin())
        expect.append(i)
        taken.add(i)
        total += f[i]
    assert herding_order(feats, 30).tolist() == expect


def test_herding_through_api_on_toy(toy: ImageSet) -> None:
    rs = reduce_dataset(toy, "herding", 3, progress=False)
    for c in range(3):
        idx = (toy.labels == c).nonzero().flatten()
        expect = idx[herding_order(toy.images[idx].flatten(1), 3)]
        assert rs.source_indices[c * 3 : (c + 1) * 3].tolist() == expect.tolist()  # type: ignore[index]


def test_kcenter_covers(mnist20: ImageSet) -> None:
    feats = mnist20.to_input(mnist20.images[mnist20.labels == 3]).flatten(1)
    order = kcenter_order(feats, 12)
    radii = [covering_radius(feats, order[:k]) for k in range(1, 13)]
    assert all(b <= a + 1e-9 for a, b in zip(radii, radii[1:], strict=False))
    assert radii[-1] < radii[0]
    assert order.unique().numel() == 12


def test_features_from_model(mnist20: ImageSet) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    feats = penultimate_features(model, mnist20)
    assert feats.shape == (200, 16) and bool((feats >= 0).all())  # after the last hidden ReLU
    rs = reduce_dataset(mnist20, "kcenter", 2, model=model, progress=False)
    assert rs.meta["info"]["features"] == "model-penultimate"
    assert len(rs) == 20


def test_random_is_seeded(mnist20: ImageSet) -> None:
    a = reduce_dataset(mnist20, "random", 3, seed=4, progress=False)
    b = reduce_dataset(mnist20, "random", 3, seed=4, progress=False)
    c = reduce_dataset(mnist20, "random", 3, seed=5, progress=False)
    assert torch.equal(a.source_indices, b.source_indices)  # type: ignore[arg-type]
    assert not torch.equal(a.source_indices, c.source_indices)  # type: ignore[arg-type]
