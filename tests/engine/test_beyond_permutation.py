"""Partial merges (PLeaS), the distillation finisher and model sizes, on tiny synthetic models.

No real data needed: random-init models and random images test the algebra (width 2 is both
models side by side, width 1 is the permutation merge) and the finisher's mechanics; the
real-data quality is measured in the reproduce grids (docs/RESULTS.md §8).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from permerge.checkpoint import Checkpoint
from permerge.data.imageset import ImageSet
from permerge.data.mergedata import MergeData
from permerge.errors import PermergeError
from permerge.merge import merge_models
from permerge.merge.distill import DistillOptions, distill, resolve_budget
from permerge.merge.partial import pair_zip
from permerge.merge.size import model_size
from permerge.models import build_model, model_config_for


def _ckpt(arch: str, seed: int, shape: tuple[int, int, int] = (1, 8, 8)) -> Checkpoint:
    cfg = model_config_for(arch, shape)
    torch.manual_seed(seed)
    return Checkpoint(model=build_model(cfg).eval(), config=cfg, meta={"dataset": f"synthetic-{seed}"})


def _data(n_per_class: int = 6, shape: tuple[int, int, int] = (1, 8, 8), seed: int = 0) -> MergeData:
    g = torch.Generator().manual_seed(seed)
    sources = []
    for i in range(2):
        labels = torch.arange(10).repeat_interleave(n_per_class)
        images = torch.rand(len(labels), *shape, generator=g)
        sources.append(ImageSet(images, labels, name=f"src{i}"))
    return MergeData(tuple(sources))


@pytest.mark.parametrize("arch", ["mlp:16x12", "cnn"])
def test_pleas_width_two_without_refit_is_the_mean_of_both_models_logits(arch: str) -> None:
    shape = (1, 8, 8) if arch.startswith("mlp") else (1, 28, 28)
    a, b = _ckpt(arch, 0, shape), _ckpt(arch, 1, shape)
    data = _data(shape=shape)
    r = merge_models(a, b, method="pleas", data=data, options={"width": 2.0, "refit": "none"}, progress=False)
    x = torch.rand(5, *shape)
    with torch.no_grad():
        want = 0.5 * (a.model(x) + b.model(x))
        got = r.model(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert model_size(r.model, shape)["params"] > model_size(a.model, shape)["params"]


def test_pleas_width_one_without_refit_equals_the_permutation_merge() -> None:
    a, b = _ckpt("mlp:16x12", 0), _ckpt("mlp:16x12", 1)
    data = _data()
    p = merge_models(a, b, method="pleas", data=data, options={"width": 1.0, "refit": "none"}, progress=False)
    w = merge_models(a, b, method="wm", data=data, progress=False)
    assert p.config == a.config
    for k, v in w.model.state_dict().items():
        assert torch.allclose(p.model.state_dict()[k], v, atol=1e-6), k


def test_pair_zip_merges_the_best_scored_pairs() -> None:
    z = pair_zip(torch.tensor([0.1, 0.9, 0.5, 0.7]), width=1.5)
    assert z.width == 6
    merged_pairs = [sorted(z.unmerge[:, c].nonzero().flatten().tolist()) for c in range(z.width)]
    assert merged_pairs[:2] == [[1, 5], [3, 7]] and sorted(map(len, merged_pairs)) == [1, 1, 1, 1, 2, 2]
    assert torch.allclose(z.merge.sum(1), torch.ones(6))
    assert pair_zip(torch.rand(7), 1.0).width == 7 and pair_zip(torch.rand(7), 2.0).width == 14


def test_least_squares_refit_brings_hidden_features_closer_to_the_sources() -> None:
    a, b = _ckpt("mlp:16x12", 0), _ckpt("mlp:16x12", 1)
    data = _data(n_per_class=10)
    plain = merge_models(a, b, method="pleas", data=data, options={"refit": "none"}, progress=False)
    fit = merge_models(a, b, method="pleas", data=data, options={"refit": "ls", "augment_copies": 2}, progress=False)
    x = torch.cat([s.to_input(s.images) for s in data.sources])
    with torch.no_grad():
        target = 0.5 * (a.model(x) + b.model(x))  # the head's merged target
        err_plain = (plain.model(x) - target).pow(2).mean()
        err_fit = (fit.model(x) - target).pow(2).mean()
    assert err_fit < 0.5 * err_plain
    assert set(fit.info["merger"]["refit_residual"]) == {"1", "3", "5"}


def test_least_squares_refit_of_a_conv_net_at_width_two_keeps_both_models_exactly() -> None:
    """At width 2 nothing is merged, so every layer's exact solution exists (each source's
    weights in its own block); a refit of convolutions (patches) and linears that reaches it
    still outputs the mean of both models' logits on the images it was fitted on."""
    shape = (1, 12, 12)
    a, b = _ckpt("cnn", 0, shape), _ckpt("cnn", 1, shape)
    data = _data(n_per_class=3, shape=shape)
    opts = {"width": 2.0, "refit": "ls", "augment_copies": 0, "ridge": 1e-10}
    r = merge_models(a, b, method="pleas", data=data, options=opts, progress=False)
    x = torch.cat([s.to_input(s.images) for s in data.sources])
    with torch.no_grad():
        want = 0.5 * (a.model(x) + b.model(x))
        assert torch.allclose(r.model(x), want, atol=1e-3)
    residuals = r.info["merger"]["refit_residual"]
    assert list(residuals) == ["0", "3", "7", "9", "11"]  # forward order
    assert max(residuals.values()) < 1e-4  # the convolutions too (the linears could absorb their errors)


