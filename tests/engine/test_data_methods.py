"""Data-aware alignment (AM, STE), BN reset, REPAIR, lam auto, ensembles, N-model merge."""

from __future__ import annotations

import copy

import torch

from permerge.checkpoint import Checkpoint
from permerge.data.mergedata import MergeData
from permerge.merge import merge_many, merge_models
from permerge.merge.bn import _layer_stats, repairable_layers
from permerge.models import build_model, model_config_for
from permerge.permutation.fx import derive_spec
from permerge.permutation.spec import apply_permutation, invert
from permerge.train import evaluate


def test_am_recovers_known_permutation_from_data(trained_pair, merge_data: MergeData) -> None:
    a, _ = trained_pair
    spec = derive_spec(a.model, torch.zeros(1, 1, 28, 28))
    pi = spec.random(torch.Generator().manual_seed(11))
    b = copy.deepcopy(a)
    b.model.load_state_dict(apply_permutation(spec, pi, a.model.state_dict()))
    r = merge_models(a, b, method="am", data=merge_data, progress=False)
    assert r.perm is not None
    # Units that never fire on the merge data (dead ReLUs) are indistinguishable by their
    # activations, so AM may swap those among themselves; every other unit must be exact.
    for g in spec.groups:
        assert (r.perm[g] == invert(pi)[g]).float().mean() >= 0.9, g
    x = merge_data.combined().to_input(merge_data.combined().images)
    torch.testing.assert_close(r.model(x), a.model(x), rtol=1e-4, atol=1e-4)


def test_ste_lowers_midpoint_loss_and_beats_naive(trained_pair, merge_data: MergeData) -> None:
    a, b = trained_pair
    r = merge_models(
        a, b, method="ste", data=merge_data, options={"steps": 120, "lr": 0.5, "eval_every": 5}, progress=False
    )
    info = r.info["align"]
    assert info["score_loss_best"] < info["score_loss_initial"]  # better than its WM start
    naive = merge_models(a, b, method="average", progress=False)
    combined = merge_data.combined()
    assert evaluate(r.model, combined)["loss"] < evaluate(naive.model, combined)["loss"]
    # the kept permutation is the best one scored, and its merged model has exactly that loss on
    # the merge data it was scored on (all of it here: 100 images per source, under eval_samples)
    assert info["score_loss_best"] == min(h["score_loss"] for h in info["history"])
    assert abs(evaluate(r.model, combined)["loss"] - info["score_loss_best"]) < 1e-4


def test_ste_is_deterministic(trained_pair, merge_data: MergeData) -> None:
    a, b = trained_pair
    opts = {"steps": 20, "eval_every": 5}
    r1 = merge_models(a, b, method="ste", data=merge_data, options=opts, progress=False)
    r2 = merge_models(a, b, method="ste", data=merge_data, options=opts, progress=False)
    for k, v in r1.model.state_dict().items():
        assert torch.equal(v, r2.model.state_dict()[k])


def test_ste_with_augmented_merge_batches(trained_pair, merge_data: MergeData) -> None:
    """``augment=dsa`` changes the batches STE sees (so the merge), stays a function of the
    seed, and keeps the labels: an augmented batch is the plain batch transformed."""
    a, b = trained_pair
    opts = {"steps": 20, "eval_every": 5, "augment": "dsa"}
    r1 = merge_models(a, b, method="ste", data=merge_data, options=opts, progress=False)
    r2 = merge_models(a, b, method="ste", data=merge_data, options=opts, progress=False)
    assert all(torch.equal(v, r2.model.state_dict()[k]) for k, v in r1.model.state_dict().items())
    assert r1.info["align"]["score_loss_best"] <= r1.info["align"]["score_loss_initial"]
    plain = merge_data.balanced_batches(40, torch.Generator().manual_seed(0))
    augmented = merge_data.balanced_batches(40, torch.Generator().manual_seed(0), augment=True)
    (xp, yp), (xa, ya) = next(plain), next(augmented)
    assert torch.equal(yp, ya) and xp.shape == xa.shape and not torch.equal(xp, xa)
    assert bool(torch.isfinite(xa).all())


