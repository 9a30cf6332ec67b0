from __future__ import annotations

import pytest
import torch

from permerge.augment import SiameseAugment, default_augment
from permerge.data import ImageSet
from permerge.errors import PermergeError
from permerge.reduce import reduce_dataset
from permerge.reduce.condense import gradient_distance


def _assert_images_ok(images: torch.Tensor) -> None:
    assert bool(torch.isfinite(images).all())
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


@pytest.mark.parametrize(
    ("method", "opts"),
    [
        ("dm", {"iterations": 25, "net": "convnet:8", "batch_real": 20, "lr_img": 5.0}),
        ("dm", {"iterations": 25, "net": "convnet:8", "batch_real": 20, "lr_img": 5.0, "pool": 3}),
        ("dc", {"iterations": 12, "net": "mlp:64", "batch_real": 20}),
        (
            "mtt",
            {
                "iterations": 30,
                "net": "mlp:64",
                "experts": 1,
                "expert_epochs": 3,
                "max_start_epoch": 1,
                "match_epochs": 2,
                "syn_steps": 5,
                "lr_teacher": 0.05,
                "batch_teacher": 20,
                "lr_img": 30.0,
            },
        ),
    ],
    ids=["dm", "dm-trained-pool", "dc", "mtt"],
)
def test_condensation_lowers_matching_loss(mnist20: ImageSet, method: str, opts: dict[str, object]) -> None:
    rs = reduce_dataset(mnist20, method, 1, init="noise", seed=0, progress=False, **opts)
    hist = rs.meta["info"]["loss_history"]
    assert len(hist) == opts["iterations"]
    assert sum(hist[-3:]) / 3 < sum(hist[:3]) / 3
    _assert_images_ok(rs.images)
    assert rs.images.shape == (10, 1, 28, 28) and rs.source_indices is None
    assert rs.labels.tolist() == list(range(10))


def test_dsa_runs_and_is_deterministic(mnist20: ImageSet) -> None:
    opts = {"iterations": 2, "net": "convnet:8", "batch_real": 16, "outer_loop": 2, "inner_loop": 1}
    a = reduce_dataset(mnist20, "dsa", 2, seed=3, progress=False, **opts)
    b = reduce_dataset(mnist20, "dsa", 2, seed=3, progress=False, **opts)
    assert torch.equal(a.images, b.images)
    _assert_images_ok(a.images)
    assert "flip" not in a.meta["info"]["augment_ops"]  # grayscale digits: no flip


def test_dm_pool_trains_its_networks_and_is_deterministic(mnist20: ImageSet) -> None:
    """With a pool the matching networks learn between uses, so the result differs from DM
    with fresh random networks, and it is still a function of the seed alone."""
    opts = {"iterations": 6, "net": "convnet:4", "batch_real": 8, "pool": 2, "pool_train_steps": 2}
    a = reduce_dataset(mnist20, "dm", 1, seed=5, progress=False, **opts)
    b = reduce_dataset(mnist20, "dm", 1, seed=5, progress=False, **opts)
    plain = reduce_dataset(mnist20, "dm", 1, seed=5, progress=False, iterations=6, net="convnet:4", batch_real=8)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, plain.images)
    assert a.meta["hyperparameters"]["pool"] == 2
    _assert_images_ok(a.images)


def test_mtt_is_deterministic_and_learns_its_step_size(mnist20: ImageSet) -> None:
    opts = {
        "iterations": 3,
        "net": "mlp:32",
        "experts": 2,
        "expert_epochs": 2,
        "max_start_epoch": 1,
        "match_epochs": 1,
        "syn_steps": 3,
        "batch_syn": 7,
        "batch_teacher": 50,
        "dsa": True,
    }
    a = reduce_dataset(mnist20, "mtt", 2, seed=1, progress=False, **opts)
    b = reduce_dataset(mnist20, "mtt", 2, seed=1, progress=False, **opts)
    assert torch.equal(a.images, b.images)
    _assert_images_ok(a.images)
    info = a.meta["info"]
    assert info["learned_lr"] > 0 and info["learned_lr"] != 0.01  # the student's step size is trained too
    assert info["net"] == "mlp:32" and "flip" not in info["augment_ops"]


def test_mtt_rejects_a_window_past_the_expert_trajectory(mnist20: ImageSet) -> None:
    with pytest.raises(PermergeError, match="expert_epochs"):
        reduce_dataset(mnist20, "mtt", 1, progress=False, expert_epochs=3, max_start_epoch=2, match_epochs=2)


def test_condensation_does_not_touch_global_rng(mnist20: ImageSet) -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    reduce_dataset(mnist20, "dm", 1, iterations=2, net="convnet:4", batch_real=4, progress=False)
    assert torch.equal(torch.rand(3), before)


def test_siamese_augment_is_shared_and_differentiable() -> None:
    aug = SiameseAugment()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 12, 12, requires_grad=True)
    for _ in range(20):
        p = aug.sample(g)
        y1, y2 = aug(x, p), aug(x.detach().clone(), p)
        assert torch.allclose(y1, y2)  # same parameters -> same transform
        y1.sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    assert "flip" in default_augment(3).ops and "flip" not in default_augment(1).ops


def test_gradient_distance_zero_for_parallel_rows() -> None:
    w = torch.randn(5, 7)
    assert float(gradient_distance([w, torch.randn(5)], [3 * w, torch.randn(5)])) == pytest.approx(0, abs=1e-5)
    assert float(gradient_distance([w], [-w])) == pytest.approx(10, abs=1e-4)