def test_least_squares_refit_of_a_resnet_at_width_two_is_exact_at_every_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strided, padded and 1x1 shortcut convolutions: with the sources' BatchNorm statistics
    kept (no re-estimate between layers), every layer of the side-by-side model has an exact
    solution, so every residual vanishes."""
    monkeypatch.setattr("permerge.merge.lsq.reset_bn", lambda model, *args, **kw: model)
    shape = (3, 16, 16)
    a, b = _ckpt("resnet20", 0, shape), _ckpt("resnet20", 1, shape)
    opts = {"width": 2.0, "refit": "ls", "augment_copies": 1, "ridge": 1e-10}
    r = merge_models(a, b, method="pleas", data=_data(n_per_class=4, shape=shape), options=opts, progress=False)
    residuals = r.info["merger"]["refit_residual"]
    assert len(residuals) == 22 and max(residuals.values()) < 1e-4


def test_least_squares_refit_of_a_resnet_brings_its_output_closer_to_the_sources() -> None:
    shape = (3, 16, 16)
    a, b = _ckpt("resnet20", 0, shape), _ckpt("resnet20", 1, shape)
    data = _data(n_per_class=4, shape=shape)
    plain = merge_models(a, b, method="pleas", data=data, options={"refit": "none"}, progress=False)
    fit = merge_models(a, b, method="pleas", data=data, options={"refit": "ls", "augment_copies": 1}, progress=False)
    x = torch.cat([s.to_input(s.images) for s in data.sources])
    with torch.no_grad():
        target = 0.5 * (a.model(x) + b.model(x))
        err_plain = (plain.model(x) - target).pow(2).mean()
        err_fit = (fit.model(x) - target).pow(2).mean()
    assert err_fit < 0.5 * err_plain
    layers = list(fit.info["merger"]["refit_residual"])
    assert len(layers) == 22 and layers.index("layers.3.shortcut.0") == layers.index("layers.3.conv2") + 1
    assert fit.info["merger"]["refit_samples"] == 2 * len(x)  # the images and one copy each


def test_least_squares_refit_on_sampled_patch_positions_matches_all_positions() -> None:
    """Each image gives every conv layer at most ``positions`` patch rows; neighbouring patches
    say nearly the same thing, so 4 of the 784 first-layer positions fit as well as all (within
    a few percent: a sampling that lost or biased rows would not). That design rows and target
    rows are picked at the *same* positions is held by the width-2 exactness tests above, which
    fail when they are not; on random models this error measure is too flat to see it."""
    shape = (1, 28, 28)
    a, b = _ckpt("cnn", 0, shape), _ckpt("cnn", 1, shape)
    data = _data(n_per_class=4, shape=shape)
    x = torch.cat([s.to_input(s.images) for s in data.sources])
    with torch.no_grad():
        target = 0.5 * (a.model(x) + b.model(x))
    errors = {}
    for name, opts in {"none": {"refit": "none"}, "all": {"positions": 10**6}, "few": {"positions": 4}}.items():
        r = merge_models(a, b, method="pleas", data=data, options={"augment_copies": 1, **opts}, progress=False)
        with torch.no_grad():
            errors[name] = float((r.model(x) - target).pow(2).mean())
    assert errors["all"] < 0.2 * errors["none"]
    assert abs(errors["few"] - errors["all"]) < 0.05 * errors["all"]


def test_least_squares_refit_of_a_vision_transformer_merges_q_k_v_head_by_head() -> None:
    """A q/k/v projection repeats its permuted units per head and per q/k/v (the spec's
    ``outer``): the targets are merged slot by slot, and the refit brings the merged model's
    logits far closer to the sources' mean than the plain partial merge."""
    shape = (1, 28, 28)
    a, b = _ckpt("vit:tiny-d1", 0, shape), _ckpt("vit:tiny-d1", 1, shape)
    data = _data(n_per_class=4, shape=shape)
    x = torch.cat([s.to_input(s.images) for s in data.sources])
    plain = merge_models(a, b, method="pleas", data=data, options={"refit": "none"}, progress=False)
    fit = merge_models(a, b, method="pleas", data=data, options={"augment_copies": 1}, progress=False)
    with torch.no_grad():
        target = 0.5 * (a.model(x) + b.model(x))
        err_plain = (plain.model(x) - target).pow(2).mean()
        err_fit = (fit.model(x) - target).pow(2).mean()
    assert err_fit < 0.1 * err_plain
    assert "blocks.0.attn.qkv" in fit.info["merger"]["refit_residual"]