def test_bn_reset_rescues_merged_vgg(data_root) -> None:  # type: ignore[no-untyped-def]
    from permerge.data import load_dataset
    from permerge.train import TrainConfig, train_model

    train = load_dataset("mnist@200", data_root=data_root)
    cfg = model_config_for("vgg11:0.125", (1, 28, 28))
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = build_model(cfg)
        train_model(m, train, TrainConfig(epochs=4, lr=0.05, batch_size=100), seed=seed, progress=False)
        ckpts.append(Checkpoint(m, cfg))
    a, b = ckpts
    test = load_dataset("mnist@30", "test", data_root=data_root)
    data = MergeData.of(load_dataset("mnist@20", data_root=data_root, seed=5))
    broken = merge_models(a, b, method="wm", bn_reset=False, progress=False)
    fixed = merge_models(a, b, method="wm", data=data, progress=False)  # BN reset by default with data
    assert fixed.info["bn_reset"] is True
    acc_fixed = evaluate(fixed.model, test)["acc"]
    assert acc_fixed > 50.0  # chance is 10; measured ~77 with endpoints at ~85-92
    assert acc_fixed > evaluate(broken.model, test)["acc"] + 20


def test_repair_matches_interpolated_statistics(trained_pair, merge_data: MergeData) -> None:
    a, b = trained_pair
    r = merge_models(a, b, method="wm", data=merge_data, use_repair=True, progress=False)
    combined = merge_data.combined()
    layers = repairable_layers(r.model)
    assert layers  # the two hidden Linear layers
    from permerge.merge.core import aligned_copy

    bb = aligned_copy(b, r.spec, r.perm)  # type: ignore[arg-type]
    sa, sb = _layer_stats(a.model, layers, combined, "cpu"), _layer_stats(bb, layers, combined, "cpu")
    sm = _layer_stats(r.model, layers, combined, "cpu")
    for name in layers:
        target = 0.5 * sa[name][1] + 0.5 * sb[name][1]
        torch.testing.assert_close(sm[name][1], target, rtol=1e-3, atol=1e-4)


def test_lam_auto_is_chosen_on_merge_data(trained_pair, merge_data: MergeData) -> None:
    a, b = trained_pair
    r = merge_models(a, b, method="wm", lam="auto", data=merge_data, progress=False)
    auto = r.info["lam_auto"]
    assert auto["chosen"] == r.lam
    assert min(auto["merge_data_loss"]) == auto["merge_data_loss"][auto["grid"].index(r.lam)]


def test_ensemble_endpoints(trained_pair) -> None:  # type: ignore[no-untyped-def]
    a, b = trained_pair
    x = torch.randn(8, 1, 28, 28)
    e0 = merge_models(a, b, method="ensemble", lam=0.0, progress=False).model
    assert torch.equal(e0(x).argmax(1), a.model(x).argmax(1))


def test_merge_many_of_permuted_copies_is_the_model() -> None:
    torch.manual_seed(0)
    cfg = model_config_for("mlp:48x48", (1, 28, 28))
    base = Checkpoint(build_model(cfg).eval(), cfg)
    spec = derive_spec(base.model, torch.zeros(1, 1, 28, 28))
    copies = [base]
    for s in (1, 2):
        c = copy.deepcopy(base)
        c.model.load_state_dict(
            apply_permutation(spec, spec.random(torch.Generator().manual_seed(s)), base.model.state_dict())
        )
        copies.append(c)
    merged, perms, info = merge_many(copies, max_rounds=50)
    x = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(merged(x), base.model(x), rtol=1e-4, atol=1e-4)
    # every copy is moved into one basin: the aligned weight sets are the same weights
    aligned = [apply_permutation(spec, p, c.model.state_dict()) for p, c in zip(perms, copies, strict=True)]
    for k, v in aligned[0].items():
        assert all(torch.equal(other[k], v) for other in aligned[1:]), k
    assert 1 < info["rounds"] < 50  # the random copies needed re-alignment, and it converged