def test_least_squares_refit_refuses_layers_it_cannot_express() -> None:
    from permerge.merge.lsq import ls_refit

    grouped = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(PermergeError, match="grouped"):
        ls_refit(grouped, grouped, grouped, None, {}, torch.rand(2, 4, 5, 5), 1e-2)  # type: ignore[arg-type]


def test_pleas_options_are_checked_before_any_work() -> None:
    a, b = _ckpt("mlp:16x12", 0), _ckpt("mlp:16x12", 1)
    for bad in (
        {"width": 0.5},
        {"width": 2.5},
        {"refit": "adam"},
        {"params": 0.9},
        {"width": 1.5, "params": 1.5},
        {"params": 1.5, "macs": 1.5},
    ):
        with pytest.raises(PermergeError, match="invalid option|not several"):
            merge_models(a, b, method="pleas", data=_data(), options=bad, progress=False)
    with pytest.raises(PermergeError, match="needs merge data"):
        merge_models(a, b, method="pleas", progress=False)


@pytest.mark.parametrize(
    ("adversarial", "ratio", "precision", "loss"),
    [(0.0, 0.5, "fp32", "kl"), (0.1, 0.95, "fp32", "kl"), (0.1, 0.95, "bf16", "kl"), (0.0, 0.5, "fp32", "mse")],
)
def test_distillation_moves_the_student_toward_each_sources_teacher(
    adversarial: float, ratio: float, precision: str, loss: str
) -> None:
    a, b = _ckpt("mlp:16x12", 0), _ckpt("mlp:16x12", 1)
    data = _data()
    student = copy.deepcopy(a.model)
    xa, xb = (s.to_input(s.images) for s in data.sources)

    def gap() -> float:
        with torch.no_grad():
            pa, pb = a.model(xa).softmax(1), b.model(xb).softmax(1)
            return float((student(xa).softmax(1) - pa).abs().sum() + (student(xb).softmax(1) - pb).abs().sum())

    before = gap()
    info = distill(
        student,
        [a.model, b.model],
        data,
        DistillOptions(steps=150, lr=3e-3, augment="none", adversarial=adversarial, precision=precision, loss=loss),
        progress=False,
    )
    assert gap() < ratio * before
    assert all(p.dtype == torch.float32 for p in student.parameters())  # mixed precision keeps fp32 weights
    assert info["steps"] == 150 and info["loss_last"] < info["loss_first"] and info["loss"] == loss


def test_distillation_budget_is_chosen_from_the_merge_data_and_options_win() -> None:
    small = resolve_budget(DistillOptions(), _data())
    assert small["augment"] == "dsa" and small["steps"] == 2000 and "small" in small["reason"]
    assert small["adversarial"] > 0 and small["label_weight"] == 0 and small["hint"] == 0  # nothing aligned
    assert resolve_budget(DistillOptions(), _data(), can_hint=True)["hint"] > 0
    big = MergeData(tuple(ImageSet(torch.rand(4000, 1, 4, 4), torch.arange(4000) % 10, name=f"s{i}") for i in range(2)))
    large = resolve_budget(DistillOptions(), big)
    assert (
        large["augment"] == "none"
        and large["steps"] >= 1000
        and large["adversarial"] == 0
        and large["label_weight"] > 0
    )
    assert resolve_budget(DistillOptions(), big, can_hint=True)["hint"] == 0
    given = resolve_budget(DistillOptions(steps=7, augment="dsa"), big)
    assert given["steps"] == 7 and given["augment"] == "dsa" and given["reason"] == "given"
    augmented = resolve_budget(DistillOptions(), big, sources_augmented=True)
    assert augmented["augment"] == "dsa" and "trained with augmentation" in augmented["reason"]
    assert resolve_budget(DistillOptions(augment="none"), big, sources_augmented=True)["augment"] == "none"


@pytest.mark.parametrize(("recipes", "expected"), [(("crop-flip", "dsa"), "dsa"), (("crop-flip", "none"), "none")])
def test_large_merge_data_is_augmented_when_every_source_trained_with_augmentation(
    recipes: tuple[str, str], expected: str
) -> None:
    """The merge reads each checkpoint's recorded recipe (no recipe: unknown, not augmented)."""
    a, b = _ckpt("mlp:16x12", 0), _ckpt("mlp:16x12", 1)
    assert not a.trained_with_augmentation  # no recorded recipe
    for ck, aug in zip((a, b), recipes, strict=True):
        ck.meta["train"] = {"augment": aug}
    big = _data(n_per_class=260)  # 5,200 images: large merge data
    r = merge_models(a, b, method="wm", data=big, finetune="kd", finetune_options={"steps": 2}, progress=False)
    assert r.info["finetune"]["augment"] == expected


def test_finisher_requests_fail_before_work() -> None:
    a, b = _ckpt("mlp:16x12", 0), _ckpt("mlp:16x12", 1)
    with pytest.raises(PermergeError, match="pass --data"):
        merge_models(a, b, method="wm", finetune="kd", progress=False)
    with pytest.raises(PermergeError, match="ensemble"):
        merge_models(a, b, method="ensemble", data=_data(), finetune="kd", progress=False)
    with pytest.raises(PermergeError, match="--ft-opt 'lr'"):
        merge_models(a, b, method="wm", data=_data(), finetune="kd", finetune_options={"lr": -1}, progress=False)
    with pytest.raises(PermergeError, match="unknown finisher"):
        merge_models(a, b, method="wm", data=_data(), finetune="sgd", progress=False)


def test_source_method_with_kd_distils_into_model_a() -> None:
    a, b = _ckpt("mlp:16x12", 0), _ckpt("mlp:16x12", 1)
    r = merge_models(a, b, method="source", data=_data(), finetune="kd", finetune_options={"steps": 5}, progress=False)
    assert r.info["finetune"]["steps"] == 5
    assert any(not torch.equal(p, q) for p, q in zip(r.model.parameters(), a.model.parameters(), strict=True))


def test_model_size_counts_parameters_and_multiply_adds() -> None:
    a, b = _ckpt("mlp:16x12", 0), _ckpt("mlp:16x12", 1)
    size = model_size(a.model, (1, 8, 8))
    assert size["params"] == 64 * 16 + 16 + 16 * 12 + 12 + 12 * 10 + 10
    assert size["macs"] == 64 * 16 + 16 * 12 + 12 * 10
    ens = merge_models(a, b, method="ensemble", progress=False).model
    assert model_size(ens, (1, 8, 8)) == {"params": 2 * size["params"], "macs": 2 * size["macs"]}


def test_zipit_without_within_merges_is_a_permutation_merge() -> None:
    """beta=0, alpha=0, full zip: every merged unit pairs one unit of A with one of B."""
    from permerge.merge.core import spec_for
    from permerge.merge.lerp import lerp_state
    from permerge.permutation.spec import apply_permutation

    a, b = _ckpt("mlp:16x12", 0), _ckpt("mlp:16x12", 1)
    r = merge_models(a, b, method="zipit", data=_data(), options={"alpha": 0.0, "beta": 0.0}, progress=False)
    assert r.perm is not None and r.config == a.config
    permuted_b = apply_permutation(spec_for(a), r.perm, b.model.state_dict())
    want = lerp_state(a.model.state_dict(), permuted_b, 0.5)
    for k, v in r.model.state_dict().items():
        assert torch.allclose(v, want[k], atol=1e-6), k


def test_zipit_merges_within_models_when_the_budget_allows() -> None:
    a, b = _ckpt("mlp:16x12", 0), _ckpt("mlp:16x12", 1)
    r = merge_models(a, b, method="zipit", data=_data(), options={"beta": 1.0}, progress=False)
    assert sum(r.info["merger"]["within_model_merges"].values()) > 0
    assert r.perm is None and r.config == a.config  # full zip: the size of one source


def test_zipit_stop_layer_zero_keeps_both_models_side_by_side() -> None:
    a, b = _ckpt("mlp:16x12", 0), _ckpt("mlp:16x12", 1)
    r = merge_models(a, b, method="zipit", data=_data(), options={"stop_layer": 0}, progress=False)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(r.model(x), 0.5 * (a.model(x) + b.model(x)), atol=1e-5)
    partial = merge_models(a, b, method="zipit", data=_data(), options={"stop_layer": 1}, progress=False)
    assert partial.config is not None and partial.config.hidden == (16, 24)
    with pytest.raises(PermergeError, match="stop_layer=5"):
        merge_models(a, b, method="zipit", data=_data(), options={"stop_layer": 5}, progress=False)


def test_zipit_partial_zip_of_a_resnet_is_saved_with_per_layer_channels(tmp_path: Any) -> None:
    """Zipping a ResNet's first groups and keeping the rest of both models gives layers of
    different widths: the config names each layer's channels, the model saves and loads, and
    with nothing zipped (and the sources' BatchNorm statistics kept) it is both models side
    by side, the mean of their logits."""
    from permerge.checkpoint import load_checkpoint, save_checkpoint

    shape = (3, 16, 16)
    a, b = _ckpt("resnet20", 0, shape), _ckpt("resnet20", 1, shape)
    data = _data(n_per_class=2, shape=shape)
    r = merge_models(a, b, method="zipit", data=data, options={"stop_layer": 4}, progress=False)
    assert r.config is not None and r.config.channels == (16, 64, 128, 16, 16, 16, 64, 64, 64, 128, 128, 128)
    save_checkpoint(tmp_path / "m", r.model, r.config)
    back = load_checkpoint(tmp_path / "m")
    x = torch.rand(3, *shape)
    with torch.no_grad():
        assert torch.equal(back.model.eval()(x), r.model(x))
    none = merge_models(a, b, method="zipit", data=data, options={"stop_layer": 0}, bn_reset=False, progress=False)
    with torch.no_grad():
        assert torch.allclose(none.model(x), 0.5 * (a.model(x) + b.model(x)), atol=1e-5)


def test_zipit_partial_zip_of_a_model_without_per_layer_widths_is_refused_before_the_statistics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ViT has no config for blocks of different widths: the widths are known before any
    statistics, so the error comes first and names the option to change."""
    from permerge.merge import zipit as zipit_module

    shape = (1, 28, 28)
    a, b = _ckpt("vit:tiny-d1", 0, shape), _ckpt("vit:tiny-d1", 1, shape)
    calls: list[int] = []
    monkeypatch.setattr(zipit_module, "joint_correlations", lambda *args, **kw: calls.append(1))
    with pytest.raises(PermergeError, match=r"stop_layer=1: zip every group"):
        merge_models(a, b, method="zipit", data=_data(n_per_class=2, shape=shape), options={"stop_layer": 1})
    assert calls == []


@pytest.mark.parametrize("budget", ["params", "macs"])
@pytest.mark.parametrize(("arch", "shape"), [("mlp:16x12", (1, 8, 8)), ("cnn", (1, 12, 12)), ("resnet20", (3, 8, 8))])
def test_pleas_budget_chooses_per_layer_widths_within_it(arch: str, shape: tuple[int, int, int], budget: str) -> None:
    a, b = _ckpt(arch, 0, shape), _ckpt(arch, 1, shape)
    data = _data(n_per_class=2, shape=shape)
    r = merge_models(a, b, method="pleas", data=data, options={budget: 1.5, "refit": "none"}, progress=False)
    ratio = model_size(r.model, shape)[budget] / model_size(a.model, shape)[budget]
    assert 1.4 < ratio <= 1.5
    widths = set(r.info["merger"]["widths"].values())
    assert r.config is not None and r.config != a.config and len(widths) > 1
    assert merge_models(a, b, method="pleas", data=data, options={budget: 1.0, "refit": "none"}).config == a.config


def test_parameter_budget_keeps_the_worst_matched_pairs_apart_first() -> None:
    """Two hidden layers of the same cost: the budget goes to the pairs that match worst,
    wherever they are; a budget of 1 keeps nothing apart and one past 2x widths keeps all."""
    from permerge.merge.partial import allocate_kept
    from permerge.permutation.fx import derive_spec

    a = _ckpt("mlp:16x16", 0)
    spec = derive_spec(a.model, torch.zeros(1, 1, 8, 8))
    first, second = list(spec.groups)
    scores = {first: torch.full((16,), 0.9), second: torch.linspace(-0.5, 0.95, 16)}
    numel = {n: p.numel() for n, p in a.model.named_parameters()}
    kept = allocate_kept(spec, scores, numel, 1.1)
    assert kept[first] == 0 and 0 < kept[second] < 16
    assert allocate_kept(spec, scores, numel, 1.0) == {first: 0, second: 0}
    assert allocate_kept(spec, scores, numel, 4.0) == {first: 16, second: 16}


def test_pleas_wider_than_a_source_is_refused_before_work_where_layers_cannot_widen() -> None:
    shape = (1, 28, 28)
    a, b = _ckpt("vit:tiny-d1", 0, shape), _ckpt("vit:tiny-d1", 1, shape)
    for opts in ({"width": 1.5}, {"params": 1.5}, {"macs": 1.2}):
        with pytest.raises(PermergeError, match="pleas wider than a source needs layers that can be widened"):
            merge_models(a, b, method="pleas", data=_data(n_per_class=1, shape=shape), options=opts)


def test_disagreement_inputs_raise_the_student_teacher_divergence() -> None:
    from permerge.merge.distill import Part, _clean_pass, _frozen, _Net

    student, teacher = _ckpt("mlp:16x12", 0).model, _ckpt("mlp:16x12", 1).model
    x, y = torch.rand(32, 1, 8, 8), torch.zeros(32, dtype=torch.long)

    def kl(inp: torch.Tensor) -> float:
        with torch.no_grad():
            t = torch.softmax(teacher(inp) / 2, 1)
            return float(torch.nn.functional.kl_div(torch.log_softmax(student(inp) / 2, 1), t, reduction="sum"))

    budget = {"temperature": 2.0, "adversarial": 0.05, "label_weight": 0.0}
    with _frozen([teacher], student):
        parts = [Part(x, y, y, torch.ones(32))]
        loss, moved = _clean_pass(_Net(student), [_Net(teacher)], parts, "own", budget, 0.5)
    assert moved is not None and moved[0].shape == x.shape and not moved[0].requires_grad
    assert kl(moved[0]) > kl(x) and loss > 0
    assert all(p.grad is not None for p in student.parameters())  # the same pass trained the weights
    assert all(p.grad is None and p.requires_grad for p in teacher.parameters())  # frozen, then restored


def test_mixed_inputs_learn_both_labels_weighted_as_mixed() -> None:
    from permerge.merge.distill import Part, _loss, _Target

    logits = torch.tensor([[2.0, 0.0, -1.0]])
    target = _Target(torch.full((1, 3), 1 / 3), torch.zeros(1, 3), [])
    y, y2 = torch.tensor([0]), torch.tensor([2])
    budget = {"temperature": 1.0, "label_weight": 1.0}
    mixed = _loss((logits, []), target, [Part(logits, y, y2, torch.tensor([0.25]))], budget)
    ce = torch.nn.functional.cross_entropy
    assert torch.isclose(mixed, 0.25 * ce(logits, y) + 0.75 * ce(logits, y2))


def test_pleas_refit_inputs_build_only_what_enters_the_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large merge data with many augmented copies: only ``max_samples`` images are ever built
    (a full training set with 20 copies would not fit in memory), drawn from every source."""
    from permerge.merge.pleas import _refit_inputs

    built: list[int] = []
    original = ImageSet.to_input

    def counting(self: ImageSet, images: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        built.append(len(images))
        return original(self, images, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ImageSet, "to_input", counting)
    data = _data(n_per_class=30)  # 600 images, 21 copies each: 12,600 candidates
    x = _refit_inputs(data, 20, 500, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert x.shape == (500, 1, 8, 8) and sum(built) == 500
    small = _refit_inputs(_data(), 2, 500, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert len(small) == 2 * 60 * 3  # under the cap: every image and every copy


def test_feature_hints_pair_each_teachers_units_with_the_merged_models() -> None:
    """B with A's units shuffled is A: weight matching undoes the shuffle, so the hint teachers
    (A, and B permuted to the merge) have exactly the merged model's features; B as stored
    does not."""
    from permerge.merge.core import finisher_teachers
    from permerge.merge.distill import _hint_loss, _Net
    from permerge.permutation.fx import derive_spec
    from permerge.permutation.spec import apply_permutation

    a = _ckpt("mlp:16x12", 0)
    spec = derive_spec(a.model, torch.rand(2, 1, 8, 8))
    g = torch.Generator().manual_seed(3)
    shuffle = {k: torch.randperm(grp.size, generator=g) for k, grp in spec.groups.items()}
    b = copy.deepcopy(a)
    b.model.load_state_dict(apply_permutation(spec, shuffle, a.model.state_dict()))
    r = merge_models(a, b, method="wm", data=_data(), progress=False)
    teachers, nodes = finisher_teachers(a, b, r, DistillOptions(hint=1.0), _data())
    assert len(nodes) >= 2
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        _, feats = _Net(r.model, nodes)(x)
        assert all(float(_hint_loss(feats, _Net(t, nodes)(x)[1])) < 1e-8 for t in teachers)
        assert float(_hint_loss(feats, _Net(b.model, nodes)(x)[1])) > 0.1
    big = MergeData(tuple(ImageSet(torch.rand(4000, 1, 8, 8), torch.arange(4000) % 10, name=f"s{i}") for i in range(2)))
    as_stored, no_nodes = finisher_teachers(a, b, r, DistillOptions(), big)  # full data: no hints by default
    assert as_stored[1] is b.model and no_nodes == ()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hint_loss_is_the_mean_relative_squared_error_of_each_layer(dtype: torch.dtype) -> None:
    """Per hint node, mean (s - q)^2 over mean q^2, in fp32 whatever the features' dtype (bf16
    under autocast); the gradient reaches both the student's and the teacher's features (the
    disagreement step differentiates through the teachers)."""
    from permerge.merge.distill import _hint_loss

    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 5, 5), (4, 7)]
    s = [torch.randn(sh, generator=g).to(dtype).requires_grad_() for sh in shapes]
    q = [(2 * torch.randn(sh, generator=g)).to(dtype).requires_grad_() for sh in shapes]
    loss = _hint_loss(s, q)
    sf, qf = [t.detach().double().requires_grad_() for t in s], [t.detach().double().requires_grad_() for t in q]
    want = torch.stack([((a - b) ** 2).mean() / ((b**2).mean() + 1e-8) for a, b in zip(sf, qf, strict=True)]).mean()
    assert loss.dtype == torch.float32 and abs(loss.item() - want.item()) < 1e-5 * want.item()
    loss.backward()
    want.backward()
    for got, ref in zip([*s, *q], [*sf, *qf], strict=True):
        assert got.grad is not None and ref.grad is not None
        tol = 1e-5 if dtype == torch.float32 else 1e-2  # the grad is cast back to bf16
        assert torch.allclose(got.grad.double(), ref.grad, rtol=tol, atol=tol * float(ref.grad.abs().max()))


def test_feature_hints_train_the_student_through_its_probe() -> None:
    a, b = _ckpt("mlp:16x12", 0), _ckpt("mlp:16x12", 1)
    opts = {"steps": 30, "hint": 1.0, "augment": "none", "lr": 3e-3}
    r = merge_models(a, b, method="wm", data=_data(), finetune="kd", finetune_options=opts, progress=False)
    plain = merge_models(a, b, method="wm", data=_data(), progress=False)
    info = r.info["finetune"]
    assert info["hint"] == 1.0 and info["loss_last"] < info["loss_first"]
    assert any(not torch.equal(p, q) for p, q in zip(r.model.parameters(), plain.model.parameters(), strict=True))
    default = merge_models(
        a, b, method="wm", data=_data(), finetune="kd", finetune_options={"steps": 2}, progress=False
    )
    no_merge = merge_models(
        a, b, method="source", data=_data(), finetune="kd", finetune_options={"steps": 2}, progress=False
    )
    assert default.info["finetune"]["hint"] > 0 and no_merge.info["finetune"]["hint"] == 0  # hints where units pair
    with pytest.raises(PermergeError, match="hint needs a same-width permutation merge"):
        merge_models(a, b, method="source", data=_data(), finetune="kd", finetune_options={"hint": 1}, progress=False)


@pytest.mark.parametrize(
    ("arch", "shape"), [("cnn", (1, 28, 28)), ("resnet20", (3, 32, 32)), ("vit:tiny-d1", (1, 28, 28))]
)
def test_feature_hints_run_on_convolutional_residual_and_attention_models(
    arch: str, shape: tuple[int, int, int]
) -> None:
    """Hints are on by default wherever a permutation merge pairs units; the probes of a
    residual stream, BatchNorm outputs or token features must all feed the loss."""
    a, b = _ckpt(arch, 0, shape), _ckpt(arch, 1, shape)
    data = _data(n_per_class=2, shape=shape)
    r = merge_models(
        a, b, method="wm", data=data, finetune="kd", finetune_options={"steps": 2, "augment": "none"}, progress=False
    )
    info = r.info["finetune"]
    assert info["hint"] > 0 and torch.isfinite(torch.tensor(info["loss_last"]))
